//! The identity server's configuration (a JSON file for `wimse issuer serve`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wimse_core::rate::Rate;
use wimse_core::{Error, ErrorKind, Result};

pub(crate) fn config_error(field: impl Into<String>, problem: impl std::fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("{}: {problem}", field.into()))
}

/// The keys of a `jwks` or `jwks_file` pair (`at` names the entry, e.g. `platforms[0]`).
pub(crate) fn configured_keys(
    at: &str,
    jwks: Option<&Value>,
    file: Option<&std::path::Path>,
) -> Result<wimse_core::protocol::trust::TrustAnchors> {
    use wimse_core::protocol::trust::TrustAnchors;
    match (jwks, file) {
        (Some(jwks), None) => {
            TrustAnchors::from_jwks_json(&jwks.to_string()).map_err(|e| config_error(format!("{at}.jwks"), e))
        }
        (None, Some(path)) => {
            let field = format!("{at}.jwks_file");
            let text =
                std::fs::read_to_string(path).map_err(|e| config_error(&field, format!("{}: {e}", path.display())))?;
            TrustAnchors::from_jwks_json(&text).map_err(|e| config_error(&field, format!("{}: {e}", path.display())))
        }
        (Some(_), Some(_)) => Err(config_error(at, "set jwks or jwks_file, not both")),
        (None, None) => Err(config_error(at, "set jwks or jwks_file")),
    }
}

/// PostgreSQL storage: several replicas share keys, rotate once between them, and write an
/// audit row per issuance. `Debug` does not show the connection string (it may hold a password).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string or URL, e.g. `host=/run/postgresql dbname=wimse user=wimse`
    /// or `postgres://wimse@db.internal/wimse`. A password belongs in `PGPASSWORD`-style
    /// configuration of the deployment, not here.
    pub url: String,
    /// A file holding the key-encryption key: 32 random bytes, base64 (standard or URL-safe),
    /// mode 0600. Private keys are stored sealed with it (AES-256-GCM), never in the clear.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Else the name of an environment variable holding the key-encryption key (base64).
    /// Defaults to `WIMSE_ISSUER_KEK`.
    #[serde(default)]
    pub kek_env: Option<String>,
    /// Files holding other key-encryption keys (base64, mode 0600) that still open the stored
    /// state, for a change of KEK without downtime: rows sealed with one of them are sealed
    /// again with the KEK at the next write (or by `wimse issuer reseal`). See the README's
    /// "Key lifecycle".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_kek_files: Vec<PathBuf>,
    /// How long one database operation may take, in milliseconds. Defaults to 5000.
    #[serde(default = "default_db_timeout")]
    pub timeout_ms: u64,
    /// The certificate authority (PEM) of PostgreSQL's server certificate: connections then use
    /// TLS (`sslmode=require`, the server's name verified). Required unless every host of `url`
    /// is on this machine (a Unix socket, `localhost`, a loopback address) or
    /// `insecure_plaintext` is set.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Talk to a remote PostgreSQL without TLS (audit rows, the login and sealed keys cross the
    /// network in the clear). Off by default.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("kek_file", &self.kek_file)
            .field("kek_env", &self.kek_env)
            .field("timeout_ms", &self.timeout_ms)
            .field("ca_file", &self.ca_file)
            .field("insecure_plaintext", &self.insecure_plaintext)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("name", &self.name)
            .field("platform", &self.platform)
            .field("subject", &self.subject)
            .field("claims", &self.claims)
            .field("dev_secret", &self.dev_secret.as_ref().map(|_| ".."))
            .field("allowed", &self.allowed)
            .field("allowed_prefixes", &self.allowed_prefixes)
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

fn default_db_timeout() -> u64 {
    5000
}

