//! Trust anchors: which issuer keys may sign WITs for which trust domain.
//!
//! Keys are configured out of band, per trust domain, and are never taken from a token (no `jku`,
//! `x5u`, `jwk` header, or `iss`-derived URL is ever followed). A trust domain can hold several
//! keys at once, which is how issuer keys rotate: add the new key, then remove the old one after
//! the last WIT signed by it has expired.

use std::collections::HashMap;

use serde_json::Value;

use crate::draft::SPIFFE_BUNDLE_WIT_USE;
use crate::error::{Error, ErrorKind, Result};
use crate::id::TrustDomain;
use crate::jose::{Algorithm, Jwk, PublicKey, json};

/// Issuer algorithms accepted by default: the ones the drafts and SPIFFE name for issuers.
pub const DEFAULT_ISSUER_ALGORITHMS: [Algorithm; 5] =
    [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256];

/// The anchors of one trust domain: its issuer keys and the algorithms they may sign with.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    keys: Vec<PublicKey>,
    algorithms: Vec<Algorithm>,
    valid_until: Option<u64>,
}

impl Default for TrustAnchors {
    fn default() -> Self {
        Self { keys: Vec::new(), algorithms: DEFAULT_ISSUER_ALGORITHMS.to_vec(), valid_until: None }
    }
}

/// The SPIFFE bundle member in which a WIMSE identity server names its key store (a random
/// identifier made with the store): verifiers accept a new store's keys after a disaster, and
/// refuse a replaced store's return. A JWK Set member other consumers ignore (RFC 7517 §5).
pub const STORE_EPOCH_MEMBER: &str = "wimse_key_store_epoch";

/// Whether a JWK `use` value names a SPIFFE SVID type (SPIFFE bundle §4.2.2, WIT-SVID §6.1).
fn is_svid_use(key_use: &str) -> bool {
    matches!(key_use, "x509-svid" | "jwt-svid") || key_use == SPIFFE_BUNDLE_WIT_USE
}

/// Reads a UTF-8 file of at most `cap` bytes.
fn read_bounded(path: &std::path::Path, cap: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?.take(cap + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {cap} bytes")));
    }
    Ok(text)
}

fn config_error(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, detail)
}

impl TrustAnchors {
    /// No keys yet, default algorithm allowlist.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an issuer key.
    pub fn key(mut self, key: PublicKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Replaces the algorithm allowlist for this trust domain.
    pub fn with_algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// Reads a JWKS (`{"keys":[…]}`). Keys of unsupported types are skipped; a key with private
    /// members, or a set with no usable key, is a configuration error.
    pub fn from_jwks_json(json: &str) -> Result<Self> {
        Self::from_key_set(json, |_| true)
    }

    /// Reads a SPIFFE trust bundle (a JWKS with `use` per key) and keeps the WIT signing keys
    /// (`use` = `wit-svid`, WIT-SVID profile §6.2): keys for other SVID types (`jwt-svid`,
    /// `x509-svid`), with an unknown `use` or none are ignored, and a bundle with no `wit-svid`
    /// key is an error (its trust domain does not support WIT-SVIDs).
    pub fn from_spiffe_bundle_json(json: &str) -> Result<Self> {
        Self::from_key_set(json, |jwk| jwk.key_use.as_deref() == Some(SPIFFE_BUNDLE_WIT_USE))
    }

    /// Reads trust anchors in any of the forms they are published in: one public JWK (what
    /// `wimse key public` writes), a JWKS, or a SPIFFE trust bundle (recognised by its
    /// `spiffe_sequence` / `spiffe_refresh_hint` members or by keys whose `use` names an SVID
    /// type: `wit-svid`, `jwt-svid`, `x509-svid`; only `wit-svid` keys are kept, as the WIT-SVID
    /// profile §6.2 asks). Private key material is refused in every form.
    ///
    /// ```
    /// use wimse_core::jose::{Algorithm, SigningKey};
    /// use wimse_core::protocol::trust::TrustAnchors;
    ///
    /// let issuer = SigningKey::generate(Algorithm::ES256)?.with_kid("issuer-1");
    /// let one_jwk = serde_json::to_string(&issuer.public_jwk())?;
    /// assert_eq!(TrustAnchors::from_json(&one_jwk)?.keys().len(), 1);
    /// let jwks = format!(r#"{{"keys":[{one_jwk}]}}"#);
    /// assert_eq!(TrustAnchors::from_json(&jwks)?.keys().len(), 1);
    /// let private = serde_json::to_string(&issuer.to_private_jwk())?;
    /// assert!(TrustAnchors::from_json(&private).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        let map = json::parse_object(text.as_bytes()).map_err(|e| config_error(format!("trust anchors: {e}")))?;
        match map.get("keys") {
            Some(Value::Array(entries)) => {
                // A key typed for any SVID marks a SPIFFE bundle (its `spiffe_*` members are
                // optional): its JWT-SVID and X.509-SVID authorities are never WIT anchors.
                let spiffe = map.contains_key("spiffe_sequence")
                    || map.contains_key("spiffe_refresh_hint")
                    || entries.iter().any(|e| e.get("use").and_then(Value::as_str).is_some_and(is_svid_use));
                if spiffe { Self::from_spiffe_bundle_json(text) } else { Self::from_jwks_json(text) }
            }
            Some(_) => Err(config_error("trust anchors: `keys` is not an array")),
            None if map.contains_key("kty") => {
                let jwk = Jwk::from_json(text).map_err(|e| config_error(format!("trust anchor JWK: {e}")))?;
                if jwk.has_private_members() {
                    return Err(config_error("a trust anchor must not contain private key material"));
                }
                let key = PublicKey::from_jwk(&jwk).map_err(|e| config_error(format!("trust anchor JWK: {e}")))?;
                Ok(Self::new().key(key))
            }
            None => Err(config_error("trust anchors: neither a JWK, a JWKS nor a SPIFFE bundle")),
        }
    }

