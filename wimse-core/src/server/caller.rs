//! Who called: the [`VerifiedCaller`] the inbound pipeline hands to handlers, and the
//! [`PendingCaller`] it holds between checking the credentials and claiming the proof.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::id::WorkloadId;
use crate::protocol::txn::VerifiedTxnToken;
use crate::protocol::wit::VerifiedWit;
use crate::replay::ReplayClaim;

/// How the caller proved possession of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofMethod {
    /// A WIT + WPT (wpt-02).
    Wpt {
        /// The proof's `jti`.
        jti: String,
        /// The proof's expiry.
        exp: u64,
    },
    /// Mutual TLS with a Workload Identity Certificate (mutual-tls-03): the identity comes from
    /// the verified client certificate of the connection.
    MutualTls {
        /// base64url SHA-256 of the client's leaf certificate.
        certificate_fingerprint: String,
    },
    /// A WIT + HTTP message signature (http-signature-08).
    HttpSignature {
        /// The signature's `nonce` (a signed response carries it back).
        nonce: String,
        /// The signature's expiry.
        expires: u64,
        /// The caller asked for a signed response (`wimse-sign-response`).
        sign_response: bool,
    },
}

impl ProofMethod {
    /// The proof's own id: a WPT's `jti`, a signature's `nonce` (none for mutual TLS). Unique
    /// per request and signed by the caller: what the audit log names a request by.
    pub fn proof_id(&self) -> Option<&str> {
        match self {
            ProofMethod::Wpt { jti, .. } => Some(jti),
            ProofMethod::HttpSignature { nonce, .. } => Some(nonce),
            ProofMethod::MutualTls { .. } => None,
        }
    }

    /// `"wpt"` or `"http-signature"`.
    pub fn name(&self) -> &'static str {
        match self {
            ProofMethod::Wpt { .. } => "wpt",
            ProofMethod::HttpSignature { .. } => "http-signature",
            ProofMethod::MutualTls { .. } => "mtls",
        }
    }
}

/// An authenticated caller. Only a [`Verifier`](crate::server::verify::Verifier) makes one, and only
/// after the proof was claimed in its replay store.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedCaller {
    pub(crate) id: WorkloadId,
    pub(crate) method: ProofMethod,
    pub(crate) credential: Credential,
    pub(crate) txn_token: Option<String>,
    pub(crate) transaction: Option<Arc<VerifiedTxnToken>>,
    pub(crate) context_tokens: BTreeMap<String, String>,
    /// Where this request's decisions are recorded, when its verifier keeps an audit log.
    pub(crate) audit: Option<Arc<crate::server::audit_log::AuditContext>>,
}

