//! One error type for the crate. [`ErrorKind`] names the check that failed; its
//! [`reason`](ErrorKind::reason) is the stable code used in logs, problem bodies and the CLI.

use std::borrow::Cow;
use std::fmt;

use crate::id::IdentifierError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a rejection of each kind is answered over HTTP (see [`crate::server::framing::Rejection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A failure of the caller's credentials: 401 with `WWW-Authenticate: WPT` (and, for a
    /// signed request, the generic 400 that http-signature-08 prescribes).
    Credential,
    /// This status, whatever the proof mode, without a challenge.
    Status(u16),
}

/// Defines [`ErrorKind`] and, in the same row, each kind's reason code, [`Answer`] and
/// description: adding a kind is one row. A kind that carries a value gives a sample of it for
/// [`ErrorKind::all`].
macro_rules! error_kinds {
    ($(
        $(#[doc = $doc:literal])*
        $kind:ident $(($field:ty = $sample:expr))? => $reason:literal, $answer:expr, $description:literal;
    )*) => {
        /// What went wrong. Every variant names one failed check; match on it rather than on
        /// messages. Reason codes, answers and descriptions are one table (this file).
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $( $(#[doc = $doc])* $kind $(($field))?, )*
        }

        impl ErrorKind {
            /// Every kind, in the table's order (a sample value for kinds that carry one).
            pub fn all() -> Vec<ErrorKind> {
                vec![$( ErrorKind::$kind $(($sample))? ),*]
            }

            /// The kind's row: reason code, answer, description, and the value it carries.
            fn row(&self) -> (&'static str, Answer, &'static str, Option<String>) {
                match self {
                    $( ErrorKind::$kind $((error_kinds!(@bind value $field)))? =>
                        ($reason, $answer, $description, error_kinds!(@text value $($field)?)), )*
                }
            }
        }
    };
    (@bind $value:ident $field:ty) => { $value };
    (@text $value:ident) => { None };
    (@text $value:ident $field:ty) => { Some($value.to_string()) };
}

error_kinds! {
    // ---- request framing (400) ----
    /// No `Workload-Identity-Token` field.
    MissingWit => "missing_wit", Answer::Credential, "the Workload-Identity-Token field is missing";
    /// More than one `Workload-Identity-Token` field, or a comma-joined list.
    DuplicateWit => "duplicate_wit", Answer::Status(400), "more than one Workload-Identity-Token value";
    /// No `Authorization: WPT …` field.
    MissingWpt => "missing_wpt", Answer::Credential, "no `Authorization: WPT` field";
    /// More than one `Authorization` field.
    DuplicateAuthorization => "duplicate_authorization", Answer::Status(400), "more than one Authorization field";
    /// A bearer token was sent beside the WPT (wpt-02 forbids it).
    BearerWithWpt => "bearer_with_wpt", Answer::Status(400), "a bearer token was sent beside the WPT";
    /// The `Authorization` field is not `WPT <token68>`.
    MalformedAuthorization => "malformed_authorization", Answer::Status(400), "the Authorization field is not `WPT <token>`";
    /// A context-token field (`Txn-Token` or one bound by `oth`) appears more than once.
    DuplicateContextToken => "duplicate_context_token", Answer::Status(400), "a context-token field appears more than once";
    /// A token or field value is larger than the configured limit.
    OversizedToken => "oversized_token", Answer::Status(400), "a token is larger than the configured limit";
    /// A header field value is not visible ASCII.
    InvalidHeaderValue => "invalid_header_value", Answer::Status(400), "a header value is not visible ASCII";
    // ---- token syntax (401) ----
    /// Not a compact JWS `b64url.b64url.b64url`, bad base64url, or a header/payload that is not a JSON object.
    MalformedToken => "malformed_token", Answer::Credential, "the token is not a well-formed compact JWS";
    /// A JSON object in the token repeats a member name.
    DuplicateJsonMember => "duplicate_json_member", Answer::Credential, "a JSON object in the token repeats a member";
    /// The JOSE header lists `crit` extensions; none are understood.
    UnsupportedCriticalHeader => "unsupported_critical_header", Answer::Credential, "the token has critical header extensions";
    /// `alg` is `none`, symmetric, unknown, or not supported by this crate.
    UnsupportedAlgorithm => "unsupported_algorithm", Answer::Credential, "the token's algorithm is not an accepted asymmetric algorithm";
    /// A required claim is absent or has the wrong JSON type.
    MissingClaim(&'static str = "exp") => "missing_claim", Answer::Credential, "a required claim is missing or has the wrong type";
    // ---- WIT (401) ----
    /// The WIT's `typ` is not exactly `wit+jwt`.
    WitWrongType => "wit_wrong_type", Answer::Credential, "the WIT's typ is not wit+jwt";
    /// The WIT's `sub` is not a valid Workload Identifier.
    InvalidSubject(IdentifierError = IdentifierError::Empty) => "invalid_subject", Answer::Credential, "the WIT's sub is not a valid workload identifier";
    /// The trust domain of `sub` has no configured trust anchors.
    UntrustedTrustDomain => "untrusted_trust_domain", Answer::Credential, "the trust domain of the WIT's sub is not trusted";
    /// The WIT's `alg` is not allowed for its trust domain.
    DisallowedAlgorithm => "disallowed_algorithm", Answer::Credential, "the WIT's algorithm is not allowed for its trust domain";
    /// No anchor key matches the WIT's `kid` (or, without `kid`, the choice is ambiguous).
    UnknownKey => "unknown_key", Answer::Credential, "no trust anchor key matches the WIT";
    /// The WIT signature does not verify with the anchor key.
    InvalidWitSignature => "invalid_wit_signature", Answer::Credential, "the WIT signature is invalid";
    /// The WIT has expired.
    ExpiredWit => "expired_wit", Answer::Credential, "the WIT has expired";
    /// The WIT's `nbf` is in the future.
    WitNotYetValid => "wit_not_yet_valid", Answer::Credential, "the WIT is not yet valid";
    /// The WIT's `exp` is further in the future than the maximum WIT lifetime.
    WitLifetimeTooLong => "wit_lifetime_too_long", Answer::Credential, "the WIT expires too far in the future";
    /// `cnf.jwk` is missing, private, without `alg`, or inconsistent with its `alg`.
    InvalidConfirmationKey => "invalid_confirmation_key", Answer::Credential, "the WIT's cnf.jwk is not an acceptable public key";
    /// The WIT has no `kid` and its profile (SPIFFE WIT-SVID) requires one.
    MissingKeyId => "missing_kid", Answer::Credential, "the WIT has no kid and its profile requires one";
    /// The token carries a claim its profile forbids (a WIT-SVID's `aud`).
    ForbiddenClaim(&'static str = "aud") => "forbidden_claim", Answer::Credential, "the token carries a claim its profile forbids";
    // ---- WPT (401) ----
    /// The WPT's `typ` is not exactly `wpt+jwt`.
    WptWrongType => "wpt_wrong_type", Answer::Credential, "the WPT's typ is not wpt+jwt";
    /// The WPT's `alg` is not string-equal to the WIT's `cnf.jwk.alg`.
    WptAlgorithmMismatch => "wpt_algorithm_mismatch", Answer::Credential, "the WPT's alg differs from the WIT's cnf.jwk.alg";
    /// The WPT signature does not verify with `cnf.jwk`.
    InvalidWptSignature => "invalid_wpt_signature", Answer::Credential, "the WPT signature is invalid";
    /// The WPT has expired.
    ExpiredWpt => "expired_wpt", Answer::Credential, "the WPT has expired";
    /// The WPT's `exp` is further away than the maximum proof lifetime.
    WptLifetimeTooLong => "wpt_lifetime_too_long", Answer::Credential, "the WPT expires too far in the future";
    /// The proof's audience (a WPT's `aud`, a signature's `wimse-aud`) is not one of the
    /// configured audiences. The detail names the parameter and the value received.
    AudienceMismatch => "audience_mismatch", Answer::Credential, "the proof's audience does not name this service";
    /// `wth` is not the hash of the WIT presented with the proof.
    WitBindingMismatch => "wit_binding_mismatch", Answer::Credential, "the WPT's wth does not match the WIT";
    /// `tth` and the `Txn-Token` field disagree (either is missing, or the hash differs).
    TxnTokenBindingMismatch => "txn_token_binding_mismatch", Answer::Credential, "the WPT's tth does not match the Txn-Token field";
    /// An `oth` entry does not match its field (absent, repeated, or a different hash), or a
    /// configured context token is present but not covered by `oth`.
    OtherTokenBindingMismatch => "other_token_binding_mismatch", Answer::Credential, "the WPT's oth does not match the request's context tokens";
    /// `oth` names a context token this service is not configured to understand.
    UnsupportedOtherToken => "unsupported_other_token", Answer::Credential, "the WPT's oth names a context token this service does not understand";
    /// The proof's `jti` was already seen from this sender.
    ReplayedProof => "replayed_proof", Answer::Credential, "the proof was already used";
    // ---- Txn-Token (400; 403 when missing where required) ----
    /// A Txn-Token is required here and the request has none (403).
    MissingTxnToken => "missing_txn_token", Answer::Status(403), "a Txn-Token is required and the request has none";
    /// The Txn-Token is not a well-formed compact JWS, or its header is unusable (`crit`, no
    /// or an unsupported `alg`).
    TxnTokenMalformed => "txn_token_malformed", Answer::Status(400), "the Txn-Token is not a well-formed signed token";
    /// The Txn-Token's `typ` is not `txntoken+jwt`.
    TxnTokenWrongType => "txn_token_wrong_type", Answer::Status(400), "the Txn-Token's typ is not txntoken+jwt";
    /// No Transaction Token Service key matches the Txn-Token's `kid` and `alg`: it was not
    /// signed by this trust domain's TTS.
    TxnTokenUnknownKey => "txn_token_unknown_key", Answer::Status(400), "the Txn-Token was not signed by this trust domain's Transaction Token Service";
    /// The Txn-Token's signature does not verify with the TTS key.
    InvalidTxnTokenSignature => "invalid_txn_token_signature", Answer::Status(400), "the Txn-Token signature is invalid";
    /// The Txn-Token's `aud` is not this trust domain.
    TxnTokenAudienceMismatch => "txn_token_audience_mismatch", Answer::Status(400), "the Txn-Token is for another trust domain";
    /// The Txn-Token has expired.
    ExpiredTxnToken => "expired_txn_token", Answer::Status(400), "the Txn-Token has expired";
    /// The Txn-Token's `iat` is in the future.
    TxnTokenNotYetValid => "txn_token_not_yet_valid", Answer::Status(400), "the Txn-Token is issued in the future";
    /// The Txn-Token lives longer than the maximum Txn-Token lifetime.
    TxnTokenLifetimeTooLong => "txn_token_lifetime_too_long", Answer::Status(400), "the Txn-Token lives longer than allowed";
    /// A required Txn-Token claim is absent or has the wrong JSON type.
    TxnTokenMissingClaim(&'static str = "exp") => "txn_token_missing_claim", Answer::Status(400), "a required Txn-Token claim is missing or has the wrong type";
    // ---- HTTP message signatures (400 for requests, http-signature-08) ----
    /// `Signature-Input`/`Signature` are not valid Structured Fields, repeat a label, disagree,
    /// or use components outside the profile.
    SignatureMalformed => "signature_malformed", Answer::Credential, "the signature fields are malformed";
    /// No signature is tagged `wimse-workload-to-workload`.
    NoWimseSignature => "no_wimse_signature", Answer::Credential, "no WIMSE signature";
    /// More than one signature is tagged `wimse-workload-to-workload`.
    AmbiguousWimseSignature => "ambiguous_wimse_signature", Answer::Credential, "more than one WIMSE signature";
    /// The only signature has another `tag`.
    SignatureWrongTag => "wrong_tag", Answer::Credential, "the signature's tag is not wimse-workload-to-workload";
    /// A required signature parameter (`created`, `expires`, `nonce`, `tag`, `wimse-aud`,
    /// `wimse-req-nonce`) is missing.
    MissingSignatureParameter => "missing_parameter", Answer::Credential, "a required signature parameter is missing";
    /// A forbidden signature parameter (`keyid`, `alg`; `wimse-aud` on a response) is present.
    ForbiddenSignatureParameter => "forbidden_parameter", Answer::Credential, "a forbidden signature parameter is present";
    /// The signature covers a component the profile forbids (a CONNECT covering `@path` or
    /// `@query`).
    ForbiddenComponent => "forbidden_component", Answer::Credential, "the signature covers a forbidden component";
    /// A component the profile or the configuration requires is not covered.
    MissingCoveredComponent => "missing_required_component", Answer::Credential, "a required component is not covered by the signature";
    /// `created` is in the future.
    SignatureCreatedInFuture => "created_in_future", Answer::Credential, "the signature is created in the future";
    /// `expires` has passed.
    SignatureExpired => "signature_expired", Answer::Credential, "the signature has expired";
    /// The signature is older than the maximum age.
    SignatureTooOld => "too_old", Answer::Credential, "the signature is too old";
    /// `expires - created` is longer than allowed.
    SignatureLifetimeTooLong => "signature_lifetime_too_long", Answer::Credential, "the signature's lifetime is too long";
    /// The signature does not verify with the WIT's `cnf.jwk`.
    InvalidHttpSignature => "invalid_signature", Answer::Credential, "the HTTP signature is invalid";
    /// The body does not match `Content-Digest`, or no supported digest is present.
    ContentDigestMismatch => "content_digest_mismatch", Answer::Credential, "the body does not match its Content-Digest";
    /// A signed response's `wimse-req-nonce` is not the request's nonce.
    RequestNonceMismatch => "request_nonce_mismatch", Answer::Credential, "the response's wimse-req-nonce is not the request's nonce";
    /// A body is larger than the configured limit (413).
    BodyTooLarge => "body_too_large", Answer::Status(413), "the body is larger than allowed";
    /// The body of a signed request did not arrive within the server's deadline (408).
    BodyTimeout => "body_timeout", Answer::Status(408), "the body did not arrive in time";
    /// The server is already buffering as many signed request bodies as its budget allows
    /// ([`Pipeline::body_budget`](crate::server::pipeline::Pipeline::body_budget)); retry shortly (503).
    BodyBudgetExceeded => "body_budget_exceeded", Answer::Status(503), "too many request bodies are being read at once";
    /// The client asked for a signed response and this server does not sign responses (501).
    SignedResponseUnsupported => "signed_response_unsupported", Answer::Status(501), "this server does not sign responses";
    /// This server signs responses but could not sign this one (400).
    SignedResponseUnavailable => "signed_response_unavailable", Answer::Status(400), "this response could not be signed";
    // ---- authorization (403) ----
    /// The caller is authenticated but a policy does not allow it.
    PolicyDenied => "policy_denied", Answer::Status(403), "the caller is not allowed by policy";
    /// A policy rule on the Txn-Token's purpose refused the request: its `scope` is not one the
    /// policy requires ([`Rule::txn_scope`](crate::server::policy::Rule::txn_scope)), or one it denies.
    TxnScopeDenied => "txn_scope_denied", Answer::Status(403), "the Txn-Token's purpose (scope) is not allowed here";
    /// A policy rule on the Txn-Token's subject refused the request
    /// ([`Rule::txn_subject`](crate::server::policy::Rule::txn_subject)).
    TxnSubjectDenied => "txn_subject_denied", Answer::Status(403), "the Txn-Token's subject is not allowed here";
    /// A policy rule on the Txn-Token's delegation chain (`act`: who acts for the subject)
    /// refused the request ([`Rule::txn_actor`](crate::server::policy::Rule::txn_actor),
    /// [`Rule::txn_delegated`](crate::server::policy::Rule::txn_delegated),
    /// [`Rule::txn_max_actors`](crate::server::policy::Rule::txn_max_actors)).
    TxnDelegationDenied => "txn_delegation_denied", Answer::Status(403), "the Txn-Token's delegation chain is not allowed here";
    /// Route policies are configured and the request's path is not canonical (a `%` escape, an
    /// empty segment or a `.`/`..` segment): a framework that decodes or normalises it could
    /// route it where a stricter route policy applies, so no policy is chosen for it (400).
    NonCanonicalPath => "non_canonical_path", Answer::Status(400), "the path is not canonical, so no route policy can be chosen for it";
    /// A risk signal (Shared Signals: CAEP `credential-change`, `session-revoked`, RISC
    /// `account-disabled`) revoked the calling workload's credential, or disabled it (403).
    WorkloadRevoked => "workload_revoked", Answer::Status(403), "the workload's credential was revoked by a risk signal";
    /// A risk signal revoked the Txn-Token's subject (the user), or disabled it (403).
    SubjectRevoked => "subject_revoked", Answer::Status(403), "the Txn-Token's subject was revoked by a risk signal";
    // ---- MCP (the Model Context Protocol behind WIMSE, wimse-mcp) ----
    /// A message posted to an MCP server is not one JSON-RPC request object whose `method` (and
    /// a tool call's `params`) can be read unambiguously: a batch, another JSON value, a repeated
    /// member, or an `Mcp-Method`/`Mcp-Name` header that disagrees with the body (400).
    McpRequestMalformed => "mcp_request_malformed", Answer::Status(400), "the MCP request is not a JSON-RPC request this server can authorize";
    /// An MCP `tools/call` names no tool (`params.name` absent or not a string) (400).
    McpToolNameMissing => "mcp_tool_name_missing", Answer::Status(400), "the MCP tool call names no tool";
    /// An MCP tool name is empty, longer than 128 bytes, or has a character outside
    /// `A-Z a-z 0-9 _ - .` (400).
    McpToolNameInvalid => "mcp_tool_name_invalid", Answer::Status(400), "the MCP tool name is empty, too long or has characters tool names may not have";
    /// A certificate is not a valid Workload Identity Certificate (no single URI SAN naming a
    /// workload, unparsable).
    InvalidCertificate => "invalid_certificate", Answer::Credential, "the certificate is not a valid workload identity certificate";
    /// A peer (e.g. the server that signed a response) is not the workload expected for it.
    UnexpectedPeer => "unexpected_peer", Answer::Status(403), "the peer is not the expected workload";
    /// A request over a mutual-TLS connection carries credentials of another workload than the
    /// connection's certificate, and the guard does not let application credentials replace
    /// the TLS identity (403).
    TlsPeerMismatch => "tls_peer_mismatch", Answer::Status(403), "the request's credentials name another workload than its TLS connection";
    // ---- identity server ----
    /// The bootstrap credential (platform token or dev secret) is missing, invalid, expired or
    /// from an unknown issuer (401).
    BootstrapTokenInvalid => "bootstrap_token_invalid", Answer::Status(401), "the bootstrap credential is not valid";
    /// The authenticated client may not obtain this identifier (403).
    IssuanceDenied => "issuance_denied", Answer::Status(403), "the client may not obtain this identifier";
    /// An actor token (RFC 8693 `actor_token`) is not the requester's own verified WIT, or not
    /// of the WIT token type: an agent acts only as itself (400).
    ActorTokenInvalid => "actor_token_invalid", Answer::Status(400), "the actor token is not the requester's own WIT";
    /// The requester may not act for this subject: the Transaction Token Service does not let
    /// it act for others, or the subject token's `may_act` names another actor (403).
    DelegationDenied => "delegation_denied", Answer::Status(403), "the requester may not act for this subject";
    /// Acting for the subject would make the delegation chain (`act`) deeper than the
    /// Transaction Token Service allows (403).
    DelegationTooDeep => "delegation_too_deep", Answer::Status(403), "the delegation chain would be deeper than allowed";
    /// The request's body is not the JSON the endpoint takes: not JSON, not `application/json`,
    /// a missing or unknown member, a value of the wrong type (400; the detail names it).
    MalformedRequest => "malformed_request", Answer::Status(400), "the request body is not what the endpoint takes";
    /// A credential was asked for with a lifetime of 0 seconds: dead on arrival (400; a
    /// lifetime over the client's maximum is capped, not refused).
    InvalidLifetime => "invalid_lifetime", Answer::Status(400), "the requested lifetime is 0";
    /// An operator's key lifecycle step (prepare, activate, re-seal, replace) does not fit the
    /// key store's state: no prepared key to activate, one already waiting, a key not yet
    /// published long enough for verifiers to have it; the detail names which (409).
    KeyLifecycleRefused => "key_lifecycle_refused", Answer::Status(409), "the key store's state does not allow this key lifecycle step";
    // ---- gateway ----
    /// A forward-auth subrequest came from an address that is not a configured proxy: whoever
    /// sends it chooses which request is checked (403).
    UntrustedForwarder => "untrusted_forwarder", Answer::Status(403), "the forward-auth request does not come from a trusted proxy";
    /// A forward-auth subrequest lacks (or repeats) a field naming the original request's
    /// method, URI or host (400).
    OriginalRequestMissing => "original_request_missing", Answer::Status(400), "the forward-auth request does not say which request to check";
    /// An HTTP-signature request with a body reached a gateway mode that does not receive
    /// bodies (forward-auth): its `Content-Digest` cannot be checked. Send a WPT, or go
    /// through the reverse proxy (401).
    BodyNotForwarded => "body_not_forwarded", Answer::Credential, "the signature covers a body this gateway mode does not receive";
    /// No gateway route is configured for the request's host and path (403).
    NoRoute => "no_route", Answer::Status(403), "no route is configured for this host and path";
    /// The egress proxy signs for configured destinations only (403).
    DestinationNotAllowed => "destination_not_allowed", Answer::Status(403), "the destination is not one the egress proxy may sign for";
    /// The egress proxy was asked for a tunnel (`CONNECT`), inside which it could not sign
    /// (405).
    TunnelRefused => "tunnel_refused", Answer::Status(405), "CONNECT tunnels are refused: send plain HTTP requests to the proxy";
    /// The upstream could not be reached or broke the exchange (502).
    UpstreamUnavailable => "upstream_unavailable", Answer::Status(502), "the upstream could not be reached";
    /// The upstream did not answer in time (504).
    UpstreamTimeout => "upstream_timeout", Answer::Status(504), "the upstream did not answer in time";
    /// A name requested for a certificate's subject alternative names is not a valid DNS name
    /// (LDH labels of 1 to 63 bytes, at most 253 bytes, internationalized names as A-labels)
    /// or not a unicast host address (400).
    InvalidSubjectAltName => "invalid_subject_alt_name", Answer::Status(400), "a requested DNS name or IP address is not a valid server name";
    /// A token exchange was refused: the subject token is invalid or maps to no identifier
    /// (RFC 8693 `invalid_grant`).
    ExchangeRefused => "invalid_grant", Answer::Credential, "the token exchange was refused";
    /// The subject token type is not supported (RFC 8693 `unsupported_token_type`).
    UnsupportedTokenType => "unsupported_token_type", Answer::Credential, "the subject token type is not supported";
    /// The token endpoint does not serve this grant (RFC 6749 `unsupported_grant_type`).
    UnsupportedGrantType => "unsupported_grant_type", Answer::Credential, "the grant type is not supported";
    /// The requested scope (at the identity server: the identifier) is not granted (RFC 6749
    /// `invalid_scope`).
    InvalidScope => "invalid_scope", Answer::Credential, "the requested scope is not granted";
    /// A DPoP proof (RFC 9449) is missing or fails a check (`invalid_dpop_proof`); the detail
    /// names the check.
    InvalidDpopProof => "invalid_dpop_proof", Answer::Credential, "the DPoP proof is invalid";
    /// A token exchange names an `audience` this server does not issue for (RFC 8693
    /// `invalid_target`).
    InvalidTarget => "invalid_target", Answer::Status(400), "the requested audience is not served here";
    // ---- client side ----
    /// The signer has no usable credentials (missing, unreadable, mismatched or expired).
    CredentialsUnavailable => "credentials_unavailable", Answer::Status(500), "no usable workload credentials";
    // ---- service state (503) ----
    /// The trust domain is trusted but its keys are not available (never fetched, or stale).
    TrustAnchorsUnavailable => "trust_anchors_unavailable", Answer::Status(503), "the trust domain's keys are not available";
    /// The replay store cannot answer (unreachable, too slow, or recovering from lost state) and
    /// fails closed.
    ReplayCacheUnavailable => "replay_cache_unavailable", Answer::Status(503), "the replay cache is unavailable";
    /// The identity server's key store (its file, or PostgreSQL) cannot be read or written:
    /// nothing is issued until it answers.
    KeyStoreUnavailable => "key_store_unavailable", Answer::Status(503), "the identity server's key store is unavailable";
    /// The audit log cannot take the record (its queue is full with `WhenFull::Refuse`, or its
    /// writer stopped): nothing is decided without a record (503).
    AuditLogUnavailable => "audit_log_unavailable", Answer::Status(503), "the audit log is unavailable";
    /// The replay cache is full of live entries; the proof is refused rather than risking a replay.
    ReplayCacheFull => "replay_cache_full", Answer::Status(503), "the replay cache is full";
    /// The request uses a proof this kind of request cannot carry (an HTTP message signature on
    /// a gRPC call, whose body is a stream: use a WPT).
    UnsupportedProof => "unsupported_proof", Answer::Status(400), "this request cannot carry that proof (gRPC: use a WPT)";
    /// The caller holds its whole share of the replay store's live entries (429 with
    /// `Retry-After`): one workload cannot exhaust the store for the others.
    ReplayQuotaExceeded => "replay_quota_exceeded", Answer::Status(429), "the caller has too many live proofs";
    /// The caller (a client, or a source address) is over its rate limit (429 with
    /// `Retry-After`).
    RateLimited => "rate_limited", Answer::Status(429), "too many requests";
    // ---- keys and configuration (not request errors) ----
    /// A key could not be parsed, generated or used.
    InvalidKey => "invalid_key", Answer::Status(500), "invalid key";
    /// A configuration value is invalid (trust bundle, audience, leeway…).
    InvalidConfiguration => "invalid_configuration", Answer::Status(500), "invalid configuration";
    /// A signed message has content (or a `Content-Digest`) but the integration did not hand the
    /// body to the verifier, so the digest could not be checked (500: a bug in the integration,
    /// refused rather than skipped).
    BodyNotSupplied => "body_not_supplied", Answer::Status(500), "the message body was not given to the verifier";
    /// A cryptographic operation failed for a reason other than a bad signature.
    Crypto => "crypto", Answer::Status(500), "cryptographic operation failed";
}

impl ErrorKind {
    /// A stable, snake_case code naming the failed check.
    pub fn reason(&self) -> &'static str {
        self.row().0
    }

    /// How a rejection of this kind is answered.
    pub fn answer(&self) -> Answer {
        self.row().1
    }

    /// The description without the value a kind may carry (the same for every `MissingClaim`).
    pub fn summary(&self) -> &'static str {
        self.row().2
    }

    /// A short human description of the failed check (never contains token material).
    pub fn description(&self) -> Cow<'static, str> {
        match self.row() {
            (_, _, text, None) => Cow::Borrowed(text),
            (_, _, text, Some(value)) => Cow::Owned(format!("{text}: {value}")),
        }
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
    /// with a generic 400 (see [`crate::server::framing::Rejection`]).
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
