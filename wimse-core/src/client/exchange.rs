//! The client side of an exchange, written once for every client adapter (wimse-tower's layer,
//! wimse-reqwest's middleware): which audience a request is signed for, which Txn-Token goes
//! with it, which proof it carries, and when its response must be a verified signed response.
//!
//! An adapter describes its request through [`Outgoing`] (its URI or URL type and the parts
//! read from it), calls [`ClientExchange::sign`] before sending, and with the answer asks the
//! returned [`SentRequest`] whether the response must be checked
//! ([`SentRequest::must_verify`]) and, after buffering its body, [`SentRequest::verify`]. Only
//! the reading and writing of bodies are the adapter's own.
//!
//! The rules, in one place:
//! - **Audience**: an [`AudienceOverride`] in the request's extensions; else the
//!   [alias](ClientExchange::audience_alias) mapping; else the target's own (scheme, authority
//!   and path); else, for a path-only URI (a tonic `Channel`'s), the configured
//!   [origin](ClientExchange::origin) + the path; else the request is refused before it is sent.
//! - **Txn-Token**: a [`TxnToken`] extension or a `Txn-Token` field goes to the
//!   [trust domain's origins](ClientExchange::trust_domain_origins) only ([`TxnForwarding`]).
//! - **Proof**: a [`ProofMode`] extension, else the exchange's mode; [`ContextTokens`] are added
//!   (and bound by a WPT's `oth`).
//! - **Response**: a response to a signed request that asked for a signed response must be
//!   signed and valid; a signed response nobody asked for is checked when trust anchors for
//!   responses were given, else left alone (http-signature-08); a response to a WPT request
//!   is never checked (it has no nonce to bind to).
//!
//! May import the protocol layer, the base and the rest of the client layer.

use std::fmt;
use std::sync::Arc;

use http::{Extensions, HeaderMap, HeaderName, HeaderValue};

use crate::client::response::ResponseVerifier;
use crate::client::sign::{AudienceOverride, Signer};
use crate::error::{Error, ErrorKind, Result};
use crate::id::WorkloadId;
use crate::protocol::httpsig::{self, OutgoingRequest, RequestParts, RequestSignature, ResponseParts};
use crate::protocol::trust::TrustStore;
use crate::protocol::txn::{TxnForwarding, TxnToken};

/// How a request proves the workload's identity. Set per client, or per request as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProofMode {
    /// WIT + `Authorization: WPT` (wpt-02).
    #[default]
    Wpt,
    /// WIT + HTTP message signature (http-signature-08); `sign_response` asks the server to
    /// sign its response, which is then required.
    HttpSignature {
        /// Require a signed response.
        sign_response: bool,
    },
}

/// Context tokens to add to one request and bind with `oth`: `(header name, value)` pairs.
/// A request extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextTokens(pub Vec<(String, String)>);

impl ContextTokens {
    /// Names the request this call is made for: `request_id` is the proof id of the request
    /// being served (`VerifiedCaller::method().proof_id()`), carried in
    /// [`PARENT_REQUEST_HEADER`](crate::draft::PARENT_REQUEST_HEADER) and bound like a context
    /// token (the WPT's `oth`; covered by an HTTP signature), so the next hop's audit record
    /// names its parent and `wimse audit trace` links the two. Every verifier of this
    /// implementation understands the field; send it only to those (another verifier may
    /// refuse an `oth` entry it does not know).
    ///
    /// ```
    /// use wimse_core::client::exchange::ContextTokens;
    ///
    /// let tokens = ContextTokens::default().parent_request("HmRfK1q2bGkPm0Ny3Zc9Ww");
    /// assert_eq!(tokens.0, [("wimse-parent-request".to_owned(), "HmRfK1q2bGkPm0Ny3Zc9Ww".to_owned())]);
    /// ```
    pub fn parent_request(mut self, request_id: &str) -> Self {
        self.0.retain(|(name, _)| name != crate::draft::PARENT_REQUEST_HEADER);
        self.0.push((crate::draft::PARENT_REQUEST_HEADER.to_owned(), request_id.to_owned()));
        self
    }
}

