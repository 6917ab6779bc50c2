//! Logs that say something once per source and minute: a misconfigured workload retrying
//! every second must not bury the log (or fill a disk), yet the operator sees it at once.

use std::collections::HashMap;
use std::sync::Mutex;

/// How long a key stays quiet after it was logged, seconds.
const INTERVAL: u64 = 60;
/// The most keys remembered; beyond it the memory starts over (one more line per key).
const CAPACITY: usize = 10_000;

/// When each key was last logged.
#[derive(Debug, Default)]
pub(crate) struct Quiet(Mutex<HashMap<String, u64>>);

impl Quiet {
    /// Whether `key` should be logged at `now` (and remembers that it was).
    pub(crate) fn first_in_interval(&self, key: &str, now: u64) -> bool {
        let Ok(mut last) = self.0.lock() else { return true };
        if last.get(key).is_some_and(|at| now < at.saturating_add(INTERVAL)) {
            return false;
        }
        if last.len() >= CAPACITY {
            last.clear();
        }
        last.insert(key.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Quiet;

    #[test]
    fn a_key_is_logged_once_a_minute() {
        let quiet = Quiet::default();
        assert!(quiet.first_in_interval("203.0.113.7", 1000));
        assert!(!quiet.first_in_interval("203.0.113.7", 1059));
        assert!(quiet.first_in_interval("203.0.113.8", 1059), "another source");
        assert!(quiet.first_in_interval("203.0.113.7", 1060));
    }
}
