//! When a cycle step that keeps failing runs again: exponential backoff with jitter,
//! capped, reset by a success.
//!
//! "Equal jitter": after `n` consecutive failures the wait is half of `base · 2^(n-1)`
//! (capped) plus a random share of the other half, so retries of several steps spread out
//! but never come sooner than half the exponential delay. The randomness is passed in,
//! which keeps the schedule a pure, testable function.

use std::time::Duration;

/// The backoff schedule of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (before jitter).
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Backoff {
    /// The schedule for a daemon whose heartbeat is `interval`: a failing step first
    /// sits out one interval, then two, four and so on, up to an hour (or one interval,
    /// when that is longer).
    pub fn for_heartbeat(interval: Duration) -> Backoff {
        Backoff {
            base: interval,
            cap: interval.max(Duration::from_secs(3600)),
        }
    }

    /// The wait after `failures` consecutive failures (none after zero), with `random`
    /// in `[0, 1)` choosing the jitter.
    pub fn delay(&self, failures: u32, random: f64) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = self
            .base
            .checked_mul(1u32.checked_shl(failures - 1).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap);
        let half = exp / 2;
        half + half.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// What a supervisor remembers about one step between cycles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepHealth {
    /// Consecutive failures; zero after a success.
    pub failures: u32,
    /// When the step may run again, if it is backing off.
    pub retry_at: Option<tokio::time::Instant>,
    /// The last failure's message and what it meant; kept while the step backs off, so
    /// that the cycles it sits out still say what is wrong.
    pub last_error: Option<String>,
    pub last_kind: Option<crate::error::Kind>,
}

impl StepHealth {
    /// Whether the step should run at `now`.
    pub fn due(&self, now: tokio::time::Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// Records an outcome at `now`; `random` in `[0, 1)` picks the jitter of a retry.
    pub fn record(&mut self, ok: bool, now: tokio::time::Instant, backoff: &Backoff, random: f64) {
        if ok {
            *self = StepHealth::default();
        } else {
            self.failures = self.failures.saturating_add(1);
            self.retry_at = Some(now + backoff.delay(self.failures, random));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn doubles_from_the_base_up_to_the_cap_with_jitter_in_the_upper_half() {
        let b = Backoff {
            base: MIN,
            cap: 10 * MIN,
        };
        assert_eq!(b.delay(0, 0.5), Duration::ZERO);
        assert_eq!(b.delay(1, 0.0), 30 * Duration::from_secs(1));
        assert!(b.delay(1, 0.999_999) < MIN && b.delay(1, 0.999_999) > MIN - MIN / 1000);
        assert_eq!(b.delay(2, 0.0), MIN);
        assert_eq!(b.delay(3, 0.5), 3 * MIN);
        assert_eq!(b.delay(4, 0.0), 4 * MIN);
        // Capped from the fifth failure on, and never overflowing.
        assert_eq!(b.delay(5, 0.0), 5 * MIN);
        assert_eq!(b.delay(5, 1.0), 10 * MIN);
        assert_eq!(b.delay(40, 1.0), 10 * MIN);
        assert_eq!(b.delay(u32::MAX, 0.0), 5 * MIN);
        // Out-of-range randomness is clamped.
        assert_eq!(b.delay(1, 7.0), MIN);
        assert_eq!(b.delay(1, -1.0), MIN / 2);
    }

    #[test]
    fn the_heartbeat_sets_base_and_cap() {
        let b = Backoff::for_heartbeat(Duration::from_secs(300));
        assert_eq!(b.base, Duration::from_secs(300));
        assert_eq!(b.cap, Duration::from_secs(3600));
        let b = Backoff::for_heartbeat(Duration::from_secs(7200));
        assert_eq!(b.cap, Duration::from_secs(7200));
    }

    #[test]
    fn a_failing_step_sits_out_and_a_success_resets_it() {
        let b = Backoff {
            base: MIN,
            cap: 10 * MIN,
        };
        let t0 = tokio::time::Instant::now();
        let mut h = StepHealth::default();
        assert!(h.due(t0));
        h.record(false, t0, &b, 0.0);
        assert_eq!(h.failures, 1);
        assert!(!h.due(t0 + MIN / 4));
        assert!(h.due(t0 + MIN / 2));
        h.record(false, t0 + MIN, &b, 0.0);
        assert_eq!(h.retry_at, Some(t0 + 2 * MIN));
        h.record(true, t0 + 2 * MIN, &b, 0.0);
        assert_eq!(h, StepHealth::default());
        assert!(h.due(t0 + 2 * MIN));
    }
}
