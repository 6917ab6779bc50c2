//! The identity server's durable state (signing keys, the WIC authority, the bundle sequence,
//! the key-store epoch) and the rules that change it: creation, rotation with pre-publication,
//! retirement.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wimse_core::id::TrustDomain;
use wimse_core::jose::{Algorithm, Jwk, SigningKey};
use wimse_core::{Error, ErrorKind, Result};

/// One signing key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct StoredKey {
    pub(crate) created: u64,
    /// When it starts signing; published in the bundle from `created` on.
    pub(crate) active_from: u64,
    pub(crate) jwk: Jwk,
}

/// What an identity server keeps across restarts and shares between replicas. Holds private
/// keys: storages keep it private (a 0600 file) or sealed (PostgreSQL). `Debug` shows no key.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyState {
    /// The identity of this store: random, made with it, published in the bundle so verifiers
    /// can tell a new store (after a disaster) from a rollback of this one. Empty in files
    /// written before epochs existed; one is assigned on load.
    #[serde(default)]
    pub(crate) epoch: String,
    /// The bundle's `spiffe_sequence`: incremented on every change of the published keys.
    pub(crate) sequence: u64,
    pub(crate) keys: Vec<StoredKey>,
    /// The WIC certificate authority (certificate and key, PEM), made on first start.
    #[serde(default)]
    pub(crate) wic_ca: Option<(String, String)>,
    /// Epochs this store replaced (most recent last, at most [`REPLACED_EPOCHS`]): a replica
    /// that finds one of them stored again treats it as a rollback, not as a new store.
    #[serde(default)]
    pub(crate) replaced: Vec<String>,
}

/// How many replaced epochs a store remembers.
const REPLACED_EPOCHS: usize = 16;

/// How [`reconcile`] arrived at the state to keep, for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reconciled {
    /// What is stored (or nothing changed).
    Stored,
    /// Nothing was stored and this replica had nothing: a new store.
    Created,
    /// Nothing was stored but this replica had keys: the store was lost; written back.
    Restored,
    /// The stored state is another store (a new epoch): followed.
    Replaced { old_epoch: String },
    /// The stored state is older than this replica's, or diverged from it (same epoch; a key
    /// this replica has is missing although no replica could have retired it yet): the union
    /// of both key sets is written back with a higher sequence, so no published key is lost and
    /// verifiers never see the sequence go backwards. Not a key another replica retired.
    Merged { stored_sequence: u64 },
    /// A store this one replaced came back (a restored backup): this replica's is written back.
    RollbackRefused { stale_epoch: String },
}

/// How far another replica's clock may run ahead of this one's when it retires a key: a key
/// whose retirement is due within this by this replica's clock was retired, not lost.
const PEER_CLOCK_SKEW: u64 = 60;

/// Whether `key`, missing from `stored`, was retired there by the rule of [`KeyState::maintain`]
/// (a later key of `stored` has been active longer than anything `key` signed can live), as
/// another replica applies it at `now` give or take [`PEER_CLOCK_SKEW`].
fn retired_in(stored: &KeyState, key: &StoredKey, now: u64, policy: &RotationPolicy) -> bool {
    stored.keys.iter().any(|later| {
        later.active_from > key.active_from
            && now.saturating_add(PEER_CLOCK_SKEW) >= later.active_from.saturating_add(policy.longest_lifetime)
    })
}

