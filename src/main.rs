//! arborist: command-line dispatch only.

use std::process::ExitCode;

use clap::Parser;

use arborist::cli::{self, Cli, Command};
use arborist::control::protocol::Request;
use arborist::supervisor::tree::RunOptions;
use arborist::{check, config, control, logs, process, signals, status, supervisor, unit};

const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__guardian")
    {
        process::guardian::run_guardian();
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // Rust ignores SIGPIPE, so `arborist status | head -1` would panic on a closed pipe.
        // A command-line tool should simply end there, as `ls | head -1` does; the daemon
        // (`run`) keeps ignoring it.
        // SAFETY: restoring a default disposition installs no handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let log_output = match logs::init(cli.log_format, cli.log_level.as_deref()) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("arborist: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = match cli.command {
        Command::Check {
            config,
            plan,
            budget,
            systemd,
        } => check(&config, plan, budget, systemd.as_deref()),
        Command::Run {
            config,
            shutdown_report,
        } => run(
            config.unwrap_or_else(cli::default_config),
            cli.socket.as_deref(),
            RunOptions { shutdown_report },
        ),
        Command::Status { json } => client(cli.socket.as_deref(), Request::Status, json),
        Command::Start { path } => client(cli.socket.as_deref(), Request::Start { path }, false),
        Command::Stop { path } => client(cli.socket.as_deref(), Request::Stop { path }, false),
        Command::Restart { path } => {
            client(cli.socket.as_deref(), Request::Restart { path }, false)
        }
        Command::Reload => client(cli.socket.as_deref(), Request::Reload, false),
        Command::Shutdown => client(cli.socket.as_deref(), Request::Shutdown, false),
    };
    // The last lines (the shutdown report) reach stderr, unless it stays blocked.
    log_output.finish(logs::FLUSH_AT_EXIT);
    code
}

