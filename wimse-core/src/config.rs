//! Configuration as data: a verifier, a policy and a credential source from a JSON or TOML file
//! (feature `toml`) and `WIMSE_*` environment variables, so operators change an audience or a
//! trust bundle path without changing code. Errors name the field.
//!
//! ```toml
//! [verifier]
//! origins = ["https://payments.example"]        # or audiences = ["urn:svc:payments"]
//! leeway = 30                                    # seconds, at most 300
//! proofs = "both"                                # "wpt", "http-signature" or "both"
//!
//! [[verifier.trust]]
//! trust_domain = "spiffe://prod.example"
//! file = "/etc/wimse/prod.example.bundle.json"    # a JWK, a JWKS or a SPIFFE bundle
//!
//! [[verifier.trust]]                             # or follow an identity server's bundle
//! trust_domain = "spiffe://partner.example"       # (wimse_reqwest::verifier_from_settings)
//! bundle_url = "https://issuer.partner.example/v1/bundle/spiffe"
//!
//! [policy]
//! name = "payments"
//! allow = { workloads = ["spiffe://prod.example/orders"], prefixes = ["spiffe://prod.example/batch"] }
//! deny = { workloads = ["spiffe://prod.example/batch/legacy"] }
//!
//! [credentials]
//! wit_file = "/run/wimse/wit.jwt"
//! key_file = "/run/wimse/key.jwk"
//!
//! [audit]                                        # a tamper-evident log of every decision
//! file = "/var/log/wimse/payments.audit.jsonl"
//! service = "spiffe://prod.example/payments"
//! key = "/etc/wimse/audit.key.jwk"                # checkpoints are signed with it
//! checkpoint_every = 1000
//! when_full = "drop"                              # or "refuse" (503) when the writer is behind
//!
//! [signals]                                      # revocations from a Shared Signals transmitter
//! issuer = "https://ssf.prod.example"
//! audience = "https://payments.example"
//! jwks_file = "/etc/wimse/ssf-transmitter.jwks.json"
//! state_file = "/var/lib/wimse/revocations.json"  # kept across restarts
//! poll_url = "https://ssf.prod.example/poll/payments"   # polled by wimse_reqwest::signals_from_settings
//! poll_token_file = "/run/secrets/ssf-token"   # or poll_token_env = "SSF_POLL_TOKEN"
//! poll_interval = 5
//! ```
//!
//! Relative paths in a file (`verifier.trust[].file`, `verifier.txn_tokens.keys_file`,
//! `credentials.wit_file`, `credentials.key_file`, `audit.file`, `audit.key`, `signals.jwks_file`,
//! `signals.state_file`, `signals.poll_token_file`) are relative to the file's directory, so a
//! service finds them wherever it is started; paths from the environment or set in code are
//! relative to the working directory, as usual.
//!
//! Environment variables override the file (lists are comma-separated):
//!
//! | variable | field |
//! |---|---|
//! | `WIMSE_AUDIENCES` | `verifier.audiences` |
//! | `WIMSE_ORIGINS` | `verifier.origins` |
//! | `WIMSE_TRUST` | `verifier.trust`, as `spiffe://domain=/path/to/file,…` |
//! | `WIMSE_LEEWAY` | `verifier.leeway` |
//! | `WIMSE_PROOFS` | `verifier.proofs` |
//! | `WIMSE_REVEAL_REASONS` | `verifier.reveal_reasons` (`1`/`true` or `0`/`false`; development only) |
//! | `WIMSE_POLICY_ALLOW` | `policy.allow.workloads` |
//! | `WIMSE_WIT_FILE` | `credentials.wit_file` |
//! | `WIMSE_KEY_FILE` | `credentials.key_file` |
//!
//! ```
//! use wimse_core::config::Settings;
//!
//! let settings = Settings::from_json(r#"{"verifier": {"origins": ["https://payments.example"]},
//!                                        "policy": {"name": "payments", "allow": {"workloads": ["spiffe://prod.example/orders"]}}}"#)?
//!     .apply_env_from([("WIMSE_AUDIENCES", "urn:svc:payments")])?;
//! // `settings.verifier()` also reads the trust files; here there are none, so only the config:
//! assert_eq!(settings.verifier.config().audiences, ["urn:svc:payments"]);
//! let policy = settings.policy()?;
//! assert_eq!(policy.name(), "payments");
//! assert!(policy.allows_id(&"spiffe://prod.example/orders".parse()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::cred::FileCredentials;
use crate::error::{Error, ErrorKind, Result};
use crate::id::{TrustDomain, WorkloadId};
use crate::protocol::trust::{TrustAnchors, TrustHandle, TrustStore};
use crate::protocol::txn::TxnTokenValidation;
use crate::server::policy::{Policy, Rule};
use crate::server::verify::{Verifier, VerifierConfig};