/// Chooses the state to keep from what is `stored` and what this replica has (`ours`, empty
/// before the first load), at `now` under `policy` (which tells a key another replica retired
/// from a key lost by a stale write).
pub(crate) fn reconcile(
    stored: Option<KeyState>,
    ours: &KeyState,
    now: u64,
    policy: &RotationPolicy,
) -> Result<(KeyState, Reconciled)> {
    let ours_known = !ours.epoch.is_empty();
    let Some(stored) = stored else {
        if ours.keys.is_empty() {
            return Ok((KeyState::new(), Reconciled::Created));
        }
        let mut restored = ours.clone();
        restored.sequence += 1;
        return Ok((restored, Reconciled::Restored));
    };
    let stored = stored.checked()?;
    if !ours_known || stored == *ours {
        return Ok((stored, Reconciled::Stored));
    }
    if stored.epoch != ours.epoch {
        if ours.replaced.contains(&stored.epoch) {
            let mut kept = ours.clone();
            kept.sequence = kept.sequence.max(stored.sequence) + 1;
            return Ok((kept, Reconciled::RollbackRefused { stale_epoch: stored.epoch }));
        }
        let old_epoch = ours.epoch.clone();
        return Ok((stored, Reconciled::Replaced { old_epoch }));
    }
    let missing: Vec<&StoredKey> =
        ours.keys.iter().filter(|k| !stored.keys.iter().any(|s| s.jwk.kid == k.jwk.kid)).collect();
    // Newer, and every key it lacks was retired on time by another replica: routine progress.
    // (A key missing for any other reason is a stale write or a divergence, merged below.)
    if stored.sequence > ours.sequence && missing.iter().all(|k| retired_in(&stored, k, now, policy)) {
        return Ok((stored, Reconciled::Stored));
    }
    // Older than ours, or as new but different (two replicas wrote back diverging states):
    // keep every key either side published.
    let stored_sequence = stored.sequence;
    let mut merged = stored;
    // A key both hold signs from the earlier of their times: an operator's activation (or a
    // timer key's start) is never undone by an older copy that still has the key waiting.
    for key in &mut merged.keys {
        if let Some(theirs) = ours.keys.iter().find(|k| k.jwk.kid == key.jwk.kid) {
            key.active_from = key.active_from.min(theirs.active_from);
        }
    }
    merged.keys.extend(missing.into_iter().cloned());
    merged.keys.sort_by_key(|k| k.active_from);
    merged.wic_ca = merged.wic_ca.or_else(|| ours.wic_ca.clone());
    merged.sequence = merged.sequence.max(ours.sequence) + 1;
    Ok((merged, Reconciled::Merged { stored_sequence }))
}

impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyState")
            .field("epoch", &self.epoch)
            .field("sequence", &self.sequence)
            .field("key_ids", &self.keys.iter().map(|k| k.jwk.kid.as_deref().unwrap_or("")).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// How keys rotate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RotationPolicy {
    pub(crate) algorithm: Algorithm,
    pub(crate) rotation_period: u64,
    /// How long before it signs a new key is published (two refresh hints).
    pub(crate) prepublish: u64,
    /// The longest lifetime of anything a key signs: it is kept that long after its successor
    /// became active.
    pub(crate) longest_lifetime: u64,
}

/// What [`KeyState::maintain`] changed, for the logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) created: Vec<(String, u64)>,
    pub(crate) retired: Vec<String>,
    pub(crate) wic_authority_created: bool,
}

impl Changes {
    #[cfg(test)]
    pub(crate) fn any(&self) -> bool {
        !self.created.is_empty() || !self.retired.is_empty() || self.wic_authority_created
    }
}

/// 128 random bits as hex.
pub(crate) fn random_id() -> String {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::with_detail(ErrorKind::KeyStoreUnavailable, format!("key store: {e}"))
}

impl KeyState {
    /// A new, empty store with a fresh epoch.
    pub(crate) fn new() -> Self {
        Self { epoch: random_id(), ..Self::default() }
    }

    /// A new, empty store that replaces `old` (on purpose: after a compromise, or to drop every
    /// key at once): a fresh epoch, `old`'s epoch remembered as replaced.
    pub(crate) fn replacing(old: Option<&KeyState>) -> Self {
        let mut replaced = old.map(|o| o.replaced.clone()).unwrap_or_default();
        if let Some(old) = old.filter(|o| !o.epoch.is_empty()) {
            replaced.push(old.epoch.clone());
        }
        let excess = replaced.len().saturating_sub(REPLACED_EPOCHS);
        replaced.drain(..excess);
        Self { replaced, ..Self::new() }
    }

