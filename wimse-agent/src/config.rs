//! The agent's configuration (a JSON file for `wimse agent`): where to listen, how to reach the
//! identity server, and the registration entries that map callers to identities.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::{Error, ErrorKind, Result};

fn invalid(field: impl std::fmt::Display, problem: impl std::fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("{field}: {problem}"))
}

/// `wimse agent`'s configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The Unix socket to serve the Workload API on (workloads find it through
    /// `SPIFFE_ENDPOINT_SOCKET=unix://<path>`). Its directory must exist; a stale socket file is
    /// replaced.
    pub socket: PathBuf,
    /// The trust domain every entry belongs to, e.g. `spiffe://prod.example`.
    pub trust_domain: TrustDomain,
    /// The identity server that issues the workloads' credentials.
    pub issuer: IssuerConnection,
    /// Who gets which identity.
    pub entries: Vec<RegistrationEntry>,
    /// Also serve X.509-SVIDs (WICs from the identity server's `/v1/wic`). Default true.
    #[serde(default = "yes")]
    pub x509: bool,
    /// Bounds on what callers may hold.
    #[serde(default)]
    pub limits: Limits,
    /// A tamper-evident audit log of every attestation: each Workload API call authorized
    /// (the caller's uid, pid and executable, the identities it was given) or refused (the
    /// failed check): `file`, `service`, `key` (a private JWK; paths relative to the working
    /// directory), `checkpoint_every`, `when_full`, as a service's `[audit]`. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<wimse_core::config::AuditSettings>,
}

fn yes() -> bool {
    true
}

/// How the agent reaches and authenticates to the identity server. The agent is one client of
/// it, authorized (`allowed` / `allowed_prefixes`) for every identifier its entries name.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConnection {
    /// The identity server's base URL (https, or http on loopback).
    pub url: String,
    /// A file holding the agent's platform token (a projected service-account token of the
    /// agent's own DaemonSet, say), re-read for every request.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Else the name of an environment variable holding its token or dev secret.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The longest one call may take, in milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The longest wait between two attempts while issuance fails, in milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub retry_interval_ms: u64,
    /// How often the bundles are fetched again, in seconds. Default 60.
    #[serde(default = "default_bundle_refresh")]
    pub bundle_refresh_secs: u64,
}

impl std::fmt::Debug for IssuerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerConnection")
            .field("url", &self.url)
            .field("token_file", &self.token_file)
            .field("token_env", &self.token_env)
            .finish_non_exhaustive()
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_bundle_refresh() -> u64 {
    60
}

/// A registration entry: the processes whose attested properties match every selector get the
/// identity. A caller matching several entries gets all of their identities.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationEntry {
    /// The identity, e.g. `spiffe://prod.example/payments`.
    pub spiffe_id: WorkloadId,
    /// What the caller must be (at least one selector).
    pub selectors: Selectors,
    /// Guidance for workloads holding several identities (`internal`, `external`).
    #[serde(default)]
    pub hint: String,
    /// DNS names for its X.509-SVID (the identity server must allow them for the agent).
    #[serde(default)]
    pub dns_names: Vec<String>,
}

/// Properties of the calling process, read by the kernel (the socket's peer credentials) and
/// from `/proc/<pid>`. All that are given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Selectors {
    /// The caller's user id.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The caller's group id.
    #[serde(default)]
    pub gid: Option<u32>,
    /// The absolute path of the caller's executable (`/proc/<pid>/exe`).
    #[serde(default)]
    pub exe: Option<PathBuf>,
}

impl Selectors {
    fn is_empty(&self) -> bool {
        self.uid.is_none() && self.gid.is_none() && self.exe.is_none()
    }
}

/// What one caller (one uid) and all of them together may hold open. Over a limit a connection
/// is closed at once, a stream is refused with `ResourceExhausted`; other workloads are not
/// affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections, all callers. Default 768: below the usual limit of 1024 open files,
    /// with room for the agent's own. Raise the process's `RLIMIT_NOFILE` before raising this.
    pub max_connections: usize,
    /// Open connections per uid. Default 256.
    pub max_connections_per_uid: usize,
    /// Open streams per uid, all its connections together. Default 256.
    pub max_streams_per_uid: usize,
    /// Open streams, all callers. Default 4096.
    pub max_streams: usize,
    /// Concurrent streams per connection (HTTP/2). Default 32.
    pub max_streams_per_connection: u32,
    /// The largest request message, in bytes. Default 4096 (requests carry at most a SPIFFE ID).
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 768,
            max_connections_per_uid: 256,
            max_streams_per_uid: 256,
            max_streams: 4096,
            max_streams_per_connection: 32,
            max_request_bytes: 4096,
        }
    }
}

