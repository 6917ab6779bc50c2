//! Envoy external authorization (`envoy.service.auth.v3.Authorization/Check`, gRPC): how Envoy,
//! Istio and Envoy Gateway ask about each request. The check request carries the original
//! method, path, host and header fields (and the body when the filter sets
//! `with_request_body`); the answer is OK with the identity fields to set and the spoofable ones
//! to remove, or denied with the status, `WWW-Authenticate` and problem body a Rust service
//! would send.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::watch;
use wimse_core::server::verify::RequestView;
use wimse_core::{Error, ErrorKind};

use crate::envoy::auth::attribute_context::HttpRequest;
use crate::envoy::auth::authorization_server::Authorization;
use crate::envoy::auth::check_response::HttpResponse;
use crate::envoy::auth::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use crate::envoy::core::header_value_option::HeaderAppendAction;
use crate::envoy::core::{HeaderValue as EnvoyHeader, HeaderValueOption};
use crate::envoy::rpc::Status;
use crate::envoy::types::HttpStatus;
use crate::live::Live;
use crate::server::MAX_HEADER_BYTES;

/// google.rpc codes of denied answers (Envoy only looks at whether it is OK).
const UNAUTHENTICATED: i32 = 16;
const PERMISSION_DENIED: i32 = 7;
const INVALID_ARGUMENT: i32 = 3;
const UNAVAILABLE: i32 = 14;

/// The address of the client of one gRPC call, set by the listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerIp(pub(crate) IpAddr);

/// The `Authorization` service over the running configuration.
#[derive(Debug, Clone)]
pub(crate) struct ExtAuthz {
    live: watch::Receiver<Arc<Live>>,
}

impl ExtAuthz {
    pub(crate) fn new(live: watch::Receiver<Arc<Live>>) -> Self {
        Self { live }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let live = self.live.borrow().clone();
        let peer = request.extensions().get::<PeerIp>().map(|p| p.0);
        Ok(tonic::Response::new(decide(&live, peer, request.into_inner()).await))
    }
}

/// The check of one request.
pub(crate) async fn decide(live: &Live, peer: Option<IpAddr>, request: CheckRequest) -> CheckResponse {
    let Some(settings) = &live.config.ext_authz else {
        return denied(None, &Error::new(ErrorKind::NoRoute));
    };
    let peer = peer.map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    });
    if !peer.is_some_and(|ip| settings.trusted_proxies.contains(&ip)) {
        tracing::warn!(?peer, "wimse gateway: ext_authz check from an address that is not a trusted proxy");
        return denied(None, &Error::new(ErrorKind::UntrustedForwarder));
    }
    let attributes = request.attributes.unwrap_or_default();
    let certificate = attributes.source.as_ref().map(|s| s.certificate.as_str()).filter(|c| !c.is_empty());
    let Some(http) = attributes.request.and_then(|r| r.http) else {
        return denied(None, &Error::with_detail(ErrorKind::OriginalRequestMissing, "no attributes.request.http"));
    };
    let headers = match header_map(&http) {
        Ok(headers) => headers,
        Err(error) => return denied(None, &error),
    };
    if let Err(error) = live.identity.refuse_lookalike(&headers) {
        return denied(None, &error);
    }
    // Envoy says when it cut the body at `max_request_bytes`: its digest cannot match.
    if headers.get("x-envoy-auth-partial-body").is_some_and(|v| v == "true") {
        let error =
            Error::with_detail(ErrorKind::BodyNotForwarded, "Envoy sent part of the body (allow_partial_message)");
        return denied(None, &error);
    }
    let scheme = (!http.scheme.is_empty()).then_some(http.scheme.as_str());
    let (_, route) = match live.routes.find(&http.host, &http.path, scheme) {
        Ok(found) => found,
        Err(error) => {
            tracing::info!(reason = error.kind().reason(), "wimse gateway: refused");
            return denied(None, &error);
        }
    };
    let body: Option<&[u8]> = if !http.raw_body.is_empty() {
        Some(&http.raw_body)
    } else if !http.body.is_empty() {
        Some(http.body.as_bytes())
    } else {
        None
    };
    let mut view = RequestView::new(&http.path, &headers).method(&http.method).authority(&http.host);
    if let Some(body) = body {
        view = view.body(body);
    }
    // The peer's certificate, verified here against the configured WIC anchors (never taken on
    // Envoy's word); ignored when none are configured.
    let tls_peer = match (certificate, &live.envoy_peers) {
        (Some(certificate), Some(anchors)) => match crate::tls::peer_from_envoy(anchors, certificate) {
            Ok(peer) => Some(peer),
            Err(error) => {
                tracing::info!(reason = error.kind().reason(), "wimse gateway: refused");
                return denied(Some(route.pipeline()), &error);
            }
        },
        _ => None,
    };
    match route.pipeline().check(&view, tls_peer.as_ref()).await {
        Ok(caller) => {
            let mut set = HeaderMap::new();
            if let Some(caller) = &caller {
                live.identity.answer(caller, &mut set);
            }
            let mut headers = Vec::new();
            let mut remove = Vec::new();
            for name in live.identity.names() {
                match set.get(name).filter(|v| !v.is_empty()) {
                    Some(value) => headers.push(option(name.as_str(), value.as_bytes())),
                    // Whatever the client sent under this name must not reach the application.
                    None => remove.push(name.as_str().to_owned()),
                }
            }
            CheckResponse {
                status: Some(Status { code: 0, message: String::new() }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    headers_to_remove: remove,
                    response_headers_to_add: Vec::new(),
                })),
            }
        }
        Err(error) => {
            let error = if error.kind() == &ErrorKind::BodyNotSupplied {
                Error::with_detail(
                    ErrorKind::BodyNotForwarded,
                    "set with_request_body on the ext_authz filter, or send a WPT",
                )
            } else {
                error
            };
            tracing::info!(route = route.origin(), reason = error.kind().reason(), "wimse gateway: refused");
            denied(Some(route.pipeline()), &error)
        }
    }
}