    /// This store's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The bundle sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The key ids, oldest first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.jwk.kid.as_deref())
    }

    /// Checks every key parses; gives an epoch to a store written before epochs existed.
    pub(crate) fn checked(mut self) -> Result<Self> {
        for key in &self.keys {
            SigningKey::from_jwk(&key.jwk).map_err(store_error)?;
        }
        if self.epoch.is_empty() {
            self.epoch = random_id();
        }
        Ok(self)
    }

    /// Publishes the next signing key when the active one is due for rotation, drops keys
    /// nothing signed by them can still need, and makes the WIC authority if there is none.
    /// Deterministic in the state and `now` (except for the new key itself), so replicas that
    /// apply it to the same state under one lock agree on whether anything is due.
    pub(crate) fn maintain(&mut self, now: u64, policy: &RotationPolicy, domain: &TrustDomain) -> Result<Changes> {
        let mut changes = Changes::default();
        let active_from = self.keys.iter().map(|k| k.active_from).filter(|&t| t <= now).max();
        let pending = self.keys.iter().any(|k| k.active_from > now);
        let due = match active_from {
            // No key yet (a new store): it signs at once; verifiers accept a new epoch's keys.
            None if !pending => Some(now),
            Some(from)
                if !pending && now.saturating_add(policy.prepublish) >= from.saturating_add(policy.rotation_period) =>
            {
                Some(now.saturating_add(policy.prepublish).max(from.saturating_add(1)))
            }
            _ => None,
        };
        if let Some(active_from) = due {
            changes.created.push((self.add_key(now, active_from, policy)?, active_from));
        }
        // A key is retired once a later key has been active for longer than anything it signed
        // can live.
        let activations: Vec<u64> = self.keys.iter().map(|k| k.active_from).collect();
        self.keys.retain(|k| {
            let retire = activations.iter().any(|&later| {
                later > k.active_from && later <= now && now >= later.saturating_add(policy.longest_lifetime)
            });
            if retire {
                changes.retired.push(k.jwk.kid.clone().unwrap_or_default());
            }
            !retire
        });
        if self.wic_ca.is_none() {
            let ca = wimse_core::protocol::wic::WicAuthority::new(domain.clone(), now, 10 * 365 * 86_400)?;
            self.wic_ca = Some(ca.to_pem());
            changes.wic_authority_created = true;
        }
        if !changes.created.is_empty() || !changes.retired.is_empty() {
            self.sequence += 1;
        }
        Ok(changes)
    }

    /// The public keys, as bundle entries.
    /// A new signing key, created at `now`, signing from `active_from`. Its id.
    fn add_key(&mut self, now: u64, active_from: u64, policy: &RotationPolicy) -> Result<String> {
        let kid = format!("{}-{now}-{}", policy.algorithm, &random_id()[..8]);
        let key = SigningKey::generate(policy.algorithm)?.with_kid(kid.clone());
        self.keys.push(StoredKey { created: now, active_from, jwk: key.to_private_jwk() });
        Ok(kid)
    }

    /// The key that waits to sign (prepared, or made by a timer rotation ahead of its time).
    fn pending(&self, now: u64) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.active_from > now)
    }

    /// The first step of an on-demand rotation: a new key, published from now on, that does not
    /// sign until [`activate`](Self::activate). Refused while another key waits. Its id.
    pub(crate) fn prepare(&mut self, now: u64, policy: &RotationPolicy) -> Result<String> {
        if let Some(waiting) = self.pending(now) {
            return Err(lifecycle_refused(format!(
                "key {} already waits to sign ({}): activate it first",
                waiting.jwk.kid.as_deref().unwrap_or(""),
                describe_activation(waiting.active_from)
            )));
        }
        let kid = self.add_key(now, PREPARED, policy)?;
        self.sequence += 1;
        Ok(kid)
    }

    /// The second step: the waiting key signs from `now` on. Refused when none waits, or when it
    /// has been published for less than the pre-publication time (two refresh hints: verifiers
    /// that refresh on the hint may not have it yet) unless `force`. Its id.
    pub(crate) fn activate(&mut self, now: u64, policy: &RotationPolicy, force: bool) -> Result<String> {
        let Some(waiting) = self.keys.iter_mut().find(|k| k.active_from > now) else {
            return Err(lifecycle_refused("no key waits to be activated: prepare one first"));
        };
        let published_for = now.saturating_sub(waiting.created);
        if published_for < policy.prepublish && !force {
            return Err(lifecycle_refused(format!(
                "key {} has been published for {published_for} s; verifiers that refresh on the hint have it after {} s (two refresh hints): activate it then, or force it",
                waiting.jwk.kid.as_deref().unwrap_or(""),
                policy.prepublish
            )));
        }
        waiting.active_from = now;
        let kid = waiting.jwk.kid.clone().unwrap_or_default();
        self.sequence += 1;
        Ok(kid)
    }

    /// Every key and what it does at `now`, oldest first.
    pub fn key_statuses(&self, now: u64) -> Vec<KeyStatus> {
        let active = self.keys.iter().map(|k| k.active_from).filter(|&t| t <= now).max();
        let mut statuses: Vec<KeyStatus> = self
            .keys
            .iter()
            .map(|k| KeyStatus {
                kid: k.jwk.kid.clone().unwrap_or_default(),
                created: k.created,
                active_from: (k.active_from != PREPARED).then_some(k.active_from),
                role: match k.active_from {
                    PREPARED => KeyRole::Prepared,
                    from if from > now => KeyRole::Scheduled,
                    from if Some(from) == active => KeyRole::Active,
                    _ => KeyRole::Previous,
                },
            })
            .collect();
        // In the order they sign: a prepared key last.
        statuses.sort_by_key(|k| (k.active_from.unwrap_or(u64::MAX), k.created));
        statuses
    }

    pub(crate) fn public_keys(&self) -> Vec<Value> {
        self.keys
            .iter()
            .map(|k| {
                let mut public = serde_json::to_value(k.jwk.to_public()).unwrap_or(Value::Null);
                public["use"] = wimse_core::draft::SPIFFE_BUNDLE_WIT_USE.into();
                public
            })
            .collect()
    }
}

