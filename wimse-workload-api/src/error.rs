//! What can go wrong talking to a Workload API endpoint.

use std::path::PathBuf;

use crate::Endpoint;

/// A Workload API failure. Each variant says what to do about it: fix the configuration, wait,
/// or use another credential source.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    /// The endpoint address is not `unix:///absolute/path` or `tcp://IP:port`, or no address was
    /// configured and `SPIFFE_ENDPOINT_SOCKET` is unset.
    #[error("invalid Workload API endpoint: {0}")]
    InvalidEndpoint(String),
    /// The endpoint does not serve this profile (`Unimplemented`): a SPIRE agent without the
    /// WIT-SVID profile, say. Not retried.
    #[error("the Workload API endpoint does not implement {profile} (Unimplemented): {message}")]
    Unimplemented {
        /// `the WIT-SVID profile` or `the X.509-SVID profile`.
        profile: &'static str,
        /// The server's message.
        message: String,
    },
    /// The endpoint refused the request as malformed (`InvalidArgument`), which a correct
    /// client never causes. Not retried.
    #[error("the Workload API endpoint refused the request as invalid: {0}")]
    InvalidArgument(String),
    /// The endpoint has no identity for this process (`PermissionDenied`): no registration
    /// entry matches it. Retried with backoff, since entries can be added.
    #[error("the Workload API endpoint has no identity for this process (PermissionDenied): {0}")]
    PermissionDenied(String),
    /// Any other gRPC status (`Unavailable` while the endpoint starts or sheds load, ...).
    /// Retried with backoff.
    #[error("the Workload API endpoint answered {code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// Nothing exists at the socket's path (or a directory above it is missing): the agent is
    /// not running (yet), or the path is not the agent's. Retried with backoff: the agent may be
    /// starting.
    #[error(
        "no Workload API socket at {}: is the agent running? set SPIFFE_ENDPOINT_SOCKET (unix:///path) to its socket",
        path.display()
    )]
    NoSocket {
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// The socket's path (or a path component above it) exists but is not a Unix socket. Not
    /// retried: waiting does not make it one.
    #[error(
        "{} is not a Unix socket but {found}: SPIFFE_ENDPOINT_SOCKET must name the Workload API agent's socket",
        path.display()
    )]
    NotASocket {
        /// The path that is not a socket (the configured one, or the component above it that
        /// is not a directory).
        path: PathBuf,
        /// What it is: `a regular file`, `a directory`, ...
        found: &'static str,
    },
    /// The socket exists but this process may not connect to it (`EACCES`): it needs write
    /// permission on the socket and search permission on every directory above it. Retried
    /// with backoff (an agent sets the socket's permissions right after binding it).
    #[error(
        "this process may not connect to the Workload API socket at {} (permission denied): its user needs write permission on the socket and search permission on each directory above it",
        path.display()
    )]
    SocketAccessDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Nothing accepts connections at the endpoint: a socket file left by an agent that
    /// stopped, an agent restarting, or a TCP port nobody listens on. Retried with backoff.
    #[error(
        "nothing listens on the Workload API socket at {endpoint}: the agent is not running (the socket is left from an earlier run) or is restarting"
    )]
    NotListening {
        /// The endpoint.
        endpoint: Endpoint,
    },
    /// Connecting to the endpoint failed otherwise. Retried with backoff.
    #[error("cannot connect to the Workload API at {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: Endpoint,
        /// The operating system's error.
        reason: String,
    },
    /// The stream ended, or nothing arrived in time.
    #[error("the Workload API endpoint did not answer: {0}")]
    NoAnswer(String),
    /// A message broke the profile: an unparsable SVID, a key that is not the WIT's
    /// confirmation key, a bundle without `kid`s.
    #[error("invalid Workload API response: {0}")]
    InvalidResponse(String),
}

impl WorkloadApiError {
    /// Maps a gRPC status for `profile`. A status of a failed connection (from
    /// `Endpoint::channel`, with the `client` feature) is the connection's error:
    /// [`NoSocket`](Self::NoSocket), [`NotASocket`](Self::NotASocket),
    /// [`SocketAccessDenied`](Self::SocketAccessDenied), [`NotListening`](Self::NotListening)
    /// or [`Connect`](Self::Connect).
    pub fn from_status(status: &tonic::Status, profile: &'static str) -> Self {
        if let Some(error) = connect_error(status) {
            return error.clone();
        }
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::Unimplemented => Self::Unimplemented { profile, message },
            tonic::Code::InvalidArgument => Self::InvalidArgument(message),
            tonic::Code::PermissionDenied => Self::PermissionDenied(message),
            code => Self::Status { code, message },
        }
    }

    /// Whether trying again can help (everything but `Unimplemented`, `InvalidArgument`, a
    /// bad address and a path that is not a socket).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::InvalidEndpoint(_) | Self::Unimplemented { .. } | Self::InvalidArgument(_) | Self::NotASocket { .. }
        )
    }

    #[cfg(feature = "client")]
    /// Wraps this error into the `io::Error` a connector returns, so that
    /// [`from_status`](Self::from_status) finds it again in the status's sources.
    pub(crate) fn into_io(self, kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, self)
    }
}

/// The error `Endpoint::channel`'s connector returned, somewhere in `status`'s sources
/// (tonic and hyper wrap it).
fn connect_error(status: &tonic::Status) -> Option<&WorkloadApiError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = next {
        // An `io::Error`'s `source` skips the error it wraps: look inside it.
        let inner = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        if let Some(ours) = inner.and_then(|inner| inner.downcast_ref::<WorkloadApiError>()) {
            return Some(ours);
        }
        if let Some(ours) = error.downcast_ref::<WorkloadApiError>() {
            return Some(ours);
        }
        next = error.source();
    }
    None
}

impl From<WorkloadApiError> for wimse_core::Error {
    fn from(error: WorkloadApiError) -> Self {
        wimse_core::Error::with_detail(wimse_core::ErrorKind::CredentialsUnavailable, error.to_string())
    }
}
