//! The outbound path: credentials in, `Workload-Identity-Token` and `Authorization: WPT` out.

use std::fmt;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Uri};

use crate::client::cred::CredentialSource;
use crate::draft::{TXN_TOKEN_HEADER, WIT_HEADER, WPT_AUTH_SCHEME};
use crate::error::{Error, ErrorKind, Result};
use crate::jose::Backend;
use crate::protocol::httpsig::{self, RequestParts, RequestSignature, SignOptions};
use crate::protocol::wpt::WptBuilder;
use crate::time::{Clock, SystemClock};

/// The audience of a request to `uri`: scheme, authority and path, without query and fragment
/// (wpt-02 §2). `None` for a URI without scheme or authority.
pub fn audience_for(uri: &Uri) -> Option<String> {
    Some(format!("{}://{}{}", uri.scheme_str()?, uri.authority()?, uri.path()))
}

/// A request extension that sets the audience of one outgoing request, overriding the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceOverride(pub String);

/// Signs outgoing requests with the workload's current credentials. Cheap to clone.
///
/// ```
/// use wimse_core::prelude::*;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let issuer = SigningKey::generate(Algorithm::ES256)?;
/// # let key = SigningKey::generate(Algorithm::ES256)?;
/// # let now = 1_800_000_000;
/// # let wit = WitIssuer::new(issuer).issue(&"spiffe://prod.example/orders".parse()?, key.public_jwk(), now)?;
/// let signer = Signer::new(StaticCredentials::new(Credentials::new(wit, key)?)).clock(FixedClock::new(now));
/// let mut headers = http::HeaderMap::new();
/// signer.sign_headers(&mut headers, "https://payments.example/charge")?;
/// assert!(headers.contains_key("workload-identity-token"));
/// assert!(headers["authorization"].to_str()?.starts_with("WPT "));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Signer {
    source: Arc<dyn CredentialSource>,
    lifetime: u64,
    context_tokens: Arc<[String]>,
    clock: Arc<dyn Clock>,
    backend: Backend,
    health: Arc<crate::health::Health>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("source", &self.source).field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer using `source`, with 60-second proofs.
    pub fn new(source: impl CredentialSource + 'static) -> Self {
        Self {
            source: Arc::new(source),
            lifetime: 60,
            context_tokens: Arc::from([]),
            clock: Arc::new(SystemClock),
            backend: Backend::default(),
            health: Arc::new(crate::health::Health::new(60)),
        }
    }

    /// The current credentials (this workload's WIT and key), now: e.g. to sign a self-signed
    /// subject token for the Transaction Token Service.
    pub fn credentials(&self) -> Result<Arc<crate::client::cred::Credentials>> {
        self.source.credentials(self.clock.now())
    }

    /// The current time on this signer's clock (the system clock unless
    /// [`clock`](Self::clock)), seconds since the epoch: what its proofs are dated.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Logs that a request could not be signed: a warning when signing starts failing, then
    /// at most one a minute (with the number left out) while it keeps failing, so an outage of
    /// the credential source does not log once per request. Clients call this on every failure
    /// and [`signed`](Self::signed) on every success.
    pub fn log_failure(&self, error: &Error) {
        use crate::health::Report;
        match self.health.failed(self.clock.now()) {
            Report::StartedFailing => {
                tracing::warn!(reason = error.reason(), detail = error.detail(), "wimse: requests cannot be signed")
            }
            Report::StillFailing { left_out } => tracing::warn!(
                reason = error.reason(),
                detail = error.detail(),
                failures_not_logged = left_out,
                "wimse: requests still cannot be signed"
            ),
            Report::Quiet => {}
        }
    }

    /// Records a signed request; logs once when signing works again after failures.
    pub fn signed(&self) {
        if self.health.succeeded() {
            tracing::info!("wimse: requests are signed again");
        }
    }

    /// Proof lifetime in seconds.
    pub fn lifetime(mut self, secs: u64) -> Self {
        self.lifetime = secs;
        self
    }

    /// Context-token fields (besides `Txn-Token`) to bind with `oth` when a request carries them.
    pub fn context_tokens(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.context_tokens = names.into_iter().map(|n| n.into().to_ascii_lowercase()).collect();
        self
    }

    /// Uses another clock.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Chooses the crypto backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Adds a WIT and a fresh WPT for `aud` to `headers`.
    ///
    /// Any `Workload-Identity-Token` or `Authorization: WPT` already there (for instance copied
    /// from an inbound request) is replaced: inbound credentials are never forwarded. Another
    /// `Authorization` scheme is an error, since a WPT cannot travel beside it. A `Txn-Token`
    /// field is bound with `tth`, configured context tokens with `oth`.
    pub fn sign_headers(&self, headers: &mut HeaderMap, aud: &str) -> Result<()> {
        self.sign_headers_binding(headers, aud, &[])
    }

    /// Like [`sign_headers`](Self::sign_headers), also binding the fields named in `extra`
    /// (lower-case) with `oth` when present.
    pub fn sign_headers_binding(&self, headers: &mut HeaderMap, aud: &str, extra: &[String]) -> Result<()> {
        for value in headers.get_all(AUTHORIZATION) {
            let scheme = value.as_bytes().split(|b| *b == b' ').next().unwrap_or_default();
            if !scheme.eq_ignore_ascii_case(WPT_AUTH_SCHEME.as_bytes()) {
                return Err(Error::with_detail(
                    ErrorKind::BearerWithWpt,
                    "outgoing request already has another Authorization credential",
                ));
            }
        }
        let now = self.clock.now();
        let credentials = self.source.credentials(now)?;
        let text = |name: &str| -> Result<Option<&str>> {
            let mut values = headers.get_all(name).iter();
            let value =
                values.next().map(|v| v.to_str().map_err(|_| Error::new(ErrorKind::InvalidHeaderValue))).transpose()?;
            if values.next().is_some() {
                return Err(Error::with_detail(ErrorKind::DuplicateContextToken, format!("two `{name}` fields")));
            }
            Ok(value)
        };
        let mut builder = WptBuilder::new(credentials.key(), credentials.wit(), aud)
            .wit_hash(credentials.wit_hash())
            .lifetime(self.lifetime)
            .backend(self.backend);
        if let Some(txn) = text(TXN_TOKEN_HEADER)? {
            builder = builder.txn_token(txn);
        }
        for name in self.context_tokens.iter().chain(extra.iter().filter(|n| !self.context_tokens.contains(n))) {
            if let Some(value) = text(name)? {
                builder = builder.other_token(name, value);
            }
        }
        let wpt = builder.sign(now)?;
        let invalid = |_| Error::new(ErrorKind::InvalidHeaderValue);
        let mut wit = HeaderValue::from_str(credentials.wit()).map_err(invalid)?;
        wit.set_sensitive(true);
        let mut authorization = HeaderValue::from_str(&format!("{WPT_AUTH_SCHEME} {wpt}")).map_err(invalid)?;
        authorization.set_sensitive(true);
        headers.insert(WIT_HEADER, wit);
        headers.insert(AUTHORIZATION, authorization);
        Ok(())
    }
}