fn client(socket: Option<&std::path::Path>, request: Request, json: bool) -> ExitCode {
    // Without --socket, the default config's control_socket, if that file is there.
    let configured = if socket.is_none() {
        config::load(&cli::default_config())
            .ok()
            .and_then(|t| t.control_socket)
    } else {
        None
    };
    let path = control::socket_path(socket, configured.as_deref());
    match control::client::call(&path, &request) {
        Ok(reply) => ExitCode::from(control::client::print(&request, &reply, json)),
        Err(e) => {
            eprintln!("arborist: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(
    path: &std::path::Path,
    plan: bool,
    budget: Option<std::time::Duration>,
    systemd: Option<&std::path::Path>,
) -> ExitCode {
    // The unit first: an unreadable unit file is a usage error, reported before any output.
    let unit_text = match systemd.map(unit::read).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("arborist: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tree = match config::load(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    print!("{}", check::render_tree(&tree));
    // What `run` would do here: checked now, said now (a tree checked on another machine may
    // run elsewhere, so a refusal is a warning here and an error at `run`).
    match arborist::process::owned::preview(&tree) {
        Ok(line) => println!("process ownership here: {line}"),
        Err(e) => println!("process ownership here: warning: `run` would refuse this tree: {e}"),
    }
    let mut code = ExitCode::SUCCESS;
    if plan || budget.is_some() {
        let (text, worst) = check::render_plan(&tree);
        print!("{text}");
        if let Some(budget) = budget {
            if worst > budget {
                println!(
                    "over budget: the worst-case shutdown {} exceeds the budget {}",
                    humantime::format_duration(worst),
                    humantime::format_duration(budget)
                );
                code = ExitCode::from(1);
            } else {
                println!(
                    "within budget: worst case {} <= {}",
                    humantime::format_duration(worst),
                    humantime::format_duration(budget)
                );
            }
        }
    }
    // Unit warnings leave the exit code alone: the config is valid (--budget can fail CI).
    if let (Some(unit_path), Some(text)) = (systemd, unit_text) {
        let name = if unit_path == std::path::Path::new("-") {
            "(stdin)".to_string()
        } else {
            unit_path.display().to_string()
        };
        let worst = arborist::plan::shutdown_plan(&tree).worst_total();
        let report = unit::check(&name, &text, worst);
        for line in &report.lines {
            println!("{line}");
        }
        for warning in &report.warnings {
            eprintln!("warning: {warning}");
        }
    }
    code
}

fn run(
    path: std::path::PathBuf,
    socket: Option<&std::path::Path>,
    options: RunOptions,
) -> ExitCode {
    let tree = match config::load(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    arborist::secrets::learn(&tree);
    // Rust's runtime ignores SIGPIPE already; the daemon depends on it, so it is said here: a
    // write to a pipe whose reader died (the guardian's, a log client's) fails with EPIPE
    // instead of killing arborist. Workers get the default disposition back before exec
    // (process/spawn.rs).
    // SAFETY: setting SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arborist: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let explicit_socket = socket.is_some() || tree.control_socket.is_some();
    let socket = control::socket_path(socket, tree.control_socket.as_deref());
    let code = runtime.block_on(async {
        // Signal handlers first: nothing may start before a SIGTERM can be received.
        let signals = match signals::SignalStream::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("arborist: cannot install signal handlers: {e}");
                return 1;
            }
        };
        // How workers' processes are owned: cgroup v2 where it can be had, else process
        // groups. A tree that cannot run here (limits without cgroups) is a usage error.
        let ownership = match process::owned::Ownership::detect(&tree) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("arborist: {e}; nothing was started");
                return i32::from(EXIT_USAGE);
            }
        };
        tracing::info!(mode = ownership.mode().as_str(), "process ownership: {}", ownership.describe());
        if let Some(c) = &ownership.cgroups {
            process::owned::clean_leftovers(c).await;
        }
        // Before anything starts: a second daemon on the same socket must not start at all.
        let (listener, socket_guard) = match control::server::bind(&socket) {
            Ok((l, g)) => (Some(l), Some(g)),
            Err(
                e @ (control::server::BindError::InUse(_)
                | control::server::BindError::NotASocket(_)),
            ) => {
                eprintln!("arborist: {e}");
                return i32::from(EXIT_USAGE);
            }
            Err(e) if explicit_socket => {
                eprintln!("arborist: {e}");
                return i32::from(EXIT_USAGE);
            }
            Err(e) => {
                tracing::warn!("{e}; running without a control socket (pass --socket)");
                (None, None)
            }
        };
        // Likewise a health port that is taken: exit 2 with nothing started.
        let health_listener = match tree.health_addr.map(arborist::health::bind).transpose() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("arborist: {e}");
                return i32::from(EXIT_USAGE);
            }
        };
        if let Err(e) = process::spawn::raise_nofile_limit() {
            tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
        }
        let child_events = match process::reap::start() {
            Ok(rx) => rx,
            Err(e) => {
                eprintln!("arborist: cannot become a child subreaper: {e}");
                return 1;
            }
        };
        // Two threads overlap the children's exec preparation; see process/spawn.rs.
        if let Err(e) =
            process::spawn::start_spawners(2)
        {
            tracing::warn!("cannot start spawner threads, spawning on the main thread: {e}");
        }
        if let Err(e) = process::adopted::start() {
            tracing::warn!("cannot start the thread that finds adopted processes, scanning inline: {e}");
        }
        if let Err(e) = process::chores::start() {
            tracing::warn!("cannot start the chores thread, doing its work inline: {e}");
        }
        if let Err(e) = process::guardian::start(tree.guardian_grace) {
            tracing::warn!("cannot start the guardian process (grandchildren may outlive a SIGKILLed arborist until it runs): {e}; retrying");
        }
        match arborist::notify::systemd::init() {
            Ok(Some(addr)) => {
                tracing::info!(socket = %addr, "sd_notify: talking to the service manager");
                if let Some(period) = arborist::notify::systemd::start_watchdog() {
                    tracing::info!("sd_notify: WATCHDOG=1 every {:?} (WATCHDOG_USEC)", period / 2);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("sd_notify disabled: {e}"),
        }
        // Before any worker starts: each gets NOTIFY_SOCKET pointing here.
        let bound_socket = socket_guard.as_ref().map(|_| socket.as_path());
        let _notify_guard = match arborist::notify::workers::start(bound_socket) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!("cannot open the workers' notify socket (ready: notify and watchdog will not work): {e}");
                None
            }
        };
        let board = status::StatusBoard::start();
        let (state_tx, state_rx) = tokio::sync::watch::channel(status::DaemonState::Starting);
        let daemon = std::sync::Arc::new(control::server::Daemon {
            config: tree.source.display().to_string(),
            started: tokio::time::Instant::now(),
            state: state_rx,
            ownership: ownership.mode(),
        });
        let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(listener) = listener {
            tracing::info!(socket = %socket.display(), "control socket ready");
            tokio::spawn(control::server::serve(
                listener,
                control_tx,
                board.clone(),
                daemon.clone(),
            ));
        }
        if let Some(listener) = health_listener {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "health endpoint ready: http://{addr}/healthz, /metrics");
            }
            tokio::spawn(arborist::health::serve(
                listener,
                board.clone(),
                daemon.clone(),
            ));
        }
        let code = supervisor::tree::run(supervisor::tree::Inputs {
            spec: tree,
            signals,
            child_events,
            board,
            control: control_rx,
            started: daemon.started,
            daemon_state: state_tx,
            options,
            cgroups: ownership.cgroups.clone(),
        })
        .await;
        if let Some(c) = &ownership.cgroups {
            c.hierarchy.remove_workers_dir();
        }
        drop(socket_guard);
        code
    });
    process::guardian::stop();
    // Do not wait for the runtime's idle blocking threads.
    runtime.shutdown_background();
    ExitCode::from(code.clamp(0, 255) as u8)
}
