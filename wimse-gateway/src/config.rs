//! The gateway's one configuration file: JSON or TOML (by extension), in the settings format
//! the libraries read (`verifier`, `policy`, `credentials`), plus listeners, routes, egress
//! destinations and identity header names. `WIMSE_*` variables override the `verifier` part
//! as they do for any service ([`Settings::apply_env`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wimse_core::config::{
    AuditSettings, CredentialSettings, PolicySettings, Proofs, Settings, SignalSettings, VerifierSettings,
};

use crate::error::GatewayError;

/// Everything `wimse gateway serve --config FILE` reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// How inbound calls are verified (trust anchors, leeway, Txn-Tokens...). Its `origins`
    /// must be empty: each route names its own, so a proof for one service behind the gateway
    /// is never accepted for another.
    #[serde(default)]
    pub verifier: VerifierSettings,
    /// The policy of routes that name none.
    #[serde(default)]
    pub policy: Option<PolicySettings>,
    /// The services behind the gateway, matched by host and path prefix (the longest prefix
    /// wins).
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
    /// The forward-auth endpoint (nginx `auth_request`, Caddy `forward_auth`, Traefik
    /// `forwardAuth`).
    #[serde(default)]
    pub forward_auth: Option<ForwardAuthSettings>,
    /// Envoy external authorization (gRPC `envoy.service.auth.v3.Authorization/Check`): Envoy,
    /// Istio, Envoy Gateway.
    #[serde(default)]
    pub ext_authz: Option<ExtAuthzSettings>,
    /// The reverse proxy: verifies, then forwards to each route's `upstream`.
    #[serde(default)]
    pub reverse_proxy: Option<ReverseProxySettings>,
    /// The egress signing proxy for applications that cannot link the libraries.
    #[serde(default)]
    pub egress: Option<EgressSettings>,
    /// The header fields carrying the verified identity to the application.
    #[serde(default)]
    pub identity_headers: IdentityHeaderNames,
    /// The gateway's own credentials (egress, signed responses): files a node agent keeps
    /// current. Without them, the identity server of `identity_server`, else the Workload API
    /// at `workload_api` (or `SPIFFE_ENDPOINT_SOCKET`).
    #[serde(default)]
    pub credentials: Option<CredentialSettings>,
    /// The gateway's own credentials from an identity server, renewed before they expire.
    #[serde(default)]
    pub identity_server: Option<IdentityServerSettings>,
    /// The Workload API endpoint for egress credentials (`unix:///path`); default
    /// `SPIFFE_ENDPOINT_SOCKET`.
    #[serde(default)]
    pub workload_api: Option<String>,
    /// Listen beyond loopback without TLS (a network that is private or encrypted below the
    /// gateway, such as a service mesh). Without it, a listener on a non-loopback address
    /// needs `tls` (forward-auth, ext_authz, reverse proxy), and the egress proxy and
    /// destination ports (which have none: applications reach them on loopback) stay on
    /// loopback. Default false.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// A tamper-evident audit log of every decision of every route (one log, one writer, kept
    /// across reloads), as a service's `[audit]`.
    #[serde(default)]
    pub audit: Option<AuditSettings>,
    /// Revocation and risk signals, as a service's `[signals]`: every route refuses what the
    /// transmitter revokes; `poll_url` is polled (what the signals revoked is kept across
    /// reloads, and across restarts with `state_file`).
    #[serde(default)]
    pub signals: Option<SignalSettings>,
}

/// Where the gateway obtains its WIT (and renews it): an identity server's `/v1/wit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityServerSettings {
    /// The identity server's base URL (https, or http on loopback).
    pub url: String,
    /// The gateway's workload identifier.
    pub workload: String,
    /// A file holding the bootstrap token (a projected service-account token, re-read at every
    /// renewal, or a dev secret).
    pub token_file: PathBuf,
}

/// One service behind the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// The service's external origin (`https://payments.example`): proofs must name it (WPT
    /// `aud` = origin + path), and requests for its host (default port of its scheme implied)
    /// are matched against this route.
    pub origin: String,
    /// The path prefix (segment boundaries respected); default `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Accepted proofs; default the verifier's.
    #[serde(default)]
    pub proofs: Option<Proofs>,
    /// Who may call; default the top-level policy (none: any verified caller).
    #[serde(default)]
    pub policy: Option<PolicySettings>,
    /// Reverse-proxy mode: where verified requests go (`http://host:port`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Reverse-proxy mode: sign the response when an HTTP-signature caller asks for it
    /// (`wimse-sign-response`), as the gateway's workload (needs the gateway's credentials).
    /// Default false: such a caller is answered 501 `signed_response_unsupported`.
    #[serde(default)]
    pub sign_responses: bool,
}

