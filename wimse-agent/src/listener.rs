//! The Unix socket: accepted connections are attested at once and carry that attestation;
//! connections over the per-uid or total limit are closed at once, so one workload cannot
//! exhaust the agent's file descriptors for the others. What a client sends goes through the
//! `:authority` rewriter (`authority.rs`) before h2 reads it.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use crate::attest::{Attestor, ConnectedPeer, PeerCredentials};
use crate::authority::Rewriter;
use crate::config::Limits;
use crate::slots::{Place, Places};

/// Binds `path`, replacing a stale socket file (and nothing else), readable and writable by
/// every local user: who gets what is decided by attestation, not by file permissions.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(listener)
}

/// An accepted connection and who is on the other end.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: UnixStream,
    peer: ConnectedPeer,
    rewriter: Rewriter,
    /// The client's bytes, `:authority` rewritten, waiting for h2 to read them.
    for_h2: BytesMut,
    _place: Place,
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ConnectedPeer;
    fn connect_info(&self) -> ConnectedPeer {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.for_h2.is_empty() {
                let n = this.for_h2.len().min(buf.remaining());
                buf.put_slice(&this.for_h2.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            let before = this.rewriter.rewritten;
            if let Err(error) = this.rewriter.feed(read.filled(), &mut this.for_h2) {
                let peer = &this.peer.credentials;
                metrics::counter!("wimse_agent_refused_total", "reason" => "http2_protocol_error").increment(1);
                tracing::debug!(uid = peer.uid, pid = peer.pid, %error, "wimse agent: HTTP/2 protocol error; connection closed");
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)));
            }
            if before == 0 && this.rewriter.rewritten > 0 {
                metrics::counter!("wimse_agent_authority_rewritten_total").increment(1);
                tracing::debug!(
                    uid = this.peer.credentials.uid,
                    "wimse agent: a client sent a :authority that is not one (its socket path); read as localhost"
                );
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections of `listener`, each attested by `attestor` as it is accepted, within `limits`.
pub(crate) fn incoming(
    listener: UnixListener,
    limits: Limits,
    attestor: Arc<Attestor>,
) -> impl futures_util::Stream<Item = std::io::Result<Connection>> {
    let places = Places::new(limits.max_connections, limits.max_connections_per_uid, "wimse_agent_connections");
    let accept_errors = Arc::new(wimse_core::health::Health::new(60));
    futures_util::stream::unfold(
        (listener, places, accept_errors, attestor),
        move |(listener, places, accept_errors, attestor)| async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, say: wait a little instead of spinning, and log it
                        // once, then once a minute.
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        if accept_errors.failed(now) != wimse_core::health::Report::Quiet {
                            tracing::warn!(%error, "wimse agent: accept failed");
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let accepted = std::time::Instant::now();
                let Ok(cred) = stream.peer_cred() else {
                    tracing::warn!("wimse agent: a connection without peer credentials; closed");
                    continue;
                };
                let peer = PeerCredentials { uid: cred.uid(), gid: cred.gid(), pid: cred.pid(), accepted };
                match places.take(peer.uid) {
                    Ok(place) => {
                        accept_errors.succeeded();
                        // Before anything is read from it: what ran the process when it connected.
                        let pidfd = crate::attest::peer_pidfd(&stream);
                        let attesting = attestor.clone();
                        let Ok(peer) =
                            tokio::task::spawn_blocking(move || attesting.attest_connection(peer, pidfd)).await
                        else {
                            continue;
                        };
                        let connection = Connection {
                            stream,
                            peer,
                            rewriter: Rewriter::default(),
                            for_h2: BytesMut::new(),
                            _place: place,
                        };
                        return Some((Ok(connection), (listener, places, accept_errors, attestor)));
                    }
                    Err(_) => {
                        metrics::counter!("wimse_agent_refused_total", "reason" => "connection_limit").increment(1);
                        tracing::debug!(
                            uid = peer.uid,
                            pid = peer.pid,
                            "wimse agent: connection limit reached; closed"
                        );
                    }
                }
            }
        },
    )
}