/// The request's header fields: `header_map` when Envoy sends it, else `headers`. Bounded
/// like a listener's: more than [`MAX_HEADER_BYTES`] in all is refused.
fn header_map(http: &HttpRequest) -> Result<HeaderMap, Error> {
    let too_large = || Error::with_detail(ErrorKind::OversizedToken, "the check request's header fields are too large");
    let mut total = 0usize;
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, value: &[u8]| -> Result<(), Error> {
        total += name.len() + value.len();
        if total > MAX_HEADER_BYTES {
            return Err(too_large());
        }
        // Pseudo-headers (`:path`, `:authority`) are in the other attributes.
        if name.starts_with(':') {
            return Ok(());
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::new(ErrorKind::InvalidHeaderValue))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| Error::new(ErrorKind::InvalidHeaderValue))?;
        headers.append(name, value);
        Ok(())
    };
    match &http.header_map {
        Some(map) if !map.headers.is_empty() => {
            for header in &map.headers {
                let value = if header.raw_value.is_empty() { header.value.as_bytes() } else { &header.raw_value };
                add(&header.key, value)?;
            }
        }
        _ => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes())?;
            }
        }
    }
    Ok(headers)
}

fn option(name: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(EnvoyHeader {
            key: name.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// A denied answer: the refusal's status, header fields and problem body.
fn denied(pipeline: Option<&wimse_core::server::pipeline::Pipeline>, error: &Error) -> CheckResponse {
    let rejection = match pipeline {
        Some(pipeline) => pipeline.rejection(error),
        None => wimse_core::server::framing::Rejection::from_error(error),
    };
    let status = rejection.status().as_u16();
    let code = match status {
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        400 => INVALID_ARGUMENT,
        503 => UNAVAILABLE,
        _ => PERMISSION_DENIED,
    };
    let headers = rejection.headers().iter().map(|(name, value)| option(name.as_str(), value.as_bytes())).collect();
    let body = String::from_utf8_lossy(&rejection.body()).into_owned();
    CheckResponse {
        // The reason only where the answer's body shows it too.
        status: Some(Status { code, message: rejection.problem().reason.unwrap_or("refused").to_owned() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(status) }),
            headers,
            body,
        })),
    }
}
