//! The egress signing proxy, for applications that cannot link the libraries: they send plain
//! HTTP through it (`HTTP_PROXY`, absolute-form requests), and it adds the gateway workload's
//! WIT + WPT or an HTTP signature for the real destination, with the same client layer a Rust
//! service uses ([`WimseSignLayer`]). Only configured destinations are signed for; a
//! `Txn-Token` goes only to those inside the trust domain; redirects are passed back to the
//! application, never followed with credentials; `CONNECT` is refused (nothing could be signed
//! inside a tunnel).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::client::sign::Signer;
use wimse_core::id::WorkloadId;
use wimse_core::protocol::trust::TrustStore;
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WicServerVerifier, WorkloadCertificate, certificates_from_pem, client_config,
};
use wimse_core::{Error, ErrorKind};
use wimse_tower::{Buffered, ProofMode, Streamed, WimseSign, WimseSignLayer};

use crate::config::{EgressProof, EgressSettings, UpgradeSettings};
use crate::error::GatewayError;
use crate::identity::IdentityHeaders;
use crate::reverse_proxy::{UpstreamClient, remove_hop_by_hop, upstream_client};
use crate::routes::normalize_authority;
use crate::server::{BoxError, GatewayBody, revealing_rejection};

/// Fields an application may not set on a request the gateway signs: the credentials are the
/// gateway's to write.
const CREDENTIAL_FIELDS: &[&str] = &["authorization", "workload-identity-token", "signature", "signature-input"];

/// The largest body an HTTP-signature destination is sent (it is buffered to be digested).
const SIGNED_BODY_LIMIT: usize = 8 << 20;

#[derive(Debug, Clone)]
struct Destination {
    scheme: String,
    authority: String,
    proof: EgressProof,
    /// The workload that must sign every response.
    signed_by: Option<WorkloadId>,
    /// Reached over TLS instead.
    upgrade: Option<Upgrade>,
}

/// A client over TLS to one destination (its server WIC checked, the gateway's own presented
/// for mutual TLS when configured).
type TlsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

#[derive(Debug, Clone)]
struct Upgrade {
    /// `https://host[:port]`: where requests go, and what the proofs name.
    origin: String,
    wpt: WimseSign<TlsClient<GatewayBody>, Streamed>,
    signatures: WimseSign<TlsClient<Full<Bytes>>, Buffered>,
}

/// The egress proxy of one configuration.
#[derive(Debug, Clone)]
pub(crate) struct Egress {
    destinations: Vec<Destination>,
    allowed_clients: Vec<IpAddr>,
    wpt: WimseSign<UpstreamClient, Streamed>,
    signatures: WimseSign<Client<HttpConnector, Full<Bytes>>, Buffered>,
    timeout: Duration,
}

/// The rustls client configuration of `upgrade`.
fn tls_config(upgrade: &UpgradeSettings) -> Result<rustls::ClientConfig, GatewayError> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| GatewayError::Config(format!("upgrade {}: {e}", path.display())))
    };
    let server: WorkloadId =
        upgrade.server.parse().map_err(|e| GatewayError::Config(format!("upgrade.server: {e}")))?;
    let anchors = WicAnchors::new();
    anchors.set(server.trust_domain(), certificates_from_pem(&read(&upgrade.trust_file)?)?)?;
    let verifier = WicServerVerifier::new(anchors.clone()).expect(move |_| Some(server.clone()));
    Ok(match (&upgrade.certificate_file, &upgrade.key_file) {
        (Some(chain), Some(key)) => {
            let certificate = WorkloadCertificate::from_pem(&read(chain)?, &read(key)?)?;
            client_config(verifier, CurrentCertificate::new(&certificate, anchors.provider().clone())?)?
        }
        (None, None) => rustls::ClientConfig::builder_with_provider(anchors.provider().clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
            .with_no_client_auth(),
        _ => return Err(GatewayError::Config("upgrade: certificate_file and key_file go together".into())),
    })
}