/// A [`KeyState`] with its keys parsed once, for signing on the request path.
/// `active_from` of a key an operator prepared: published, signing nothing until activated.
/// While it waits, timer rotation waits too (one waiting key at a time).
pub(crate) const PREPARED: u64 = u64::MAX;

fn lifecycle_refused(detail: impl Into<String>) -> Error {
    Error::with_detail(ErrorKind::KeyLifecycleRefused, detail.into())
}

fn describe_activation(active_from: u64) -> String {
    if active_from == PREPARED { "prepared".into() } else { format!("scheduled for {active_from}") }
}

/// What a signing key does now (`wimse issuer keys status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyStatus {
    /// Its key id, as in the bundle.
    pub kid: String,
    /// When it was made (and published), seconds since the epoch.
    pub created: u64,
    /// When it signs (or signed) from; `None` while prepared.
    pub active_from: Option<u64>,
    /// What it does now.
    pub role: KeyRole,
}

/// The role of a published signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// It signs new credentials.
    Active,
    /// Published, waiting for an operator to activate it.
    Prepared,
    /// Published, signing from its `active_from` on (a timer rotation ahead of its time).
    Scheduled,
    /// It signed before the active one; published until what it signed has expired.
    Previous,
}

#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) state: KeyState,
    signers: Vec<(u64, SigningKey)>,
    wic_authority: Option<wimse_core::protocol::wic::WicAuthority>,
}

impl Loaded {
    pub(crate) fn new(state: KeyState, domain: &TrustDomain) -> Result<Self> {
        let mut signers = Vec::with_capacity(state.keys.len());
        for key in &state.keys {
            signers.push((key.active_from, SigningKey::from_jwk(&key.jwk).map_err(store_error)?));
        }
        let wic_authority = match &state.wic_ca {
            Some((cert, key)) => Some(wimse_core::protocol::wic::WicAuthority::from_pem(domain.clone(), cert, key)?),
            None => None,
        };
        Ok(Self { state, signers, wic_authority })
    }

    /// The key that signs at `now`: the most recently activated one.
    pub(crate) fn active_key(&self, now: u64) -> Result<&SigningKey> {
        self.signers
            .iter()
            .filter(|(from, _)| *from <= now)
            .max_by_key(|(from, _)| *from)
            .map(|(_, key)| key)
            .ok_or_else(|| store_error("no active signing key"))
    }