/// One outgoing request as an adapter reads it: its URI type (what the mappings are given)
/// and the parts a signature covers.
pub trait Outgoing {
    /// The adapter's URI or URL type, given to [`ClientExchange::audience_alias`] and
    /// [`ClientExchange::expected_identity`].
    type Uri: ?Sized;
    /// The request's URI or URL.
    fn uri(&self) -> &Self::Uri;
    /// The method.
    fn method(&self) -> &str;
    /// The scheme; `None` for a path-only URI.
    fn scheme(&self) -> Option<&str>;
    /// `@authority` as it is signed; empty for a path-only URI.
    fn authority(&self) -> &str;
    /// The path.
    fn path(&self) -> &str;
    /// The query, without `?`.
    fn query(&self) -> Option<&str>;
    /// The target's own audience (scheme, authority and path; wpt-02 §2); `None` for a
    /// path-only URI.
    fn audience(&self) -> Option<String>;
    /// `scheme://authority` as written in the URI; `None` for a path-only URI.
    fn origin(&self) -> Option<String>;
}

/// An `http` request's target (a tower client's): absolute, or only a path (a tonic
/// `Channel`'s requests), then without scheme and authority.
#[derive(Debug, Clone, Copy)]
pub struct HttpTarget<'a> {
    /// The request's URI.
    pub uri: &'a http::Uri,
    /// The request's method.
    pub method: &'a http::Method,
}

impl Outgoing for HttpTarget<'_> {
    type Uri = http::Uri;

    fn uri(&self) -> &http::Uri {
        self.uri
    }

    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn scheme(&self) -> Option<&str> {
        self.uri.authority().and(self.uri.scheme_str())
    }

    fn authority(&self) -> &str {
        self.uri.authority().map(|a| a.as_str()).unwrap_or_default()
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    fn audience(&self) -> Option<String> {
        crate::client::sign::audience_for(self.uri)
    }

    fn origin(&self) -> Option<String> {
        Some(format!("{}://{}", self.uri.scheme_str()?, self.uri.authority()?))
    }
}

/// The body of a request being signed, as the adapter has it.
#[derive(Debug, Clone, Copy)]
pub enum OutgoingBody<'a> {
    /// Buffered (or none): an HTTP signature can cover it.
    Bytes(Option<&'a [u8]>),
    /// Not buffered (a stream): only a WPT can be given; `why` says what to do instead.
    Streamed {
        /// What the caller can do about it, for the refusal of an HTTP-signature request.
        why: &'static str,
    },
}

type Mapping<U, T> = dyn Fn(&U) -> Option<T> + Send + Sync;

/// The client side of every exchange of one client: configured once, applied to each request
/// (see the [module](self)). Cheap to clone.
pub struct ClientExchange<U: ?Sized> {
    signer: Signer,
    mode: ProofMode,
    alias: Option<Arc<Mapping<U, String>>>,
    expected: Option<Arc<Mapping<U, WorkloadId>>>,
    responses: Option<ResponseVerifier>,
    txn_forwarding: TxnForwarding,
    origin: Option<Arc<str>>,
}

impl<U: ?Sized> Clone for ClientExchange<U> {
    fn clone(&self) -> Self {
        Self {
            signer: self.signer.clone(),
            mode: self.mode,
            alias: self.alias.clone(),
            expected: self.expected.clone(),
            responses: self.responses.clone(),
            txn_forwarding: self.txn_forwarding.clone(),
            origin: self.origin.clone(),
        }
    }
}

