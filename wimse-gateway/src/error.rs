//! Why the gateway could not start or reload. Refusals of requests are `wimse_core::Error`s,
//! answered as every adapter answers them.

/// A configuration the gateway cannot run (at start, or on SIGHUP: then the running one stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The file is unreadable, not JSON/TOML of the expected shape, or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// Trust anchors, a policy, or credentials could not be set up.
    #[error("{0}")]
    Setup(#[from] wimse_core::Error),
    /// A listener could not be bound.
    #[error("listening on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Workload API gave no credentials.
    #[error("workload API: {0}")]
    WorkloadApi(String),
}
