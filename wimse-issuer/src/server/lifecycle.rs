//! An operator's key lifecycle steps: on-demand rotation in two steps (prepare a key that is
//! published but signs nothing; activate it once verifiers have it), the keys' status, sealing
//! the stored state again under a new key-encryption key, and a new key store when the
//! key-encryption key is lost.

use super::*;
use crate::keys::KeyStatus;

impl IdentityServer {
    /// Applies `step` to the stored state under the storage's lock (and the maintenance lock,
    /// so no rotation of this replica runs in between), then loads the result. The step sees
    /// the stored state as this replica reconciles it.
    async fn lifecycle_step<T: Send>(
        &self,
        mut step: impl FnMut(&mut KeyState, u64, &RotationPolicy) -> Result<T> + Send,
    ) -> Result<T> {
        let outcome = {
            let _running = self.maintenance.lock().await;
            let now = self.clock.now();
            let policy = self.rotation_policy();
            let ours = self.read_keys(|loaded| loaded.state.clone());
            let mut outcome = None;
            self.storage
                .update(&mut |stored: Option<KeyState>| {
                    let (mut state, _) = reconcile(stored, &ours, now, &policy)?;
                    outcome = Some(step(&mut state, now, &policy)?);
                    Ok(Some(state))
                })
                .await?;
            outcome
        };
        self.maintain().await?;
        outcome.ok_or_else(|| Error::with_detail(ErrorKind::KeyStoreUnavailable, "the key store was not changed"))
    }

    /// The first step of an on-demand rotation (as SPIRE's `localauthority` prepares one): a new
    /// signing key, in the bundle at once (every replica publishes it within seconds), signing
    /// nothing until [`activate_key`](Self::activate_key). Refused
    /// ([`ErrorKind::KeyLifecycleRefused`]) while another key waits to sign. While a prepared
    /// key waits, timer rotation waits too. Its key id.
    pub async fn prepare_key(&self) -> Result<String> {
        let kid = self.lifecycle_step(|state, now, policy| state.prepare(now, policy)).await?;
        tracing::warn!(target: "wimse::audit", trust_domain = %self.domain, %kid, "wimse issuer: signing key prepared (published, not signing)");
        Ok(kid)
    }

    /// The second step: the waiting key (prepared, or a timer rotation's ahead of its time)
    /// signs from now on, on every replica within seconds; the previous key stays published
    /// until what it signed has expired. Refused when no key waits, or when it has been
    /// published for less than two refresh hints (verifiers that refresh on the hint may not
    /// have it yet) unless `force`. Its key id.
    pub async fn activate_key(&self, force: bool) -> Result<String> {
        let kid = self.lifecycle_step(|state, now, policy| state.activate(now, policy, force)).await?;
        tracing::warn!(target: "wimse::audit", trust_domain = %self.domain, %kid, force, "wimse issuer: signing key activated");
        Ok(kid)
    }

    /// The stored signing keys and what each does now, as the storage holds them.
    pub async fn key_statuses(&self) -> Result<Vec<KeyStatus>> {
        let stored = self.storage.load().await?.unwrap_or_default();
        Ok(stored.key_statuses(self.clock.now()))
    }

    /// Seals the stored state again with the configured key-encryption key, when it was sealed
    /// with one of `postgres.previous_kek_files`; whether it was written. (A replica's next
    /// write does the same: this is the step that does not wait for one.)
    pub async fn reseal_key_store(config: &IssuerConfig) -> Result<bool> {
        config.validate()?;
        let written = Self::open_storage(config).await?.reseal().await?;
        if written {
            tracing::warn!(target: "wimse::audit", trust_domain = %config.trust_domain, "wimse issuer: key store sealed again with the current key-encryption key");
        }
        Ok(written)
    }

    /// When the key-encryption key is lost (no configured KEK opens the stored state): a new
    /// key store, as [`replace_key_store`](Self::replace_key_store) makes one, written over the
    /// unreadable state and sealed with the configured KEK; the lost epoch (kept in the clear)
    /// is remembered as replaced. Refused when the stored state opens. `(lost epoch, new epoch)`.
    pub async fn replace_lost_key_store(config: IssuerConfig, clock: impl Clock + 'static) -> Result<(String, String)> {
        config.validate()?;
        let storage = Self::open_storage(&config).await?;
        let mut lost = String::new();
        storage
            .overwrite_unreadable(&mut |epoch: Option<String>| {
                lost = epoch.clone().unwrap_or_default();
                let lost_state = KeyState { epoch: epoch.unwrap_or_default(), ..KeyState::default() };
                Ok(KeyState::replacing(Some(&lost_state)))
            })
            .await?;
        let domain = config.trust_domain.clone();
        tracing::warn!(target: "wimse::audit", trust_domain = %domain, lost_epoch = %lost, "wimse issuer: key store replaced after its key-encryption key was lost");
        let server = Self::with_storage(config, storage, clock).await?;
        Ok((lost, server.key_state().0))
    }
}