impl Signer {
    fn sign_options(&self) -> SignOptions {
        SignOptions { lifetime: self.lifetime, backend: self.backend }
    }

    /// Signs a request with an HTTP message signature (http-signature-08) instead of a WPT:
    /// sets the WIT, `Content-Digest` for a body, `Signature-Input` and `Signature`.
    /// `request.sign_response` asks the server to sign its response; keep the returned nonce
    /// to check it.
    pub fn sign_request_signature(
        &self,
        headers: &mut HeaderMap,
        request: &httpsig::OutgoingRequest<'_>,
    ) -> Result<RequestSignature> {
        if headers.get_all(AUTHORIZATION).iter().any(|v| v.as_bytes().starts_with(b"WPT ")) {
            headers.remove(AUTHORIZATION);
        }
        let now = self.clock.now();
        let credentials = self.source.credentials(now)?;
        httpsig::sign_request(headers, request, credentials.wit(), credentials.key(), &self.sign_options(), now)
    }

    /// Signs a response to a signed request whose nonce was `request_nonce`, with this
    /// workload's credentials.
    pub fn sign_response_headers<H: crate::headers::HeaderSource + ?Sized>(
        &self,
        headers: &mut HeaderMap,
        status: u16,
        request: &RequestParts<'_, H>,
        body: Option<&[u8]>,
        request_nonce: &str,
    ) -> Result<()> {
        let now = self.clock.now();
        let credentials = self.source.credentials(now)?;
        let options = self.sign_options();
        let response = httpsig::OutgoingResponse { status, body, request_nonce };
        httpsig::sign_response(headers, &response, request, credentials.wit(), credentials.key(), &options, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_drops_query_and_fragment() {
        let uri: Uri = "https://api.example:8443/a/b?c=d".parse().unwrap();
        assert_eq!(audience_for(&uri).as_deref(), Some("https://api.example:8443/a/b"));
        assert_eq!(audience_for(&"/relative".parse().unwrap()), None);
        assert_eq!(audience_for(&"http://h".parse().unwrap()).as_deref(), Some("http://h/"));
    }
}