fn invalid(field: impl std::fmt::Display, problem: impl std::fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("{field}: {problem}"))
}

/// Everything a service reads; each part is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How requests are verified.
    #[serde(default)]
    pub verifier: VerifierSettings,
    /// Who may call.
    #[serde(default)]
    pub policy: Option<PolicySettings>,
    /// This workload's own credentials, for the calls it makes.
    #[serde(default)]
    pub credentials: Option<CredentialSettings>,
    /// A tamper-evident audit log of every decision ([`crate::server::audit_log`]).
    #[serde(default)]
    pub audit: Option<AuditSettings>,
    /// Revocation and risk signals from a Shared Signals transmitter
    /// ([`crate::server::signals`]).
    #[serde(default)]
    pub signals: Option<SignalSettings>,
}

/// Revocation and risk signals from one Shared Signals transmitter: the SETs it sends (pushed
/// to a route of the service, or polled: `poll_url`) are validated with its keys and applied to
/// the revocations every request is checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSettings {
    /// The transmitter's `iss`.
    pub issuer: String,
    /// This receiver's `aud` (its stream's audience).
    pub audience: String,
    /// The transmitter's public keys: a JWK, a JWKS or a SPIFFE bundle file (never a key from a
    /// SET). Relative to the settings file.
    pub jwks_file: PathBuf,
    /// Where what the signals revoked is kept, so a restart does not readmit anyone
    /// (recommended). Relative to the settings file.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// The oldest SET accepted, in seconds (default 600; raise it to the transmitter's
    /// retention when polls may resume after a long outage).
    #[serde(default)]
    pub max_age: Option<u64>,
    /// How long a subject's entry is kept after its last event, in seconds (default 86 400:
    /// the longest credential lifetime).
    #[serde(default)]
    pub hold: Option<u64>,
    /// At most this many subjects are held (default 100 000).
    #[serde(default)]
    pub max_subjects: Option<usize>,
    /// Poll delivery (RFC 8936): the stream's poll URL, https (http on loopback). Polled by
    /// `wimse_reqwest::signals_from_settings`; without it, SETs are pushed to the service
    /// ([`SetReceiver::push`](crate::server::signals::SetReceiver::push)).
    #[serde(default)]
    pub poll_url: Option<String>,
    /// A file holding the stream's bearer token for polling (a mounted secret), read at start.
    /// Relative to the settings file.
    #[serde(default)]
    pub poll_token_file: Option<PathBuf>,
    /// Else the environment variable holding it.
    #[serde(default)]
    pub poll_token_env: Option<String>,
    /// Seconds between polls when nothing more is waiting (default 5).
    #[serde(default)]
    pub poll_interval: Option<u64>,
}

/// The receivers opened from settings in this process, so the verifiers and the delivery (a
/// poller, a push route) built from the same settings share one state: the revocations and the
/// SETs already received. An entry whose state no one else holds any more is dropped at the
/// next lookup (a service built again reads its state file afresh).
static RECEIVERS: std::sync::Mutex<Vec<std::sync::Arc<crate::server::signals::SetReceiver>>> =
    std::sync::Mutex::new(Vec::new());

impl SignalSettings {
    /// A receiver as these settings describe it: the transmitter's keys read from `jwks_file`
    /// now, sharing its revocations and the SETs received with every receiver and verifier built
    /// from the same transmitter, audience and state file in this process while any of them
    /// lives (the first reads the state file; its `hold` and `max_subjects` stay). A state file
    /// already used for another stream in this process is refused.
    pub fn receiver(&self) -> Result<std::sync::Arc<crate::server::signals::SetReceiver>> {
        use crate::server::signals::{Revocations, SetReceiver};
        let keys = TrustAnchors::from_file(&self.jwks_file)
            .map_err(|e| invalid("signals.jwks_file", format!("{}: {e}", self.jwks_file.display())))?
            .keys()
            .to_vec();
        if keys.is_empty() {
            return Err(invalid("signals.jwks_file", "no keys"));
        }
        let max_age = self.max_age.unwrap_or(crate::server::signals::DEFAULT_MAX_AGE);
        let mut open = RECEIVERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.retain(|receiver| receiver.revocations().holders() > 1);
        let same_file = |receiver: &SetReceiver| {
            self.state_file.is_some() && receiver.revocations().state_file() == self.state_file.as_deref()
        };
        let same_stream =
            |receiver: &SetReceiver| (receiver.issuer(), receiver.audience()) == (&*self.issuer, &*self.audience);
        if let Some(other) = open.iter().find(|r| same_file(r) && !same_stream(r)) {
            return Err(invalid(
                "signals.state_file",
                format!(
                    "already the state of the stream of {} for {} in this process",
                    other.issuer(),
                    other.audience()
                ),
            ));
        }
        let found = open.iter().find(|r| same_stream(r) && r.revocations().state_file() == self.state_file.as_deref());
        if let Some(receiver) = found {
            return Ok(std::sync::Arc::new(receiver.with_keys(keys, max_age)));
        }
        let mut revocations = Revocations::new();
        if let Some(n) = self.max_subjects {
            revocations = revocations.max_subjects(n);
        }
        if let Some(seconds) = self.hold {
            revocations = revocations.hold(seconds);
        }
        if let Some(state) = &self.state_file {
            revocations = revocations
                .persist_to(state)
                .map_err(|e| invalid("signals.state_file", format!("{}: {e}", state.display())))?;
        }
        let receiver =
            std::sync::Arc::new(SetReceiver::new(&self.issuer, &self.audience, keys, revocations).max_age(max_age));
        open.push(receiver.clone());
        Ok(std::sync::Arc::new(receiver.with_keys(receiver.keys().to_vec(), max_age)))
    }
}

