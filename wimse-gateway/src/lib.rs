//! A WIMSE gateway, so that every service joins a WIMSE call chain, whatever it is written in.
//!
//! - **Forward-auth** ([`config::ForwardAuthSettings`]): nginx `auth_request`, Caddy
//!   `forward_auth` and Traefik `forwardAuth` ask it about each request; it verifies the WIT and
//!   its WPT (or an HTTP signature that does not cover a body), the Txn-Token, the route's
//!   policy and the replay claim, against the original method, URI and host, and answers 200
//!   with the verified identity in header fields the proxy copies to the application, or the
//!   same 401/403 a Rust service would send.
//! - **Reverse proxy** ([`config::ReverseProxySettings`]): listens itself, verifies with the
//!   tower layer of `wimse-tower` (every proof mode, bodies of signed requests included), and
//!   forwards to each route's upstream, streaming the answer back.
//! - **Egress proxy** ([`config::EgressSettings`]): applications send plain HTTP through it
//!   (`HTTP_PROXY`) and it signs for configured destinations only, with the gateway workload's
//!   credentials (files a node agent keeps current, or the Workload API).
//!
//! In every mode, header fields named like the identity fields ([`config::IdentityHeaderNames`])
//! that arrive from outside are removed before the verified values are added. One file
//! configures it ([`GatewayConfig`]); [`Gateway::reload`] swaps in a new one without dropping
//! connections, and keeps the running one if the new one is refused.
//!
//! ```no_run
//! # async fn run() -> Result<(), wimse_gateway::GatewayError> {
//! let config = wimse_gateway::GatewayConfig::load("gateway.toml")?;
//! let gateway = wimse_gateway::Gateway::start(config).await?;
//! gateway.serve(async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
mod egress;
pub mod envoy;
mod error;
mod ext_authz;
mod forward_auth;
mod identity;
mod live;
mod reverse_proxy;
mod routes;
mod server;
mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;
use wimse_core::replay::{CallerQuota, DEFAULT_CALLER_QUOTA, InMemoryReplayStore};

pub use config::GatewayConfig;
pub use error::GatewayError;
pub use server::MAX_HEADER_BYTES;

use crate::live::Live;
use crate::reverse_proxy::{UpstreamClient, upstream_client};

/// Builds `config` as [`Gateway::start`] would (trust bundles fetched, the gateway's own
/// credentials obtained, TLS files read), binding and serving nothing: what `wimse gateway
/// validate` checks.
pub async fn validate(config: GatewayConfig) -> Result<(), GatewayError> {
    let quota = CallerQuota::new(config.verifier.caller_quota.unwrap_or(DEFAULT_CALLER_QUOTA));
    let claims = routes::Claims { store: Arc::new(InMemoryReplayStore::new(1)), quota: Arc::new(quota) };
    Live::build(config, &claims, &upstream_client()).await.map(drop)
}

/// The bound listeners, taken by [`Gateway::serve`].
#[derive(Debug, Default)]
struct Listeners {
    /// Egress destinations' own ports: (destination index, listener).
    destinations: Vec<(usize, TcpListener)>,
    forward_auth: Option<TcpListener>,
    ext_authz: Option<TcpListener>,
    reverse_proxy: Option<TcpListener>,
    egress: Option<TcpListener>,
}

#[derive(Debug)]
struct Shared {
    live: watch::Sender<Arc<Live>>,
    /// Shared by every route and kept across reloads: a reload never forgets a claimed proof.
    claims: routes::Claims,
    client: UpstreamClient,
    listeners: Mutex<Listeners>,
    /// forward-auth, reverse proxy, egress, ext_authz.
    addresses: [Option<SocketAddr>; 4],
    /// Egress destinations with a port of their own: (origin, address).
    destination_addresses: Vec<(String, SocketAddr)>,
}

/// A running gateway: its listeners are bound; [`serve`](Self::serve) answers on them. Cheap
/// to clone (a signal handler keeps one to [`reload`](Self::reload)).
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

async fn bind_destinations(config: &GatewayConfig) -> Result<Vec<(usize, TcpListener)>, GatewayError> {
    let mut bound = Vec::new();
    for (index, destination) in config.egress.iter().flat_map(|e| e.destinations.iter()).enumerate() {
        if let Some(listener) = bind(destination.listen).await? {
            bound.push((index, listener));
        }
    }
    Ok(bound)
}

async fn bind(address: Option<SocketAddr>) -> Result<Option<TcpListener>, GatewayError> {
    match address {
        Some(address) => {
            TcpListener::bind(address).await.map(Some).map_err(|source| GatewayError::Listen { address, source })
        }
        None => Ok(None),
    }
}

