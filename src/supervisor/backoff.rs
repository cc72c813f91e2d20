//! Restart delays: exponential backoff with jitter, reset after a stable run.

use std::time::Duration;

use crate::config::Backoff;

#[derive(Debug, Default, Clone)]
pub(crate) struct BackoffState {
    attempt: u32,
}

impl BackoffState {
    /// The delay before the next start, given how long the last run lasted. A run that stayed
    /// up for `max` resets the sequence. `unit` is a random number in 0..1.
    pub fn next_delay(&mut self, cfg: &Backoff, ran_for: Duration, unit: f64) -> Duration {
        if ran_for >= cfg.max {
            self.attempt = 0;
        }
        let base = cfg.initial.as_secs_f64() * cfg.factor.powi(self.attempt.min(64) as i32);
        let base = base.min(cfg.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let jittered = base * (1.0 + cfg.jitter * (2.0 * unit - 1.0));
        Duration::from_secs_f64(jittered.clamp(0.0, cfg.max.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.0,
        }
    }

    #[test]
    fn grows_exponentially_up_to_max() {
        let mut b = BackoffState::default();
        let short = Duration::from_millis(10);
        let delays: Vec<u128> = (0..6)
            .map(|_| b.next_delay(&cfg(), short, 0.5).as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn resets_after_a_stable_run() {
        let mut b = BackoffState::default();
        for _ in 0..4 {
            b.next_delay(&cfg(), Duration::ZERO, 0.5);
        }
        assert_eq!(
            b.next_delay(&cfg(), Duration::from_secs(1), 0.5),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let c = Backoff {
            jitter: 0.1,
            ..cfg()
        };
        let lo = BackoffState::default().next_delay(&c, Duration::ZERO, 0.0);
        let hi = BackoffState::default().next_delay(&c, Duration::ZERO, 1.0);
        assert_eq!(lo, Duration::from_millis(90));
        assert_eq!(hi, Duration::from_millis(110));
    }
}
