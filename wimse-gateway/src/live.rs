//! What one configuration builds: the trust anchors (bundles followed), the routes with their
//! pipelines and reverse-proxy services, the identity headers and the egress proxy. A reload
//! builds a new one beside the running one and swaps it in only when it is complete.

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;
use wimse_core::client::sign::Signer;
use wimse_core::protocol::trust::TrustHandle;
use wimse_core::time::SystemClock;
use wimse_tower::WimseLayer;
use wimse_workload_api::{Endpoint, WitSvidSource};

use crate::config::GatewayConfig;
use crate::egress::Egress;
use crate::error::GatewayError;
use crate::identity::IdentityHeaders;
use crate::reverse_proxy::{Forward, RouteProxy, UpstreamClient};
use crate::routes::{Claims, RouteTable};

/// One configuration, running.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) config: GatewayConfig,
    pub(crate) routes: RouteTable,
    pub(crate) identity: Arc<IdentityHeaders>,
    /// Per route (in the table's order): its reverse-proxy service, if it has an upstream.
    pub(crate) proxies: Vec<Option<RouteProxy>>,
    pub(crate) egress: Option<Egress>,
    /// The anchors of client WICs an Envoy check's peer certificate is verified against.
    pub(crate) envoy_peers: Option<wimse_core::protocol::wic::WicAnchors>,
    /// The reverse proxy's TLS configuration, if it has one.
    pub(crate) proxy_tls: Option<Arc<rustls::ServerConfig>>,
    /// The forward-auth listener's TLS configuration, if it has one.
    pub(crate) forward_auth_tls: Option<Arc<rustls::ServerConfig>>,
    /// The ext_authz listener's TLS configuration, if it has one.
    pub(crate) ext_authz_tls: Option<Arc<rustls::ServerConfig>>,
    /// The trust anchors every route verifies against (followed bundles replace them).
    trust: TrustHandle,
    /// The gateway's own credentials, when egress or signed responses need them.
    own: Option<Signer>,
    /// The tasks following trust bundles and renewing the gateway's credentials; stopped when
    /// this configuration is replaced.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The revocation signals' receiver and poller (`signals`), held for as long as this
    /// configuration serves (dropping it stops polling); the revocations themselves are shared
    /// with the next configuration.
    _signals: Option<wimse_reqwest::SignalFeed>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Live {
    /// Whether this configuration can do its job now: some trust domain's anchors usable (a
    /// followed bundle that could not be refreshed goes stale; one stale federated domain among
    /// usable ones does not take the gateway out of service, its callers are refused 503), and,
    /// for a gateway that only signs outbound (egress, no inbound listener), its own credentials
    /// current. The reason otherwise.
    pub(crate) fn ready(&self, now: u64) -> Result<(), String> {
        let (usable, stale): (Vec<String>, Vec<String>) = self.trust.read(|store| {
            let (usable, stale): (Vec<_>, Vec<_>) = store.domains().partition(|(_, anchors)| anchors.usable_at(now));
            (
                usable.into_iter().map(|(domain, _)| domain.to_string()).collect(),
                stale.into_iter().map(|(domain, _)| domain.to_string()).collect(),
            )
        });
        if usable.is_empty() && !stale.is_empty() {
            return Err(format!("no trust anchors usable (stale or empty): {}", stale.join(", ")));
        }
        let inbound = self.config.forward_auth.is_some()
            || self.config.ext_authz.is_some()
            || self.config.reverse_proxy.is_some();
        if let Some(own) = self.own.as_ref().filter(|_| !inbound) {
            own.credentials().map_err(|e| format!("the gateway's own credentials: {e}"))?;
        }
        Ok(())
    }

    /// Builds everything `config` describes. `claims` and `client` outlive configurations.
    pub(crate) async fn build(
        config: GatewayConfig,
        claims: &Claims,
        client: &UpstreamClient,
    ) -> Result<Self, GatewayError> {
        config.check_plaintext()?;
        let trust = TrustHandle::new(config.verifier.trust_store()?);
        let sources = wimse_reqwest::fetch_bundles(&config.verifier, &trust, Arc::new(SystemClock)).await?;
        // The gateway's own workload: it signs egress requests and, where routes say so,
        // responses.
        let mut tasks: Vec<tokio::task::JoinHandle<()>> =
            sources.into_iter().map(|source| source.spawn(trust.clone())).collect();
        let own = if config.egress.is_some() || config.routes.iter().any(|r| r.sign_responses) {
            let (signer, renewal) = own_signer(&config).await?;
            tasks.extend(renewal);
            Some(signer)
        } else {
            None
        };
        // Before the routes: their verifiers share this feed's revocations. The gateway has no
        // push route: without a stream to poll, nothing would ever revoke.
        if config.signals.as_ref().is_some_and(|signals| signals.poll_url.is_none()) {
            return Err(GatewayError::Config(
                "signals.poll_url: the gateway polls its SETs (it has no push route)".into(),
            ));
        }
        let signals = config.signals.as_ref().map(wimse_reqwest::signals_from_settings).transpose()?;
        let revocations = signals.as_ref().map(|feed| feed.receiver().revocations());
        let routes = RouteTable::build(&config, &trust, claims, own.as_ref(), revocations)?;
        let identity = Arc::new(IdentityHeaders::new(&config.identity_headers)?);
        let timeout =
            Duration::from_millis(config.reverse_proxy.as_ref().and_then(|r| r.upstream_timeout_ms).unwrap_or(30_000));
        let proxies = routes
            .iter()
            .map(|route| {
                route.upstream().map(|upstream| {
                    let forward = Forward::new(client.clone(), upstream.clone(), identity.clone(), timeout);
                    WimseLayer::from(route.pipeline().clone()).layer(forward)
                })
            })
            .collect();
        let egress = match &config.egress {
            Some(settings) => {
                let signer = own.clone().ok_or_else(|| GatewayError::Config("egress needs credentials".into()))?;
                Some(Egress::new(settings, signer, trust.read(Clone::clone))?)
            }
            None => None,
        };
        let listener_tls = |tls: Option<&crate::config::TlsSettings>, field: &str| {
            tls.map(|tls| crate::tls::server_config(tls, field)).transpose()
        };
        let proxy_tls = listener_tls(config.reverse_proxy.as_ref().and_then(|r| r.tls.as_ref()), "reverse_proxy.tls")?;
        let forward_auth_tls =
            listener_tls(config.forward_auth.as_ref().and_then(|f| f.tls.as_ref()), "forward_auth.tls")?;
        let ext_authz_tls = listener_tls(config.ext_authz.as_ref().and_then(|e| e.tls.as_ref()), "ext_authz.tls")?;
        let envoy_peers = match config.ext_authz.as_ref().filter(|e| !e.client_trust.is_empty()) {
            Some(ext_authz) => Some(crate::tls::client_anchors(&ext_authz.client_trust, "ext_authz.client_trust")?),
            None => None,
        };
        Ok(Self {
            config,
            routes,
            identity,
            proxies,
            egress,
            envoy_peers,
            proxy_tls,
            forward_auth_tls,
            ext_authz_tls,
            trust,
            own,
            tasks,
            _signals: signals,
        })
    }
}