/// Where and how decisions are recorded ([`AuditLog`](crate::server::audit_log::AuditLog)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// The log (JSON lines; its head file is written beside it). Relative to the settings file.
    pub file: PathBuf,
    /// The writing service's identifier, named in every record.
    pub service: String,
    /// The audit key checkpoints are signed with (a private JWK). Relative to the settings file.
    pub key: PathBuf,
    /// A checkpoint after this many records (default 1 000).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    /// When the writer is behind: `drop` the record (counted; the default) or `refuse` the
    /// request (503).
    #[serde(default)]
    pub when_full: Option<String>,
}

impl AuditSettings {
    /// Opens the log (once per file in a process: opening it again shares the writer).
    pub fn open(&self) -> Result<crate::server::audit_log::AuditLog> {
        use crate::server::audit_log::{AuditLog, AuditOptions, WhenFull};
        let text = std::fs::read_to_string(&self.key)
            .map_err(|e| invalid("audit.key", format!("{}: {e}", self.key.display())))?;
        let jwk = crate::jose::Jwk::from_json(&text).map_err(|e| invalid("audit.key", e))?;
        let key = crate::jose::SigningKey::from_jwk(&jwk).map_err(|e| invalid("audit.key", e))?;
        let mut options = AuditOptions::default();
        if let Some(every) = self.checkpoint_every {
            options.checkpoint_every = every.max(1);
        }
        options.when_full = match self.when_full.as_deref() {
            None | Some("drop") => WhenFull::Drop,
            Some("refuse") => WhenFull::Refuse,
            Some(other) => return Err(invalid("audit.when_full", format!("`{other}`: `drop` or `refuse`"))),
        };
        AuditLog::open(&self.file, &self.service, key, options)
    }
}

/// Which proofs a verifier accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proofs {
    /// WIT + WPT and WIT + HTTP message signature (the default).
    #[default]
    Both,
    /// WIT + WPT only.
    Wpt,
    /// WIT + HTTP message signature only.
    HttpSignature,
}

/// A verifier as data; see [`VerifierConfig`] for the meaning and defaults of each field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierSettings {
    /// Exact `aud` values naming this service.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// External origins of this service (`scheme://authority`); `aud` is origin + path.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Trust anchors, one entry per file.
    #[serde(default)]
    pub trust: Vec<TrustSettings>,
    /// Clock leeway in seconds (at most 300). Default 30.
    #[serde(default)]
    pub leeway: Option<u64>,
    /// Longest WPT lifetime accepted, seconds. Default 300.
    #[serde(default)]
    pub max_wpt_lifetime: Option<u64>,
    /// Longest WIT lifetime accepted, seconds. Default 86400.
    #[serde(default)]
    pub max_wit_lifetime: Option<u64>,
    /// Oldest HTTP signature accepted, seconds. Default 300.
    #[serde(default)]
    pub max_signature_age: Option<u64>,
    /// Which proofs are accepted. Default both.
    #[serde(default)]
    pub proofs: Proofs,
    /// Context-token fields (besides `Txn-Token`) bound through `oth`.
    #[serde(default)]
    pub context_tokens: Vec<String>,
    /// Components HTTP signatures must cover besides the profile's.
    #[serde(default)]
    pub required_components: Vec<String>,
    /// Most live replay claims per caller. Default 100000.
    #[serde(default)]
    pub caller_quota: Option<usize>,
    /// Validate `Txn-Token`s (Transaction Tokens). Default: not validated.
    #[serde(default)]
    pub txn_tokens: Option<TxnTokenSettings>,
    /// **Development only**: refusals name the failed check in their problem body, signed
    /// requests' too (see [`VerifierConfig::reveal_reasons`]). Default false.
    #[serde(default)]
    pub reveal_reasons: bool,
}