fn tls_client<B>(config: rustls::ClientConfig) -> TlsClient<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(wimse_tower::mtls_connector(config))
}

/// Calls a signing service once it is ready, within the timeout; its answer with a boxed body.
/// (A macro, not a generic async function: rustc cannot prove such a function's future `Send`
/// for the boxed error types involved.)
macro_rules! call {
    ($timeout:expr, $service:expr, $request:expr, $body:ty) => {{
        let mut service = $service;
        let request = $request;
        let sent = async move {
            std::future::poll_fn(|cx| Service::<Request<$body>>::poll_ready(&mut service, cx)).await?;
            let response = service.call(request).await?;
            Ok::<_, BoxError>(response.map(|body| body.map_err(Into::into).boxed_unsync()))
        };
        tokio::time::timeout($timeout, Box::pin(sent)).await
    }};
}

impl Egress {
    /// The egress proxy of `settings`, signing as `signer`, checking signed responses against
    /// `trust` (the anchors when the configuration was built).
    pub(crate) fn new(settings: &EgressSettings, signer: Signer, trust: TrustStore) -> Result<Self, GatewayError> {
        let mut destinations = Vec::new();
        let mut inside = Vec::new();
        for (i, destination) in settings.destinations.iter().enumerate() {
            let invalid = || {
                GatewayError::Config(format!(
                    "egress.destinations[{i}].origin {:?} is not http://host[:port]",
                    destination.origin
                ))
            };
            let origin = destination.origin.trim_end_matches('/');
            let (scheme, authority) = origin.split_once("://").ok_or_else(invalid)?;
            // Plain HTTP only for now: the application's request is forwarded as it names it.
            if scheme != "http" {
                return Err(invalid());
            }
            let authority = normalize_authority(scheme, authority).ok_or_else(invalid)?;
            let upgraded = match &destination.upgrade {
                Some(upgrade) => {
                    let to = upgrade.to.trim_end_matches('/');
                    let valid = to.strip_prefix("https://").and_then(|a| normalize_authority("https", a)).is_some();
                    if !valid {
                        return Err(GatewayError::Config(format!(
                            "egress.destinations[{i}].upgrade.to {to:?} is not https://host[:port]"
                        )));
                    }
                    let config = tls_config(upgrade)
                        .map_err(|e| GatewayError::Config(format!("egress.destinations[{i}].{e}")))?;
                    Some((to.to_owned(), config))
                }
                None => None,
            };
            // The Txn-Token goes where the request really goes, inside the trust domain.
            if destination.forward_txn_token {
                inside.push(upgraded.as_ref().map_or(origin, |(to, _)| to.as_str()).to_owned());
            }
            let signed_by = match &destination.response_signed_by {
                Some(_) if destination.proof != EgressProof::HttpSignature => {
                    return Err(GatewayError::Config(format!(
                        "egress.destinations[{i}].response_signed_by: only an HTTP-signature request can ask for a signed response"
                    )));
                }
                Some(id) => {
                    Some(id.parse::<WorkloadId>().map_err(|e| {
                        GatewayError::Config(format!("egress.destinations[{i}].response_signed_by: {e}"))
                    })?)
                }
                None => None,
            };
            destinations.push((
                Destination {
                    scheme: scheme.to_owned(),
                    authority,
                    proof: destination.proof,
                    signed_by,
                    upgrade: None,
                },
                upgraded,
            ));
        }
        let wpt_layer = WimseSignLayer::new(signer.clone()).trust_domain_origins(inside.clone());
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let buffered_client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        // A response must come signed by the workload its destination names (where the request
        // really goes: the upgraded origin, if any).
        let expected: Vec<(String, String, WorkloadId)> = destinations
            .iter()
            .filter_map(|(d, upgraded)| {
                let id = d.signed_by.clone()?;
                match upgraded {
                    Some((to, _)) => {
                        let authority = normalize_authority("https", to.strip_prefix("https://")?)?;
                        Some(("https".to_owned(), authority, id))
                    }
                    None => Some((d.scheme.clone(), d.authority.clone(), id)),
                }
            })
            .collect();
        let signature_layer = WimseSignLayer::new(signer)
            .trust_domain_origins(inside)
            .http_signatures()
            .signed_responses(trust)
            .expected_identity(move |uri: &http::Uri| {
                let (scheme, authority) = (uri.scheme_str()?, uri.authority()?.as_str());
                let authority = normalize_authority(scheme, authority)?;
                expected.iter().find(|(s, a, _)| s == scheme && *a == authority).map(|(_, _, id)| id.clone())
            })
            .body_limit(SIGNED_BODY_LIMIT);
        let destinations = destinations
            .into_iter()
            .map(|(mut destination, upgraded)| {
                destination.upgrade = upgraded.map(|(origin, config)| Upgrade {
                    origin,
                    wpt: wpt_layer.clone().layer(tls_client(config.clone())),
                    signatures: signature_layer.clone().layer(tls_client(config)),
                });
                destination
            })
            .collect();
        let timeout = Duration::from_millis(settings.upstream_timeout_ms.unwrap_or(30_000));
        Ok(Self {
            destinations,
            allowed_clients: settings.allowed_clients.clone(),
            wpt: wpt_layer.layer(upstream_client()),
            signatures: signature_layer.layer(buffered_client),
            timeout,
        })
    }