/// Which fields of a forward-auth subrequest name the original request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OriginalRequestFields {
    /// `X-Original-Method`, `X-Original-URI`, `X-Original-Host`, `X-Original-Proto`, set by the
    /// nginx configuration (`proxy_set_header`, which replaces a client's own).
    #[default]
    XOriginal,
    /// `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`, `X-Forwarded-Proto`, set
    /// by Caddy's `forward_auth` and Traefik's `forwardAuth`.
    XForwarded,
}

/// The forward-auth endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthSettings {
    /// The address to listen on, e.g. `127.0.0.1:9100`.
    pub listen: SocketAddr,
    /// The proxies' addresses: a subrequest from any other is refused (403 untrusted_forwarder),
    /// since whoever sends it chooses which request is checked.
    pub trusted_proxies: Vec<IpAddr>,
    /// Which fields carry the original request (the other family is ignored, so a client
    /// cannot slip its own past the proxy). Default `x-original` (nginx).
    #[serde(default)]
    pub original_request: OriginalRequestFields,
    /// TLS on the listener (the proxy connects with `https://`); with
    /// `require_client_certificate`, the proxy must also present a certificate issued under
    /// `client_trust` (proxies authenticated by certificate as well as by address).
    /// Default: cleartext, loopback only unless `allow_plaintext`.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// The Envoy external authorization endpoint (gRPC over cleartext HTTP/2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzSettings {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The Envoy proxies' addresses: a check from any other is denied (whoever asks chooses
    /// which request is checked, and consumes its proof).
    pub trusted_proxies: Vec<IpAddr>,
    /// The CA certificates of client WICs, per trust domain: with them, the peer certificate
    /// Envoy reports (`source.certificate`, mutual TLS terminated by Envoy) is verified by the
    /// gateway against these anchors and, if it is a valid WIC, is the caller's `mtls` proof.
    /// Without them the attribute is ignored (such callers must send a WPT).
    #[serde(default)]
    pub client_trust: Vec<ClientTrustSettings>,
    /// TLS on the listener (gRPC over HTTP/2 with TLS; Envoy's `ext_authz` cluster then uses a
    /// TLS transport socket); with `require_client_certificate`, Envoy must present a
    /// certificate issued under the TLS settings' `client_trust`. Default: cleartext HTTP/2,
    /// loopback only unless `allow_plaintext`.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// The reverse proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseProxySettings {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Longest wait for an upstream's answer headers, milliseconds. Default 30000.
    #[serde(default)]
    pub upstream_timeout_ms: Option<u64>,
    /// TLS on the listener, with client WICs as mutual-TLS proofs. Default: cleartext.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// TLS on a listener: the gateway's Workload Identity Certificate, and the anchors of client
/// WICs (a client that presents one is authenticated by it: the `mtls` proof mode). Files are
/// read at start and on every reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The gateway's WIC chain (PEM, leaf first).
    pub certificate_file: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key_file: PathBuf,
    /// The CA certificates (PEM) of client WICs, per trust domain.
    #[serde(default)]
    pub client_trust: Vec<ClientTrustSettings>,
    /// Refuse connections without a client certificate. Default false: callers without one
    /// prove themselves per request (WPT, HTTP signature).
    #[serde(default)]
    pub require_client_certificate: bool,
}

/// The CA certificates of one trust domain's WICs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTrustSettings {
    /// The trust domain, e.g. `spiffe://prod.example`.
    pub trust_domain: String,
    /// Its CA certificates (PEM).
    pub file: PathBuf,
}

/// The egress signing proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSettings {
    /// The address applications send to (`HTTP_PROXY=http://this`, absolute-form requests).
    pub listen: SocketAddr,
    /// The only origins requests are signed and forwarded to; anything else is refused.
    pub destinations: Vec<DestinationSettings>,
    /// The applications' addresses: whoever reaches the egress proxy gets requests signed as
    /// the gateway's workload. Default loopback only (`127.0.0.1`, `::1`).
    #[serde(default = "loopback")]
    pub allowed_clients: Vec<IpAddr>,
    /// Longest wait for a destination's answer headers, milliseconds. Default 30000.
    #[serde(default)]
    pub upstream_timeout_ms: Option<u64>,
}

