//! Serving over TLS with mutual TLS (feature `tls`): each connection's verified client
//! Workload Identity Certificate becomes the [`TlsPeer`] of every request on it, which
//! [`WimseLayer`](crate::WimseLayer) turns into the [`Caller`](crate::Caller).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use wimse_core::server::caller::TlsPeer;

/// Accepts TLS connections on `listener` with `config` (see
/// [`wimse_core::protocol::wic::server_config`]) and serves `service` (an axum `Router`, say) on each.
/// Runs until the listener fails.
pub async fn serve<S, B>(listener: TcpListener, config: Arc<rustls::ServerConfig>, service: S) -> std::io::Result<()>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (stream, remote) = listener.accept().await?;
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::warn!(%remote, %error, "wimse: TLS handshake refused");
                    return;
                }
            };
            let peer = match tls.get_ref().1.peer_certificates().map(TlsPeer::from_verified_chain).transpose() {
                Ok(peer) => peer,
                Err(error) => {
                    tracing::warn!(%remote, reason = error.reason(), "wimse: peer certificate names no workload");
                    return;
                }
            };
            let per_connection = tower::service_fn(move |mut req: Request<Incoming>| {
                if let Some(peer) = &peer {
                    req.extensions_mut().insert(peer.clone());
                }
                service.clone().oneshot(req)
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(per_connection))
                .await;
            if let Err(error) = served {
                tracing::debug!(%remote, %error, "wimse: connection ended with an error");
            }
        });
    }
}
