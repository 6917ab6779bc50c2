//! The listeners: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on hyper, with bounded
//! header sizes, the peer's address handed to the handler, and a graceful stop that lets
//! in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use wimse_core::Error;
use wimse_core::server::caller::TlsPeer;
use wimse_core::server::framing::Rejection;
use wimse_core::server::pipeline::Pipeline;

/// A boxed error, as tower and hyper carry them.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every answer the gateway gives (its own, or an upstream's streamed back).
pub(crate) type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// The most header bytes one HTTP/1.1 request may bring (hyper's buffer), and one HTTP/2
/// header list: a subrequest larger than this is refused before anything is parsed.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// How long in-flight requests may take to finish once the gateway stops.
const DRAIN: Duration = Duration::from_secs(30);

pub(crate) fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The answer to a refused request: status, `WWW-Authenticate`, problem body; as `pipeline`
/// answers (it may reveal reasons in development), or with the reason withheld as usual.
pub(crate) fn rejection(pipeline: Option<&Pipeline>, error: &Error) -> Response<GatewayBody> {
    let rejection = pipeline.map_or_else(|| Rejection::from_error(error), |p| p.rejection(error));
    let (parts, body) = rejection.into_response().into_parts();
    Response::from_parts(parts, full(body))
}

/// The answer to a refused request with its reason in the problem body: for the egress
/// proxy, whose callers are the gateway's own applications.
pub(crate) fn revealing_rejection(error: &Error) -> Response<GatewayBody> {
    let (parts, body) = Rejection::revealing(error).into_response().into_parts();
    Response::from_parts(parts, full(body))
}

/// Where a listener finds its TLS configuration for each new connection (the running
/// configuration's, so a reload applies to new connections); `None`: cleartext.
pub(crate) type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

/// The longest a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown`, then lets in-flight requests finish (30 s at most). With
/// `tls`, connections are TLS, and a verified client certificate becomes the [`TlsPeer`] of
/// each of its requests.
/// `mode` names the listener on each request's span (`forward_auth`, `ext_authz`,
/// `reverse_proxy`, `egress`).
pub(crate) async fn serve<H, F>(
    mode: &'static str,
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    tls: Option<TlsSource>,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<GatewayBody>> + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_HEADER_BYTES).timer(hyper_util::rt::TokioTimer::new());
    builder.http1().header_read_timeout(Duration::from_secs(30));
    builder.http2().max_header_list_size(MAX_HEADER_BYTES as u32);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "wimse gateway: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = move |tls_peer: Option<TlsPeer>| {
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                if let Some(tls_peer) = &tls_peer {
                    request.extensions_mut().insert(tls_peer.clone());
                }
                // One span per request (exported over OTLP when configured); the verified
                // caller and transaction are recorded on it when the identity is written out.
                let span = tracing::info_span!(
                    "wimse.gateway.request",
                    otel.name = %format!("{mode} {}", request.method()),
                    otel.kind = "server",
                    wimse.mode = mode,
                    http.request.method = %request.method(),
                    url.path = request.uri().path(),
                    http.response.status_code = tracing::field::Empty,
                    wimse.caller = tracing::field::Empty,
                    wimse.proof = tracing::field::Empty,
                    wimse.txn = tracing::field::Empty,
                );
                let answer = tracing::Instrument::instrument(handler(peer, request), span.clone());
                async move {
                    let answer = answer.await;
                    span.record("http.response.status_code", answer.status().as_u16());
                    Ok::<_, Infallible>(answer)
                }
            })
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let tls_config = tls.as_ref().and_then(|source| source());
        tokio::spawn(async move {
            let served = match tls_config {
                None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service(None)).into_owned()).await,
                Some(config) => {
                    let accepted = tokio::time::timeout(HANDSHAKE, TlsAcceptor::from(config).accept(stream)).await;
                    let tls = match accepted {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::info!(%peer, %error, "wimse gateway: TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "wimse gateway: TLS handshake took too long");
                            return;
                        }
                    };
                    let tls_peer = match tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(TlsPeer::from_verified_chain)
                        .transpose()
                    {
                        Ok(tls_peer) => tls_peer,
                        Err(error) => {
                            tracing::info!(%peer, reason = error.reason(), "wimse gateway: client certificate names no workload");
                            return;
                        }
                    };
                    watcher.watch(builder.serve_connection(TokioIo::new(tls), service(tls_peer)).into_owned()).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "wimse gateway: connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("wimse gateway: requests still running after {DRAIN:?}; stopping anyway");
    }
}
