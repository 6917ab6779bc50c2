//! Logging a recurring failure without flooding: one event when something starts failing, at
//! most one reminder per interval while it keeps failing (with how many were left out), and one
//! event when it recovers.
//!
//! ```
//! use wimse_core::health::{Health, Report};
//!
//! let health = Health::new(60);
//! assert_eq!(health.failed(1_000), Report::StartedFailing);
//! assert_eq!(health.failed(1_001), Report::Quiet);
//! assert_eq!(health.failed(1_060), Report::StillFailing { left_out: 1 });
//! assert!(health.succeeded());
//! assert!(!health.succeeded(), "one recovery event");
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The state of one recurring operation (a background refresh, request signing).
#[derive(Debug)]
pub struct Health {
    remind_every: u64,
    /// Mirrors `state.failing`, so that a success on a hot path costs one atomic load.
    failing: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failing: bool,
    last_report: u64,
    left_out: u64,
}

/// What to log about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// It was healthy until now: log it.
    StartedFailing,
    /// It is still failing and a reminder is due: log it, with the number of failures left out since the last one.
    StillFailing {
        /// Failures not logged since the last event.
        left_out: u64,
    },
    /// Logged recently: stay quiet.
    Quiet,
}

impl Health {
    /// Reminds at most once every `remind_every` seconds while failing.
    pub fn new(remind_every: u64) -> Self {
        Self { remind_every, failing: AtomicBool::new(false), state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters only: a panic elsewhere cannot leave them in a state worth refusing.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a failure at `now` (seconds) and says whether to log it.
    pub fn failed(&self, now: u64) -> Report {
        let mut state = self.state();
        if !state.failing {
            *state = State { failing: true, last_report: now, left_out: 0 };
            self.failing.store(true, Ordering::Release);
            return Report::StartedFailing;
        }
        if now >= state.last_report.saturating_add(self.remind_every) {
            let left_out = std::mem::take(&mut state.left_out);
            state.last_report = now;
            return Report::StillFailing { left_out };
        }
        state.left_out += 1;
        Report::Quiet
    }

    /// Records a success; true when it was failing until now (log the recovery).
    pub fn succeeded(&self) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.state();
        self.failing.store(false, Ordering::Release);
        std::mem::replace(&mut state.failing, false)
    }

    /// Whether the last outcome was a failure.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

/// When to renew a credential issued at `issued_at` and expiring at `expires_at` (seconds):
/// between half and two thirds of its lifetime, `jitter` in `[0, 1)` picking the point.
pub fn renewal_time(issued_at: u64, expires_at: u64, jitter: f64) -> f64 {
    let lifetime = expires_at.saturating_sub(issued_at) as f64;
    issued_at as f64 + lifetime * (2.0 / 3.0 - jitter.clamp(0.0, 1.0) / 6.0)
}

/// How long to wait after `failures` consecutive failed attempts (1 or more): doubling from half
/// a second, capped at `interval`, then spread over its upper half by `jitter` in `[0, 1)`.
/// Never longer than `interval`, so a workload retries at least once per interval for as long
/// as the identity server is away, and recovers within one interval of its return.
pub fn retry_delay(failures: u32, interval: Duration, jitter: f64) -> Duration {
    let doubled = Duration::from_millis(500).saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(interval).mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// How long after its identity server's recovery a renewal that waited out the outage is
/// sent: as long after the recovery as it fell due after the outage began (`fell_due_after`),
/// plus a point of one retry `interval` drawn by `jitter` in `[0, 1)`, so the renewals that
/// fell due during the outage reach the server at the rate they fell due rather than in one
/// burst; but never more than half of what is left of the current credentials' lifetime
/// (`until_expiry`), and for credentials that expired meanwhile only the jitter.
pub fn recovery_delay(fell_due_after: Duration, interval: Duration, until_expiry: Duration, jitter: f64) -> Duration {
    let jittered = interval.mul_f64(jitter.clamp(0.0, 1.0));
    if until_expiry.is_zero() {
        return jittered;
    }
    (fell_due_after + jittered).min(until_expiry / 2)
}

/// A number in `[0, 1)` that differs between processes and calls. Not for secrets: it only
/// spreads renewals and retries.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS once per thread, then varied per instance.
    let seed = (CALLS.fetch_add(1, Ordering::Relaxed), std::time::SystemTime::now());
    (RandomState::new().hash_one(seed) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::{Health, Report};

    #[test]
    fn recovery_replays_the_outage_within_the_remaining_lifetime() {
        use super::recovery_delay;
        use std::time::Duration;
        let s = Duration::from_secs;
        // Fell due as the outage began: within one interval of the recovery.
        assert_eq!(recovery_delay(s(0), s(5), s(3000), 0.0), s(0));
        assert_eq!(recovery_delay(s(0), s(5), s(3000), 0.5), Duration::from_millis(2500));
        // Fell due 300 s into it: 300 s after the recovery (plus the jitter)...
        assert_eq!(recovery_delay(s(300), s(5), s(3000), 0.0), s(300));
        assert_eq!(recovery_delay(s(300), s(5), s(3000), 0.2), s(301));
        // ...but never past half of what is left of the credentials, jitter included.
        assert_eq!(recovery_delay(s(300), s(5), s(200), 0.0), s(100));
        assert_eq!(recovery_delay(s(0), s(10), s(8), 0.9), s(4));
        assert_eq!(recovery_delay(s(300), s(5), s(9), 0.0), Duration::from_millis(4500));
        // Expired meanwhile: the jitter only.
        assert_eq!(recovery_delay(s(300), s(5), s(0), 0.2), s(1));
        // A jitter out of range is clamped.
        assert_eq!(recovery_delay(s(0), s(5), s(0), 7.0), s(5));
    }

    #[test]
    fn one_event_per_state_change_and_rare_reminders() {
        let health = Health::new(10);
        assert!(!health.succeeded(), "healthy from the start: nothing to report");
        assert_eq!(health.failed(100), Report::StartedFailing);
        assert!(health.is_failing());
        for now in 101..110 {
            assert_eq!(health.failed(now), Report::Quiet);
        }
        assert_eq!(health.failed(110), Report::StillFailing { left_out: 9 });
        assert_eq!(health.failed(111), Report::Quiet);
        assert_eq!(health.failed(125), Report::StillFailing { left_out: 1 });
        assert!(health.succeeded());
        assert!(!health.is_failing());
        assert!(!health.succeeded());
        assert_eq!(health.failed(126), Report::StartedFailing, "a new outage is reported at once");
    }
}