impl<U: ?Sized> fmt::Debug for ClientExchange<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientExchange")
            .field("signer", &self.signer)
            .field("mode", &self.mode)
            .field("alias", &self.alias.is_some())
            .field("expected_identity", &self.expected.is_some())
            .field("signed_responses", &self.responses.is_some())
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl<U: ?Sized> ClientExchange<U> {
    /// Signs with `signer`, by WPT; responses are not checked.
    pub fn new(signer: Signer) -> Self {
        Self {
            signer,
            mode: ProofMode::Wpt,
            alias: None,
            expected: None,
            responses: None,
            txn_forwarding: TxnForwarding::unconfigured(),
            origin: None,
        }
    }

    /// Proves with HTTP message signatures instead of WPTs (asking for signed responses when
    /// [`signed_responses`](Self::signed_responses) is set).
    pub fn http_signatures(mut self) -> Self {
        self.mode = ProofMode::HttpSignature { sign_response: self.responses.is_some() };
        self
    }

    /// Checks signed responses with these trust anchors. In HTTP-signature mode every response
    /// is then asked for signed, and must be.
    pub fn signed_responses(self, trust: TrustStore) -> Self {
        self.response_verifier(ResponseVerifier::new(trust))
    }

    /// Checks signed responses with this verifier (for instance one with a test clock).
    pub fn response_verifier(mut self, verifier: ResponseVerifier) -> Self {
        self.responses = Some(verifier);
        if let ProofMode::HttpSignature { .. } = self.mode {
            self.mode = ProofMode::HttpSignature { sign_response: true };
        }
        self
    }

    /// Maps a request's URI to the audience its server expects (for servers known by another
    /// name than the URL they are reached at); `None` falls back to the URI.
    pub fn audience_alias(mut self, alias: impl Fn(&U) -> Option<String> + Send + Sync + 'static) -> Self {
        self.alias = Some(Arc::new(alias));
        self
    }

    /// Maps a request's URI to the workload its server must be (the deployment-defined
    /// mapping the identifier draft requires): a signed response from another is refused.
    pub fn expected_identity(mut self, map: impl Fn(&U) -> Option<WorkloadId> + Send + Sync + 'static) -> Self {
        self.expected = Some(Arc::new(map));
        self
    }

    /// The origins (`scheme://host[:port]`) of this trust domain's services: a `Txn-Token` (a
    /// [`TxnToken`] extension, or the field) goes to these only and is removed from requests to
    /// any other origin (draft-ietf-oauth-transaction-tokens-11 §14; see [`TxnForwarding`]).
    /// Without this setting a [`TxnToken`] extension is never sent (a warning says so, once per
    /// origin), and a `Txn-Token` field set by the application is sent as is.
    pub fn trust_domain_origins(mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.txn_forwarding = TxnForwarding::new(origins);
        self
    }

    /// The server's origin (`scheme://host[:port]`, exactly as its verifier names it), for
    /// requests whose URI is only a path, as a tonic `Channel` sends them: their audience is
    /// this origin + the path, and their Txn-Token goes where this origin's would. Refused
    /// unless http(s) with a host and no path, query or user info.
    pub fn origin(mut self, origin: &str) -> Result<Self> {
        let trimmed = origin.trim_end_matches('/');
        let is_origin = trimmed.parse::<http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty())
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none()
        });
        if !is_origin {
            return Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                format!("origin: `{origin}` is not an origin (http(s)://host[:port], no path)"),
            ));
        }
        self.origin = Some(Arc::from(trimmed));
        Ok(self)
    }

    /// The signer.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The proof mode of requests that do not choose one.
    pub fn mode(&self) -> ProofMode {
        self.mode
    }

    /// The identity the server at `uri` must have, if the mapping names one.
    pub fn expected_identity_for(&self, uri: &U) -> Option<WorkloadId> {
        self.expected.as_ref().and_then(|map| map(uri))
    }

    /// The audience `request` is signed for (see the [module](self)).
    pub fn audience<R: Outgoing<Uri = U>>(&self, request: &R, extensions: &Extensions) -> Result<String> {
        if let Some(AudienceOverride(aud)) = extensions.get::<AudienceOverride>() {
            return Ok(aud.clone());
        }
        if let Some(aud) = self.alias.as_ref().and_then(|alias| alias(request.uri())).or_else(|| request.audience()) {
            return Ok(aud);
        }
        match &self.origin {
            Some(origin) if is_path_only(request) => Ok(format!("{origin}{}", request.path())),
            _ => Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                "the request URI has no scheme and host (a tonic Channel sends only the path), so the client \
                 cannot name the audience: give it the server's origin (WimseSignLayer::for_origin(signer, \
                 \"http://host:port\") or .origin(..)) or an .audience_alias(..)",
            )),
        }
    }

    /// Authenticates one request: its Txn-Token (forwarded or removed), its context tokens, and
    /// its proof, written into `headers`. Counted on the signer's health; a failure is logged
    /// (rate-limited) and refuses the request before it is sent.
    pub fn sign<R: Outgoing<Uri = U>>(
        &self,
        request: &R,
        extensions: &Extensions,
        headers: &mut HeaderMap,
        body: OutgoingBody<'_>,
    ) -> Result<SentRequest> {
        let sent = self.forward_txn_token(request, extensions, headers).and_then(|()| {
            let aud = self.audience(request, extensions)?;
            let bound = add_context_tokens(headers, extensions)?;
            self.prove(request, extensions, headers, body, (&aud, &bound))
        });
        match &sent {
            Ok(_) => self.signer.signed(),
            // Rate-limited: a credential outage must not log once per request.
            Err(error) => self.signer.log_failure(error),
        }
        sent
    }

    /// Forwards or removes the request's Txn-Token (see [`TxnForwarding`]).
    fn forward_txn_token<R: Outgoing<Uri = U>>(
        &self,
        request: &R,
        extensions: &Extensions,
        headers: &mut HeaderMap,
    ) -> Result<()> {
        let token = extensions.get::<TxnToken>();
        if self.txn_forwarding.is_configured() || token.is_some() {
            // No origin (a path-only URI and none configured): nothing is forwarded.
            let configured = || self.origin.as_deref().filter(|_| is_path_only(request)).map(str::to_owned);
            let origin = request.origin().or_else(configured).unwrap_or_default();
            self.txn_forwarding.apply(&origin, headers, token)?;
        }
        Ok(())
    }

    /// Writes the request's proof for `aud`, by the request's or the exchange's mode.
    fn prove<R: Outgoing<Uri = U>>(
        &self,
        request: &R,
        extensions: &Extensions,
        headers: &mut HeaderMap,
        body: OutgoingBody<'_>,
        (aud, bound): (&str, &[String]),
    ) -> Result<SentRequest> {
        match extensions.get::<ProofMode>().copied().unwrap_or(self.mode) {
            ProofMode::Wpt => {
                self.signer.sign_headers_binding(headers, aud, bound)?;
                Ok(SentRequest { signed: None })
            }
            ProofMode::HttpSignature { sign_response } => {
                let body = match body {
                    OutgoingBody::Bytes(body) => body,
                    OutgoingBody::Streamed { why } => {
                        return Err(Error::with_detail(ErrorKind::InvalidConfiguration, why));
                    }
                };
                if sign_response && self.responses.is_none() {
                    // Refused before it is sent: the call must not run when its answer
                    // cannot be checked.
                    return Err(Error::with_detail(
                        ErrorKind::InvalidConfiguration,
                        "a signed response was asked for but no trust anchors were given to check it (signed_responses)",
                    ));
                }
                // A path-only URI is signed for the configured origin's scheme and authority.
                let (scheme, authority) = match (&self.origin, is_path_only(request)) {
                    (Some(origin), true) => origin.split_once("://").unwrap_or(("https", origin)),
                    _ => (request.scheme().unwrap_or("https"), request.authority()),
                };
                let outgoing = OutgoingRequest {
                    method: request.method(),
                    scheme,
                    authority,
                    path: request.path(),
                    query: request.query(),
                    body,
                    aud,
                    sign_response,
                };
                let signature = self.signer.sign_request_signature(headers, &outgoing)?;
                let check = match &self.responses {
                    Some(verifier) => ResponseCheck::Verify {
                        verifier: verifier.clone(),
                        expected: self.expected_identity_for(request.uri()),
                        request: Box::new(SignedParts {
                            method: request.method().to_owned(),
                            scheme: scheme.to_owned(),
                            authority: authority.to_owned(),
                            path: request.path().to_owned(),
                            query: request.query().map(str::to_owned),
                            headers: headers.clone(),
                        }),
                    },
                    None => ResponseCheck::Unchecked,
                };
                Ok(SentRequest { signed: Some(SignedRequest { signature, check }) })
            }
        }
    }
}