    pub(crate) fn wic_authority(&self) -> Result<&wimse_core::protocol::wic::WicAuthority> {
        self.wic_authority.as_ref().ok_or_else(|| store_error("no WIC authority"))
    }
}

#[cfg(test)]
mod tests {
    use super::{KeyState, RotationPolicy};
    use wimse_core::jose::Algorithm;

    fn policy() -> RotationPolicy {
        RotationPolicy { algorithm: Algorithm::ES256, rotation_period: 1000, prepublish: 100, longest_lifetime: 300 }
    }

    #[test]
    fn rotation_prepublishes_and_retires_after_the_longest_lifetime() {
        let domain = "spiffe://prod.example".parse().unwrap();
        let mut state = KeyState::new();
        let changes = state.maintain(10_000, &policy(), &domain).unwrap();
        assert_eq!(changes.created.len(), 1);
        assert!(changes.wic_authority_created);
        assert_eq!(state.sequence, 1);
        assert!(!state.maintain(10_500, &policy(), &domain).unwrap().any(), "not due");
        // Due at 11_000: published at 10_900, signing from 11_000.
        let changes = state.maintain(10_900, &policy(), &domain).unwrap();
        assert_eq!(changes.created[0].1, 11_000);
        assert_eq!(state.keys.len(), 2);
        assert!(!state.maintain(10_950, &policy(), &domain).unwrap().any(), "one pending key at a time");
        // The old key stays until its last WIT expired: 11_000 + 300.
        assert!(!state.maintain(11_299, &policy(), &domain).unwrap().any());
        let changes = state.maintain(11_300, &policy(), &domain).unwrap();
        assert_eq!(changes.retired.len(), 1);
        assert_eq!(state.keys.len(), 1);
        assert_eq!(state.sequence, 3);
        let loaded = super::Loaded::new(state.clone(), &domain).unwrap();
        assert_eq!(loaded.active_key(11_300).unwrap().kid(), state.keys[0].jwk.kid.as_deref());
    }

    #[test]
    fn an_operator_rotation_prepares_then_activates_and_holds_the_timer() {
        use super::KeyRole::{Active, Prepared, Previous};
        use wimse_core::ErrorKind;
        let domain = "spiffe://prod.example".parse().unwrap();
        let mut state = KeyState::new();
        state.maintain(10_000, &policy(), &domain).unwrap();
        let first = state.keys[0].jwk.kid.clone().unwrap();
        let refused = |e: wimse_core::Error| assert_eq!(e.kind(), &ErrorKind::KeyLifecycleRefused);
        refused(state.activate(10_010, &policy(), true).unwrap_err());
        let prepared = state.prepare(10_010, &policy()).unwrap();
        assert_eq!(state.sequence, 2, "published: the bundle changes");
        refused(state.prepare(10_011, &policy()).unwrap_err());
        let roles = |state: &KeyState, now| state.key_statuses(now).into_iter().map(|k| k.role).collect::<Vec<_>>();
        assert_eq!(roles(&state, 10_011), [Active, Prepared]);
        // The timer does not rotate past a waiting key, and the first key keeps signing.
        assert!(!state.maintain(11_500, &policy(), &domain).unwrap().any());
        let loaded = super::Loaded::new(state.clone(), &domain).unwrap();
        assert_eq!(loaded.active_key(11_500).unwrap().kid(), Some(first.as_str()));
        // Published for less than the pre-publication time: only with force.
        let mut early = state.clone();
        refused(early.activate(10_109, &policy(), false).unwrap_err());
        assert_eq!(early.activate(10_109, &policy(), true).unwrap(), prepared);
        assert_eq!(state.activate(10_110, &policy(), false).unwrap(), prepared);
        assert_eq!(state.sequence, 3);
        assert_eq!(roles(&state, 10_110), [Previous, Active]);
        let loaded = super::Loaded::new(state.clone(), &domain).unwrap();
        assert_eq!(loaded.active_key(10_110).unwrap().kid(), Some(prepared.as_str()));
        // The previous key retires once what it signed has expired (longest lifetime 300).
        assert!(state.maintain(10_409, &policy(), &domain).unwrap().retired.is_empty());
        assert_eq!(state.maintain(10_410, &policy(), &domain).unwrap().retired, [first]);
    }

