//! The server side of a signed request and its signed response, written once for every adapter.
//!
//! An adapter that sees a WIMSE-tagged signature (see
//! [`has_signature`](crate::protocol::httpsig::has_signature)) does four things, and only the reading and
//! writing of bodies are its own:
//!
//! 1. [`Pipeline::signed_exchange`]: every check the header fields allow (WIT, signature, audience,
//!    parameters, policy, whether a signed response can be given), before a byte of the body is
//!    read, so an unauthenticated or unauthorized sender never makes the server buffer anything;
//! 2. read the body, at most [`SignedExchange::body_limit`] bytes within
//!    [`SignedExchange::body_deadline`], taking each chunk's size from the guard's budget of
//!    bytes buffered at once ([`SignedExchange::reserve_body`]) before keeping it (failures
//!    through [`SignedExchange::refuse_body`]);
//! 3. [`SignedExchange::admit_body`]: the body against `Content-Digest`, then the nonce's replay
//!    claim; the result is the caller for the handler and, when one is due, a [`ResponseSigner`];
//! 4. buffer the handler's response and [`ResponseSigner::sign`] it.
//!
//! With the `server-io` feature, steps 1–3 are one call, [`Pipeline::admit_signed`], which reads
//! the body from a stream of chunks within its limit, deadline and budget, and step 4 is
//! [`ResponseSigner::sign_body`]: an adapter keeps only turning its framework's bodies into
//! streams and back (this is what wimse-tower and wimse-actix do).

use std::time::Duration;

use http::HeaderMap;

use crate::client::sign::Signer;
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::httpsig::RequestParts;
use crate::server::caller::{PendingCaller, TlsPeer, VerifiedCaller};
use crate::server::framing::HeaderSource;
use crate::server::pipeline::Pipeline;
use crate::server::verify::RequestView;

/// A signed request admitted on its header fields, waiting for its body. Made by
/// [`Pipeline::signed_exchange`].
#[derive(Debug)]
pub struct SignedExchange<'g> {
    guard: &'g Pipeline,
    pending: Option<PendingCaller>,
    response: Option<ResponseSigner>,
    /// Bytes of the guard's body budget this exchange holds (given back when it ends).
    reserved: usize,
}

impl Drop for SignedExchange<'_> {
    fn drop(&mut self) {
        self.guard.body_budget_ref().give_back(self.reserved);
    }
}

/// Why a body could not be read, for [`SignedExchange::refuse_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyFailure {
    /// Longer than [`SignedExchange::body_limit`] (413).
    TooLarge,
    /// Not complete within [`SignedExchange::body_deadline`] (408).
    TimedOut,
    /// The guard's budget of body bytes buffered at once is spent (503, retry shortly).
    OverBudget,
    /// The connection failed while it was read.
    Unreadable,
}

/// What [`SignedExchange::admit_body`] hands the adapter: the caller for the handler, and the
/// signer of the response when one is due.
#[derive(Debug)]
#[non_exhaustive]
pub struct Admitted {
    /// The verified caller (`None` for an anonymous request an optional guard lets through).
    pub caller: Option<VerifiedCaller>,
    /// Set when the response must be signed: asked for (`wimse-sign-response`), or every
    /// response is ([`Pipeline::always_sign_responses`]).
    pub response: Option<ResponseSigner>,
}

/// Signs the response to one signed request: binds it to the request's nonce and covers the
/// request's method and target (`;req` components).
#[derive(Debug, Clone)]
pub struct ResponseSigner {
    signer: Signer,
    nonce: String,
    /// The most response body bytes buffered for signing (the guard's body limit).
    #[cfg_attr(not(feature = "server-io"), allow(dead_code))]
    limit: usize,
    method: String,
    authority: String,
    path: String,
    query: Option<String>,
}

