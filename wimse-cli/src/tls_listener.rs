//! TLS for the identity server's listener: a certificate and key from PEM files, read again
//! when either file changes (a renewal by cert-manager or an ACME client needs no restart;
//! checked every [`RECHECK`] off the runtime's threads, never during a handshake),
//! and the accept loop that serves an axum router over it with each request's peer address
//! (`ConnectInfo`, for the per-source rate limits) and a graceful stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tower::ServiceExt as _;
use wimse_core::protocol::wic::{WicAnchors, WicClientVerifier};
use wimse_core::server::caller::TlsPeer;

/// How often the certificate and key files are checked for a change.
const RECHECK: Duration = Duration::from_secs(2);

/// The certificate and key files, and what was read from them (with their modification times).
#[derive(Debug)]
pub(crate) struct ReloadingCertificate {
    chain: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCertificate {
    /// Reads both files now (an error names the file).
    pub(crate) fn new(chain: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let (chain_time, key_time) = (modified(&chain), modified(&key));
        let certified = Self::read(&chain, &key, &provider)?;
        Ok(Self { chain, key, provider, loaded: RwLock::new((chain_time, key_time, Arc::new(certified))) })
    }

    fn read(chain: &PathBuf, key: &PathBuf, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
            .and_then(|certificates| certificates.collect::<Result<_, _>>())
            .map_err(|e| format!("--tls-cert {}: {e}", chain.display()))?;
        if certificates.is_empty() {
            return Err(format!("--tls-cert {}: no certificate", chain.display()));
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
        let signing =
            provider.key_provider.load_private_key(private).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
        let certified = CertifiedKey::new(certificates, signing);
        certified.keys_match().map_err(|e| format!("--tls-key {} does not match --tls-cert: {e}", key.display()))?;
        Ok(certified)
    }

    /// Checks the files every [`RECHECK`] on tokio's blocking pool (file I/O never runs on a
    /// runtime thread, nor during a handshake), until the configuration using it is dropped.
    pub(crate) fn watch(self: &Arc<Self>) {
        let watched = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECHECK).await;
                let Some(certificate) = watched.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || certificate.refresh()).await;
            }
        });
    }

    /// Reads the pair again if a file's modification time changed; a new pair that does not
    /// load is logged, and the one in use is kept. Blocking file I/O.
    fn refresh(&self) {
        let (chain_time, key_time) = (modified(&self.chain), modified(&self.key));
        let unchanged = self.loaded.read().map(|l| l.0 == chain_time && l.1 == key_time).unwrap_or(false);
        if !unchanged {
            match Self::read(&self.chain, &self.key, &self.provider) {
                Ok(certified) => {
                    tracing::info!(file = %self.chain.display(), "wimse: TLS certificate reloaded");
                    if let Ok(mut loaded) = self.loaded.write() {
                        *loaded = (chain_time, key_time, Arc::new(certified));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "wimse: the changed TLS certificate does not load; keeping the one in use");
                    // Not tried again until the files change again.
                    if let Ok(mut loaded) = self.loaded.write() {
                        loaded.0 = chain_time;
                        loaded.1 = key_time;
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded.read().map(|l| l.2.clone()).unwrap_or_else(|e| e.into_inner().2.clone()))
    }
}

/// What the TLS listener serves with: the rustls configuration, and the verifier of client
/// WICs when it asks for them.
#[derive(Clone)]
pub(crate) struct TlsSettings {
    config: Arc<rustls::ServerConfig>,
    client_wics: Option<Arc<WicClientVerifier>>,
}

/// A server configuration presenting `certificate`, HTTP/2 and 1.1; the files are watched for
/// a change from now on. With `client_wics`, a client may present a WIC verified against them
/// (optional: a client without one is served as before; one with an invalid one is refused),
/// and the WIC is verified again for every request (below), so a connection kept open past the
/// WIC's expiry or a change of authority carries no identity; sessions are then not resumed
/// (a resumed TLS 1.3 session would carry the old certificate without a verification).
pub(crate) fn server_config(
    certificate: ReloadingCertificate,
    client_wics: Option<WicAnchors>,
) -> Result<TlsSettings, String> {
    let certificate = Arc::new(certificate);
    certificate.watch();
    let builder = rustls::ServerConfig::builder_with_provider(certificate.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier = client_wics.map(|anchors| Arc::new(WicClientVerifier::new(anchors).optional()));
    let builder = match &verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if verifier.is_some() {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(TlsSettings { config: Arc::new(config), client_wics: verifier })
}

/// The workload a connection's client WIC names, verified now (its validity, the current
/// authority): `None` without a WIC, or when it no longer verifies.
fn client_wic_now(verifier: &WicClientVerifier, chain: &[CertificateDer<'static>]) -> Option<wimse_issuer::ClientWic> {
    use rustls::server::danger::ClientCertVerifier as _;
    let (leaf, intermediates) = chain.split_first()?;
    verifier.verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now()).ok()?;
    let peer = TlsPeer::from_verified_chain(chain).ok()?;
    Some(wimse_issuer::ClientWic(peer.caller().id().clone()))
}

/// Serves `app` over TLS on `listener` until `shutdown`, then lets connections finish their
/// requests (the caller bounds how long).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    settings: TlsSettings,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(settings.config.clone());
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "wimse issuer: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (acceptor, builder, watcher, app) = (acceptor.clone(), builder.clone(), graceful.watcher(), app.clone());
        let verifier = settings.client_wics.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "wimse issuer: TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            // A client WIC the handshake verified: checked again for each request below.
            let chain: Vec<CertificateDer<'static>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                if let Some(client_wic) = verifier.as_deref().and_then(|v| client_wic_now(v, &chain)) {
                    request.extensions_mut().insert(client_wic);
                }
                let app = app.clone();
                async move {
                    let response = match app.oneshot(request.map(axum::body::Body::new)).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = builder.serve_connection(TokioIo::new(tls), service).into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "wimse issuer: connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