/// How Txn-Tokens are validated; see [`TxnTokenValidation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnTokenSettings {
    /// The trust domain (its TTS keys verify, its name is the only accepted `aud`).
    pub trust_domain: String,
    /// The accepted `aud` if not the trust domain's name.
    #[serde(default)]
    pub audience: Option<String>,
    /// Every request must carry one. Default false (an invalid one is refused either way).
    #[serde(default)]
    pub required: bool,
    /// Longest accepted lifetime, seconds. Default 600.
    #[serde(default)]
    pub max_lifetime: Option<u64>,
    /// The TTS keys (JWK, JWKS or SPIFFE bundle file); default: the trust domain's entry in
    /// `trust` (the identity server is the TTS).
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
}

/// The anchors of one trust domain: a file holding a JWK, a JWKS or a SPIFFE bundle, or the
/// URL of a SPIFFE bundle an identity server publishes (such as its `/v1/bundle/spiffe`),
/// followed as it rotates keys. One of `file` and `bundle_url`.
///
/// A bundle URL is fetched over the network, which this crate does not do:
/// [`Settings::verifier`] refuses it, and `wimse_reqwest::verifier_from_settings` fetches it
/// at start and keeps it current (a `wimse_reqwest::BundleSource` with the options here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSettings {
    /// The trust domain, e.g. `spiffe://prod.example`.
    pub trust_domain: String,
    /// The file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The bundle's URL: https, or http on loopback.
    #[serde(default)]
    pub bundle_url: Option<String>,
    /// With `bundle_url`: how long fetched keys stay usable without a successful refresh,
    /// seconds (then 503). Default 3600.
    #[serde(default)]
    pub max_stale: Option<u64>,
    /// With `bundle_url`: the shortest time between two early refreshes (on an unknown key id),
    /// and the wait before retrying a failed one, seconds. Default 10.
    #[serde(default)]
    pub min_refresh_interval: Option<u64>,
    /// With `bundle_url`: the longest one fetch may take, milliseconds. Default 10000.
    #[serde(default)]
    pub fetch_timeout_ms: Option<u64>,
}

/// Where the anchors of a [`TrustSettings`] entry come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustSource<'a> {
    /// A file, read once.
    File(&'a Path),
    /// A bundle URL, fetched and refreshed (by `wimse_reqwest`).
    BundleUrl(&'a str),
}

impl TrustSettings {
    /// The trust domain and where its anchors come from; errors name the field of entry `i`.
    pub fn source(&self, i: usize) -> Result<(TrustDomain, TrustSource<'_>)> {
        let domain = TrustDomain::parse(&self.trust_domain)
            .map_err(|e| invalid(format!("verifier.trust[{i}].trust_domain"), e))?;
        let source = match (&self.file, &self.bundle_url) {
            (Some(file), None) => TrustSource::File(file),
            (None, Some(url)) => TrustSource::BundleUrl(url),
            (Some(_), Some(_)) => {
                return Err(invalid(format!("verifier.trust[{i}]"), "file and bundle_url are exclusive"));
            }
            (None, None) => return Err(invalid(format!("verifier.trust[{i}]"), "set file or bundle_url")),
        };
        let refresh_options = self.max_stale.or(self.min_refresh_interval).or(self.fetch_timeout_ms).is_some();
        if refresh_options && matches!(source, TrustSource::File(_)) {
            return Err(invalid(
                format!("verifier.trust[{i}]"),
                "max_stale, min_refresh_interval and fetch_timeout_ms apply to a bundle_url only",
            ));
        }
        Ok((domain, source))
    }
}

/// A policy as data: allowed unless a deny rule matches; no allow rule matching means denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Its name, in refusals and logs.
    pub name: String,
    /// Who is allowed.
    #[serde(default)]
    pub allow: RuleSettings,
    /// Who is refused even if allowed.
    #[serde(default)]
    pub deny: RuleSettings,
    /// What every allowed call must also carry.
    #[serde(default)]
    pub require: RequireSettings,
    /// Cedar policies deciding instead of `allow` (feature `cedar`; `deny` and `require` still
    /// apply first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cedar: Option<CedarSettings>,
}

