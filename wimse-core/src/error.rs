//! One error type for the crate. [`ErrorKind`] names the check that failed; its
//! [`reason`](ErrorKind::reason) is the stable code used in logs, problem bodies and the CLI.

use std::borrow::Cow;
use std::fmt;

use crate::id::IdentifierError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Every variant names one failed check; match on it rather than on messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    // ---- request framing (400) ----
    /// No `Workload-Identity-Token` field.
    MissingWit,
    /// More than one `Workload-Identity-Token` field, or a comma-joined list.
    DuplicateWit,
    /// No `Authorization: WPT …` field.
    MissingWpt,
    /// More than one `Authorization` field.
    DuplicateAuthorization,
    /// A bearer token was sent beside the WPT (wpt-02 forbids it).
    BearerWithWpt,
    /// The `Authorization` field is not `WPT <token68>`.
    MalformedAuthorization,
    /// A context-token field (`Txn-Token` or one bound by `oth`) appears more than once.
    DuplicateContextToken,
    /// A token or field value is larger than the configured limit.
    OversizedToken,
    /// A header field value is not visible ASCII.
    InvalidHeaderValue,

    // ---- token syntax (401) ----
    /// Not a compact JWS `b64url.b64url.b64url`, bad base64url, or a header/payload that is not a JSON object.
    MalformedToken,
    /// A JSON object in the token repeats a member name.
    DuplicateJsonMember,
    /// The JOSE header lists `crit` extensions; none are understood.
    UnsupportedCriticalHeader,
    /// `alg` is `none`, symmetric, unknown, or not supported by this crate.
    UnsupportedAlgorithm,
    /// A required claim is absent or has the wrong JSON type.
    MissingClaim(&'static str),

    // ---- WIT (401) ----
    /// The WIT's `typ` is not exactly `wit+jwt`.
    WitWrongType,
    /// The WIT's `sub` is not a valid Workload Identifier.
    InvalidSubject(IdentifierError),
    /// The trust domain of `sub` has no configured trust anchors.
    UntrustedTrustDomain,
    /// The WIT's `alg` is not allowed for its trust domain.
    DisallowedAlgorithm,
    /// No anchor key matches the WIT's `kid` (or, without `kid`, the choice is ambiguous).
    UnknownKey,
    /// The WIT signature does not verify with the anchor key.
    InvalidWitSignature,
    /// The WIT has expired.
    ExpiredWit,
    /// The WIT's `nbf` is in the future.
    WitNotYetValid,
    /// The WIT's `exp` is further in the future than the maximum WIT lifetime.
    WitLifetimeTooLong,
    /// `cnf.jwk` is missing, private, without `alg`, or inconsistent with its `alg`.
    InvalidConfirmationKey,

    // ---- WPT (401) ----
    /// The WPT's `typ` is not exactly `wpt+jwt`.
    WptWrongType,
    /// The WPT's `alg` is not string-equal to the WIT's `cnf.jwk.alg`.
    WptAlgorithmMismatch,
    /// The WPT signature does not verify with `cnf.jwk`.
    InvalidWptSignature,
    /// The WPT has expired.
    ExpiredWpt,
    /// The WPT's `exp` is further away than the maximum proof lifetime.
    WptLifetimeTooLong,
    /// `aud` is not one of the configured audiences.
    AudienceMismatch,
    /// `wth` is not the hash of the WIT presented with the proof.
    WitBindingMismatch,
    /// `tth` and the `Txn-Token` field disagree (either is missing, or the hash differs).
    TxnTokenBindingMismatch,
    /// An `oth` entry does not match its field (absent, repeated, or a different hash), or a
    /// configured context token is present but not covered by `oth`.
    OtherTokenBindingMismatch,
    /// `oth` names a context token this service is not configured to understand.
    UnsupportedOtherToken,
    /// The proof's `jti` was already seen from this sender.
    ReplayedProof,

    // ---- Txn-Token (400; 403 when missing where required) ----
    /// A Txn-Token is required here and the request has none (403).
    MissingTxnToken,
    /// The Txn-Token is not a well-formed compact JWS, or its header is unusable (`crit`, no
    /// or an unsupported `alg`).
    TxnTokenMalformed,
    /// The Txn-Token's `typ` is not `txntoken+jwt`.
    TxnTokenWrongType,
    /// No Transaction Token Service key matches the Txn-Token's `kid` and `alg`: it was not
    /// signed by this trust domain's TTS.
    TxnTokenUnknownKey,
    /// The Txn-Token's signature does not verify with the TTS key.
    InvalidTxnTokenSignature,
    /// The Txn-Token's `aud` is not this trust domain.
    TxnTokenAudienceMismatch,
    /// The Txn-Token has expired.
    ExpiredTxnToken,
    /// The Txn-Token's `iat` is in the future.
    TxnTokenNotYetValid,
    /// The Txn-Token lives longer than the maximum Txn-Token lifetime.
    TxnTokenLifetimeTooLong,
    /// A required Txn-Token claim is absent or has the wrong JSON type.
    TxnTokenMissingClaim(&'static str),

    // ---- HTTP message signatures (400 for requests, http-signature-08) ----
    /// `Signature-Input`/`Signature` are not valid Structured Fields, repeat a label, disagree,
    /// or use components outside the profile.
    SignatureMalformed,
    /// No signature is tagged `wimse-workload-to-workload`.
    NoWimseSignature,
    /// More than one signature is tagged `wimse-workload-to-workload`.
    AmbiguousWimseSignature,
    /// The only signature has another `tag`.
    SignatureWrongTag,
    /// A required signature parameter (`created`, `expires`, `nonce`, `tag`, `wimse-aud`,
    /// `wimse-req-nonce`) is missing.
    MissingSignatureParameter,
    /// A forbidden signature parameter (`keyid`, `alg`; `wimse-aud` on a response) is present.
    ForbiddenSignatureParameter,
    /// The signature covers a component the profile forbids (a CONNECT covering `@path` or
    /// `@query`).
    ForbiddenComponent,
    /// A component the profile or the configuration requires is not covered.
    MissingCoveredComponent,
    /// `created` is in the future.
    SignatureCreatedInFuture,
    /// `expires` has passed.
    SignatureExpired,
    /// The signature is older than the maximum age.
    SignatureTooOld,
    /// `expires - created` is longer than allowed.
    SignatureLifetimeTooLong,
    /// The signature does not verify with the WIT's `cnf.jwk`.
    InvalidHttpSignature,
    /// The body does not match `Content-Digest`, or no supported digest is present.
    ContentDigestMismatch,
    /// A signed response's `wimse-req-nonce` is not the request's nonce.
    RequestNonceMismatch,
    /// A body is larger than the configured limit (413).
    BodyTooLarge,
    /// The client asked for a signed response and this server does not sign responses (501).
    SignedResponseUnsupported,
    /// This server signs responses but could not sign this one (400).
    SignedResponseUnavailable,

    // ---- authorization (403) ----
    /// The caller is authenticated but a policy does not allow it.
    PolicyDenied,
    /// A certificate is not a valid Workload Identity Certificate (no single URI SAN naming a
    /// workload, unparsable).
    InvalidCertificate,
    /// A peer (e.g. the server that signed a response) is not the workload expected for it.
    UnexpectedPeer,
    /// A request over a mutual-TLS connection carries credentials of another workload than the
    /// connection's certificate, and the guard does not let application credentials replace
    /// the TLS identity (403).
    TlsPeerMismatch,

    // ---- identity server ----
    /// The bootstrap credential (platform token or dev secret) is missing, invalid, expired or
    /// from an unknown issuer (401).
    BootstrapTokenInvalid,
    /// The authenticated client may not obtain this identifier (403).
    IssuanceDenied,
    /// A name requested for a certificate's subject alternative names is not a valid DNS name
    /// (LDH labels of 1 to 63 bytes, at most 253 bytes, internationalized names as A-labels)
    /// or not a unicast host address (400).
    InvalidSubjectAltName,
    /// A token exchange was refused: the subject token is invalid or maps to no identifier
    /// (RFC 8693 `invalid_grant`).
    ExchangeRefused,
    /// The subject token type is not supported (RFC 8693 `unsupported_token_type`).
    UnsupportedTokenType,
    /// The token endpoint does not serve this grant (RFC 6749 `unsupported_grant_type`).
    UnsupportedGrantType,
    /// The requested scope (at the identity server: the identifier) is not granted (RFC 6749
    /// `invalid_scope`).
    InvalidScope,
    /// A DPoP proof (RFC 9449) is missing or fails a check (`invalid_dpop_proof`); the detail
    /// names the check.
    InvalidDpopProof,
    /// A token exchange names an `audience` this server does not issue for (RFC 8693
    /// `invalid_target`).
    InvalidTarget,

    // ---- client side ----
    /// The signer has no usable credentials (missing, unreadable, mismatched or expired).
    CredentialsUnavailable,

    // ---- service state (503) ----
    /// The trust domain is trusted but its keys are not available (never fetched, or stale).
    TrustAnchorsUnavailable,
    /// The replay store cannot answer (unreachable, too slow, or recovering from lost state) and
    /// fails closed.
    ReplayCacheUnavailable,
    /// The identity server's key store (its file, or PostgreSQL) cannot be read or written:
    /// nothing is issued until it answers.
    KeyStoreUnavailable,
    /// The replay cache is full of live entries; the proof is refused rather than risking a replay.
    ReplayCacheFull,
    /// The request uses a proof this kind of request cannot carry (an HTTP message signature on
    /// a gRPC call, whose body is a stream: use a WPT).
    UnsupportedProof,
    /// The caller holds its whole share of the replay store's live entries (429 with
    /// `Retry-After`): one workload cannot exhaust the store for the others.
    ReplayQuotaExceeded,
    /// The caller (a client, or a source address) is over its rate limit (429 with
    /// `Retry-After`).
    RateLimited,

    // ---- keys and configuration (not request errors) ----
    /// A key could not be parsed, generated or used.
    InvalidKey,
    /// A configuration value is invalid (trust bundle, audience, leeway…).
    InvalidConfiguration,
    /// A signed message has content (or a `Content-Digest`) but the integration did not hand the
    /// body to the verifier, so the digest could not be checked (500: a bug in the integration,
    /// refused rather than skipped).
    BodyNotSupplied,
    /// A cryptographic operation failed for a reason other than a bad signature.
    Crypto,
}

impl ErrorKind {
    /// A stable, snake_case code naming the failed check.
    pub fn reason(&self) -> &'static str {
        use ErrorKind::*;
        match self {
            MissingWit => "missing_wit",
            DuplicateWit => "duplicate_wit",
            MissingWpt => "missing_wpt",
            DuplicateAuthorization => "duplicate_authorization",
            BearerWithWpt => "bearer_with_wpt",
            MalformedAuthorization => "malformed_authorization",
            DuplicateContextToken => "duplicate_context_token",
            OversizedToken => "oversized_token",
            InvalidHeaderValue => "invalid_header_value",
            MalformedToken => "malformed_token",
            DuplicateJsonMember => "duplicate_json_member",
            UnsupportedCriticalHeader => "unsupported_critical_header",
            UnsupportedAlgorithm => "unsupported_algorithm",
            MissingClaim(_) => "missing_claim",
            WitWrongType => "wit_wrong_type",
            InvalidSubject(_) => "invalid_subject",
            UntrustedTrustDomain => "untrusted_trust_domain",
            DisallowedAlgorithm => "disallowed_algorithm",
            UnknownKey => "unknown_key",
            InvalidWitSignature => "invalid_wit_signature",
            ExpiredWit => "expired_wit",
            WitNotYetValid => "wit_not_yet_valid",
            WitLifetimeTooLong => "wit_lifetime_too_long",
            InvalidConfirmationKey => "invalid_confirmation_key",
            WptWrongType => "wpt_wrong_type",
            WptAlgorithmMismatch => "wpt_algorithm_mismatch",
            InvalidWptSignature => "invalid_wpt_signature",
            ExpiredWpt => "expired_wpt",
            WptLifetimeTooLong => "wpt_lifetime_too_long",
            AudienceMismatch => "audience_mismatch",
            WitBindingMismatch => "wit_binding_mismatch",
            TxnTokenBindingMismatch => "txn_token_binding_mismatch",
            OtherTokenBindingMismatch => "other_token_binding_mismatch",
            UnsupportedOtherToken => "unsupported_other_token",
            ReplayedProof => "replayed_proof",
            MissingTxnToken => "missing_txn_token",
            TxnTokenMalformed => "txn_token_malformed",
            TxnTokenWrongType => "txn_token_wrong_type",
            TxnTokenUnknownKey => "txn_token_unknown_key",
            InvalidTxnTokenSignature => "invalid_txn_token_signature",
            TxnTokenAudienceMismatch => "txn_token_audience_mismatch",
            ExpiredTxnToken => "expired_txn_token",
            TxnTokenNotYetValid => "txn_token_not_yet_valid",
            TxnTokenLifetimeTooLong => "txn_token_lifetime_too_long",
            TxnTokenMissingClaim(_) => "txn_token_missing_claim",
            SignatureMalformed => "signature_malformed",
            NoWimseSignature => "no_wimse_signature",
            AmbiguousWimseSignature => "ambiguous_wimse_signature",
            SignatureWrongTag => "wrong_tag",
            MissingSignatureParameter => "missing_parameter",
            ForbiddenSignatureParameter => "forbidden_parameter",
            ForbiddenComponent => "forbidden_component",
            MissingCoveredComponent => "missing_required_component",
            SignatureCreatedInFuture => "created_in_future",
            SignatureExpired => "signature_expired",
            SignatureTooOld => "too_old",
            SignatureLifetimeTooLong => "signature_lifetime_too_long",
            InvalidHttpSignature => "invalid_signature",
            ContentDigestMismatch => "content_digest_mismatch",
            RequestNonceMismatch => "request_nonce_mismatch",
            BodyTooLarge => "body_too_large",
            SignedResponseUnsupported => "signed_response_unsupported",
            SignedResponseUnavailable => "signed_response_unavailable",
            PolicyDenied => "policy_denied",
            BootstrapTokenInvalid => "bootstrap_token_invalid",
            IssuanceDenied => "issuance_denied",
            InvalidSubjectAltName => "invalid_subject_alt_name",
            ExchangeRefused => "invalid_grant",
            UnsupportedTokenType => "unsupported_token_type",
            InvalidDpopProof => "invalid_dpop_proof",
            InvalidTarget => "invalid_target",
            UnsupportedGrantType => "unsupported_grant_type",
            InvalidScope => "invalid_scope",
            InvalidCertificate => "invalid_certificate",
            UnexpectedPeer => "unexpected_peer",
            TlsPeerMismatch => "tls_peer_mismatch",
            CredentialsUnavailable => "credentials_unavailable",
            ReplayCacheFull => "replay_cache_full",
            ReplayQuotaExceeded => "replay_quota_exceeded",
            RateLimited => "rate_limited",
            UnsupportedProof => "unsupported_proof",
            TrustAnchorsUnavailable => "trust_anchors_unavailable",
            ReplayCacheUnavailable => "replay_cache_unavailable",
            KeyStoreUnavailable => "key_store_unavailable",
            InvalidKey => "invalid_key",
            InvalidConfiguration => "invalid_configuration",
            BodyNotSupplied => "body_not_supplied",
            Crypto => "crypto",
        }
    }

    /// A short human description of the failed check (never contains token material).
    pub fn description(&self) -> Cow<'static, str> {
        use ErrorKind::*;
        Cow::Borrowed(match self {
            MissingWit => "the Workload-Identity-Token field is missing",
            DuplicateWit => "more than one Workload-Identity-Token value",
            MissingWpt => "no `Authorization: WPT` field",
            DuplicateAuthorization => "more than one Authorization field",
            BearerWithWpt => "a bearer token was sent beside the WPT",
            MalformedAuthorization => "the Authorization field is not `WPT <token>`",
            DuplicateContextToken => "a context-token field appears more than once",
            OversizedToken => "a token is larger than the configured limit",
            InvalidHeaderValue => "a header value is not visible ASCII",
            MalformedToken => "the token is not a well-formed compact JWS",
            DuplicateJsonMember => "a JSON object in the token repeats a member",
            UnsupportedCriticalHeader => "the token has critical header extensions",
            UnsupportedAlgorithm => "the token's algorithm is not an accepted asymmetric algorithm",
            MissingClaim(name) => return Cow::Owned(format!("claim `{name}` is missing or has the wrong type")),
            WitWrongType => "the WIT's typ is not wit+jwt",
            InvalidSubject(e) => return Cow::Owned(format!("the WIT's sub is not a valid workload identifier: {e}")),
            UntrustedTrustDomain => "the trust domain of the WIT's sub is not trusted",
            DisallowedAlgorithm => "the WIT's algorithm is not allowed for its trust domain",
            UnknownKey => "no trust anchor key matches the WIT",
            InvalidWitSignature => "the WIT signature is invalid",
            ExpiredWit => "the WIT has expired",
            WitNotYetValid => "the WIT is not yet valid",
            WitLifetimeTooLong => "the WIT expires too far in the future",
            InvalidConfirmationKey => "the WIT's cnf.jwk is not an acceptable public key",
            WptWrongType => "the WPT's typ is not wpt+jwt",
            WptAlgorithmMismatch => "the WPT's alg differs from the WIT's cnf.jwk.alg",
            InvalidWptSignature => "the WPT signature is invalid",
            ExpiredWpt => "the WPT has expired",
            WptLifetimeTooLong => "the WPT expires too far in the future",
            AudienceMismatch => "the WPT's aud is not an audience of this service",
            WitBindingMismatch => "the WPT's wth does not match the WIT",
            TxnTokenBindingMismatch => "the WPT's tth does not match the Txn-Token field",
            OtherTokenBindingMismatch => "the WPT's oth does not match the request's context tokens",
            UnsupportedOtherToken => "the WPT's oth names a context token this service does not understand",
            ReplayedProof => "the proof was already used",
            MissingTxnToken => "a Txn-Token is required and the request has none",
            TxnTokenMalformed => "the Txn-Token is not a well-formed signed token",
            TxnTokenWrongType => "the Txn-Token's typ is not txntoken+jwt",
            TxnTokenUnknownKey => "the Txn-Token was not signed by this trust domain's Transaction Token Service",
            InvalidTxnTokenSignature => "the Txn-Token signature is invalid",
            TxnTokenAudienceMismatch => "the Txn-Token is for another trust domain",
            ExpiredTxnToken => "the Txn-Token has expired",
            TxnTokenNotYetValid => "the Txn-Token is issued in the future",
            TxnTokenLifetimeTooLong => "the Txn-Token lives longer than allowed",
            TxnTokenMissingClaim(name) => {
                return Cow::Owned(format!("Txn-Token claim `{name}` is missing or has the wrong type"));
            }
            SignatureMalformed => "the signature fields are malformed",
            NoWimseSignature => "no WIMSE signature",
            AmbiguousWimseSignature => "more than one WIMSE signature",
            SignatureWrongTag => "the signature's tag is not wimse-workload-to-workload",
            MissingSignatureParameter => "a required signature parameter is missing",
            ForbiddenSignatureParameter => "a forbidden signature parameter is present",
            ForbiddenComponent => "the signature covers a forbidden component",
            MissingCoveredComponent => "a required component is not covered by the signature",
            SignatureCreatedInFuture => "the signature is created in the future",
            SignatureExpired => "the signature has expired",
            SignatureTooOld => "the signature is too old",
            SignatureLifetimeTooLong => "the signature's lifetime is too long",
            InvalidHttpSignature => "the HTTP signature is invalid",
            ContentDigestMismatch => "the body does not match its Content-Digest",
            RequestNonceMismatch => "the response's wimse-req-nonce is not the request's nonce",
            BodyTooLarge => "the body is larger than allowed",
            SignedResponseUnsupported => "this server does not sign responses",
            SignedResponseUnavailable => "this response could not be signed",
            PolicyDenied => "the caller is not allowed by policy",
            BootstrapTokenInvalid => "the bootstrap credential is not valid",
            IssuanceDenied => "the client may not obtain this identifier",
            InvalidSubjectAltName => "a requested DNS name or IP address is not a valid server name",
            ExchangeRefused => "the token exchange was refused",
            UnsupportedTokenType => "the subject token type is not supported",
            InvalidDpopProof => "the DPoP proof is invalid",
            InvalidTarget => "the requested audience is not served here",
            UnsupportedGrantType => "the grant type is not supported",
            InvalidScope => "the requested scope is not granted",
            InvalidCertificate => "the certificate is not a valid workload identity certificate",
            UnexpectedPeer => "the peer is not the expected workload",
            TlsPeerMismatch => "the request's credentials name another workload than its TLS connection",
            CredentialsUnavailable => "no usable workload credentials",
            ReplayCacheFull => "the replay cache is full",
            ReplayQuotaExceeded => "the caller has too many live proofs",
            RateLimited => "too many requests",
            UnsupportedProof => "this request cannot carry that proof (gRPC: use a WPT)",
            TrustAnchorsUnavailable => "the trust domain's keys are not available",
            ReplayCacheUnavailable => "the replay cache is unavailable",
            KeyStoreUnavailable => "the identity server's key store is unavailable",
            InvalidKey => "invalid key",
            InvalidConfiguration => "invalid configuration",
            BodyNotSupplied => "the message body was not given to the verifier",
            Crypto => "cryptographic operation failed",
        })
    }
}