impl ResponseSigner {
    /// Signs a response with this status and (complete) body: sets the responder's
    /// `Workload-Identity-Token`, `Content-Digest`, `Signature-Input` and `Signature` in
    /// `headers`. A failure is [`ErrorKind::SignedResponseUnavailable`] (400); never answer
    /// unsigned instead.
    pub fn sign(&self, status: u16, headers: &mut HeaderMap, body: &[u8]) -> Result<()> {
        let request = RequestParts {
            method: &self.method,
            scheme: "https",
            authority: &self.authority,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &HeaderMap::new(),
        };
        self.signer.sign_response_headers(headers, status, &request, Some(body), &self.nonce).map_err(|error| {
            tracing::warn!(reason = error.reason(), "wimse: could not sign the response");
            Error::with_detail(ErrorKind::SignedResponseUnavailable, "response signing failed")
        })
    }

    /// The refusal to send when the response could not be buffered for signing (over the body
    /// limit, or its body failed).
    pub fn unbufferable() -> Error {
        Error::with_detail(ErrorKind::SignedResponseUnavailable, "the response could not be buffered for signing")
    }
}

impl Pipeline {
    /// Starts the server side of a signed request (see the [module](crate::server::exchange)): checks
    /// everything its header fields allow, the policy, and whether a signed response asked for
    /// can be given (501 otherwise), before any of its body is read. `request` needs its method,
    /// target and authority; its body is not looked at.
    pub fn signed_exchange<H: HeaderSource + ?Sized>(
        &self,
        request: RequestView<'_, H>,
        tls: Option<&TlsPeer>,
    ) -> Result<SignedExchange<'_>> {
        let request = request.body_follows();
        let pending = self.admit(&request, tls)?;
        let nonce = self.response_nonce(pending.as_ref().map(|p| &p.caller))?;
        let response = match (nonce, self.response_signer()) {
            (Some(nonce), Some(signer)) => {
                let (path, query) = match request.path.split_once('?') {
                    Some((path, query)) => (path, Some(query.to_owned())),
                    None => (request.path, None),
                };
                Some(ResponseSigner {
                    signer: signer.clone(),
                    nonce,
                    limit: self.max_body(),
                    method: request.method.to_owned(),
                    authority: request.authority.to_owned(),
                    path: path.to_owned(),
                    query,
                })
            }
            _ => None,
        };
        Ok(SignedExchange { guard: self, pending, response, reserved: 0 })
    }
}

impl SignedExchange<'_> {
    /// The most body bytes to read (beyond: [`BodyFailure::TooLarge`]).
    pub fn body_limit(&self) -> usize {
        self.guard.max_body()
    }

    /// How long reading the whole body may take (beyond: [`BodyFailure::TimedOut`]).
    pub fn body_deadline(&self) -> Duration {
        self.guard.max_body_time()
    }

    /// Takes `bytes` more (the next chunk of the body, before it is kept) from the guard's
    /// budget of body bytes buffered at once; held until this exchange ends.
    /// [`BodyFailure::OverBudget`] when the budget is spent.
    pub fn reserve_body(&mut self, bytes: usize) -> std::result::Result<(), BodyFailure> {
        if self.guard.body_budget_ref().try_take(bytes) {
            self.reserved += bytes;
            Ok(())
        } else {
            Err(BodyFailure::OverBudget)
        }
    }

    /// The refusal for a body that could not be read, logged with the caller it names.
    pub fn refuse_body(&self, failure: BodyFailure) -> Error {
        let error = match failure {
            BodyFailure::TooLarge => {
                Error::with_detail(ErrorKind::BodyTooLarge, format!("over {} bytes", self.body_limit()))
            }
            BodyFailure::TimedOut => Error::with_detail(
                ErrorKind::BodyTimeout,
                format!("the body did not arrive within {:?}", self.body_deadline()),
            ),
            BodyFailure::OverBudget => Error::with_detail(
                ErrorKind::BodyBudgetExceeded,
                format!("over the {} bytes of bodies buffered at once", self.guard.body_budget_ref().limit),
            )
            .with_retry_after(1),
            BodyFailure::Unreadable => {
                Error::with_detail(ErrorKind::SignatureMalformed, "the request body could not be read")
                    .in_signature_mode()
            }
        };
        match &self.pending {
            Some(pending) => pending.caller.audit_refused(&error),
            None => crate::server::audit::rejected("http-signature", None, &error),
        }
        error
    }

    /// Checks the body against the request's `Content-Digest`, then claims the signature's
    /// nonce (the only asynchronous step; ready at once with the in-memory store).
    pub async fn admit_body(mut self, body: &[u8]) -> Result<Admitted> {
        let caller = match self.pending.take() {
            Some(pending) => Some(self.guard.confirm(pending.body_received(body)?).await?),
            None => None,
        };
        Ok(Admitted { caller, response: self.response.take() })
    }
}

