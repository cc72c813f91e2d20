//! The sd_notify protocol, both ways: `systemd` tells the service manager that started
//! arborist (systemd's `Type=notify`) what the tree is doing; `workers` is arborist's own
//! notify socket, so that programs written for `Type=notify` and `WatchdogSec=` run
//! unchanged as workers.

pub mod systemd;
pub mod workers;

/// Parses one datagram: `KEY=VALUE` lines (a line without `=` is ignored, as systemd does).
pub fn fields(datagram: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    datagram
        // systemd splits on both (strv_split_newlines), so `READY=1\r\n` is ready.
        .split(|&b| b == b'\n' || b == b'\r')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| line.split_once('='))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_splits_lines_and_skips_garbage() {
        let got: Vec<_> =
            super::fields(b"READY=1\nSTATUS=a=b\nnoise\n\xff=1\nWATCHDOG=1").collect();
        assert_eq!(
            got,
            vec![("READY", "1"), ("STATUS", "a=b"), ("WATCHDOG", "1")]
        );
        let got: Vec<_> = super::fields(b"READY=1\r\nSTATUS=x\r").collect();
        assert_eq!(got, vec![("READY", "1"), ("STATUS", "x")]);
    }
}
