//! Key maintenance: the rotation policy, the timer that runs it, reconciling with the storage, and replacing the key store.

use super::*;

/// How often a replica reads the stored key state between maintenances, to follow a replaced
/// key store (a new epoch) or an operator's key lifecycle step within seconds: one small read (a `SELECT` of the state row on
/// PostgreSQL) per replica this often.
const EPOCH_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl IdentityServer {
    /// Keys are published before they sign: the next key appears in the bundle two refresh
    /// hints before it becomes active, so verifiers that refresh on the hint never see a WIT
    /// signed by a key they do not have.
    pub(super) fn rotation_policy(&self) -> RotationPolicy {
        RotationPolicy {
            algorithm: self.alg,
            rotation_period: self.config.rotation_period,
            prepublish: self.config.refresh_hint.saturating_mul(2),
            longest_lifetime: self.longest_lifetime(),
        }
    }

    /// The longest lifetime of anything a signing key signs: WITs issued to clients (and their
    /// WICs, which the authority signs, are bounded the same way) and exchanged WITs.
    pub(super) fn longest_lifetime(&self) -> u64 {
        let clients = self.clients.iter().map(|c| c.config.max_lifetime);
        let exchanges = self.exchanges.iter().map(|x| x.profile.max_lifetime);
        clients.chain(exchanges).max().unwrap_or(0)
    }

    /// How often [`start_maintenance`](Self::start_maintenance) runs: half a refresh hint, at
    /// most a minute. Other replicas' new keys are published within it; a due rotation happens
    /// within it (keys are pre-published two hints ahead, so that is early enough).
    pub fn maintenance_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs((self.config.refresh_hint / 2).clamp(1, 60))
    }

    /// Reads the stored keys (another replica may have rotated), rotates and retires keys
    /// when due, all under the storage's lock. Returns whether the published keys changed.
    /// When the storage lost its state, this replica's keys are written back; when another
    /// store replaced it (a new epoch), this replica follows.
    pub async fn maintain(&self) -> Result<bool> {
        // One at a time: a slow run must not install an older state after a faster one.
        let _running = self.maintenance.lock().await;
        let now = self.clock.now();
        let policy = self.rotation_policy();
        let ours = self.read_keys(|loaded| loaded.state.clone());
        let mut changes = Changes::default();
        let mut how = Reconciled::Stored;
        let state = self
            .storage
            .update(&mut |stored: Option<KeyState>| {
                let (mut state, reconciled) = reconcile(stored.clone(), &ours, now, &policy)?;
                how = reconciled;
                changes = state.maintain(now, &policy, &self.domain)?;
                // Written whenever it differs from what is stored (an epoch given to an old
                // file, a merge, a rotation).
                Ok((stored.as_ref() != Some(&state)).then_some(state))
            })
            .await?;
        self.log_reconciled(&how, &state);
        // A prepared key holds timer rotation: said at each maintenance once it has waited
        // longer than a rotation period, so a forgotten `keys activate` does not go unnoticed.
        if let Some(waiting) = state
            .keys
            .iter()
            .find(|k| k.active_from == crate::keys::PREPARED && now.saturating_sub(k.created) > policy.rotation_period)
        {
            tracing::warn!(trust_domain = %self.domain, kid = waiting.jwk.kid.as_deref().unwrap_or(""), "wimse issuer: a prepared signing key has waited longer than the rotation period, and timer rotation waits for it: activate it (wimse issuer keys activate)");
        }
        metrics::counter!("wimse_issuer_keys_created_total").increment(changes.created.len() as u64);
        for (kid, active_from) in &changes.created {
            tracing::info!(target: "wimse::audit", trust_domain = %self.domain, kid = %kid, active_from, sequence = state.sequence(), "wimse issuer: signing key created");
        }
        for kid in &changes.retired {
            tracing::info!(target: "wimse::audit", trust_domain = %self.domain, kid = %kid, sequence = state.sequence(), "wimse issuer: signing key retired");
        }
        if changes.wic_authority_created {
            tracing::info!(target: "wimse::audit", trust_domain = %self.domain, "wimse issuer: WIC certificate authority created");
        }
        let changed = state != ours;
        if changed {
            let loaded = Loaded::new(state, &self.domain)?;
            *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        }
        Ok(changed)
    }

    pub(super) fn log_reconciled(&self, how: &Reconciled, state: &KeyState) {
        let (domain, storage, epoch, sequence) =
            (&self.domain, self.storage.describe(), state.epoch(), state.sequence());
        match how {
            Reconciled::Stored => {}
            Reconciled::Created => {
                tracing::info!(trust_domain = %domain, %storage, %epoch, "wimse issuer: key store created")
            }
            Reconciled::Restored => {
                tracing::error!(trust_domain = %domain, %storage, %epoch, sequence, "wimse issuer: the key store was lost; wrote this replica's keys back")
            }
            Reconciled::Replaced { old_epoch } => {
                tracing::warn!(trust_domain = %domain, %old_epoch, %epoch, "wimse issuer: the key store was replaced; following its keys")
            }
            Reconciled::Merged { stored_sequence } => {
                tracing::error!(trust_domain = %domain, %storage, stored_sequence, sequence, "wimse issuer: the stored keys were older than or diverged from this replica's; wrote back the union")
            }
            Reconciled::RollbackRefused { stale_epoch } => {
                tracing::error!(trust_domain = %domain, %storage, %stale_epoch, %epoch, "wimse issuer: a replaced key store came back (a restored backup?); kept the current one")
            }
        }
    }

    /// Whether this server can do its job now: its key store answers (within two seconds) and
    /// holds signing keys. What a readiness probe asks (`/readyz` of `wimse issuer serve
    /// --metrics-listen`): a replica whose storage is down is taken out of rotation.
    pub async fn ready(&self) -> Result<()> {
        let loaded =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.storage.load()).await.map_err(|_| {
                Error::with_detail(ErrorKind::KeyStoreUnavailable, "the key store did not answer within 2 s")
            })??;
        match loaded {
            Some(_) if !self.anchors()?.keys().is_empty() => Ok(()),
            _ => Err(Error::with_detail(ErrorKind::KeyStoreUnavailable, "no signing keys yet")),
        }
    }

    /// Replaces the key store on purpose (after a compromise, or to drop every key at once): a
    /// new epoch, new signing keys, a new WIC authority; the old epoch is remembered so that it
    /// cannot come back. Other replicas follow within seconds (they read the stored epoch every 2 s); verifiers accept the
    /// new epoch at their next refresh (or at once, on the first unknown `kid`). Every WIT and
    /// WIC issued before is invalid from then on.
    pub async fn replace_key_store(&self) -> Result<(String, String)> {
        let old = {
            let _running = self.maintenance.lock().await;
            let mut old_epoch = String::new();
            self.storage
                .update(&mut |stored: Option<KeyState>| {
                    old_epoch = stored.as_ref().map(|s| s.epoch().to_owned()).unwrap_or_default();
                    Ok(Some(KeyState::replacing(stored.as_ref())))
                })
                .await?;
            old_epoch
        };
        tracing::warn!(target: "wimse::audit", trust_domain = %self.domain, old_epoch = %old, "wimse issuer: key store replaced on request");
        self.maintain().await?;
        Ok((old, self.key_state().0))
    }

    /// Starts the task that runs [`maintain`](Self::maintain) every
    /// [`maintenance_interval`](Self::maintenance_interval), once: later calls do nothing and
    /// return false. [`router`](crate::router) calls it, so serving the API is enough; rotation
    /// then happens on time whether requests arrive or not. The task ends when the last `Arc`
    /// of the server is dropped. Needs a tokio runtime (without one it logs and returns false).
    ///
    /// Storage failures are logged (a warning when they start, one a minute while they last,
    /// one event when it works again); issuance meanwhile goes on with the keys in memory.
    pub fn start_maintenance(self: &Arc<Self>) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(trust_domain = %self.domain, "wimse issuer: no tokio runtime; keys do not rotate until maintenance is started in one");
            return false;
        };
        if self.maintenance_started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return false;
        }
        let weak = Arc::downgrade(self);
        let interval = self.maintenance_interval();
        runtime.spawn(async move {
            let health = wimse_core::health::Health::new(60);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut epoch_check = tokio::time::interval(EPOCH_CHECK.min(interval));
            epoch_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let due = tokio::select! {
                    _ = ticker.tick() => true,
                    _ = epoch_check.tick() => false,
                };
                let Some(server) = weak.upgrade() else { return };
                // Between maintenances, one read of the stored state: a key store replaced on
                // purpose (a new epoch, after a compromise) is followed within seconds, not at
                // the next maintenance, so no replica signs with the dropped keys for long.
                // The same read follows an operator's prepared or activated key (a higher
                // sequence) within seconds too, and answers a restored older snapshot (a lower
                // one) by writing this replica's keys back.
                if !due {
                    let stored = tokio::time::timeout(EPOCH_CHECK, server.storage.load()).await;
                    let (epoch, sequence) = server.key_state();
                    match stored {
                        Ok(Ok(Some(stored))) if stored.epoch() != epoch => {
                            tracing::info!(trust_domain = %server.domain, epoch = %stored.epoch(), "wimse issuer: the key store has a new epoch; following it now");
                        }
                        Ok(Ok(Some(stored))) if stored.sequence() != sequence => {}
                        _ => continue,
                    }
                }
                // Run apart so that a panic (a bug, a malformed row) is logged and the timer
                // goes on, instead of ending rotation silently.
                let run = tokio::spawn({
                    let server = server.clone();
                    async move { server.maintain().await }
                });
                let outcome = run.await.unwrap_or_else(|panic| {
                    tracing::error!(trust_domain = %server.domain, %panic, "wimse issuer: key maintenance panicked");
                    Err(Error::with_detail(ErrorKind::KeyStoreUnavailable, "key maintenance panicked"))
                });
                match outcome {
                    Ok(_) => {
                        if health.succeeded() {
                            tracing::info!(trust_domain = %server.domain, "wimse issuer: key store reachable again");
                        }
                    }
                    Err(error) => {
                        metrics::counter!("wimse_issuer_storage_errors_total").increment(1);
                        if health.failed(server.clock.now()) != wimse_core::health::Report::Quiet {
                            tracing::warn!(trust_domain = %server.domain, reason = error.reason(), detail = error.detail(), "wimse issuer: key maintenance failed (the key store does not answer); keys neither rotate nor follow other replicas until it does");
                        }
                    }
                }
            }
        });
        true
    }
}