    #[test]
    fn old_files_get_an_epoch_and_debug_shows_no_key() {
        let domain = "spiffe://prod.example".parse().unwrap();
        let mut state = KeyState::new();
        state.maintain(1, &policy(), &domain).unwrap();
        let mut json = serde_json::to_value(&state).unwrap();
        json.as_object_mut().unwrap().remove("epoch");
        let old: KeyState = serde_json::from_value(json).unwrap();
        let upgraded = old.checked().unwrap();
        assert_eq!(upgraded.epoch.len(), 32);
        assert_ne!(upgraded.epoch, state.epoch);
        let shown = format!("{upgraded:?}");
        assert!(!shown.contains("\"d\"") && !shown.contains("PRIVATE"), "{shown}");
    }
}

#[cfg(test)]
mod reconcile_tests {
    use super::{KeyState, Reconciled, RotationPolicy, reconcile};
    use wimse_core::jose::Algorithm;

    fn policy() -> RotationPolicy {
        RotationPolicy { algorithm: Algorithm::ES256, rotation_period: 1000, prepublish: 100, longest_lifetime: 300 }
    }

    fn kids(state: &KeyState) -> Vec<String> {
        state.key_ids().map(str::to_owned).collect()
    }

    #[test]
    fn replicas_never_go_backwards_nor_lose_a_published_key() {
        let domain = "spiffe://prod.example".parse().unwrap();
        let mut a = KeyState::new();
        a.maintain(10_000, &policy(), &domain).unwrap();
        let b = a.clone(); // replica B, one step behind
        a.maintain(10_900, &policy(), &domain).unwrap(); // A published the next key (seq 2)
        assert_eq!(a.sequence, 2);

        // First load: whatever is stored.
        assert_eq!(reconcile(Some(a.clone()), &KeyState::default(), 10_901, &policy()).unwrap().1, Reconciled::Stored);
        // Normal progress: B follows A.
        let (kept, how) = reconcile(Some(a.clone()), &b, 10_901, &policy()).unwrap();
        assert_eq!((kids(&kept), how), (kids(&a), Reconciled::Stored));
        // A stale write (B's older state stored again): A keeps its keys, at a higher sequence.
        let (kept, how) = reconcile(Some(b.clone()), &a, 10_901, &policy()).unwrap();
        assert_eq!(how, Reconciled::Merged { stored_sequence: 1 });
        assert_eq!(kids(&kept), kids(&a));
        assert_eq!(kept.sequence, 3);
        // Diverged at the same sequence (B restored after a loss and rotated on its own).
        let mut diverged = b.clone();
        diverged.maintain(10_901, &policy(), &domain).unwrap();
        assert_eq!(diverged.sequence, a.sequence);
        let (kept, how) = reconcile(Some(diverged.clone()), &a, 10_901, &policy()).unwrap();
        assert!(matches!(how, Reconciled::Merged { .. }));
        assert_eq!(kept.keys.len(), 3, "both pending keys kept");
        assert!(kept.sequence > a.sequence);
        // Lost: written back above anything published.
        let (kept, how) = reconcile(None, &a, 10_901, &policy()).unwrap();
        assert_eq!((how, kept.sequence, kept.epoch.clone()), (Reconciled::Restored, 3, a.epoch.clone()));
        assert_eq!(reconcile(None, &KeyState::default(), 10_901, &policy()).unwrap().1, Reconciled::Created);
    }

    #[test]
    fn an_activation_survives_an_older_copy_of_the_prepared_key() {
        let domain = "spiffe://prod.example".parse().unwrap();
        let mut state = KeyState::new();
        state.maintain(10_000, &policy(), &domain).unwrap();
        let prepared = state.prepare(10_010, &policy()).unwrap();
        let snapshot = state.clone(); // taken between prepare and activate
        state.activate(10_200, &policy(), false).unwrap();
        // The snapshot restored under a replica that saw the activation: written back merged,
        // the key still active from 10 200.
        let (kept, how) = reconcile(Some(snapshot), &state, 10_300, &policy()).unwrap();
        assert!(matches!(how, Reconciled::Merged { .. }));
        let key = kept.keys.iter().find(|k| k.jwk.kid.as_deref() == Some(prepared.as_str())).unwrap();
        assert_eq!(key.active_from, 10_200);
        assert!(kept.sequence > state.sequence);
    }

