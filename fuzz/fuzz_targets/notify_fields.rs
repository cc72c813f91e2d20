//! sd_notify datagrams from workers: `notify::fields` splits `KEY=VALUE` lines, and the
//! values arborist acts on are interpreted as `notify::workers` does (WATCHDOG_USEC as a
//! number of microseconds, STATUS redacted, stripped of control characters and cut at 256
//! bytes on a character boundary). Datagrams are at most 4 KiB (MAX_DATAGRAM).
#![no_main]

use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;

const MAX_DATAGRAM: usize = 4096;
use arborist::notify::workers::MAX_STATUS;

/// Secrets for `redact` to find, overlapping each other and its own `[redacted]` mark.
const SECRETS: &str = r#"
children:
  w:
    shell: x
    env: {API_TOKEN: abcd, DB_PASSWORD: bcdef, KEY: "acted]", X_SECRET: "é€\U0001F600x"}
"#;

fuzz_target!(|data: &[u8]| {
    static LEARN: Once = Once::new();
    LEARN.call_once(|| {
        let tree = arborist::config::parse(SECRETS, Path::new("secrets.yaml"))
            .expect("the secrets config is valid");
        arborist::secrets::learn(&tree);
    });
    let datagram = &data[..data.len().min(MAX_DATAGRAM)];
    for (key, value) in arborist::notify::fields(datagram) {
        assert!(!key.contains('\n') && !value.contains('\n'));
        assert!(!key.contains('='), "the key ends at the first '=': {key:?}");
        match key {
            "WATCHDOG_USEC" => {
                if let Ok(usec) = value.trim().parse::<u64>() {
                    // worker.rs arms the watchdog at `Instant::now() + period`.
                    let period = Duration::from_micros(usec);
                    assert!(Instant::now().checked_add(period).is_some(), "{usec}µs");
                }
            }
            "STATUS" => {
                let s = arborist::notify::workers::status_text(value);
                assert!(
                    !s.contains("abcd") && !s.contains("bcdef"),
                    "{value:?} -> {s:?}"
                );
                assert!(s.len() <= MAX_STATUS);
            }
            _ => {}
        }
    }
});