/// The gateway workload's own credentials: files, else an identity server (with the task
/// renewing them), else the Workload API.
async fn own_signer(config: &GatewayConfig) -> Result<(Signer, Option<tokio::task::JoinHandle<()>>), GatewayError> {
    if let Some(files) = &config.credentials {
        return Ok((Signer::new(files.build()?), None));
    }
    if let Some(server) = &config.identity_server {
        let bootstrap = wimse_reqwest::Bootstrap::TokenFile(server.token_file.clone());
        let credentials = wimse_reqwest::IssuerCredentials::connect(&server.url, &server.workload, bootstrap)
            .await
            .map_err(|e| GatewayError::Config(format!("identity_server: {e}")))?;
        let renewal = credentials.spawn_renewal();
        return Ok((Signer::new(credentials), Some(renewal)));
    }
    let endpoint = match &config.workload_api {
        Some(address) => Endpoint::parse(address),
        None => Endpoint::from_env(),
    }
    .map_err(|e| GatewayError::WorkloadApi(format!("the gateway's own credentials (egress, signed responses) need `credentials`, `identity_server` or a Workload API endpoint: {e}")))?;
    let source =
        WitSvidSource::builder(endpoint).start().await.map_err(|e| GatewayError::WorkloadApi(e.to_string()))?;
    Ok((Signer::new(source), None))
}