/// Whether `request`'s URI is only a path (a tonic `Channel`'s): no scheme, no authority.
fn is_path_only<R: Outgoing + ?Sized>(request: &R) -> bool {
    request.scheme().is_none() && request.authority().is_empty()
}

/// Adds the request's [`ContextTokens`]; returns their field names, for the WPT's `oth`.
fn add_context_tokens(headers: &mut HeaderMap, extensions: &Extensions) -> Result<Vec<String>> {
    let mut names = Vec::new();
    if let Some(ContextTokens(tokens)) = extensions.get::<ContextTokens>() {
        for (name, value) in tokens {
            let invalid = || Error::with_detail(ErrorKind::InvalidHeaderValue, format!("context token `{name}`"));
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            if crate::headers::is_protocol_field(header.as_str()) {
                // A Txn-Token or a credential set this way would pass around the forwarding
                // rules and the signer: refused.
                return Err(Error::with_detail(
                    ErrorKind::InvalidConfiguration,
                    format!("context token `{name}` names a protocol field"),
                ));
            }
            headers.insert(header.clone(), HeaderValue::from_str(value).map_err(|_| invalid())?);
            names.push(header.as_str().to_owned());
        }
    }
    Ok(names)
}

/// A request as it was sent, for the check of its response. Made by [`ClientExchange::sign`].
/// Its `Debug` shows the request's header names, never their values.
#[derive(Debug)]
pub struct SentRequest {
    signed: Option<SignedRequest>,
}