/// Cedar policy files for a [`PolicySettings`] (see `server::cedar`, feature `cedar`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CedarSettings {
    /// The policy file (Cedar policy text). A relative path is relative to the settings file.
    pub policies: PathBuf,
    /// A Cedar schema file the policies are validated against (strict), optional.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// The service's name: the resource of every request (`Service::"<resource>"`).
    pub resource: String,
}

/// Requirements on every call, besides who makes it: the transaction it is part of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireSettings {
    /// A verified Txn-Token.
    #[serde(default)]
    pub transaction: bool,
    /// Scope values the Txn-Token must all have (its purpose).
    #[serde(default)]
    pub txn_scopes: Vec<String>,
    /// Subjects, one of which the Txn-Token must be for.
    #[serde(default)]
    pub txn_subjects: Vec<String>,
    /// Whether someone must act for the Txn-Token's subject (an agent for a user: `true`), or
    /// must not (`false`: requests without a Txn-Token meet this); either by default.
    #[serde(default)]
    pub txn_delegated: Option<bool>,
    /// Workload identifiers, one of which the Txn-Token's delegation chain must name (as its
    /// current actor or an earlier one).
    #[serde(default)]
    pub txn_actors: Vec<String>,
    /// The most actors the Txn-Token's delegation chain may name (0: no delegation; a request
    /// without a Txn-Token does not meet it, nor `txn_actors`).
    #[serde(default)]
    pub txn_max_actors: Option<usize>,
}

/// Workloads by exact identifier, by path prefix (segment boundaries respected), or whole trust
/// domains; any one matching is a match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Exact workload identifiers.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Identifier prefixes: `spiffe://d/batch` matches itself and `spiffe://d/batch/nightly`.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Every workload of these trust domains.
    #[serde(default)]
    pub trust_domains: Vec<String>,
}

/// Credentials from two files a node agent or a volume keeps current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSettings {
    /// The WIT (compact JWS).
    pub wit_file: PathBuf,
    /// The workload's private key (JWK), 0600.
    pub key_file: PathBuf,
    /// How often the files are re-read, seconds. Default 30.
    #[serde(default)]
    pub recheck_every: Option<u64>,
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect()
}