/// The crate's error: a [`ErrorKind`] plus optional detail for logs. The detail never contains
/// raw tokens, only names and sizes.
#[derive(Clone, PartialEq, Eq)]
pub struct Error(Box<Inner>);

#[derive(Clone, PartialEq, Eq)]
struct Inner {
    kind: ErrorKind,
    detail: Option<Cow<'static, str>>,
    signature_mode: bool,
    retry_after: Option<u64>,
}

impl Error {
    /// An error of `kind` without detail.
    pub fn new(kind: ErrorKind) -> Self {
        Self(Box::new(Inner { kind, detail: None, signature_mode: false, retry_after: None }))
    }

    /// An error of `kind` with a detail for logs (must not contain token material).
    pub fn with_detail(kind: ErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        Self(Box::new(Inner { kind, detail: Some(detail.into()), signature_mode: false, retry_after: None }))
    }

    /// The failed check.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// Consumes the error, returning the failed check.
    pub fn into_kind(self) -> ErrorKind {
        self.0.kind
    }

    /// The detail, if any.
    pub fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }

    /// Marks the error as a failure of an HTTP-signature request, which http-signature-08 answers
    /// with a generic 400 (see [`crate::http::Rejection`]).
    pub fn in_signature_mode(mut self) -> Self {
        self.0.signature_mode = true;
        self
    }

    /// Adds a hint for when the request may succeed again, in seconds (sent as `Retry-After`).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.0.retry_after = Some(secs);
        self
    }

    /// When the request may succeed again, in seconds, if known.
    pub fn retry_after(&self) -> Option<u64> {
        self.0.retry_after
    }

    /// Whether the error is about an HTTP-signature request.
    pub fn is_signature_mode(&self) -> bool {
        self.0.signature_mode
    }

    /// Shorthand for `self.kind().reason()`.
    pub fn reason(&self) -> &'static str {
        self.0.kind.reason()
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind);
        if let Some(detail) = &self.0.detail {
            d.field("detail", detail);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.kind.description())?;
        if let Some(detail) = &self.0.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
