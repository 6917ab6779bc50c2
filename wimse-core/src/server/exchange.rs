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
        let caller = self.pending.as_ref().map(PendingCaller::id);
        crate::server::audit::rejected("http-signature", caller, &error);
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