impl Settings {
    /// Parses JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| invalid("settings", e))
    }

    /// Parses TOML.
    #[cfg(feature = "toml")]
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| invalid("settings", e.to_string().trim_end()))
    }

    /// Reads a file: TOML when it ends in `.toml` (feature `toml`), JSON otherwise. Errors name
    /// the file and the field. Relative paths in it are taken relative to the file's directory
    /// (see [`relative_to`](Self::relative_to)).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let named = |e: Error| invalid(path.display(), e.detail().unwrap_or_default());
        let text = std::fs::read_to_string(path).map_err(|e| invalid(path.display(), e))?;
        let is_toml = path.extension().is_some_and(|ext| ext == "toml");
        #[cfg(not(feature = "toml"))]
        if is_toml {
            return Err(invalid(path.display(), "TOML needs the `toml` feature of wimse-core"));
        }
        #[cfg(feature = "toml")]
        let settings = if is_toml { Self::from_toml(&text) } else { Self::from_json(&text) };
        #[cfg(not(feature = "toml"))]
        let settings = Self::from_json(&text);
        Ok(settings.map_err(named)?.relative_to(path.parent().unwrap_or(Path::new(""))))
    }

    /// Makes the relative paths of these settings (trust files, the TTS keys file, credential
    /// files) relative to `dir`: what [`from_file`](Self::from_file) does with the file's
    /// directory, so a settings file and the files it names move together. Absolute paths stay.
    pub fn relative_to(mut self, dir: &Path) -> Self {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = dir.join(&*path);
            }
        };
        self.verifier.trust.iter_mut().filter_map(|entry| entry.file.as_mut()).for_each(resolve);
        if let Some(file) = self.verifier.txn_tokens.as_mut().and_then(|txn| txn.keys_file.as_mut()) {
            resolve(file);
        }
        if let Some(credentials) = self.credentials.as_mut() {
            resolve(&mut credentials.wit_file);
            resolve(&mut credentials.key_file);
        }
        if let Some(audit) = self.audit.as_mut() {
            resolve(&mut audit.file);
            resolve(&mut audit.key);
        }
        if let Some(signals) = self.signals.as_mut() {
            resolve(&mut signals.jwks_file);
            if let Some(state) = signals.state_file.as_mut() {
                resolve(state);
            }
            if let Some(token) = signals.poll_token_file.as_mut() {
                resolve(token);
            }
        }
        if let Some(cedar) = self.policy.as_mut().and_then(|p| p.cedar.as_mut()) {
            resolve(&mut cedar.policies);
            if let Some(schema) = cedar.schema.as_mut() {
                resolve(schema);
            }
        }
        self
    }

    /// [`from_file`](Self::from_file), then the `WIMSE_*` variables of this process.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(path)?.apply_env()
    }

    /// Applies the `WIMSE_*` variables of this process (see the module documentation).
    pub fn apply_env(self) -> Result<Self> {
        let vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("WIMSE_")).collect();
        self.apply_env_from(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Applies `WIMSE_*` variables given as pairs (for tests and for other sources).
    pub fn apply_env_from<'a>(mut self, vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        for (name, value) in vars {
            let number = |field: &str| {
                value.trim().parse::<u64>().map_err(|_| invalid(format!("{name} ({field})"), "not a number"))
            };
            match name {
                "WIMSE_AUDIENCES" => self.verifier.audiences = list(value),
                "WIMSE_ORIGINS" => self.verifier.origins = list(value),
                "WIMSE_TRUST" => {
                    self.verifier.trust = list(value)
                        .into_iter()
                        .map(|entry| {
                            let (domain, file) = entry.split_once('=').ok_or_else(|| {
                                invalid("WIMSE_TRUST (verifier.trust)", format!("{entry:?} is not DOMAIN=FILE"))
                            })?;
                            Ok(TrustSettings {
                                trust_domain: domain.to_owned(),
                                file: Some(file.into()),
                                ..Default::default()
                            })
                        })
                        .collect::<Result<_>>()?
                }
                "WIMSE_LEEWAY" => self.verifier.leeway = Some(number("verifier.leeway")?),
                "WIMSE_REVEAL_REASONS" => {
                    self.verifier.reveal_reasons = match value.trim() {
                        "1" | "true" => true,
                        "0" | "false" | "" => false,
                        _ => return Err(invalid("WIMSE_REVEAL_REASONS (verifier.reveal_reasons)", "not 1 or 0")),
                    }
                }
                "WIMSE_PROOFS" => {
                    self.verifier.proofs = serde_json::from_value(serde_json::Value::String(value.trim().into()))
                        .map_err(|_| invalid("WIMSE_PROOFS (verifier.proofs)", "not wpt, http-signature or both"))?
                }
                "WIMSE_POLICY_ALLOW" => {
                    let policy =
                        self.policy.get_or_insert_with(|| PolicySettings { name: "env".into(), ..Default::default() });
                    policy.allow.workloads = list(value);
                }
                "WIMSE_WIT_FILE" | "WIMSE_KEY_FILE" => {
                    let credentials = self.credentials.get_or_insert_with(|| CredentialSettings {
                        wit_file: PathBuf::new(),
                        key_file: PathBuf::new(),
                        recheck_every: None,
                    });
                    if name == "WIMSE_WIT_FILE" {
                        credentials.wit_file = value.into();
                    } else {
                        credentials.key_file = value.into();
                    }
                }
                _ => {}
            }
        }
        Ok(self)
    }

    /// The verifier these settings describe, its trust anchors read from their files (a
    /// `bundle_url` entry is refused: use `wimse_reqwest::verifier_from_settings`).
    pub fn verifier(&self) -> Result<Verifier> {
        self.complete(self.verifier.build()?)
    }

    /// Gives `verifier` what these settings add to the verifier section: the `[audit]` log and
    /// the `[signals]` revocations (the receiver is [`SignalSettings::receiver`]'s, shared
    /// with its delivery).
    pub fn complete(&self, verifier: Verifier) -> Result<Verifier> {
        let verifier = match &self.audit {
            Some(audit) => verifier.audit_log(audit.open()?),
            None => verifier,
        };
        Ok(match &self.signals {
            Some(signals) => verifier.revocations(signals.receiver()?.revocations().clone()),
            None => verifier,
        })
    }

    /// The policy, or an error naming `policy` when there is none.
    pub fn policy(&self) -> Result<Policy> {
        self.policy.as_ref().ok_or_else(|| invalid("policy", "missing"))?.build()
    }

    /// The credential source, or an error naming `credentials` when there is none.
    pub fn credentials(&self) -> Result<FileCredentials> {
        self.credentials.as_ref().ok_or_else(|| invalid("credentials", "missing"))?.build()
    }
}