    /// Reads trust anchors from a file holding a JWK, a JWKS or a SPIFFE bundle (see
    /// [`from_json`](Self::from_json)). Errors name the file. At most 1 MiB is read.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let named = |e: String| config_error(format!("{}: {e}", path.display()));
        let text = read_bounded(path, 1 << 20).map_err(|e| named(e.to_string()))?;
        Self::from_json(&text)
            .map_err(|e| named(e.detail().map_or_else(|| e.kind().description().into_owned(), str::to_owned)))
    }

    fn from_key_set(text: &str, keep: impl Fn(&Jwk) -> bool) -> Result<Self> {
        let map = json::parse_object(text.as_bytes()).map_err(|e| config_error(format!("key set: {e}")))?;
        let Some(Value::Array(entries)) = map.get("keys") else {
            return Err(config_error("key set has no `keys` array"));
        };
        let mut anchors = Self::new();
        for entry in entries {
            let jwk = Jwk::from_value(entry.clone()).map_err(|e| config_error(format!("key set entry: {e}")))?;
            if jwk.has_private_members() {
                return Err(config_error("a trust anchor must not contain private key material"));
            }
            if !keep(&jwk) {
                continue;
            }
            match PublicKey::from_jwk(&jwk) {
                Ok(key) => anchors.keys.push(key),
                Err(e) => tracing::warn!(kid = jwk.kid.as_deref(), error = %e, "skipping unusable trust anchor key"),
            }
        }
        if anchors.keys.is_empty() {
            return Err(config_error("key set has no usable key"));
        }
        Ok(anchors)
    }

    /// Marks the anchors as usable until `when` (seconds since the epoch): a fetched bundle
    /// that could not be refreshed goes stale, and verification then answers 503 rather than
    /// trusting keys indefinitely.
    pub fn with_valid_until(mut self, when: u64) -> Self {
        self.valid_until = Some(when);
        self
    }

    /// Until when the anchors may be used, if limited.
    pub fn valid_until(&self) -> Option<u64> {
        self.valid_until
    }

    /// Whether the anchors can verify anything at `now` (have keys, and are not stale).
    pub fn usable_at(&self, now: u64) -> bool {
        !self.keys.is_empty() && self.valid_until.is_none_or(|until| now < until)
    }

    /// The keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The algorithm allowlist.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Chooses the key for a token signed with `alg` and carrying `kid` (creds §3): with `kid`,
    /// the key with that exact id; without, the only key that accepts `alg`.
    /// Fails when `alg` is not allowed, or when no key or more than one key fits.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&PublicKey> {
        if !self.algorithms.contains(&alg) {
            return Err(Error::with_detail(ErrorKind::DisallowedAlgorithm, format!("alg {alg}")));
        }
        let mut candidates = self.keys.iter().filter(|k| k.accepts(alg) && (kid.is_none() || k.kid() == kid));
        match (candidates.next(), candidates.next()) {
            (Some(key), None) => Ok(key),
            (None, _) => Err(Error::with_detail(ErrorKind::UnknownKey, "no anchor key matches kid and alg")),
            (Some(_), Some(_)) => {
                Err(Error::with_detail(ErrorKind::UnknownKey, "ambiguous anchor key (several match)"))
            }
        }
    }
}