impl Gateway {
    /// Builds `config` (fetching the trust bundles it follows, starting egress credentials) and
    /// binds its listeners (port 0 picks a free port; see the `*_address` getters).
    pub async fn start(config: GatewayConfig) -> Result<Self, GatewayError> {
        if config.forward_auth.is_none()
            && config.ext_authz.is_none()
            && config.reverse_proxy.is_none()
            && config.egress.is_none()
        {
            return Err(GatewayError::Config(
                "nothing to serve: configure forward_auth, ext_authz, reverse_proxy or egress".into(),
            ));
        }
        // The quota's size is the first configuration's (a reload keeps the quota, with its
        // counts).
        let quota = CallerQuota::new(config.verifier.caller_quota.unwrap_or(DEFAULT_CALLER_QUOTA));
        let claims = routes::Claims { store: Arc::new(InMemoryReplayStore::default()), quota: Arc::new(quota) };
        let client = upstream_client();
        let live = Live::build(config, &claims, &client).await?;
        let listeners = Listeners {
            forward_auth: bind(live.config.forward_auth.as_ref().map(|f| f.listen)).await?,
            ext_authz: bind(live.config.ext_authz.as_ref().map(|e| e.listen)).await?,
            reverse_proxy: bind(live.config.reverse_proxy.as_ref().map(|r| r.listen)).await?,
            egress: bind(live.config.egress.as_ref().map(|e| e.listen)).await?,
            destinations: bind_destinations(&live.config).await?,
        };
        let address = |listener: &Option<TcpListener>| listener.as_ref().and_then(|l| l.local_addr().ok());
        let addresses = [
            address(&listeners.forward_auth),
            address(&listeners.reverse_proxy),
            address(&listeners.egress),
            address(&listeners.ext_authz),
        ];
        tracing::info!(
            routes = live.routes.len(),
            forward_auth = ?addresses[0],
            reverse_proxy = ?addresses[1],
            egress = ?addresses[2],
            ext_authz = ?addresses[3],
            "wimse gateway: started"
        );
        let origins: Vec<&str> =
            live.config.egress.iter().flat_map(|e| e.destinations.iter().map(|d| d.origin.as_str())).collect();
        let destination_addresses = listeners
            .destinations
            .iter()
            .filter_map(|(index, listener)| Some((origins.get(*index)?.to_string(), listener.local_addr().ok()?)))
            .collect();
        let shared = Shared {
            live: watch::Sender::new(Arc::new(live)),
            claims,
            client,
            listeners: Mutex::new(listeners),
            addresses,
            destination_addresses,
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Whether the running configuration can do its job now (what `/readyz` of `wimse gateway
    /// serve --metrics-listen` answers): every trust domain's anchors usable (a followed
    /// bundle not refreshed within its validity is stale) and, when egress or signed responses
    /// need them, the gateway's own credentials current. The reason otherwise.
    pub fn ready(&self) -> Result<(), String> {
        use wimse_core::time::Clock as _;
        self.shared.live.borrow().ready(wimse_core::time::SystemClock.now())
    }

    /// Where the forward-auth endpoint listens.
    pub fn forward_auth_address(&self) -> Option<SocketAddr> {
        self.shared.addresses[0]
    }

    /// Where the Envoy external authorization endpoint (gRPC) listens.
    pub fn ext_authz_address(&self) -> Option<SocketAddr> {
        self.shared.addresses[3]
    }

    /// Where the egress destination `origin` (as configured) takes requests on a port of its own.
    pub fn destination_address(&self, origin: &str) -> Option<SocketAddr> {
        self.shared.destination_addresses.iter().find(|(o, _)| o == origin).map(|(_, address)| *address)
    }

    /// Where the reverse proxy listens.
    pub fn reverse_proxy_address(&self) -> Option<SocketAddr> {
        self.shared.addresses[1]
    }

    /// Where the egress proxy listens.
    pub fn egress_address(&self) -> Option<SocketAddr> {
        self.shared.addresses[2]
    }

    /// Replaces the running configuration by `config` (routes, policies, trust, identity
    /// headers, egress destinations and credentials) for the requests that start after it;
    /// requests in flight finish under the old one, connections stay open. Listener addresses
    /// change only with a restart: a `config` that changes them is refused, as is one that
    /// does not build; either way the running configuration stays and the error says why.
    pub async fn reload(&self, config: GatewayConfig) -> Result<(), GatewayError> {
        let running = self.shared.live.borrow().clone();
        let listens = |c: &GatewayConfig| {
            (
                c.forward_auth.as_ref().map(|f| f.listen),
                c.ext_authz.as_ref().map(|e| e.listen),
                c.reverse_proxy.as_ref().map(|r| r.listen),
                c.egress.as_ref().map(|e| e.listen),
                c.egress.iter().flat_map(|e| e.destinations.iter().map(|d| d.listen)).collect::<Vec<_>>(),
            )
        };
        if listens(&config) != listens(&running.config) {
            return Err(GatewayError::Config("listener addresses change only with a restart".into()));
        }
        let live = Live::build(config, &self.shared.claims, &self.shared.client).await?;
        tracing::info!(routes = live.routes.len(), "wimse gateway: configuration reloaded");
        self.shared.live.send_replace(Arc::new(live));
        Ok(())
    }

    /// Answers on every listener until `shutdown` completes, then lets in-flight requests
    /// finish (30 s at most). Callable once.
    pub async fn serve(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), GatewayError> {
        let listeners = std::mem::take(&mut *self.shared.listeners.lock().unwrap_or_else(|e| e.into_inner()));
        if listeners.forward_auth.is_none()
            && listeners.ext_authz.is_none()
            && listeners.reverse_proxy.is_none()
            && listeners.egress.is_none()
        {
            return Err(GatewayError::Config("Gateway::serve was already called".into()));
        }
        let (stop, stopped) = watch::channel(());
        let stop_signal = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.changed().await;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = listeners.forward_auth {
            let shared = self.shared.clone();
            let handler = move |peer: SocketAddr, request| {
                let live = shared.live.borrow().clone();
                async move {
                    match &live.config.forward_auth {
                        Some(settings) => forward_auth::check(&live, settings, peer.ip(), request).await,
                        None => server::rejection(None, &wimse_core::ErrorKind::NoRoute.into()),
                    }
                }
            };
            // The configuration current at each connection decides TLS (a reload may add it).
            let shared = self.shared.clone();
            let tls: server::TlsSource = Arc::new(move || shared.live.borrow().forward_auth_tls.clone());
            tasks.spawn(server::serve("forward_auth", listener, handler, stop_signal(), Some(tls)));
        }
        if let Some(listener) = listeners.ext_authz {
            let server = envoy::auth::authorization_server::AuthorizationServer::new(ext_authz::ExtAuthz::new(
                self.shared.live.subscribe(),
            ));
            let handler = move |peer: SocketAddr, mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ext_authz::PeerIp(peer.ip()));
                let mut server = server.clone();
                async move {
                    use http_body_util::BodyExt as _;
                    use tower_service::Service as _;
                    match server.call(request).await {
                        Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
                        Err(never) => match never {},
                    }
                }
            };
            // The configuration current at each connection decides TLS (a reload may add it).
            let shared = self.shared.clone();
            let tls: server::TlsSource = Arc::new(move || shared.live.borrow().ext_authz_tls.clone());
            tasks.spawn(server::serve("ext_authz", listener, handler, stop_signal(), Some(tls)));
        }
        if let Some(listener) = listeners.reverse_proxy {
            let shared = self.shared.clone();
            let handler = move |peer: SocketAddr, request| {
                let live = shared.live.borrow().clone();
                async move { reverse_proxy::handle(&live, peer, request).await }
            };
            let shared = self.shared.clone();
            let tls: server::TlsSource = Arc::new(move || shared.live.borrow().proxy_tls.clone());
            tasks.spawn(server::serve("reverse_proxy", listener, handler, stop_signal(), Some(tls)));
        }
        for (index, listener) in listeners.destinations {
            let shared = self.shared.clone();
            let local = listener.local_addr().map_err(|e| GatewayError::Config(e.to_string()))?;
            let handler = move |peer: SocketAddr, request| {
                let live = shared.live.borrow().clone();
                async move {
                    match &live.egress {
                        Some(egress) => egress.handle_local(index, local, peer, &live.identity, request).await,
                        None => server::rejection(None, &wimse_core::ErrorKind::DestinationNotAllowed.into()),
                    }
                }
            };
            tasks.spawn(server::serve("egress", listener, handler, stop_signal(), None));
        }
        if let Some(listener) = listeners.egress {
            let shared = self.shared.clone();
            let handler = move |peer: SocketAddr, request| {
                let live = shared.live.borrow().clone();
                async move {
                    match &live.egress {
                        Some(egress) => egress.handle(peer, &live.identity, request).await,
                        None => server::rejection(None, &wimse_core::ErrorKind::DestinationNotAllowed.into()),
                    }
                }
            };
            tasks.spawn(server::serve("egress", listener, handler, stop_signal(), None));
        }
        shutdown.await;
        tracing::info!("wimse gateway: stopping; letting requests in flight finish");
        let _ = stop.send(());
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}
