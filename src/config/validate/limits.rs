//! The worker key `limits: {memory, cpu, pids}`, and the byte sizes that `memory` takes
//! (`512MiB`, `1.5G`, `64K`, `1000000`), parsed exactly in integers. The convention is
//! systemd's `MemoryMax=` and docker's `--memory`: a bare letter is a power of 1024 (`512M` is
//! 512 MiB), as are the IEC spellings (`Ki`, `KiB`...); the SI spellings `KB`, `MB`, `GB`, `TB`
//! are powers of 1000. Units are case-insensitive.

use serde_yaml::Value;

use super::{kind_of, show, At, Validator};
use crate::config::schema::{
    Limits, MAX_CPU_LIMIT, MAX_PIDS_LIMIT, MIN_CPU_LIMIT, MIN_MEMORY_LIMIT,
};

impl Validator<'_> {
    pub(super) fn limits(&mut self, v: &Value, at: &At) -> Option<Limits> {
        let Value::Mapping(m) = v else {
            self.bad_value(
                at,
                format!(
                    "`limits` must be a mapping such as {{memory: 512MiB, cpu: 1.5, pids: 256}}, found {}",
                    kind_of(v)
                ),
            );
            return None;
        };
        self.only_keys(m, at, &["memory", "cpu", "pids"]);
        let errors_before = self.errors.len();
        let memory = m
            .get("memory")
            .and_then(|v| self.memory(v, &at.key("memory")));
        let cpu = m.get("cpu").and_then(|v| self.cpus(v, &at.key("cpu")));
        let pids = m.get("pids").and_then(|v| self.pids(v, &at.key("pids")));
        (self.errors.len() == errors_before).then_some(Limits { memory, cpu, pids })
    }

    fn memory(&mut self, v: &Value, at: &At) -> Option<u64> {
        let (bytes, written) = match v {
            Value::Number(n) => match n.as_u64() {
                Some(b) => (b, n.to_string()),
                None => {
                    self.bad_value(at, format!("expected a size such as 512MiB, found {n}"));
                    return None;
                }
            },
            Value::String(s) => match parse_byte_size(s) {
                Ok(b) => (b, s.clone()),
                Err(e) => {
                    self.bad_value(at, format!("invalid memory size '{s}': {e}"));
                    return None;
                }
            },
            other => {
                self.bad_value(
                    at,
                    format!("expected a size such as 512MiB, found {}", kind_of(other)),
                );
                return None;
            }
        };
        if bytes < MIN_MEMORY_LIMIT {
            self.bad_value(
                at,
                format!(
                    "memory '{written}' is {bytes} bytes, below the 1MiB minimum (a size without a unit is in bytes: write e.g. 512MiB)"
                ),
            );
            return None;
        }
        Some(bytes)
    }

    fn pids(&mut self, v: &Value, at: &At) -> Option<u64> {
        match v.as_u64() {
            Some(n) if (1..=MAX_PIDS_LIMIT).contains(&n) => Some(n),
            _ => {
                self.bad_value(
                    at,
                    format!(
                        "pids must be a whole number from 1 to {MAX_PIDS_LIMIT} (the kernel's largest pid count), found {}",
                        show(v)
                    ),
                );
                None
            }
        }
    }

    fn cpus(&mut self, v: &Value, at: &At) -> Option<f64> {
        match v.as_f64() {
            Some(x) if (MIN_CPU_LIMIT..=MAX_CPU_LIMIT).contains(&x) => Some(x),
            _ => {
                self.bad_value(
                    at,
                    format!(
                        "cpu must be a number of CPUs from {MIN_CPU_LIMIT} to {MAX_CPU_LIMIT} (e.g. 1.5), found {}",
                        show(v)
                    ),
                );
                None
            }
        }
    }
}

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("ki", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mi", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gi", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("ti", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
];

/// What the error messages list as accepted units.
const UNIT_HELP: &str =
    "use B, K or KiB, M or MiB, G or GiB, T or TiB; KB, MB, GB, TB are powers of 1000";

/// A size in bytes: digits, an optional fraction (`1.5G`), optional spaces, an optional unit.
/// A fraction of a byte is dropped.
fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let unit = unit.trim_start();
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) || fraction.contains('.') {
        return Err("expected a number followed by a unit, such as 512MiB or 1.5G".into());
    }
    let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)) else {
        return Err(format!("unknown unit '{unit}' ({UNIT_HELP})"));
    };
    let too_large = || "too large (at most 16 EiB)".to_string();
    // Digits beyond 19 in the fraction cannot change the result once scaled by at most 2^40.
    let fraction = &fraction[..fraction.len().min(19)];
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let numerator: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_large())?
    };
    let denominator = 10u128.pow(fraction.len() as u32);
    let bytes = whole
        .checked_mul(scale as u128)
        .and_then(|b| b.checked_add(numerator * scale as u128 / denominator))
        .ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::parse_byte_size as parse;

    #[test]
    fn bare_letters_and_iec_units_are_powers_of_1024() {
        assert_eq!(parse("512MiB"), Ok(512 << 20));
        assert_eq!(parse("512M"), Ok(512 << 20));
        assert_eq!(parse("512m"), Ok(512 << 20));
        assert_eq!(parse("512Mi"), Ok(512 << 20));
        assert_eq!(parse("64K"), Ok(64 << 10));
        assert_eq!(parse("2 GiB"), Ok(2 << 30));
        assert_eq!(parse("1T"), Ok(1 << 40));
    }

    #[test]
    fn si_units_are_powers_of_1000_and_a_bare_number_is_bytes() {
        assert_eq!(parse("1KB"), Ok(1_000));
        assert_eq!(parse("3mb"), Ok(3_000_000));
        assert_eq!(parse("1GB"), Ok(1_000_000_000));
        assert_eq!(parse("1000000"), Ok(1_000_000));
        assert_eq!(parse("7B"), Ok(7));
    }

    #[test]
    fn fractions_are_exact_and_drop_a_partial_byte() {
        assert_eq!(parse("1.5G"), Ok(3 << 29));
        assert_eq!(parse("0.5KiB"), Ok(512));
        assert_eq!(parse("0.1K"), Ok(102));
        assert_eq!(parse("1.0000000000000000000001T"), Ok(1 << 40));
    }

    #[test]
    fn malformed_sizes_and_unknown_units_are_refused_with_a_reason() {
        for bad in ["", "MiB", "-1M", ".5G", "1.G", "1.2.3M", "1e9"] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse("5XB"),
            Err(
                "unknown unit 'XB' (use B, K or KiB, M or MiB, G or GiB, T or TiB; KB, MB, GB, TB are powers of 1000)"
                    .into()
            )
        );
    }

    #[test]
    fn sizes_beyond_u64_are_too_large_not_wrapped() {
        assert_eq!(parse("16777215T"), Ok(16_777_215 << 40));
        assert!(parse("16777216T").unwrap_err().contains("too large"));
        assert!(parse("99999999999999999999999999999999999999999").is_err());
    }
}
