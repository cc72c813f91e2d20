# arborist container image: docs/docker.md explains how to build, run and stop it.
#
#   docker build -t arborist .
#   docker run --rm -it --stop-timeout 20 arborist         # the demo tree; Ctrl-C to stop it
#
# Two stages: a Rust toolchain builds the release binary, and a slim Debian runtime gets only
# the binary and config/. The runtime keeps /bin/sh and coreutils on purpose: the demo tree's
# workers are sh scripts, and `shell:` workers run under /bin/sh -c.
#
# Dependency caching uses a dummy-source layer, not BuildKit cache mounts, so the Dockerfile
# works with every builder (BuildKit, the classic builder, buildah/podman, kaniko), and the
# cached layer can be shared through a registry (--cache-from). Cargo.toml and Cargo.lock are
# copied first and every dependency is built against an empty crate; that layer is rebuilt
# only when the manifest or the lock file changes. docs/docker.md shows the cache-mount variant.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src

# 1. Dependencies only. benches/ is copied because Cargo.toml declares [[bench]] targets and
#    cargo refuses a manifest whose declared targets are missing (benches are not built here).
#    src/main.rs and src/lib.rs are empty stand-ins for the real crate.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# 2. The crate itself. COPY keeps the files' modification times, which can be older than the
#    stand-ins' build artefacts: touch the crate roots so cargo rebuilds the crate for sure.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/arborist /out/arborist

# ---------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim

# A fixed non-root uid/gid (10001), so Kubernetes' runAsNonRoot can verify it and a volume's
# ownership can be set to match. /run/arborist holds the control socket (mode 0600, created by
# arborist at start): it must be writable by that user. Workers that set `user:`/`group:` need
# arborist to run as root; run the image with `--user 0` for such a tree.
RUN groupadd --gid 10001 arborist \
 && useradd --uid 10001 --gid arborist --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin arborist \
 && install -d -o arborist -g arborist -m 0700 /run/arborist

COPY --from=build /out/arborist /usr/local/bin/arborist
COPY config/ /etc/arborist/

# `arborist run` without CONFIG reads $ARBORIST_CONFIG (SPEC §1). With XDG_RUNTIME_DIR set,
# the daemon and every client verb (`arborist status` below, `docker exec ... arborist stop
# backend`) agree on /run/arborist/arborist.sock without a --socket flag. A tree that sets
# control_socket itself must keep it in a writable directory.
ENV ARBORIST_CONFIG=/etc/arborist/demo.yaml \
    XDG_RUNTIME_DIR=/run/arborist

# Numeric, not `arborist`: Kubernetes' runAsNonRoot can only verify a numeric USER (with a
# name the kubelet refuses to start the pod unless the pod spec sets runAsUser).
USER 10001:10001

# arborist is PID 1 by design, so there is no tini/dumb-init: it installs its own SIGINT and
# SIGTERM handlers (a PID 1 without handlers would ignore `docker stop`'s SIGTERM), reaps every
# orphan that is re-parented to it without stealing its workers' exit statuses, and stops the
# tree top-down within its deadlines. A second SIGTERM kills everything at once (exit 143).
#
# `docker stop` waits 10 s by default before its SIGKILL: give it the tree's worst case plus a
# margin (`arborist check --plan` prints it; the demo's is 13 s, its root deadline 15 s), with
# `docker run --stop-timeout 20`, `docker stop --time 20`, or compose's `stop_grace_period`.
STOPSIGNAL SIGTERM

# Exit 0 when the daemon answers on its control socket, 1 when nothing answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/arborist", "status"]

ENTRYPOINT ["/usr/local/bin/arborist"]
CMD ["run"]
