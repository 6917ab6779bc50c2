//! A request to the Transaction Token Service and its answer (draft-ietf-oauth-transaction-tokens-11
//! §11, RFC 8693), one type each for the client that asks (`wimse-reqwest`'s
//! `TxnTokenService`) and the server that answers (`wimse-issuer`).

use serde_json::Value;

use crate::protocol::oauth::ACCESS_TOKEN_TYPE;
use crate::protocol::txn::{SELF_SIGNED_TYPE, TXN_TOKEN_TYPE, UNSIGNED_JSON_TYPE};

/// A Txn-Token request: the subject of the transaction and its purpose, with the optional
/// context the TTS may copy into the token. A client builds one with the constructors; the
/// TTS reads the fields of the one it received.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxnTokenRequest {
    /// `scope`: the purpose, space-separated values.
    pub scope: String,
    /// `subject_token` and `subject_token_type`.
    pub subject: TxnSubject,
    /// `audience`: the trust domain (a client's `TxnTokenService` sets its own).
    pub audience: Option<String>,
    /// `request_context`: a JSON object, as text (the TTS may copy it into `rctx`).
    pub request_context: Option<String>,
    /// `request_details`: a JSON object, as text (the TTS may copy it into `tctx`).
    pub request_details: Option<String>,
    /// Who acts for the subject (RFC 8693 `actor_token`), if anyone.
    pub actor: TxnActor,
}

/// The actor of a [`TxnTokenRequest`]: the workload that acts for the subject (an agent for
/// a user), recorded in the Txn-Token's `act` claim.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum TxnActor {
    /// No one: the requester asks for the subject's own transaction (or a replacement keeps
    /// the chain it has).
    #[default]
    None,
    /// The requesting workload itself: a client sends its own WIT as the `actor_token`
    /// (type [`JWT_TOKEN_TYPE`](crate::protocol::oauth::JWT_TOKEN_TYPE)) when it sends the request; the TTS checks that it is the WIT
    /// the request was proven with.
    Requester,
    /// An `actor_token` as received (the TTS side).
    Token {
        /// The actor token.
        token: String,
        /// Its type URN.
        token_type: String,
    },
}

impl std::fmt::Debug for TxnActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Requester => f.write_str("Requester"),
            // Never the token.
            Self::Token { token_type, .. } => f.debug_struct("Token").field("token_type", token_type).finish(),
        }
    }
}

/// The subject of a [`TxnTokenRequest`].
#[derive(Clone, PartialEq, Eq)]
pub enum TxnSubject {
    /// A subject token as given, with its RFC 8693 type URN.
    Token {
        /// The subject token (a user's access token, a Txn-Token, ...).
        token: String,
        /// Its type URN.
        token_type: String,
    },
    /// A self-signed subject token for this subject, that the client signs when it sends the
    /// request (never on the wire as such).
    SelfSignedFor(String),
}

impl std::fmt::Debug for TxnTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the subject token (a user's access token, a Txn-Token).
        let token_type = match &self.subject {
            TxnSubject::Token { token_type, .. } => token_type.as_str(),
            TxnSubject::SelfSignedFor(_) => SELF_SIGNED_TYPE,
        };
        f.debug_struct("TxnTokenRequest")
            .field("scope", &self.scope)
            .field("subject_token_type", &token_type)
            .field("audience", &self.audience)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TxnSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token { token_type, .. } => f.debug_struct("Token").field("token_type", token_type).finish(),
            Self::SelfSignedFor(subject) => f.debug_tuple("SelfSignedFor").field(subject).finish(),
        }
    }
}

impl TxnTokenRequest {
    /// For the user whose OAuth access token (RFC 9068 JWT) the edge received, for `scope`.
    pub fn for_access_token(access_token: impl Into<String>, scope: impl Into<String>) -> Self {
        Self::new(access_token, ACCESS_TOKEN_TYPE, scope)
    }

    /// A replacement of `txn_token` (the one received) with a narrower `scope`.
    pub fn replacing(txn_token: impl Into<String>, scope: impl Into<String>) -> Self {
        Self::new(txn_token, TXN_TOKEN_TYPE, scope)
    }

    /// For a transaction this workload starts on behalf of `subject` (`unsigned_json`: the TTS
    /// must allow this workload to name subjects).
    pub fn unsigned(subject: &str, scope: impl Into<String>) -> Self {
        Self::new(serde_json::json!({ "sub": subject }).to_string(), UNSIGNED_JSON_TYPE, scope)
    }

    /// For a transaction this workload starts itself on behalf of `subject`, in one call: the
    /// client signs the `self_signed` subject token (`iss` this workload, `aud` the token
    /// endpoint, one minute) when it sends the request.
    pub fn self_signed_for(subject: impl Into<String>, scope: impl Into<String>) -> Self {
        Self::with_subject(TxnSubject::SelfSignedFor(subject.into()), scope.into())
    }

    /// With a `self_signed` subject token made beforehand;
    /// [`self_signed_for`](Self::self_signed_for) does both steps.
    pub fn self_signed(token: impl Into<String>, scope: impl Into<String>) -> Self {
        Self::new(token, SELF_SIGNED_TYPE, scope)
    }

    /// Any subject token with its RFC 8693 type URN.
    pub fn new(
        subject_token: impl Into<String>,
        subject_token_type: impl Into<String>,
        scope: impl Into<String>,
    ) -> Self {
        let subject = TxnSubject::Token { token: subject_token.into(), token_type: subject_token_type.into() };
        Self::with_subject(subject, scope.into())
    }

    fn with_subject(subject: TxnSubject, scope: String) -> Self {
        Self { scope, subject, audience: None, request_context: None, request_details: None, actor: TxnActor::None }
    }

    /// The requesting workload acts for the subject (an agent for a user, or for the agent
    /// that handed it the work): the Txn-Token names it as the current actor (`act`), before
    /// any actors the subject token (a Txn-Token being replaced) already names. The TTS must
    /// let the requester act (`actor: true`), and a `may_act` in the subject token must name it.
    pub fn acting(mut self) -> Self {
        self.actor = TxnActor::Requester;
        self
    }

    /// `audience`: the trust domain the token is for.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// `request_context` (a JSON object; the TTS may copy it into `rctx`).
    pub fn request_context(mut self, context: Value) -> Self {
        self.request_context = Some(context.to_string());
        self
    }

    /// `request_details` (a JSON object; the TTS may copy it into `tctx`).
    pub fn request_details(mut self, details: Value) -> Self {
        self.request_details = Some(details.to_string());
        self
    }
}

/// An issued Txn-Token: the TTS's answer.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedTxnToken {
    /// The token (compact JWS), to send as `Txn-Token`.
    pub token: String,
    /// Seconds until it expires, as the TTS said.
    pub expires_in: u64,
    /// Its transaction id (`txn`), for logs, where known: the TTS knows it; a client reading
    /// the answer does not look inside the token.
    pub txn: Option<String>,
}

impl std::fmt::Debug for IssuedTxnToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTxnToken")
            .field("token_hash", &crate::protocol::wit::token_hash(&self.token))
            .field("expires_in", &self.expires_in)
            .field("txn", &self.txn)
            .finish()
    }
}