    /// A request that arrived on destination `index`'s own port, sent on to it: its
    /// origin-form target completed with the destination's scheme and authority.
    pub(crate) async fn handle_local(
        &self,
        index: usize,
        local: SocketAddr,
        peer: SocketAddr,
        identity: &IdentityHeaders,
        mut request: Request<Incoming>,
    ) -> Response<GatewayBody> {
        let Some(destination) = self.destinations.get(index) else {
            return revealing_rejection(&Error::new(ErrorKind::DestinationNotAllowed));
        };
        // A Host naming anything but this port (a DNS-rebinding page's own name) is refused.
        if let Some(host) = request.headers().get(http::header::HOST) {
            let names_this_port =
                host.to_str().ok().and_then(|h| h.parse::<http::uri::Authority>().ok()).is_some_and(|a| {
                    a.port_u16() == Some(local.port())
                        && (a.host().eq_ignore_ascii_case("localhost")
                            || a.host()
                                .trim_matches(['[', ']'])
                                .parse::<IpAddr>()
                                .is_ok_and(|ip| ip == local.ip() || ip.is_loopback()))
                });
            if !names_this_port {
                let detail = "the Host field does not name this port";
                return revealing_rejection(&Error::with_detail(ErrorKind::DestinationNotAllowed, detail));
            }
        }
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let uri = http::Uri::builder()
            .scheme(destination.scheme.as_str())
            .authority(destination.authority.as_str())
            .path_and_query(path)
            .build();
        match uri {
            Ok(uri) if request.uri().authority().is_none() => {
                *request.uri_mut() = uri;
                self.handle(peer, identity, request).await
            }
            _ => revealing_rejection(&Error::with_detail(
                ErrorKind::DestinationNotAllowed,
                "a destination's own port takes origin-form requests (GET /path)",
            )),
        }
    }

    fn destination(&self, uri: &http::Uri) -> Option<&Destination> {
        let (scheme, authority) = (uri.scheme_str()?, uri.authority()?.as_str());
        let authority = normalize_authority(scheme, authority)?;
        self.destinations.iter().find(|d| d.scheme == scheme && d.authority == authority)
    }

