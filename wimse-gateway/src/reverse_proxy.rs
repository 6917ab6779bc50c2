//! Reverse-proxy mode, for hosts without a proxy of their own: each route's requests go
//! through the same tower layer a Rust service uses ([`WimseLayer`]: every proof mode, bodies
//! of signed requests checked, responses signed when asked), then to the route's upstream
//! over a pooled client, the answer streamed back.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HOST, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;
use wimse_core::server::caller::VerifiedCaller;
use wimse_core::{Error, ErrorKind};
use wimse_tower::{WimseRequestBody, WimseService};

use crate::identity::IdentityHeaders;
use crate::live::Live;
use crate::server::{GatewayBody, rejection};

/// The pooled client to upstreams (plain HTTP/1.1).
pub(crate) type UpstreamClient = Client<HttpConnector, GatewayBody>;

/// A new pooled client.
pub(crate) fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

/// Header fields that describe one connection, not the message: never forwarded (RFC 9110
/// §7.6.1), nor are the fields `Connection` names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Sends a verified request to the route's upstream, with the identity fields added.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    client: UpstreamClient,
    upstream: http::Uri,
    identity: Arc<IdentityHeaders>,
    timeout: Duration,
}

impl Forward {
    pub(crate) fn new(
        client: UpstreamClient,
        upstream: http::Uri,
        identity: Arc<IdentityHeaders>,
        timeout: Duration,
    ) -> Self {
        Self { client, upstream, identity, timeout }
    }
}

impl Service<Request<WimseRequestBody<Incoming>>> for Forward {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<WimseRequestBody<Incoming>>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let caller = parts.extensions.get::<VerifiedCaller>();
        self.identity.write(caller, &mut parts.headers);
        let mut target = http::uri::Builder::new();
        if let (Some(scheme), Some(authority)) = (self.upstream.scheme(), self.upstream.authority()) {
            target = target.scheme(scheme.clone()).authority(authority.clone());
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match target.path_and_query(path).build() {
            Ok(uri) => uri,
            Err(_) => return Box::pin(async { Ok(rejection(None, &Error::new(ErrorKind::UpstreamUnavailable))) }),
        };
        parts.version = http::Version::HTTP_11;
        let body = body.boxed_unsync();
        let sent = self.client.request(Request::from_parts(parts, body));
        let timeout = self.timeout;
        Box::pin(async move {
            Ok(match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(response)) => {
                    let (mut parts, body) = response.into_parts();
                    remove_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "wimse gateway: upstream unavailable");
                    rejection(None, &Error::new(ErrorKind::UpstreamUnavailable))
                }
                Err(_) => {
                    tracing::warn!(?timeout, "wimse gateway: upstream did not answer in time");
                    rejection(None, &Error::new(ErrorKind::UpstreamTimeout))
                }
            })
        })
    }
}

/// The tower layer of one route around its [`Forward`].
pub(crate) type RouteProxy = WimseService<Forward>;

/// Handles one request to the reverse proxy.
pub(crate) async fn handle(live: &Live, peer: SocketAddr, request: Request<Incoming>) -> Response<GatewayBody> {
    let (mut parts, body) = request.into_parts();
    if let Err(error) = live.identity.refuse_lookalike(&parts.headers) {
        return rejection(None, &error);
    }
    live.identity.strip(&mut parts.headers);
    remove_hop_by_hop(&mut parts.headers);
    // The authority that is routed and verified is the one the application sees: a Host that
    // differs from the request target's (HTTP/1 absolute form, HTTP/2 `:authority`) is refused.
    let host = parts.headers.get(HOST).map(|h| h.to_str().unwrap_or("\u{0}").to_owned());
    let authority = match (parts.uri.authority(), host) {
        (Some(authority), Some(host)) if !authority.as_str().eq_ignore_ascii_case(&host) => {
            let error = Error::with_detail(ErrorKind::InvalidHeaderValue, "Host differs from the request target");
            return rejection(None, &error);
        }
        (Some(authority), _) => authority.as_str().to_owned(),
        (None, Some(host)) => host,
        (None, None) => String::new(),
    };
    match HeaderValue::from_str(&authority) {
        Ok(value) => {
            parts.headers.insert(HOST, value);
        }
        Err(_) => return rejection(None, &Error::new(ErrorKind::InvalidHeaderValue)),
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let (index, route) = match live.routes.find(&authority, &path, None) {
        Ok(found) => found,
        Err(error) => {
            tracing::info!(reason = error.kind().reason(), "wimse gateway: refused");
            return rejection(None, &error);
        }
    };
    let Some(mut proxy) = live.proxies.get(index).cloned().flatten() else {
        let error = Error::with_detail(ErrorKind::NoRoute, "this route has no upstream");
        return rejection(Some(route.pipeline()), &error);
    };
    let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
    let answer = match std::future::poll_fn(|cx| proxy.poll_ready(cx)).await {
        Ok(()) => proxy.call(Request::from_parts(parts, body)).await,
        Err(never) => match never {},
    };
    match answer {
        Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
        Err(never) => match never {},
    }
}