#[derive(Debug)]
struct SignedRequest {
    signature: RequestSignature,
    check: ResponseCheck,
}

#[derive(Debug)]
enum ResponseCheck {
    /// No trust anchors for responses.
    Unchecked,
    Verify {
        verifier: ResponseVerifier,
        expected: Option<WorkloadId>,
        request: Box<SignedParts>,
    },
}

/// What a signed response covers of the request (`;req` components).
struct SignedParts {
    method: String,
    scheme: String,
    authority: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

impl fmt::Debug for SignedParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values carry a Txn-Token, context tokens, cookies: names only.
        f.debug_struct("SignedParts")
            .field("method", &self.method)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("header_names", &self.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SentRequest {
    /// The request's HTTP signature, `None` for a WPT request.
    pub fn signature(&self) -> Option<&RequestSignature> {
        self.signed.as_ref().map(|s| &s.signature)
    }

    /// Whether the response with these header fields must be buffered and
    /// [verified](Self::verify) (`Ok(false)`: hand it on as it is), or is refused at once: a
    /// signed response was asked for and this one is not signed
    /// ([`ErrorKind::NoWimseSignature`]), or none can be checked
    /// ([`ErrorKind::InvalidConfiguration`]).
    pub fn must_verify(&self, response_headers: &HeaderMap) -> Result<bool> {
        // A response to a WPT request carries no request nonce to bind it to.
        let Some(signed) = &self.signed else { return Ok(false) };
        let is_signed = httpsig::has_signature(response_headers);
        let required = signed.signature.sign_response;
        match &signed.check {
            ResponseCheck::Unchecked if required => Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                "a signed response was asked for but no trust anchors were given to check it (signed_responses)",
            )),
            ResponseCheck::Unchecked => {
                if is_signed {
                    tracing::debug!("wimse: unsolicited signed response not checked (no trust anchors for responses)");
                }
                Ok(false)
            }
            ResponseCheck::Verify { .. } if is_signed => Ok(true),
            ResponseCheck::Verify { .. } if required => {
                Err(Error::with_detail(ErrorKind::NoWimseSignature, "the response is not signed"))
            }
            ResponseCheck::Verify { .. } => Ok(false),
        }
    }