/// A platform whose tokens bootstrap workloads (a Kubernetes cluster's service-account issuer,
/// a CI system's OIDC issuer).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Name used by clients to refer to this platform.
    pub name: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry for this identity server.
    pub audience: String,
    /// Its keys (a JWKS), configured out of band; or [`jwks_file`](Self::jwks_file) (exactly
    /// one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// A file holding its JWKS (for a Kubernetes cluster: `kubectl get --raw /openid/v1/jwks`),
    /// read at start and on every reload (SIGHUP): refresh the file and reload when the keys
    /// rotate. A relative path is relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Platform tokens that expire further ahead than this are refused, in seconds (1 to
    /// 604800). Defaults to 86400: projected service-account tokens live an hour, CI OIDC
    /// tokens minutes; a token valid for years is a leaked-forever credential.
    #[serde(default = "default_external_lifetime")]
    pub max_token_lifetime: u64,
    /// The `typ` values its tokens may carry (compared case-insensitively; `none` for a header
    /// without `typ`, as Kubernetes service-account tokens are). Defaults to
    /// `authorization-grant+jwt` (what rfc7523bis and the practices draft ask for) and `JWT`
    /// (for compatibility).
    #[serde(default = "default_token_types")]
    pub token_types: Vec<String>,
    /// As RFC 7523 assertions, each token is accepted once (by `jti`, until it expires; a token
    /// without `jti` is refused). Default true. Platforms whose tokens are meant to be presented
    /// again for their whole lifetime, such as Kubernetes projected service-account tokens
    /// (rotated only at 80% of their TTL), need `false`: replay protection then rests on their
    /// short lifetime, their audience (this token endpoint only) and the DPoP binding.
    #[serde(default = "default_true")]
    pub single_use: bool,
}

fn default_token_types() -> Vec<String> {
    vec!["authorization-grant+jwt".into(), "JWT".into()]
}

fn default_true() -> bool {
    true
}

fn default_external_lifetime() -> u64 {
    86_400
}

/// A client: who, authenticated how, may obtain which identifiers. `Debug` does not show
/// `dev_secret`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name, for audit records.
    pub name: String,
    /// The platform whose token authenticates this client (with `subject`).
    #[serde(default)]
    pub platform: Option<String>,
    /// The `sub` of that platform token (optional when `claims` names the workload).
    #[serde(default)]
    pub subject: Option<String>,
    /// Conditions on the platform token's other claims, all of which must hold: a JSON pointer
    /// (RFC 6901) to the claim, and the string it must equal or a list of strings it may equal.
    /// For a Kubernetes service-account token `{"/kubernetes.io/namespace": "prod",
    /// "/kubernetes.io/serviceaccount/name": "payments"}`; for a CI token
    /// `{"/repository": "org/app", "/ref": ["refs/heads/main"]}`.
    #[serde(default)]
    pub claims: serde_json::Map<String, Value>,
    /// A static secret instead of a platform token: only accepted in `dev_mode`.
    #[serde(default)]
    pub dev_secret: Option<String>,
    /// Identifiers it may obtain, exactly.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Identifier prefixes it may obtain (segment boundaries respected).
    #[serde(default)]
    pub allowed_prefixes: Vec<String>,
    /// Longest WIT lifetime it may obtain, in seconds.
    pub max_lifetime: u64,
    /// Longest WIC lifetime it may obtain, in seconds (1 to 86400). Defaults to `max_lifetime`,
    /// the client's WIT lifetime: the next workload-creds revision asks for WIC lifetimes "on a
    /// similar scale to WITs" and does not rely on revocation (no CRL), so a short lifetime is
    /// what limits a stolen key. A request may ask for less (`lifetime`), never for more.
    #[serde(default)]
    pub max_wic_lifetime: Option<u64>,
    /// A workload of this client that holds a client WIC from this identity server (for an
    /// identifier the client may obtain) may renew its WIT and WIC by presenting that WIC in the
    /// TLS handshake instead of a bootstrap credential, for its own identifier only (as SPIRE
    /// agents renew with their SVID). Needs the TLS listener (`wimse issuer serve --tls-cert`),
    /// which asks for client certificates when a client at start has this set. Default false.
    #[serde(default)]
    pub wic_renewal: bool,
    /// DNS names it may put in a WIC's subject alternative names: exact names
    /// (`billing.prod.example`) or `*.suffix` patterns, which allow any name with at least one
    /// more label (`*.svc.prod.example` allows `a.svc.prod.example`, not `svc.prod.example`,
    /// and a wildcard SAN only if the same pattern is listed). None by default: a client can
    /// name only its workload identifier. Whatever the list allows, a requested name must be a
    /// valid DNS name (LDH labels of 1 to 63 bytes, at most 253 bytes, no trailing dot,
    /// internationalized names as `xn--` A-labels) or it is refused with 400
    /// `invalid_subject_alt_name`.
    #[serde(default)]
    pub allowed_dns_names: Vec<String>,
    /// IP addresses it may put in a WIC's subject alternative names. None by default. Only
    /// unicast host addresses: unspecified, broadcast, reserved, multicast and IPv4-mapped IPv6
    /// addresses are refused here at start and in requests (400 `invalid_subject_alt_name`).
    #[serde(default)]
    pub allowed_ip_addresses: Vec<std::net::IpAddr>,
}

