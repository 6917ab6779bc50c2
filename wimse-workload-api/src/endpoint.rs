//! Where the Workload API is: `unix:///absolute/path` or `tcp://IP:port`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::WorkloadApiError;

/// The environment variable that names the Workload API endpoint (SPIFFE Workload Endpoint).
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// A Workload API endpoint address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix domain socket (the usual node-local endpoint).
    Unix(PathBuf),
    /// A TCP address (an IP address, not a host name, as the standard asks).
    Tcp(SocketAddr),
}

impl Endpoint {
    /// Parses `unix:///absolute/path` (also `unix:/absolute/path`) or `tcp://IP:port`. Query
    /// strings, fragments, user info and relative paths are refused.
    pub fn parse(address: &str) -> Result<Self, WorkloadApiError> {
        let invalid = |why: &str| WorkloadApiError::InvalidEndpoint(format!("{address:?}: {why}"));
        if address.contains(['?', '#']) {
            return Err(invalid("no query or fragment allowed"));
        }
        if let Some(rest) = address.strip_prefix("unix:") {
            // `unix:///path` has an empty authority; `unix:/path` has none.
            let path = match rest.strip_prefix("//") {
                Some(after) if after.starts_with('/') => after,
                Some(_) => return Err(invalid("a unix endpoint has no authority (use unix:///path)")),
                None => rest,
            };
            if !path.starts_with('/') || path.len() < 2 {
                return Err(invalid("the socket path must be absolute"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = address.strip_prefix("tcp://") {
            let addr: SocketAddr = rest.trim_end_matches('/').parse().map_err(|_| invalid("expected tcp://IP:port"))?;
            return Ok(Endpoint::Tcp(addr));
        }
        Err(invalid("the scheme must be unix or tcp"))
    }

    /// The endpoint in `SPIFFE_ENDPOINT_SOCKET`.
    pub fn from_env() -> Result<Self, WorkloadApiError> {
        let value = std::env::var(ENDPOINT_ENV)
            .map_err(|_| WorkloadApiError::InvalidEndpoint(format!("{ENDPOINT_ENV} is not set")))?;
        Self::parse(&value)
    }

    /// Opens a gRPC channel to the endpoint. The connection is made lazily and re-made after a
    /// failure, so a channel outlives a restarted agent.
    #[cfg(feature = "client")]
    pub fn channel(&self) -> tonic::transport::Channel {
        // The URI is only a placeholder: the connector below decides where to connect.
        // HTTP/2 pings find a dead endpoint (a half-open TCP connection), so a stream that can
        // no longer deliver rotations or revocations ends and is re-opened.
        let lazy = tonic::transport::Endpoint::from_static("http://workload-api.localhost")
            .connect_timeout(std::time::Duration::from_secs(5))
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true);
        // A failed connection is told as what is wrong with the endpoint (see
        // `WorkloadApiError::from_status`), not as the operating system's bare error.
        match self.clone() {
            Endpoint::Unix(path) => lazy.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    match tokio::net::UnixStream::connect(&path).await {
                        Ok(stream) => Ok(hyper_util::rt::TokioIo::new(stream)),
                        Err(error) => Err(unix_connect_error(&path, error).await),
                    }
                }
            })),
            Endpoint::Tcp(addr) => {
                lazy.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| async move {
                    match tokio::net::TcpStream::connect(addr).await {
                        Ok(stream) => Ok(hyper_util::rt::TokioIo::new(stream)),
                        Err(error) => Err(tcp_connect_error(addr, error)),
                    }
                }))
            }
        }
    }
}

/// What a failed `connect` to the socket at `path` means. The file is looked at after the
/// failure only to tell the cases apart (`connect` answers `ECONNREFUSED` both for a socket
/// nobody listens on and for a file that is not a socket).
#[cfg(feature = "client")]
async fn unix_connect_error(path: &std::path::Path, error: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind;
    let kind = error.kind();
    let classified = match kind {
        ErrorKind::NotFound => WorkloadApiError::NoSocket { path: path.to_owned() },
        ErrorKind::PermissionDenied => WorkloadApiError::SocketAccessDenied { path: path.to_owned() },
        ErrorKind::ConnectionRefused => match tokio::fs::metadata(path).await {
            Ok(meta) if is_socket(&meta) => {
                WorkloadApiError::NotListening { endpoint: Endpoint::Unix(path.to_owned()) }
            }
            Ok(meta) => WorkloadApiError::NotASocket { path: path.to_owned(), found: file_kind(&meta) },
            // Removed since.
            Err(_) => WorkloadApiError::NoSocket { path: path.to_owned() },
        },
        // A component above the socket is not a directory: name the one that is a file.
        ErrorKind::NotADirectory => {
            let mut found = None;
            for ancestor in path.ancestors().skip(1) {
                if let Ok(meta) = tokio::fs::metadata(ancestor).await
                    && !meta.is_dir()
                {
                    found = Some(WorkloadApiError::NotASocket { path: ancestor.to_owned(), found: file_kind(&meta) });
                    break;
                }
            }
            found.unwrap_or_else(|| WorkloadApiError::NoSocket { path: path.to_owned() })
        }
        _ => WorkloadApiError::Connect { endpoint: Endpoint::Unix(path.to_owned()), reason: error.to_string() },
    };
    classified.into_io(kind)
}

#[cfg(feature = "client")]
fn tcp_connect_error(addr: SocketAddr, error: std::io::Error) -> std::io::Error {
    let kind = error.kind();
    let classified = match kind {
        std::io::ErrorKind::ConnectionRefused => WorkloadApiError::NotListening { endpoint: Endpoint::Tcp(addr) },
        _ => WorkloadApiError::Connect { endpoint: Endpoint::Tcp(addr), reason: error.to_string() },
    };
    classified.into_io(kind)
}

#[cfg(feature = "client")]
fn is_socket(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_socket()
}

/// What a path that is not a socket is, for the error message.
#[cfg(feature = "client")]
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_fifo() {
        "a named pipe"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "another kind of file"
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = WorkloadApiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_standard_forms_only() {
        assert_eq!(
            Endpoint::parse("unix:///run/spire/agent.sock").unwrap(),
            Endpoint::Unix("/run/spire/agent.sock".into())
        );
        assert_eq!(Endpoint::parse("unix:/tmp/a.sock").unwrap(), Endpoint::Unix("/tmp/a.sock".into()));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:8081").unwrap(), Endpoint::Tcp("127.0.0.1:8081".parse().unwrap()));
        assert_eq!(Endpoint::parse("tcp://[::1]:8081").unwrap().to_string(), "tcp://[::1]:8081");
        assert_eq!(Endpoint::parse("unix:///a/b.sock").unwrap().to_string(), "unix:///a/b.sock");
        for bad in [
            "unix://host/path.sock",
            "unix:relative.sock",
            "unix:///",
            "unix:///a.sock?x=1",
            "tcp://localhost:80",
            "tcp://127.0.0.1",
            "http://127.0.0.1:80",
            "",
        ] {
            assert!(matches!(Endpoint::parse(bad), Err(WorkloadApiError::InvalidEndpoint(_))), "{bad}");
        }
    }
}