impl VerifierSettings {
    /// The [`VerifierConfig`] (no files read).
    pub fn config(&self) -> VerifierConfig {
        let mut config = VerifierConfig::new();
        for audience in &self.audiences {
            config = config.audience(audience.clone());
        }
        for origin in &self.origins {
            config = config.origin(origin.clone());
        }
        if let Some(leeway) = self.leeway {
            config = config.leeway(leeway);
        }
        if let Some(secs) = self.max_wpt_lifetime {
            config = config.max_wpt_lifetime(secs);
        }
        if let Some(secs) = self.max_wit_lifetime {
            config = config.max_wit_lifetime(secs);
        }
        if let Some(secs) = self.max_signature_age {
            config = config.max_signature_age(secs);
        }
        for name in &self.context_tokens {
            config = config.context_token(name.clone());
        }
        for component in &self.required_components {
            config = config.required_component(component.clone());
        }
        if let Some(quota) = self.caller_quota {
            config = config.caller_quota(quota);
        }
        if self.reveal_reasons {
            config = config.reveal_reasons();
        }
        if let Some(txn) = &self.txn_tokens {
            config.txn_tokens = Some(match txn.validation() {
                Ok(validation) => validation,
                // Fail closed: a verifier made from this configuration refuses to start rather
                // than skip the Txn-Token checks the settings asked for.
                Err(_) => TxnTokenValidation::unusable(),
            });
        }
        match self.proofs {
            Proofs::Both => config,
            Proofs::Wpt => config.only_wpt(),
            Proofs::HttpSignature => config.only_http_signatures(),
        }
    }

    /// The trust store of the entries that name files, read from them. Entries naming a
    /// `bundle_url` are checked but not fetched (see `wimse_reqwest::verifier_from_settings`);
    /// a trust domain's anchors come from its files or from one bundle URL, never both.
    pub fn trust_store(&self) -> Result<TrustStore> {
        let mut store = TrustStore::new();
        let mut followed = Vec::new();
        for (i, entry) in self.trust.iter().enumerate() {
            let (domain, source) = entry.source(i)?;
            match source {
                TrustSource::File(file) => {
                    let anchors = TrustAnchors::from_file(file)
                        .map_err(|e| invalid(format!("verifier.trust[{i}].file"), e.detail().unwrap_or_default()))?;
                    for key in anchors.keys() {
                        store.add_key(domain.clone(), key.clone());
                    }
                }
                TrustSource::BundleUrl(_) => followed.push((i, domain)),
            }
        }
        // A refreshed bundle replaces its domain's anchors: files or another URL for the same
        // domain would be dropped at the first refresh.
        for (n, (i, domain)) in followed.iter().enumerate() {
            if store.get(domain).is_some() || followed[..n].iter().any(|(_, earlier)| earlier == domain) {
                return Err(invalid(
                    format!("verifier.trust[{i}].bundle_url"),
                    format!("{domain} has other trust entries; a followed bundle must be its only one"),
                ));
            }
        }
        Ok(store)
    }

    /// The verifier.
    pub fn build(&self) -> Result<Verifier> {
        let trust = self.trust_store()?;
        if let Some(i) = self.trust.iter().position(|entry| entry.bundle_url.is_some()) {
            return Err(invalid(
                format!("verifier.trust[{i}].bundle_url"),
                "a bundle URL is fetched by wimse_reqwest::verifier_from_settings (wimse-core reads files only)",
            ));
        }
        self.build_on(TrustHandle::new(trust))
    }

    /// The verifier on `trust`, a handle holding the anchors of every trust entry (the files'
    /// and the bundles someone keeps current in it, as `wimse_reqwest::verifier_from_settings`
    /// does).
    pub fn build_on(&self, trust: TrustHandle) -> Result<Verifier> {
        if self.trust.is_empty() {
            return Err(invalid("verifier.trust", "no trust anchors: every caller would be refused"));
        }
        let mut verifier = Verifier::new(TrustStore::new(), self.config())
            .map_err(|e| invalid("verifier", e.detail().unwrap_or_default()))?
            .trust_handle(trust);
        if let Some(keys) = self.txn_token_keys()? {
            verifier = verifier.txn_token_keys(keys);
        }
        Ok(verifier)
    }
}

impl VerifierSettings {
    /// The TTS keys of `txn_tokens.keys_file`, if the settings name one (else the verifier's
    /// trust anchors verify Txn-Tokens). Errors name the field.
    pub fn txn_token_keys(&self) -> Result<Option<TrustHandle>> {
        let Some(txn) = &self.txn_tokens else { return Ok(None) };
        let validation = txn.validation()?;
        let Some(file) = &txn.keys_file else { return Ok(None) };
        let keys = TrustAnchors::from_file(file)
            .map_err(|e| invalid("verifier.txn_tokens.keys_file", e.detail().unwrap_or_default()))?;
        Ok(Some(TrustHandle::new(TrustStore::new().with(validation.trust_domain, keys))))
    }
}