/// Whether `name` (a requested DNS SAN) is allowed by `allowlist` (exact names and `*.suffix`
/// patterns, compared case-insensitively).
pub(crate) fn dns_name_allowed(allowlist: &[String], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    allowlist.iter().any(|allowed| {
        let allowed = allowed.to_ascii_lowercase();
        if allowed == name {
            return true;
        }
        match allowed.strip_prefix("*.") {
            // One or more labels before the suffix, none of them a wildcard.
            Some(suffix) => name
                .strip_suffix(suffix)
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty() && !head.contains('*')),
            None => false,
        }
    })
}

/// A DNS name or `*.suffix` pattern of an allowlist: a valid DNS name (see
/// [`wimse_core::protocol::wic::check_dns_name`]), optionally behind one leading `*.`.
pub(crate) fn valid_dns_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.contains('*') && wimse_core::protocol::wic::check_dns_name(name).is_ok()
}

/// The kind of token a [`ExchangeProfile`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExchangeKind {
    /// An OAuth JWT access token (RFC 9068): `typ` must be `at+jwt`.
    AccessToken,
    /// A SPIFFE JWT-SVID: `sub` is a SPIFFE ID; the template may use `{trust_domain}` and `{path}`.
    JwtSvid,
    /// Any JWT from the issuer (a platform token).
    Jwt,
}

/// A token-exchange profile (RFC 8693): which tokens from another system are exchanged for WITs
/// of this trust domain, and how their subject maps onto a workload identifier.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeProfile {
    /// Name, for audit records.
    pub name: String,
    /// What the incoming token is.
    pub kind: ExchangeKind,
    /// The exact `iss` of incoming tokens.
    pub issuer: String,
    /// The `aud` they must carry for this identity server.
    pub audience: String,
    /// Its keys (a JWKS), configured out of band; or [`jwks_file`](Self::jwks_file) (exactly
    /// one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// A file holding its JWKS (for a Kubernetes cluster: `kubectl get --raw /openid/v1/jwks`),
    /// read at start and on every reload (SIGHUP): refresh the file and reload when the keys
    /// rotate. A relative path is relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The identifier issued, e.g. `spiffe://prod.example/partners/{sub}`. `{sub}` must be a
    /// single safe path segment (`[A-Za-z0-9._-]`) or the exchange is refused.
    pub subject_template: String,
    /// Longest WIT lifetime issued, in seconds.
    pub max_lifetime: u64,
    /// Incoming tokens that expire further ahead than this are refused, in seconds (1 to
    /// 604800). Defaults to 86400.
    #[serde(default = "default_external_lifetime")]
    pub max_token_lifetime: u64,
    /// For `jwt-svid`: the one SPIFFE trust domain whose SVIDs this profile exchanges (e.g.
    /// `spiffe://partner.example`); required, so a partner's issuer cannot speak for another
    /// trust domain (this one included).
    #[serde(default)]
    pub subject_trust_domain: Option<String>,
}

/// How often callers may ask. Over a limit the request is refused with 429
/// (`rate_limited`) and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Issuance per client (WITs and WICs) and per exchange profile: 30 at once, 120 a minute.
    pub per_client: Rate,
    /// Requests per source address, whoever they claim to be: 60 at once, 600 a minute.
    pub per_source: Rate,
    /// Failed authentications per source address: after 10 at once (then 10 a minute), the
    /// address is refused until its budget refills, valid credentials or not.
    pub failed_authentications: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_client: Rate { burst: 30, per_minute: 120 },
            per_source: Rate { burst: 60, per_minute: 600 },
            failed_authentications: Rate { burst: 10, per_minute: 10 },
        }
    }
}