impl GatewayConfig {
    /// Refuses a listener beyond loopback without TLS unless `allow_plaintext` says so: the
    /// proofs, identity fields and bodies it carries would cross the network in the clear.
    pub(crate) fn check_plaintext(&self) -> Result<(), GatewayError> {
        if self.allow_plaintext {
            return Ok(());
        }
        let mut listeners: Vec<(String, SocketAddr, bool)> = Vec::new();
        if let Some(f) = &self.forward_auth {
            listeners.push(("forward_auth.listen".into(), f.listen, f.tls.is_some()));
        }
        if let Some(e) = &self.ext_authz {
            listeners.push(("ext_authz.listen".into(), e.listen, e.tls.is_some()));
        }
        if let Some(r) = &self.reverse_proxy {
            listeners.push(("reverse_proxy.listen".into(), r.listen, r.tls.is_some()));
        }
        if let Some(e) = &self.egress {
            listeners.push(("egress.listen".into(), e.listen, false));
            for (i, d) in e.destinations.iter().enumerate() {
                if let Some(listen) = d.listen {
                    listeners.push((format!("egress.destinations[{i}].listen"), listen, false));
                }
            }
        }
        match listeners.into_iter().find(|(_, address, tls)| !tls && !address.ip().is_loopback()) {
            Some((field, address, _)) => Err(GatewayError::Config(format!(
                "{field}: {address} is beyond loopback without TLS; give the listener `tls`, or set allow_plaintext = true if the network below is private or encrypted"
            ))),
            None => Ok(()),
        }
    }
}

fn loopback() -> Vec<IpAddr> {
    vec![IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)]
}

/// How proofs for a destination are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressProof {
    /// WIT + WPT (the body streams through).
    #[default]
    Wpt,
    /// WIT + HTTP message signature covering the body (buffered within a limit).
    HttpSignature,
}

/// One destination of the egress proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSettings {
    /// `scheme://authority` as the application names it (`http://orders.internal:8080`).
    pub origin: String,
    /// How the gateway proves its identity there; default WPT.
    #[serde(default)]
    pub proof: EgressProof,
    /// The destination is inside this workload's trust domain: the application's `Txn-Token`
    /// is passed on (bound into the proof). Elsewhere it is removed. Default false.
    #[serde(default)]
    pub forward_txn_token: bool,
    /// A local port of its own: an application that cannot use a proxy sends plain requests
    /// (origin-form, `GET /path`) to this address, and they go to `origin`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// HTTP-signature destinations: the workload that must sign every response (verified
    /// against the gateway's trust anchors; refused otherwise, naming the failed check).
    #[serde(default)]
    pub response_signed_by: Option<String>,
    /// Send the requests over TLS (or mutual TLS) instead: the application still names
    /// `origin` in plain HTTP, the gateway connects to `upgrade.to` and signs for it.
    #[serde(default)]
    pub upgrade: Option<UpgradeSettings>,
}

/// An egress destination reached over TLS: its server certificate must be a WIC of `server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSettings {
    /// Where requests really go: `https://host[:port]` (the proofs name this origin).
    pub to: String,
    /// The workload the destination's certificate must name.
    pub server: String,
    /// The CA certificates (PEM) of that workload's trust domain.
    pub trust_file: PathBuf,
    /// Mutual TLS: the gateway's client WIC chain (PEM) and key (PKCS#8 PEM).
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// The header fields the application receives; any of these arriving from outside is removed
/// first, in every mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaderNames {
    /// The caller's workload identifier. Default `x-wimse-caller`.
    pub caller: String,
    /// How it proved it: `wpt`, `http-signature` or `mtls`. Default `x-wimse-proof`.
    pub proof: String,
    /// The verified Txn-Token's transaction id (`txn`). Default `x-wimse-txn`.
    pub txn: String,
    /// The verified Txn-Token's subject. Default `x-wimse-txn-subject`.
    pub txn_subject: String,
    /// The verified Txn-Token's scope. Default `x-wimse-txn-scope`.
    pub txn_scope: String,
    /// The verified Txn-Token's delegation chain (`act`: the workloads acting for the subject,
    /// the current actor first), space-separated; empty when no one acts for the subject.
    /// Default `x-wimse-txn-actors`.
    pub txn_actors: String,
}

impl Default for IdentityHeaderNames {
    fn default() -> Self {
        Self {
            caller: "x-wimse-caller".into(),
            proof: "x-wimse-proof".into(),
            txn: "x-wimse-txn".into(),
            txn_subject: "x-wimse-txn-subject".into(),
            txn_scope: "x-wimse-txn-scope".into(),
            txn_actors: "x-wimse-txn-actors".into(),
        }
    }
}

