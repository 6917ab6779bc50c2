//! One probe per identity server per process while it is down: the first renewal that finds
//! it unreachable (or answering 5xx) keeps retrying on its schedule; every other renewal of the
//! process for that server waits for it to succeed instead of retrying on its own, then renews
//! as long after the recovery as it fell due after the outage began (never past half of its
//! WIT's remaining lifetime), plus a random point of one retry interval. A process holding many
//! identities (a node agent's worth, or many clients in one service) then costs a down server
//! one request per retry interval instead of one per identity, and after the recovery sends the
//! renewals that fell due during the outage at the rate they fell due, not in one burst;
//! renewals whose WIT expired meanwhile are renewed within one interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// How long an outage may go unreported (no failure seen) before a failure starts a new one.
const STALE_OUTAGE: std::time::Duration = std::time::Duration::from_secs(300);

/// The outage state of one identity server (by URL) in this process.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    down: AtomicBool,
    /// When the server was first found down in the current outage, and last found down.
    down_since: Mutex<Option<(std::time::Instant, std::time::Instant)>>,
    /// Held by the renewal that probes while the server is down.
    probe: Arc<tokio::sync::Mutex<()>>,
    recovered: tokio::sync::Notify,
}

/// Servers known to this process; one entry per identity-server URL (a handful).
fn gates() -> &'static Mutex<HashMap<String, Arc<Gate>>> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Gate>>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

/// The gate of the identity server at `url`.
pub(crate) fn gate(url: &str) -> Arc<Gate> {
    let mut gates = gates().lock().unwrap_or_else(|e| e.into_inner());
    gates.entry(url.trim_end_matches('/').to_owned()).or_default().clone()
}

impl Gate {
    /// The server failed as an outage does.
    pub(crate) fn mark_down(&self) {
        let now = std::time::Instant::now();
        let mut since = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        let was_down = self.down.swap(true, Ordering::AcqRel);
        *since = match *since {
            // An outage nobody reported on for a while (its renewals were dropped before the
            // recovery) is over as far as this one knows: a new one begins.
            Some((began, last)) if was_down && now.duration_since(last) < STALE_OUTAGE => Some((began, now)),
            _ => Some((now, now)),
        };
    }

    /// When the current outage began, if the server is known to be down.
    pub(crate) fn down_since(&self) -> Option<std::time::Instant> {
        let since = *self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map(|(began, _)| began).filter(|_| self.down.load(Ordering::Acquire))
    }

    /// Whether the server is known to be down.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// The server answered; wakes the renewals waiting for it. True if it was down.
    pub(crate) fn mark_up(&self) -> bool {
        // Under the lock, so a failure reported meanwhile cannot leave it down without a start.
        let mut since = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        let was_down = self.down.swap(false, Ordering::AcqRel);
        *since = None;
        drop(since);
        if was_down {
            self.recovered.notify_waiters();
        }
        was_down
    }

    /// Becomes the prober, unless another renewal is one.
    pub(crate) fn try_probe(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.probe.clone().try_lock_owned().ok()
    }

    /// Waits, up to `limit`, until the server is known to answer again (at once if it is not
    /// known to be down). True if it recovered (or was not down), false after `limit`.
    pub(crate) async fn wait_until_up(&self, limit: std::time::Duration) -> bool {
        let notified = self.recovered.notified();
        tokio::pin!(notified);
        // Registered before the check, so a recovery in between is not missed.
        notified.as_mut().enable();
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        tokio::time::timeout(limit, notified).await.is_ok()
    }

    /// Whether it is known to be down and another renewal probes it.
    pub(crate) fn probed_elsewhere(&self) -> bool {
        self.down.load(Ordering::Acquire) && self.probe.try_lock().is_err()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn one_prober_and_the_others_wake_on_recovery() {
        let gate = super::gate("http://gate-test.invalid/");
        assert!(gate.wait_until_up(Duration::from_millis(10)).await, "not down: no wait");
        gate.mark_down();
        let probe = gate.try_probe().expect("the first renewal probes");
        assert!(gate.try_probe().is_none(), "one at a time");
        assert!(gate.probed_elsewhere());
        assert!(!gate.wait_until_up(Duration::from_millis(20)).await, "still down");
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait_until_up(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(gate.mark_up());
        assert!(waiting.await.unwrap(), "woken by the recovery");
        drop(probe);
        assert!(!gate.probed_elsewhere() && !gate.mark_up());
        assert!(std::sync::Arc::ptr_eq(&gate, &super::gate("http://gate-test.invalid")), "one per URL");
    }

    #[tokio::test]
    async fn an_outage_is_dated_from_its_first_failure() {
        let gate = super::gate("http://gate-dating-test.invalid");
        assert!(gate.down_since().is_none(), "up: no outage");
        gate.mark_down();
        let began = gate.down_since().expect("down");
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.mark_down();
        assert_eq!(gate.down_since(), Some(began), "later failures do not move its start");
        gate.mark_up();
        assert!(gate.down_since().is_none(), "over at the recovery");
        gate.mark_down();
        assert!(gate.down_since().expect("down again") > began, "the next outage has its own start");
    }
}