/// A signed request admitted with its whole body, from [`Pipeline::admit_signed`].
#[cfg(feature = "server-io")]
#[derive(Debug)]
#[non_exhaustive]
pub struct AdmittedBody {
    /// The body the `Content-Digest` was checked against: hand the handler exactly these bytes.
    pub body: bytes::Bytes,
    /// The verified caller (`None` for an anonymous request an optional guard lets through).
    pub caller: Option<VerifiedCaller>,
    /// Set when the response must be signed ([`ResponseSigner::sign_body`]).
    pub response: Option<ResponseSigner>,
}

#[cfg(feature = "server-io")]
impl Pipeline {
    /// Steps 1–3 of a signed request at once (see the [module](crate::server::exchange)): the
    /// header checks, then `body` read chunk by chunk within the limit, the deadline and the
    /// budget, then its digest and the nonce's claim. Every refusal is logged and is the error
    /// to answer with ([`Pipeline::rejection`]); nothing of the body is read before the header
    /// fields passed. Runs on tokio (the body's deadline).
    pub async fn admit_signed<H, S, D, E>(
        &self,
        request: RequestView<'_, H>,
        tls: Option<&TlsPeer>,
        body: S,
    ) -> Result<AdmittedBody>
    where
        H: HeaderSource + ?Sized,
        S: futures_core::Stream<Item = std::result::Result<D, E>>,
        D: bytes::Buf,
    {
        let mut exchange = self.signed_exchange(request, tls)?;
        let limit = exchange.body_limit();
        let read =
            tokio::time::timeout(self.max_body_time(), read_limited(body, limit, |n| exchange.reserve_body(n))).await;
        let body = match read {
            Ok(Ok(body)) => body,
            Ok(Err(failure)) => return Err(exchange.refuse_body(failure)),
            Err(_) => return Err(exchange.refuse_body(BodyFailure::TimedOut)),
        };
        let admitted = exchange.admit_body(&body).await?;
        Ok(AdmittedBody { body, caller: admitted.caller, response: admitted.response })
    }
}

#[cfg(feature = "server-io")]
impl ResponseSigner {
    /// Step 4: buffers the handler's response body (at most the guard's body limit) and signs
    /// it with its status and header fields, to which the signature's are added. The result is
    /// the body to send; a body over the limit or one that fails is
    /// [`ErrorKind::SignedResponseUnavailable`]: answer the refusal, never the response unsigned.
    pub async fn sign_body<S, D, E>(&self, status: u16, headers: &mut HeaderMap, body: S) -> Result<bytes::Bytes>
    where
        S: futures_core::Stream<Item = std::result::Result<D, E>>,
        D: bytes::Buf,
    {
        let body = read_limited(body, self.limit, |_| Ok(())).await.map_err(|_| Self::unbufferable())?;
        self.sign(status, headers, &body)?;
        Ok(body)
    }
}

/// Reads a whole stream of chunks into one buffer (not one handle per chunk, however small),
/// at most `limit` bytes, asking `reserve` for each chunk's size before keeping it.
#[cfg(feature = "server-io")]
async fn read_limited<S, D, E>(
    body: S,
    limit: usize,
    mut reserve: impl FnMut(usize) -> std::result::Result<(), BodyFailure>,
) -> std::result::Result<bytes::Bytes, BodyFailure>
where
    S: futures_core::Stream<Item = std::result::Result<D, E>>,
    D: bytes::Buf,
{
    let mut body = std::pin::pin!(body);
    let mut buffer = bytes::BytesMut::new();
    while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        let mut data = chunk.map_err(|_| BodyFailure::Unreadable)?;
        let len = data.remaining();
        if buffer.len().saturating_add(len) > limit {
            return Err(BodyFailure::TooLarge);
        }
        reserve(len)?;
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            buffer.extend_from_slice(chunk);
            data.advance(n);
        }
    }
    Ok(buffer.freeze())
}