impl std::fmt::Debug for VerifiedCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens: the Txn-Token by hash, context tokens by name.
        f.debug_struct("VerifiedCaller")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("credential", &self.credential)
            .field("txn_token_hash", &self.txn_token.as_deref().map(crate::protocol::wit::token_hash))
            .field("transaction", &self.transaction)
            .field("context_tokens", &self.context_tokens.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What the caller's identity rests on. A WIT is shared with the verified-WIT cache, so making
/// a caller copies nothing.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    Wit(Arc<VerifiedWit>),
    #[cfg_attr(not(feature = "mtls"), allow(dead_code))]
    Certificate {
        fingerprint: String,
        /// The certificate's `notBefore` (seconds since the epoch), taken as its issuance time
        /// for revocations: CAs backdate it (ours by 60 s) and never set it after issuance, so a
        /// certificate issued before a revocation is refused.
        not_before: Option<u64>,
    },
}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // The same token (its hash) means the same claims and key.
            (Credential::Wit(a), Credential::Wit(b)) => a.hash() == b.hash(),
            (Credential::Certificate { fingerprint: a, .. }, Credential::Certificate { fingerprint: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Credential {}

/// The caller authenticated by the TLS layer (mutual TLS), put into request extensions by a
/// TLS-terminating adapter. A [`Pipeline`](crate::server::pipeline::Pipeline) uses it when the request carries no application-level
/// credentials; headers can never override it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer(pub(crate) VerifiedCaller);

impl TlsPeer {
    /// The caller.
    pub fn caller(&self) -> &VerifiedCaller {
        &self.0
    }
}

#[cfg(feature = "mtls")]
impl TlsPeer {
    /// The peer of a connection whose client certificate chain rustls verified with a
    /// [`WicClientVerifier`](crate::protocol::wic::WicClientVerifier).
    pub fn from_verified_chain(peer_certificates: &[rustls::pki_types::CertificateDer<'_>]) -> crate::Result<Self> {
        let (id, fingerprint) = crate::protocol::wic::verified_peer(peer_certificates)?;
        let not_before = peer_certificates.first().and_then(crate::protocol::wic::not_before_of);
        Ok(Self(VerifiedCaller {
            id,
            method: ProofMethod::MutualTls { certificate_fingerprint: fingerprint.clone() },
            credential: Credential::Certificate { fingerprint, not_before },
            txn_token: None,
            transaction: None,
            context_tokens: BTreeMap::new(),
            audit: None,
        }))
    }
}

/// Audit: each decision on the caller's request, as an event (target `wimse::audit`) and, when
/// its verifier keeps an audit log ([`Verifier::audit_log`](crate::server::verify::Verifier::audit_log)),
/// as a record.
impl VerifiedCaller {
    /// The request was let through: the event of [`audit::allowed`](crate::server::audit::allowed)
    /// and the record. `Err` when the log refuses the record (`WhenFull::Refuse`): the request
    /// must then be refused.
    pub fn audit_admitted(&self) -> crate::Result<()> {
        match self.audit_record(None, None) {
            Ok(()) => {
                crate::server::audit::allowed(self.method().name(), self.id(), self.transaction().map(|t| t.txn()));
                Ok(())
            }
            Err(error) => {
                crate::server::audit::rejected(self.method().name(), Some(self.id()), &error);
                Err(error)
            }
        }
    }

    /// The request was refused with `error`: the event of [`audit::rejected`](crate::server::audit::rejected)
    /// and the record.
    pub fn audit_refused(&self, error: &crate::Error) {
        crate::server::audit::rejected(self.method().name(), Some(self.id()), error);
        let _ = self.audit_record(Some(error), None);
    }

    /// A decision on `action` (an MCP tool, `tool:<name>`, rather than the HTTP method):
    /// `error` is the refusal, `None` an allow. `Err` when the log refuses an allow's record.
    pub fn audit_decision(&self, action: &str, error: Option<&crate::Error>) -> crate::Result<()> {
        if let Some(error) = error {
            crate::server::audit::rejected(self.method().name(), Some(self.id()), error);
        }
        self.audit_record(error, Some(action))
    }

    /// Writes the record of a decision into the verifier's audit log, if any.
    fn audit_record(&self, error: Option<&crate::Error>, action: Option<&str>) -> crate::Result<()> {
        self.audit_record_by(error, action, None)
    }

    /// A decision on `action` by the policy named `policy` (an MCP tool's), `error` the
    /// refusal. `Err` when the log refuses an allow's record.
    pub fn audit_decision_by(&self, action: &str, policy: &str, error: Option<&crate::Error>) -> crate::Result<()> {
        if let Some(error) = error {
            crate::server::audit::rejected(self.method().name(), Some(self.id()), error);
        }
        self.audit_record_by(error, Some(action), Some(policy))
    }

    /// A refusal by the policy named `policy`.
    pub(crate) fn audit_refused_by(&self, policy: &str, error: &crate::Error) {
        crate::server::audit::rejected(self.method().name(), Some(self.id()), error);
        let _ = self.audit_record_by(Some(error), None, Some(policy));
    }

    /// Names the policy that allowed this request in its allow's audit record.
    pub(crate) fn audit_policy(&mut self, policy: &str) {
        if let Some(context) = self.audit.as_mut() {
            Arc::make_mut(context).policy = Some(policy.to_owned());
        }
    }

    fn audit_record_by(
        &self,
        error: Option<&crate::Error>,
        action: Option<&str>,
        policy: Option<&str>,
    ) -> crate::Result<()> {
        let Some(context) = self.audit.as_deref() else { return Ok(()) };
        let txn = self.transaction();
        let event = crate::server::audit_log::AuditEvent {
            request_id: self.method().proof_id().map(str::to_owned),
            parent_request_id: self.context_tokens.get(crate::draft::PARENT_REQUEST_HEADER).cloned(),
            txn: txn.map(|t| t.txn().to_owned()),
            caller: Some(self.id().to_string()),
            proof: Some(self.method().name().to_owned()),
            subject: txn.map(|t| t.subject().to_owned()),
            actors: txn.map(|t| t.actors().iter().map(ToString::to_string).collect()).unwrap_or_default(),
            action: Some(action.unwrap_or(&context.action).to_owned()),
            resource: Some(context.resource.clone()),
            decision: if error.is_some() { "deny".into() } else { "allow".into() },
            reason: error.map(|e| e.reason().to_owned()),
            policy: policy.or(context.policy.as_deref().filter(|_| error.is_none())).map(str::to_owned),
        };
        context.log.record(event).inspect_err(|failure| {
            tracing::error!(error = %failure, "wimse: the decision could not be recorded in the audit log");
        })
    }
}

impl VerifiedCaller {
    /// The caller's Workload Identifier (the WIT's `sub`).
    pub fn id(&self) -> &WorkloadId {
        &self.id
    }
    /// How possession was proven.
    pub fn method(&self) -> &ProofMethod {
        &self.method
    }
    /// When the caller's WIT expires (0 for a mutual-TLS caller).
    pub fn wit_expires_at(&self) -> u64 {
        self.wit().map_or(0, |wit| wit.claims().exp)
    }
    /// The WIT's `iss`, for audit.
    pub fn wit_issuer(&self) -> Option<&str> {
        self.wit()?.claims().iss.as_deref()
    }
    /// The WIT's `jti`, for audit.
    pub fn wit_id(&self) -> Option<&str> {
        self.wit()?.claims().jti.as_deref()
    }
    /// RFC 7638 thumbprint of the caller's confirmation key (for a mutual-TLS caller, the
    /// base64url SHA-256 of its certificate).
    pub fn key_thumbprint(&self) -> &str {
        match &self.credential {
            Credential::Wit(wit) => wit.cnf_key().thumbprint(),
            Credential::Certificate { fingerprint, .. } => fingerprint,
        }
    }
    /// The caller's verified WIT (`None` for a mutual-TLS caller).
    pub fn wit(&self) -> Option<&VerifiedWit> {
        match &self.credential {
            Credential::Wit(wit) => Some(wit),
            Credential::Certificate { .. } => None,
        }
    }
    /// The `Txn-Token` value exactly as received, present only when the proof bound it (`tth`,
    /// or the signature covered it) or the caller's mutual-TLS connection carried it. Forward
    /// this, unchanged, on the calls made for this request within the trust domain.
    pub fn txn_token(&self) -> Option<&str> {
        self.txn_token.as_deref()
    }
    /// The verified transaction (`txn`, `sub`, `scope`, context) of the request's Txn-Token,
    /// when the verifier validates Txn-Tokens ([`VerifierConfig::txn_tokens`](crate::server::verify::VerifierConfig::txn_tokens)).
    pub fn transaction(&self) -> Option<&VerifiedTxnToken> {
        self.transaction.as_deref()
    }
    /// The verified transaction, shared (what extractors hand out without copying it).
    pub fn shared_transaction(&self) -> Option<Arc<VerifiedTxnToken>> {
        self.transaction.clone()
    }
    /// Context tokens bound by `oth`, by lower-case field name. Tokens not bound never appear.
    pub fn context_tokens(&self) -> &BTreeMap<String, String> {
        &self.context_tokens
    }
}

/// A caller whose credentials verified but whose proof is not yet claimed against replay.
/// The policy runs on it (a refused caller never costs a replay slot); only
/// [`Verifier::confirm`](crate::server::verify::Verifier::confirm) turns it into a [`VerifiedCaller`],
/// so no adapter can hand a caller to a handler without the claim.
#[derive(Debug)]
pub struct PendingCaller {
    pub(crate) caller: VerifiedCaller,
    pub(crate) claim: Option<ReplayClaim>,
    /// A signed request admitted on its header fields whose body is still to be checked: the
    /// `Content-Digest` values it must match. Confirming fails closed while it is set.
    pub(crate) content: Option<Vec<String>>,
}

impl PendingCaller {
    /// The caller's Workload Identifier.
    pub fn id(&self) -> &WorkloadId {
        &self.caller.id
    }

    /// How possession was proven.
    pub fn method(&self) -> &ProofMethod {
        &self.caller.method
    }

    /// The proof to claim (`None` for a TLS peer: the handshake was the proof).
    pub fn claim(&self) -> Option<&ReplayClaim> {
        self.claim.as_ref()
    }

    /// Whether the caller was admitted on its header fields and its body must still be checked
    /// ([`body_received`](Self::body_received)) before it can be confirmed.
    pub fn awaits_body(&self) -> bool {
        self.content.is_some()
    }

    /// Checks the body of a signed request admitted before its body was read (see
    /// [`RequestView::body_follows`](crate::server::verify::RequestView::body_follows)) against the
    /// request's `Content-Digest`. A caller without a pending body passes unchanged.
    pub fn body_received(mut self, body: &[u8]) -> crate::Result<Self> {
        if let Some(digests) = self.content.take() {
            let digests: Vec<&str> = digests.iter().map(String::as_str).collect();
            if let Err(error) = crate::protocol::httpsig::check_content(&digests, body) {
                let error = error.in_signature_mode();
                self.caller.audit_refused(&error);
                return Err(error);
            }
        }
        Ok(self)
    }
}

impl From<&TlsPeer> for PendingCaller {
    fn from(peer: &TlsPeer) -> Self {
        Self { caller: peer.0.clone(), claim: None, content: None }
    }
}
