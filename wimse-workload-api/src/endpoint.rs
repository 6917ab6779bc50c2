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
        match self.clone() {
            Endpoint::Unix(path) => lazy.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
            })),
            Endpoint::Tcp(addr) => {
                lazy.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| async move {
                    tokio::net::TcpStream::connect(addr).await.map(hyper_util::rt::TokioIo::new)
                }))
            }
        }
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