    /// Verifies the signed response (its status, header fields and whole body) against this
    /// request: its signer trusted, bound to the request's nonce, from the expected workload.
    /// The result is the responding workload.
    pub fn verify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<WorkloadId> {
        let Some(SignedRequest { signature, check: ResponseCheck::Verify { verifier, expected, request } }) =
            &self.signed
        else {
            return Err(Error::with_detail(ErrorKind::NoWimseSignature, "no signed response was expected"));
        };
        let req = RequestParts {
            method: &request.method,
            scheme: &request.scheme,
            authority: &request.authority,
            path: &request.path,
            query: request.query.as_deref(),
            headers: &request.headers,
        };
        let res = ResponseParts { status, headers };
        verifier.verify(&req, &res, body, &signature.nonce, expected.as_ref())
    }
}

/// Writes a client adapter's builder methods that configure its [`ClientExchange`] (a field
/// named `exchange`), so each is written and documented once for every adapter. `routing`
/// gives the audience and Txn-Token settings, `responses` the signed-response ones; `$uri` is
/// the adapter's URI or URL type.
#[doc(hidden)]
#[macro_export]
macro_rules! client_exchange_setters {
    (routing $uri:ty) => {
        /// Maps a request's URI to the audience its server expects (for servers known by
        /// another name than the URL they are reached at); `None` falls back to the URI.
        pub fn audience_alias(mut self, alias: impl Fn(&$uri) -> Option<String> + Send + Sync + 'static) -> Self {
            self.exchange = self.exchange.audience_alias(alias);
            self
        }

        /// The origins (`scheme://host[:port]`) of this workload's trust domain's services: a
        /// `Txn-Token` (a [`TxnToken`](wimse_core::protocol::txn::TxnToken) extension, or the
        /// field) is sent to these only and removed from requests to any other origin, since a
        /// Txn-Token must not leave its trust domain (draft-ietf-oauth-transaction-tokens-11
        /// §14; see [`TxnForwarding`](wimse_core::protocol::txn::TxnForwarding)). Without this
        /// setting a `TxnToken` extension is never sent (a warning says so, once per origin),
        /// and a `Txn-Token` field set by the application is sent as is.
        pub fn trust_domain_origins(mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
            self.exchange = self.exchange.trust_domain_origins(origins);
            self
        }
    };
    (responses $uri:ty) => {
        /// Checks signed responses with these trust anchors: in HTTP-signature mode every
        /// response is then asked for signed, and must be (unless a request's `ProofMode`
        /// extension says otherwise); any signed response is verified.
        pub fn signed_responses(mut self, trust: $crate::protocol::trust::TrustStore) -> Self {
            self.exchange = self.exchange.signed_responses(trust);
            self
        }

        /// Checks signed responses with this verifier (for instance one with a test clock).
        pub fn response_verifier(mut self, verifier: $crate::client::response::ResponseVerifier) -> Self {
            self.exchange = self.exchange.response_verifier(verifier);
            self
        }

        /// Maps a request's URI to the workload its server must be (the deployment-defined
        /// mapping the identifier draft requires): a signed response from another is refused.
        pub fn expected_identity(
            mut self,
            map: impl Fn(&$uri) -> Option<$crate::id::WorkloadId> + Send + Sync + 'static,
        ) -> Self {
            self.exchange = self.exchange.expected_identity(map);
            self
        }
    };
}
