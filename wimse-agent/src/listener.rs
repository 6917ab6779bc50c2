//! The Unix socket: accepted connections carry the peer's credentials; connections over the
//! per-uid or total limit are closed at once, so one workload cannot exhaust the agent's file
//! descriptors for the others.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use crate::attest::PeerCredentials;
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
    peer: PeerCredentials,
    _place: Place,
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = PeerCredentials;
    fn connect_info(&self) -> PeerCredentials {
        self.peer
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
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

/// The connections of `listener`, each with its peer credentials, within `limits`.
pub(crate) fn incoming(
    listener: UnixListener,
    limits: Limits,
) -> impl futures_util::Stream<Item = std::io::Result<Connection>> {
    let places = Places::new(limits.max_connections, limits.max_connections_per_uid, "wimse_agent_connections");
    let accept_errors = Arc::new(wimse_core::health::Health::new(60));
    futures_util::stream::unfold(
        (listener, places, accept_errors),
        move |(listener, places, accept_errors)| async move {
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
                        let connection = Connection { stream, peer, _place: place };
                        return Some((Ok(connection), (listener, places, accept_errors)));
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