/// A shared, updatable [`TrustStore`]: what a [`Verifier`](crate::server::verify::Verifier) reads on
/// every request and a bundle fetcher replaces in the background. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TrustHandle {
    store: std::sync::Arc<std::sync::RwLock<TrustStore>>,
    wanted: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<TrustDomain>>>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl TrustHandle {
    /// A handle on `store`.
    pub fn new(store: TrustStore) -> Self {
        Self {
            store: std::sync::Arc::new(std::sync::RwLock::new(store)),
            wanted: Default::default(),
            generation: Default::default(),
        }
    }

    /// Replaces the anchors of `domain` (new requests use them, and cached WIT validations
    /// are dropped).
    pub fn set(&self, domain: TrustDomain, anchors: TrustAnchors) {
        if let Ok(mut store) = self.store.write() {
            store.insert(domain, anchors);
            self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Stops trusting `domain`.
    pub fn remove(&self, domain: &TrustDomain) {
        if let Ok(mut store) = self.store.write() {
            store.remove(domain);
            self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A number that changes whenever the anchors change (cache invalidation).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs `f` on the current store.
    pub fn read<T>(&self, f: impl FnOnce(&TrustStore) -> T) -> T {
        match self.store.read() {
            Ok(store) => f(&store),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Asks the fetcher of `domain` to refresh soon (a token named a key it does not have).
    pub fn request_refresh(&self, domain: &TrustDomain) {
        if let Ok(mut wanted) = self.wanted.lock() {
            wanted.insert(domain.clone());
        }
    }

    /// Whether a refresh of `domain` was asked for since the last call (clears the request).
    pub fn take_refresh_request(&self, domain: &TrustDomain) -> bool {
        self.wanted.lock().map(|mut wanted| wanted.remove(domain)).unwrap_or(false)
    }
}

/// Trust anchors for every trusted trust domain. A trust domain that is not here is not trusted.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    domains: HashMap<TrustDomain, TrustAnchors>,
}

impl TrustStore {
    /// An empty store (trusts nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the anchors of `domain`, replacing any before.
    pub fn insert(&mut self, domain: TrustDomain, anchors: TrustAnchors) {
        self.domains.insert(domain, anchors);
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, domain: TrustDomain, anchors: TrustAnchors) -> Self {
        self.insert(domain, anchors);
        self
    }

    /// Adds one key to `domain`, creating the domain's anchors if needed.
    pub fn add_key(&mut self, domain: TrustDomain, key: PublicKey) {
        let anchors = self.domains.remove(&domain).unwrap_or_default();
        self.domains.insert(domain, anchors.key(key));
    }

    /// Removes a trust domain.
    pub fn remove(&mut self, domain: &TrustDomain) -> Option<TrustAnchors> {
        self.domains.remove(domain)
    }

    /// The anchors of `domain`.
    pub fn get(&self, domain: &TrustDomain) -> Option<&TrustAnchors> {
        self.domains.get(domain)
    }

    /// Every trusted trust domain and its anchors.
    pub fn domains(&self) -> impl Iterator<Item = (&TrustDomain, &TrustAnchors)> {
        self.domains.iter()
    }

    /// Number of trusted trust domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// Whether no trust domain is trusted.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::SigningKey;

    fn key_json(kid: &str, key_use: Option<&str>) -> (SigningKey, String) {
        let key = SigningKey::generate(Algorithm::ES256).unwrap().with_kid(kid);
        let mut jwk = key.public_jwk().clone();
        jwk.key_use = key_use.map(str::to_owned);
        (key, jwk.to_json())
    }

    #[test]
    fn jwks_and_spiffe_bundles() {
        let (_, a) = key_json("a", Some("wit-svid"));
        let (_, b) = key_json("b", Some("x509-svid"));
        let unsupported = r#"{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}"#;
        let set = format!(r#"{{"keys":[{a},{b},{unsupported}],"spiffe_sequence":3}}"#);
        let jwks = TrustAnchors::from_jwks_json(&set).unwrap();
        assert_eq!(jwks.keys().len(), 2, "unsupported key types are skipped");
        let bundle = TrustAnchors::from_spiffe_bundle_json(&set).unwrap();
        assert_eq!(bundle.keys().iter().map(|k| k.kid()).collect::<Vec<_>>(), [Some("a")]);
        assert_eq!(bundle.algorithms(), DEFAULT_ISSUER_ALGORITHMS);
    }

    /// WIT-SVID profile §6.2: only `wit-svid` keys of a SPIFFE bundle are WIT anchors, whether
    /// or not the bundle has its optional `spiffe_*` members.
    #[test]
    fn spiffe_bundles_give_only_their_wit_svid_keys() {
        let (_, wit) = key_json("wit", Some("wit-svid"));
        let (_, jwt) = key_json("jwt", Some("jwt-svid"));
        let (_, x509) = key_json("x509", Some("x509-svid"));
        let (_, unknown) = key_json("unknown", Some("wit-svid-v2"));
        let (_, untyped) = key_json("untyped", None);
        let kids =
            |anchors: TrustAnchors| anchors.keys().iter().map(|k| k.kid().unwrap().to_owned()).collect::<Vec<_>>();
        for members in ["", r#","spiffe_sequence":7"#, r#","spiffe_refresh_hint":300"#] {
            let all = format!(r#"{{"keys":[{jwt},{x509},{unknown},{untyped},{wit}]{members}}}"#);
            assert_eq!(kids(TrustAnchors::from_spiffe_bundle_json(&all).unwrap()), ["wit"], "{members}");
            assert_eq!(kids(TrustAnchors::from_json(&all).unwrap()), ["wit"], "{members}");
            // A bundle without WIT-SVID keys gives no anchors, not its JWT-SVID or X.509 keys.
            for others in [jwt.clone(), format!("{x509},{jwt}"), format!("{jwt},{unknown},{untyped}")] {
                let bundle = format!(r#"{{"keys":[{others}]{members}}}"#);
                let err = TrustAnchors::from_json(&bundle).unwrap_err();
                assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration, "{bundle}");
                assert!(err.detail().unwrap().contains("no usable key"), "{err:?}");
                assert!(TrustAnchors::from_spiffe_bundle_json(&bundle).is_err());
            }
        }
        // A plain JWKS (keys without `use`, or RFC 7517's `sig`) is not a SPIFFE bundle.
        let (_, sig) = key_json("sig", Some("sig"));
        assert_eq!(
            kids(TrustAnchors::from_json(&format!(r#"{{"keys":[{sig},{untyped}]}}"#)).unwrap()),
            ["sig", "untyped"]
        );
    }

    #[test]
    fn bad_key_sets_are_configuration_errors() {
        let private = SigningKey::generate(Algorithm::ES256).unwrap().to_private_jwk().to_json();
        for text in [format!(r#"{{"keys":[{private}]}}"#), "{}".into(), r#"{"keys":[]}"#.into(), "[".into()] {
            let err = TrustAnchors::from_jwks_json(&text).unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration, "{text:.40}");
        }
    }

    #[test]
    fn store_add_and_remove() {
        let domain: TrustDomain = "spiffe://a.example".parse().unwrap();
        let mut store = TrustStore::new();
        assert!(store.is_empty());
        let (k1, _) = key_json("1", None);
        let (k2, _) = key_json("2", None);
        store.add_key(domain.clone(), k1.public_key().clone());
        store.add_key(domain.clone(), k2.public_key().clone());
        assert_eq!(store.len(), 1);
        let anchors = store.get(&domain).unwrap();
        assert_eq!(anchors.select(Some("2"), Algorithm::ES256).unwrap().kid(), Some("2"));
        assert_eq!(anchors.select(None, Algorithm::ES256).unwrap_err().kind(), &ErrorKind::UnknownKey);
        assert_eq!(anchors.select(Some("2"), Algorithm::ES384).unwrap_err().kind(), &ErrorKind::UnknownKey);
        assert!(store.remove(&domain).is_some());
        assert!(store.get(&domain).is_none());
    }
}
