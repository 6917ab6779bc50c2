//! What can go wrong talking to a Workload API endpoint.

/// A Workload API failure. Each variant says what to do about it: fix the configuration, wait,
/// or use another credential source.
#[derive(Debug, thiserror::Error)]
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
    /// The stream ended, or nothing arrived in time.
    #[error("the Workload API endpoint did not answer: {0}")]
    NoAnswer(String),
    /// A message broke the profile: an unparsable SVID, a key that is not the WIT's
    /// confirmation key, a bundle without `kid`s.
    #[error("invalid Workload API response: {0}")]
    InvalidResponse(String),
}

impl WorkloadApiError {
    /// Maps a gRPC status for `profile`.
    pub fn from_status(status: &tonic::Status, profile: &'static str) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::Unimplemented => Self::Unimplemented { profile, message },
            tonic::Code::InvalidArgument => Self::InvalidArgument(message),
            tonic::Code::PermissionDenied => Self::PermissionDenied(message),
            code => Self::Status { code, message },
        }
    }

    /// Whether trying again can help (everything but `Unimplemented`, `InvalidArgument` and a
    /// bad address).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::InvalidEndpoint(_) | Self::Unimplemented { .. } | Self::InvalidArgument(_))
    }
}

impl From<WorkloadApiError> for wimse_core::Error {
    fn from(error: WorkloadApiError) -> Self {
        wimse_core::Error::with_detail(wimse_core::ErrorKind::CredentialsUnavailable, error.to_string())
    }
}