    /// Signs and forwards one request of the application.
    pub(crate) async fn handle(
        &self,
        peer: SocketAddr,
        identity: &IdentityHeaders,
        request: Request<Incoming>,
    ) -> Response<GatewayBody> {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if !self.allowed_clients.contains(&ip) {
            tracing::warn!(%peer, "wimse gateway: egress request from an address not in allowed_clients");
            let detail = "this address may not use the egress proxy (allowed_clients)";
            return revealing_rejection(&Error::with_detail(ErrorKind::DestinationNotAllowed, detail));
        }
        // A browser page must not get requests signed as this workload (a cross-site form, or
        // a page on a rebound name): applications do not send these fields.
        if ["origin", "sec-fetch-site", "sec-fetch-mode"].iter().any(|field| request.headers().contains_key(*field)) {
            let detail = "requests from a browser are refused";
            return revealing_rejection(&Error::with_detail(ErrorKind::DestinationNotAllowed, detail));
        }
        if request.method() == Method::CONNECT {
            tracing::info!("wimse gateway: egress CONNECT refused");
            return revealing_rejection(&Error::new(ErrorKind::TunnelRefused));
        }
        let Some(destination) = self.destination(request.uri()).cloned() else {
            let detail = if request.uri().authority().is_none() {
                "send absolute-form requests (set HTTP_PROXY to the gateway)"
            } else {
                "not a configured egress destination"
            };
            tracing::info!(reason = "destination_not_allowed", "wimse gateway: egress refused");
            return revealing_rejection(&Error::with_detail(ErrorKind::DestinationNotAllowed, detail));
        };
        let (mut parts, body) = request.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        identity.strip(&mut parts.headers);
        // The request goes to the destination as configured, whatever Host the application
        // wrote or however it spelled the authority (the proofs name it this way).
        parts.headers.remove(http::header::HOST);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let target = match &destination.upgrade {
            Some(upgrade) => format!("{}{path}", upgrade.origin),
            None => format!("{}://{}{path}", destination.scheme, destination.authority),
        };
        match target.parse() {
            Ok(uri) => parts.uri = uri,
            Err(_) => return revealing_rejection(&Error::new(ErrorKind::DestinationNotAllowed)),
        }
        for field in CREDENTIAL_FIELDS {
            parts.headers.remove(*field);
        }
        parts.version = http::Version::HTTP_11;
        if destination.signed_by.is_some() {
            parts.extensions.insert(ProofMode::HttpSignature { sign_response: true });
        }
        let request = Request::from_parts(parts, body);
        let sent = match (destination.proof, &destination.upgrade) {
            (EgressProof::Wpt, None) => {
                let request = request.map(|b| b.map_err(|e| -> BoxError { e.into() }).boxed_unsync());
                call!(self.timeout, self.wpt.clone(), request, GatewayBody)
            }
            (EgressProof::Wpt, Some(upgrade)) => {
                let request = request.map(|b| b.map_err(|e| -> BoxError { e.into() }).boxed_unsync());
                call!(self.timeout, upgrade.wpt.clone(), request, GatewayBody)
            }
            (EgressProof::HttpSignature, None) => call!(self.timeout, self.signatures.clone(), request, Incoming),
            (EgressProof::HttpSignature, Some(upgrade)) => {
                call!(self.timeout, upgrade.signatures.clone(), request, Incoming)
            }
        };
        match sent {
            Ok(Ok(mut response)) => {
                remove_hop_by_hop(response.headers_mut());
                response
            }
            Ok(Err(error)) => match error.downcast::<Error>() {
                // The signer refused (no credentials, a body too large to sign...): say why.
                Ok(error) => {
                    tracing::warn!(reason = error.kind().reason(), "wimse gateway: egress request not signed");
                    revealing_rejection(&error)
                }
                Err(error) => {
                    tracing::warn!(%error, "wimse gateway: egress destination unavailable");
                    revealing_rejection(&Error::new(ErrorKind::UpstreamUnavailable))
                }
            },
            Err(_) => revealing_rejection(&Error::new(ErrorKind::UpstreamTimeout)),
        }
    }
}
