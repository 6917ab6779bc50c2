//! Signed responses checked on the client (http-signature-08): who signed, the signature over the
//! response and its `;req` components, the request's nonce, the body's digest, and no replay.

use std::sync::Arc;

use crate::draft::WIT_HEADER;
use crate::error::{Error, ErrorKind, Result};
use crate::headers::{HeaderSource, single_value};
use crate::id::WorkloadId;
use crate::protocol::httpsig::{self, RequestParts, ResponseParts, SignatureValidation};
use crate::protocol::trust::TrustStore;
use crate::protocol::wit::{WitValidation, validate_wit};
use crate::replay::{InMemoryReplayStore, ReplayClaim, ReplayStore};
use crate::time::{Clock, SystemClock};

/// Checks signed responses on the client: the responder's WIT against trust anchors, its
/// identity against the one expected for the URL, then the signature, `wimse-req-nonce` and
/// `Content-Digest`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponseVerifier {
    trust: Arc<TrustStore>,
    validation: Arc<WitValidation>,
    signatures: Arc<SignatureValidation>,
    clock: Arc<dyn Clock>,
    nonces: Arc<InMemoryReplayStore>,
}

/// Response nonces a client remembers (each for its signature's lifetime).
const RESPONSE_NONCE_CAPACITY: usize = 100_000;

impl ResponseVerifier {
    /// Trusts responders whose WITs chain to `trust`. Remembers the nonces of verified responses
    /// (up to 100 000 live ones) and refuses a response whose nonce it has seen
    /// (http-signature-08: clients SHOULD).
    pub fn new(trust: TrustStore) -> Self {
        Self {
            trust: Arc::new(trust),
            validation: Arc::new(WitValidation::default()),
            signatures: Arc::new(SignatureValidation::default()),
            clock: Arc::new(SystemClock),
            nonces: Arc::new(InMemoryReplayStore::new(RESPONSE_NONCE_CAPACITY)),
        }
    }

    /// Uses another clock.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Verifies the signed response `res` (with body `body`) to `req`, whose signature had
    /// `request_nonce`. With `expected`, the responder must be that workload
    /// ([`ErrorKind::UnexpectedPeer`] otherwise). A response whose own `nonce` was seen before
    /// is a replay ([`ErrorKind::ReplayedProof`]). Returns the responder's identifier.
    pub fn verify<Q: HeaderSource + ?Sized, R: HeaderSource + ?Sized>(
        &self,
        req: &RequestParts<'_, Q>,
        res: &ResponseParts<'_, R>,
        body: &[u8],
        request_nonce: &str,
        expected: Option<&WorkloadId>,
    ) -> Result<WorkloadId> {
        let now = self.clock.now();
        let wit = single_value(res.headers, WIT_HEADER, self.validation.max_token_len, ErrorKind::DuplicateWit)?
            .ok_or_else(|| Error::new(ErrorKind::MissingWit))?;
        let server = validate_wit(wit, &self.trust, &self.validation, now)?;
        if let Some(expected) = expected
            && server.subject() != expected
        {
            return Err(Error::with_detail(
                ErrorKind::UnexpectedPeer,
                format!("response signed by {}", server.subject()),
            ));
        }
        let signature = httpsig::verify_response(req, res, Some(body), &server, request_nonce, &self.signatures, now)?;
        let leeway = self.signatures.leeway;
        let claim = ReplayClaim::signature_nonce(
            &signature.nonce,
            signature.expires.saturating_add(leeway),
            signature.created.saturating_sub(leeway),
        );
        // The in-memory store answers at once.
        self.nonces
            .claim(&claim, now)
            .into_ready()
            .unwrap_or_else(|_| Err(ErrorKind::ReplayCacheUnavailable.into()))?;
        Ok(server.subject().clone())
    }
}