impl AgentConfig {
    /// Reads a JSON configuration file and checks it.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| invalid(path.display(), e))?;
        Self::from_json(&text)
    }

    /// Reads a JSON configuration and checks it.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| invalid("agent configuration", e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: an absolute socket path, entries inside the trust domain, each
    /// with a selector (an entry without one would hand its identity to every local process),
    /// absolute executable paths, an identity server URL that is https (or http on loopback),
    /// one token source, non-zero limits.
    pub fn validate(&self) -> Result<()> {
        if !self.socket.is_absolute() {
            return Err(invalid("socket", "must be an absolute path"));
        }
        for (i, entry) in self.entries.iter().enumerate() {
            let field = format!("entries[{i}]");
            if !entry.spiffe_id.is_in(&self.trust_domain) {
                return Err(invalid(&field, format!("{} is not in {}", entry.spiffe_id, self.trust_domain)));
            }
            if entry.selectors.is_empty() {
                return Err(invalid(&field, "at least one selector (uid, gid, exe) is required"));
            }
            if entry.selectors.exe.as_ref().is_some_and(|exe| !exe.is_absolute()) {
                return Err(invalid(&field, "exe must be an absolute path"));
            }
        }
        if !wimse_reqwest::secure_or_loopback(&self.issuer.url) {
            return Err(invalid("issuer.url", "must be https (http only on loopback)"));
        }
        for (i, entry) in self.entries.iter().enumerate() {
            // One identity is issued once, with one set of DNS names.
            if let Some(first) = self.entries[..i].iter().find(|e| e.spiffe_id == entry.spiffe_id)
                && first.dns_names != entry.dns_names
            {
                return Err(invalid(
                    format!("entries[{i}]"),
                    format!("{} is listed with other dns_names before", entry.spiffe_id),
                ));
            }
        }
        match (&self.issuer.token_file, &self.issuer.token_env) {
            (Some(_), Some(_)) => return Err(invalid("issuer", "token_file and token_env are exclusive")),
            (None, None) => return Err(invalid("issuer", "token_file or token_env is required")),
            _ => {}
        }
        let limits = &self.limits;
        if limits.max_connections == 0
            || limits.max_connections_per_uid == 0
            || limits.max_streams_per_uid == 0
            || limits.max_streams == 0
            || limits.max_streams_per_connection == 0
            || limits.max_request_bytes < 64
        {
            return Err(invalid("limits", "every limit must allow something"));
        }
        Ok(())
    }

    /// The distinct identities of the entries, in entry order.
    pub fn identities(&self) -> Vec<WorkloadId> {
        let mut ids: Vec<WorkloadId> = Vec::new();
        for entry in &self.entries {
            if !ids.contains(&entry.spiffe_id) {
                ids.push(entry.spiffe_id.clone());
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "socket": "/run/wimse/agent.sock",
            "trust_domain": "spiffe://prod.example",
            "issuer": {"url": "https://issuer.prod.example", "token_file": "/var/run/agent-token"},
            "entries": [{"spiffe_id": "spiffe://prod.example/payments", "selectors": {"uid": 1001}}]
        })
    }

    fn check(value: serde_json::Value) -> Result<AgentConfig> {
        AgentConfig::from_json(&value.to_string())
    }

    #[test]
    fn defaults_and_refusals() {
        let config = check(base()).unwrap();
        assert!(config.x509);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.identities().len(), 1);
        assert!(!format!("{:?}", config.issuer).contains("token\":"));
        let mut bad = Vec::new();
        let mut v = base();
        v["entries"][0]["selectors"] = json!({});
        bad.push((v, "at least one selector"));
        let mut v = base();
        v["entries"][0]["spiffe_id"] = "spiffe://other.example/x".into();
        bad.push((v, "is not in"));
        let mut v = base();
        v["entries"][0]["selectors"] = json!({"exe": "bin/app"});
        bad.push((v, "exe must be an absolute path"));
        let mut v = base();
        v["issuer"]["url"] = "http://issuer.prod.example".into();
        bad.push((v, "https"));
        let mut v = base();
        v["issuer"]["token_env"] = "T".into();
        bad.push((v, "exclusive"));
        let mut v = base();
        v["socket"] = "agent.sock".into();
        bad.push((v, "absolute"));
        let mut v = base();
        v["limits"] = json!({"max_streams_per_uid": 0});
        bad.push((v, "every limit"));
        let mut v = base();
        v["entries"][0]["selectors"]["pid"] = 5.into();
        bad.push((v, "unknown field"));
        let mut v = base();
        v["issuer"]["url"] = "http://localhost:80@issuer.evil.example/".into();
        bad.push((v, "https"));
        let mut v = base();
        v["entries"].as_array_mut().unwrap().push(
            json!({"spiffe_id": "spiffe://prod.example/payments", "selectors": {"gid": 5}, "dns_names": ["a.example"]}),
        );
        bad.push((v, "other dns_names"));
        for (value, expected) in bad {
            let error = check(value).unwrap_err().to_string();
            assert!(error.contains(expected), "{error} lacks {expected}");
        }
        let mut v = base();
        v["issuer"]["url"] = "http://127.0.0.1:8443".into();
        check(v).unwrap();
        let mut v = base();
        v["issuer"]["url"] = "http://[::1]:8443/".into();
        check(v).unwrap();
    }
}