    #[test]
    fn a_replaced_store_is_followed_and_cannot_come_back() {
        let domain = "spiffe://prod.example".parse().unwrap();
        let mut old = KeyState::new();
        old.maintain(10_000, &policy(), &domain).unwrap();
        let mut new = KeyState::replacing(Some(&old));
        new.maintain(10_010, &policy(), &domain).unwrap();
        assert_ne!(new.epoch, old.epoch);
        assert!(kids(&new).iter().all(|k| !kids(&old).contains(k)), "every key is new");
        assert_ne!(new.wic_ca, old.wic_ca, "the WIC authority too");
        // A replica on the old store follows the new one.
        let (kept, how) = reconcile(Some(new.clone()), &old, 10_901, &policy()).unwrap();
        assert_eq!(how, Reconciled::Replaced { old_epoch: old.epoch.clone() });
        assert_eq!(kept, new);
        // The old store restored from a backup is refused.
        let (kept, how) = reconcile(Some(old.clone()), &new, 10_901, &policy()).unwrap();
        assert_eq!(how, Reconciled::RollbackRefused { stale_epoch: old.epoch.clone() });
        assert_eq!(kids(&kept), kids(&new));
        let mut chain = new.clone();
        for _ in 0..40 {
            chain = KeyState::replacing(Some(&chain));
        }
        assert_eq!(chain.replaced.len(), 16, "bounded");
    }

    /// Another replica's routine retirement is followed as it is (no merge, no write-back, the
    /// sequence as that replica left it); a key missing before anyone could retire it is still
    /// a divergence.
    #[test]
    fn a_peer_retirement_is_not_a_divergence() {
        let domain = "spiffe://prod.example".parse().unwrap();
        let mut a = KeyState::new();
        a.maintain(10_000, &policy(), &domain).unwrap();
        a.maintain(10_900, &policy(), &domain).unwrap(); // the next key, active from 11_000
        let b = a.clone();
        // A retires the first key at 11_300 (11_000 + the longest lifetime).
        let changes = a.maintain(11_300, &policy(), &domain).unwrap();
        assert_eq!((changes.retired.len(), a.sequence), (1, 3));
        for b_now in [11_300, 11_301, 11_240, 11_400] {
            let (kept, how) = reconcile(Some(a.clone()), &b, b_now, &policy()).unwrap();
            assert_eq!((how, kept.sequence), (Reconciled::Stored, 3), "B at {b_now}");
            assert_eq!(kept, a);
            // B's own maintenance then has nothing left to do: nothing is written back.
            let mut next = kept.clone();
            assert!(!next.maintain(b_now, &policy(), &domain).unwrap().any());
            assert_eq!(next, a);
        }
        // Long before the key was due (B's clock more than a minute behind, or a store that
        // lost the key): not a retirement.
        let (kept, how) = reconcile(Some(a.clone()), &b, 11_239, &policy()).unwrap();
        assert_eq!(how, Reconciled::Merged { stored_sequence: 3 });
        assert_eq!(kids(&kept), kids(&b), "the missing key is kept");
        // A newer store that lost a key nobody retired (the active one): a divergence.
        let mut lost = b.clone();
        lost.keys.remove(1);
        lost.sequence = 5;
        let (kept, how) = reconcile(Some(lost), &b, 11_300, &policy()).unwrap();
        assert_eq!(how, Reconciled::Merged { stored_sequence: 5 });
        assert_eq!(kids(&kept), kids(&b));
        // A stale backup restored under A (older, with the retired key): still refused.
        let (kept, how) = reconcile(Some(b.clone()), &a, 11_300, &policy()).unwrap();
        assert_eq!(how, Reconciled::Merged { stored_sequence: 2 });
        assert!(kept.sequence > a.sequence);
    }
}