/// The identity server's configuration (a JSON file for `wimse issuer serve`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The trust domain it issues for, e.g. `spiffe://prod.example`.
    pub trust_domain: String,
    /// A tamper-evident audit log of every issuance and refusal
    /// ([`IdentityServer::audit_log`](crate::IdentityServer::audit_log)): `file`, `service`,
    /// `key` (a private JWK; paths relative to the working directory), `checkpoint_every`,
    /// `when_full` (`drop` or `refuse`), as a service's `[audit]`. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<wimse_core::config::AuditSettings>,
    /// Revocation and risk signals, as a service's `[signals]`: no WIT to a workload, and no
    /// Txn-Token for a user or requester, that a signal disabled
    /// ([`IdentityServer::revocations`](crate::IdentityServer::revocations)). `wimse issuer
    /// serve` polls `poll_url`. Paths relative to the working directory. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<wimse_core::config::SignalSettings>,
    /// The `iss` claim of issued WITs (none by default). For a `spiffe://` trust domain its
    /// WITs are WIT-SVIDs, whose `iss` SHOULD NOT be compatible with OpenID Connect Discovery
    /// (an `https` URL without query or fragment): the server logs a warning at start if it is.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Where signing keys are kept across restarts, on one node: a JSON file (0600). Set this
    /// or `postgres`.
    #[serde(default)]
    pub key_store: Option<PathBuf>,
    /// Keys, rotation and audit rows in PostgreSQL, shared by several replicas. Set this or
    /// `key_store`.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    /// Signing key algorithm. Defaults to ES256.
    #[serde(default = "default_alg")]
    pub algorithm: String,
    /// A new signing key is made after this many seconds. Defaults to one day.
    #[serde(default = "default_rotation")]
    pub rotation_period: u64,
    /// `spiffe_refresh_hint` of the published bundle, in seconds. Defaults to 300.
    #[serde(default = "default_refresh_hint")]
    pub refresh_hint: u64,
    /// Accept `dev_secret` clients. Never in production.
    #[serde(default)]
    pub dev_mode: bool,
    /// Platforms whose tokens bootstrap workloads.
    #[serde(default)]
    pub platforms: Vec<PlatformConfig>,
    /// Clients.
    pub clients: Vec<ClientConfig>,
    /// Token-exchange profiles.
    #[serde(default)]
    pub exchange: Vec<ExchangeProfile>,
    /// The token endpoint's URI as clients address it (e.g.
    /// `https://issuer.prod.example/v1/token`): the one audience RFC 7523 assertions must carry,
    /// and the `htu` of their DPoP proofs. Without it the jwt-bearer grant is off.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Rate limits on issuance and authentication (defaults in [`RateLimits`]).
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Proxies (load balancers, TLS terminators) in front of the identity server: for a request
    /// from one of these addresses, the client's address is the rightmost one of
    /// `X-Forwarded-For` (else `Forwarded: for=`) that is not itself a listed proxy, so rate
    /// limits and lockouts apply per client instead of to everyone behind the proxy. From any
    /// other address those fields are ignored (a client cannot choose its own address).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Serve as the trust domain's Transaction Token Service at `token_endpoint` (needs it).
    #[serde(default)]
    pub txn_tokens: Option<TxnTokenServiceConfig>,
}

/// The Transaction Token Service (draft-ietf-oauth-transaction-tokens-11): which workloads may
/// ask for Txn-Tokens, for which purposes (`scope` values) and on the strength of which subject
/// tokens. A workload not listed is refused; nothing is granted by default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TxnTokenServiceConfig {
    /// Lifetime of the Txn-Tokens issued, seconds (1 to 600). Defaults to 300.
    #[serde(default = "default_txn_lifetime")]
    pub lifetime: u64,
    /// Issuers of the external tokens (users' access tokens, ID tokens) presented as subjects.
    #[serde(default)]
    pub subject_issuers: Vec<SubjectIssuer>,
    /// Who may ask for what.
    pub requesters: Vec<TxnRequester>,
    /// Txn-Tokens per requesting workload: 200 at once, 6000 a minute by default (an edge asks
    /// once per external request; this budget is its own, apart from WIT issuance).
    #[serde(default = "default_txn_rate")]
    pub rate_limit: Rate,
    /// Prepended to subjects a requester names itself (`self_signed`, `unsigned_json`), e.g.
    /// `internal:`, so they never look like a user of a subject issuer.
    #[serde(default)]
    pub named_subject_prefix: Option<String>,
    /// The most actors a Txn-Token's delegation chain (`act`) may name: an agent acting for a
    /// user is one, an agent it hands the work to two (1 to 8). Defaults to 2.
    #[serde(default = "default_max_actors")]
    pub max_actors: usize,
}

fn default_max_actors() -> usize {
    2
}

fn default_txn_lifetime() -> u64 {
    300
}

fn default_txn_rate() -> Rate {
    Rate { burst: 200, per_minute: 6000 }
}