impl GatewayConfig {
    /// Reads a JSON (`.json`) or TOML (any other extension) file; relative paths in it are
    /// relative to its directory. `WIMSE_*` variables then apply to the `verifier` part.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, GatewayError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| GatewayError::Config(format!("{}: {e}", path.display())))?;
        let mut config =
            if path.extension().is_some_and(|e| e == "json") { Self::from_json(&text) } else { Self::from_toml(&text) }
                .map_err(|e| GatewayError::Config(format!("{}: {e}", path.display())))?;
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        config = config.relative_to(&dir);
        config.apply_env_from(std::env::vars().collect::<Vec<_>>().iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Parses JSON.
    pub fn from_json(text: &str) -> Result<Self, GatewayError> {
        serde_json::from_str(text).map_err(|e| GatewayError::Config(e.to_string()))
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, GatewayError> {
        toml::from_str(text).map_err(|e| GatewayError::Config(e.to_string()))
    }

    /// Resolves relative file paths against `dir`.
    pub fn relative_to(mut self, dir: &Path) -> Self {
        let settings = self.settings().relative_to(dir);
        self.take_settings(settings);
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        if let Some(server) = &mut self.identity_server {
            resolve(&mut server.token_file);
        }
        for upgrade in self.egress.iter_mut().flat_map(|e| e.destinations.iter_mut()).filter_map(|d| d.upgrade.as_mut())
        {
            resolve(&mut upgrade.trust_file);
            if let Some(file) = &mut upgrade.certificate_file {
                resolve(file);
            }
            if let Some(file) = &mut upgrade.key_file {
                resolve(file);
            }
        }
        for trust in self.ext_authz.iter_mut().flat_map(|e| e.client_trust.iter_mut()) {
            resolve(&mut trust.file);
        }
        let listeners_tls = [
            self.reverse_proxy.as_mut().and_then(|r| r.tls.as_mut()),
            self.forward_auth.as_mut().and_then(|f| f.tls.as_mut()),
            self.ext_authz.as_mut().and_then(|e| e.tls.as_mut()),
        ];
        for tls in listeners_tls.into_iter().flatten() {
            resolve(&mut tls.certificate_file);
            resolve(&mut tls.key_file);
            for trust in &mut tls.client_trust {
                resolve(&mut trust.file);
            }
        }
        self
    }

    /// Applies `WIMSE_*` variables from `vars` to the `verifier`, `policy` and `credentials`
    /// parts, as [`Settings::apply_env_from`] does for a service.
    pub fn apply_env_from<'a>(
        mut self,
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, GatewayError> {
        let settings = self.settings().apply_env_from(vars).map_err(|e| GatewayError::Config(e.to_string()))?;
        self.take_settings(settings);
        Ok(self)
    }

    fn settings(&self) -> Settings {
        Settings {
            verifier: self.verifier.clone(),
            policy: self.policy.clone(),
            credentials: self.credentials.clone(),
            audit: self.audit.clone(),
            signals: self.signals.clone(),
        }
    }

    fn take_settings(&mut self, settings: Settings) {
        self.verifier = settings.verifier;
        self.policy = settings.policy;
        self.audit = settings.audit;
        self.signals = settings.signals;
        self.credentials = settings.credentials;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wimse_variables_and_the_files_directory_apply_to_the_gateways_file() {
        let text = r#"
[identity_server]
url = "https://issuer.example"
workload = "spiffe://prod.example/gateway"
token_file = "token"
[reverse_proxy]
listen = "127.0.0.1:0"
tls = { certificate_file = "gw.pem", key_file = "/abs/gw.key.pem" }
"#;
        let config = GatewayConfig::from_toml(text).unwrap().relative_to(Path::new("/etc/wimse"));
        assert_eq!(config.identity_server.as_ref().unwrap().token_file, Path::new("/etc/wimse/token"));
        let tls = config.reverse_proxy.as_ref().unwrap().tls.as_ref().unwrap();
        assert_eq!(tls.certificate_file, Path::new("/etc/wimse/gw.pem"));
        assert_eq!(tls.key_file, Path::new("/abs/gw.key.pem"), "absolute paths stay");
        let config = config.apply_env_from([("WIMSE_LEEWAY", "7"), ("UNRELATED", "x")]).unwrap();
        assert_eq!(config.verifier.leeway, Some(7));
        assert!(GatewayConfig::from_toml("[routes]\norigin = 1").is_err());
    }
}