impl TxnTokenSettings {
    /// The validation settings.
    pub fn validation(&self) -> Result<TxnTokenValidation> {
        let domain =
            TrustDomain::parse(&self.trust_domain).map_err(|e| invalid("verifier.txn_tokens.trust_domain", e))?;
        let mut validation = TxnTokenValidation::new(domain);
        if let Some(audience) = &self.audience {
            validation = validation.audience(audience.clone());
        }
        if let Some(secs) = self.max_lifetime {
            validation = validation.max_lifetime(secs);
        }
        if self.required {
            validation = validation.required();
        }
        Ok(validation)
    }
}

impl RequireSettings {
    fn rules(&self, field: &str) -> Result<Vec<Rule>> {
        let mut rules: Vec<Rule> = self.txn_scopes.iter().map(|s| Rule::txn_scope(s.clone())).collect();
        if self.transaction {
            rules.push(Rule::transaction());
        }
        if !self.txn_subjects.is_empty() {
            rules.push(Rule::any_of(self.txn_subjects.iter().map(|s| Rule::txn_subject(s.clone()))));
        }
        match self.txn_delegated {
            Some(true) => rules.push(Rule::txn_delegated()),
            Some(false) => rules.push(Rule::not(Rule::txn_delegated())),
            None => {}
        }
        if !self.txn_actors.is_empty() {
            let actors = self
                .txn_actors
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    WorkloadId::parse(id)
                        .map(Rule::txn_actor)
                        .map_err(|e| invalid(format!("{field}.require.txn_actors[{i}]"), e))
                })
                .collect::<Result<Vec<_>>>()?;
            rules.push(Rule::any_of(actors));
        }
        if let Some(max) = self.txn_max_actors {
            rules.push(Rule::txn_max_actors(max));
        }
        Ok(rules)
    }
}

impl RuleSettings {
    fn rules(&self, field: &str) -> Result<Vec<Rule>> {
        let mut rules = Vec::new();
        for (i, id) in self.workloads.iter().enumerate() {
            rules.push(Rule::workload(
                WorkloadId::parse(id).map_err(|e| invalid(format!("{field}.workloads[{i}]"), e))?,
            ));
        }
        for (i, prefix) in self.prefixes.iter().enumerate() {
            rules.push(Rule::path_prefix(prefix).map_err(|e| invalid(format!("{field}.prefixes[{i}]"), e))?);
        }
        for (i, domain) in self.trust_domains.iter().enumerate() {
            rules.push(Rule::trust_domain(
                TrustDomain::parse(domain).map_err(|e| invalid(format!("{field}.trust_domains[{i}]"), e))?,
            ));
        }
        Ok(rules)
    }
}

impl PolicySettings {
    /// The policy.
    pub fn build(&self) -> Result<Policy> {
        if self.name.is_empty() {
            return Err(invalid("policy.name", "empty"));
        }
        let allow = self.allow.rules("policy.allow")?;
        let mut policy = match &self.cedar {
            Some(cedar) if !allow.is_empty() => {
                return Err(invalid(
                    "policy.allow",
                    format!("Cedar policies ({}) decide instead", cedar.policies.display()),
                ));
            }
            Some(cedar) => cedar_policy(&self.name, cedar)?,
            None if allow.is_empty() => return Err(invalid("policy.allow", "no rule: every caller would be refused")),
            None => Policy::named(self.name.clone()).allow(Rule::any_of(allow)),
        };
        let deny = self.deny.rules("policy.deny")?;
        if !deny.is_empty() {
            policy = policy.deny(Rule::any_of(deny));
        }
        for rule in self.require.rules("policy")? {
            policy = policy.require(rule);
        }
        Ok(policy)
    }
}

#[cfg(feature = "cedar")]
fn cedar_policy(name: &str, cedar: &CedarSettings) -> Result<Policy> {
    let policies = crate::server::cedar::CedarPolicies::from_files(
        name,
        &cedar.resource,
        &cedar.policies,
        cedar.schema.as_deref(),
    )
    .map_err(|e| invalid("policy.cedar", e.detail().unwrap_or_default()))?;
    Ok(Policy::cedar(policies))
}

#[cfg(not(feature = "cedar"))]
fn cedar_policy(_: &str, _: &CedarSettings) -> Result<Policy> {
    Err(invalid("policy.cedar", "this build has no Cedar support (the wimse-core feature `cedar`)"))
}

impl CredentialSettings {
    /// The credential source (both files read now, on the system clock).
    pub fn build(&self) -> Result<FileCredentials> {
        if self.wit_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty() {
            return Err(invalid("credentials", "set both wit_file and key_file"));
        }
        let source = FileCredentials::new(&self.wit_file, &self.key_file)
            .map_err(|e| invalid("credentials", e.detail().unwrap_or_default()))?;
        Ok(match self.recheck_every {
            Some(secs) => source.recheck_every(secs),
            None => source,
        })
    }
}