/// An issuer of subject tokens the TTS accepts (validated like exchange profiles: signature
/// with the configured keys, `exp`, `nbf`, one `aud`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectIssuer {
    /// Name, referred to by [`TxnRequester::subject_issuers`].
    pub name: String,
    /// `access-token` (an RFC 9068 JWT access token, `typ` `at+jwt`, whose `scope` bounds the
    /// Txn-Token's) or `jwt` (e.g. an OpenID Connect ID token; the requester's configured scopes
    /// bound it).
    pub kind: ExchangeKind,
    /// The exact `iss`.
    pub issuer: String,
    /// The `aud` its tokens must carry for this TTS.
    pub audience: String,
    /// Its keys (a JWKS), configured out of band; or [`jwks_file`](Self::jwks_file) (exactly
    /// one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// A file holding its JWKS (for a Kubernetes cluster: `kubectl get --raw /openid/v1/jwks`),
    /// read at start and on every reload (SIGHUP): refresh the file and reload when the keys
    /// rotate. A relative path is relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Tokens expiring further ahead are refused, seconds (1 to 604800). Defaults to 86400.
    #[serde(default = "default_external_lifetime")]
    pub max_token_lifetime: u64,
    /// Prepended to the `sub` of its tokens (e.g. `shop-users:`), so the subjects of several
    /// issuers never collide in the trust domain (the draft has the TTS keep `sub` unique).
    #[serde(default)]
    pub subject_prefix: Option<String>,
}

/// Workloads that may request Txn-Tokens, and what for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequester {
    /// Exact workload identifiers.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Identifier prefixes (segment boundaries respected).
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// The `scope` values (purposes) they may request; a request naming another is refused
    /// (`invalid_scope`).
    pub scopes: Vec<String>,
    /// The subject token types they may present: `access_token`, `id_token`, `jwt` (from
    /// [`subject_issuers`](Self::subject_issuers)), `self_signed` (a JWT the workload signs
    /// with its WIT key, for transactions it starts), `unsigned_json` (`{"sub": …}`: the workload
    /// names the subject), `txn_token` (replacement: a narrower Txn-Token of the same
    /// transaction). Full RFC 8693 URNs are accepted too.
    pub subject_token_types: Vec<String>,
    /// The names of the [`SubjectIssuer`]s whose tokens they may present.
    #[serde(default)]
    pub subject_issuers: Vec<String>,
    /// Whether they may act for the subjects of their requests (agents): a request with an
    /// `actor_token` (the requester's own WIT) gets a Txn-Token naming the requester in its
    /// `act` claim, after the actors before it, if the subject token's `may_act` (when it has
    /// one) names the requester and the chain stays within `max_actors`. Default false.
    #[serde(default)]
    pub actor: bool,
}

fn default_alg() -> String {
    "ES256".into()
}
fn default_rotation() -> u64 {
    86_400
}
fn default_refresh_hint() -> u64 {
    300
}

/// Reads and checks a configuration file (JSON).
pub fn load_config(path: &std::path::Path) -> Result<IssuerConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| config_error(path.display().to_string(), e))?;
    serde_json::from_str(&text).map_err(|e| config_error(path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::{dns_name_allowed, valid_dns_pattern};

    #[test]
    fn dns_allowlists_match_exact_names_and_suffix_patterns() {
        let list = ["billing.prod.example".to_owned(), "*.svc.prod.example".to_owned()];
        assert!(dns_name_allowed(&list, "billing.prod.example"));
        assert!(dns_name_allowed(&list, "BILLING.prod.example"));
        assert!(dns_name_allowed(&list, "a.svc.prod.example"));
        assert!(dns_name_allowed(&list, "a.b.svc.prod.example"));
        assert!(dns_name_allowed(&list, "*.svc.prod.example"), "the listed pattern itself");
        for refused in [
            "svc.prod.example",
            "evilsvc.prod.example",
            "*.prod.example",
            "prod.example",
            "127.0.0.1",
            "x.*.svc.prod.example",
        ] {
            assert!(!dns_name_allowed(&list, refused), "{refused}");
        }
        assert!(!dns_name_allowed(&[], "billing.prod.example"), "none by default");
        assert!(valid_dns_pattern("*.svc.prod.example") && valid_dns_pattern("a-b.example"));
        for bad in ["", "*", "*.", "a..b", "-a.example", "a*.example", "*.*.example", "a b.example"] {
            assert!(!valid_dns_pattern(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn debug_output_hides_secrets() {
        let config: super::IssuerConfig = serde_json::from_value(serde_json::json!({
            "trust_domain": "spiffe://prod.example",
            "postgres": {"url": "postgres://wimse:hunter2@db/wimse"},
            "dev_mode": true,
            "clients": [{"name": "demo", "dev_secret": "a-very-secret-dev-secret", "allowed": ["spiffe://prod.example/x"], "max_lifetime": 60}]
        }))
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("a-very-secret"), "{shown}");
        assert!(shown.contains("demo"));
    }
}
