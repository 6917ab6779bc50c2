//! Transaction Tokens on the client side: obtaining one from the trust domain's Transaction
//! Token Service (draft-ietf-oauth-transaction-tokens-11 §11, RFC 8693), authenticated with this
//! workload's own WIT + WPT.
//!
//! Forwarding the token of the request being served is the job of [`WimseSignMiddleware`]:
//! put [`TxnToken`](crate::TxnToken) in the outbound request's extensions (or set the `Txn-Token` field) and
//! name the origins of this trust domain with
//! [`WimseSignMiddleware::trust_domain_origins`]; the token then goes, bound to each request's
//! proof, to those origins only.

use reqwest_middleware::ClientWithMiddleware;
use serde_json::Value;
use wimse_core::client::sign::Signer;
use wimse_core::id::TrustDomain;
use wimse_core::protocol::oauth::{JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT};
use wimse_core::protocol::txn::{
    IssuedTxnToken, SELF_SIGNED_TYPE, TXN_TOKEN_TYPE, TxnActor, TxnSubject, TxnTokenRequest,
};

use wimse_core::{Error, ErrorKind};

use crate::{WimseSignMiddleware, read_capped, secure_or_loopback};

/// A self-signed subject token (draft -10 §11.2.1) for `subject`: `iss` this workload, `aud` the
/// TTS (its token endpoint), valid for one minute from now on the signer's clock, signed with
/// this workload's key. [`TxnTokenRequest::self_signed_for`] makes it as part of the request.
pub fn self_signed_subject(signer: &Signer, tts: &str, subject: &str) -> Result<String, Error> {
    let now = signer.now();
    let credentials = signer.credentials()?;
    let claims = serde_json::json!({
        "iss": credentials.subject().as_str(), "sub": subject, "aud": tts, "iat": now, "exp": now + 60,
    });
    wimse_core::jose::jws::sign("JWT", None, &claims, credentials.key(), Default::default())
}

/// A client of the trust domain's Transaction Token Service.
///
/// ```no_run
/// use wimse_reqwest::{TxnTokenRequest, TxnTokenService};
///
/// # async fn run(signer: wimse_core::client::sign::Signer) -> Result<(), Box<dyn std::error::Error>> {
/// let domain = "spiffe://prod.example".parse()?;
/// let tts = TxnTokenService::new(signer, "https://issuer.prod.example/v1/token", &domain)?;
/// // For the user whose access token the edge received:
/// let txn = tts.request(&TxnTokenRequest::for_access_token("eyJ…", "orders.purchase")).await?;
/// // For a transaction this workload starts itself (a batch job), in one call:
/// let batch = tts.request(&TxnTokenRequest::self_signed_for("batch-job-7", "orders.read")).await?;
/// # let _ = (txn, batch);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TxnTokenService {
    client: ClientWithMiddleware,
    signer: Signer,
    endpoint: String,
    audience: String,
}

impl TxnTokenService {
    /// The TTS at `endpoint` (its token endpoint: https, or http on loopback) of `trust_domain`;
    /// requests are authenticated with `signer`'s WIT + WPT.
    pub fn new(signer: Signer, endpoint: impl Into<String>, trust_domain: &TrustDomain) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        if !secure_or_loopback(&endpoint) {
            return Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                "the Transaction Token Service must be https (http only on loopback)",
            ));
        }
        // No redirects: reqwest would send the form (a user's access token) to wherever one points.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| Error::with_detail(ErrorKind::InvalidConfiguration, e.to_string()))?;
        let client =
            reqwest_middleware::ClientBuilder::new(http).with(WimseSignMiddleware::new(signer.clone())).build();
        Ok(Self { client, signer, endpoint, audience: trust_domain.as_str().to_owned() })
    }

    /// The token endpoint (what a self-signed subject token's `aud` names).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Asks for a Txn-Token for this service's trust domain (the request's `audience` is
    /// not read: the service names its own). A refusal keeps the TTS's error code in the detail and maps it to a
    /// kind: `invalid_scope` → [`ErrorKind::InvalidScope`], `unauthorized_client` →
    /// [`ErrorKind::IssuanceDenied`], `invalid_target` → [`ErrorKind::InvalidTarget`],
    /// `invalid_client` → [`ErrorKind::CredentialsUnavailable`], others →
    /// [`ErrorKind::ExchangeRefused`] (503/429 → [`ErrorKind::KeyStoreUnavailable`] /
    /// [`ErrorKind::RateLimited`]). The TTS's `reason` member, when it names a delegation
    /// refusal, decides first: [`ErrorKind::DelegationDenied`], [`ErrorKind::DelegationTooDeep`],
    /// [`ErrorKind::ActorTokenInvalid`] (a request [`acting`](TxnTokenRequest::acting) whose
    /// WIT was renewed between reading it and signing is sent once more).
    pub async fn request(&self, request: &TxnTokenRequest) -> Result<IssuedTxnToken, Error> {
        match self.request_once(request).await {
            // The WIT sent as the actor token was renewed before the request was signed (the
            // TTS compares the two): once more, with the new one.
            Err(error) if *error.kind() == ErrorKind::ActorTokenInvalid && request.actor == TxnActor::Requester => {
                self.request_once(request).await
            }
            answer => answer,
        }
    }

    async fn request_once(&self, request: &TxnTokenRequest) -> Result<IssuedTxnToken, Error> {
        let (subject_token, subject_token_type) = match &request.subject {
            TxnSubject::Token { token, token_type } => (token.clone(), token_type.clone()),
            TxnSubject::SelfSignedFor(subject) => {
                (self_signed_subject(&self.signer, &self.endpoint, subject)?, SELF_SIGNED_TYPE.to_owned())
            }
        };
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT.to_owned()),
            ("requested_token_type", TXN_TOKEN_TYPE.to_owned()),
            ("audience", self.audience.clone()),
            ("scope", request.scope.clone()),
            ("subject_token", subject_token),
            ("subject_token_type", subject_token_type),
        ];
        if let Some(context) = &request.request_context {
            form.push(("request_context", context.clone()));
        }
        if let Some(details) = &request.request_details {
            form.push(("request_details", details.clone()));
        }
        match &request.actor {
            TxnActor::None => {}
            // Its own WIT: the TTS checks it is the one this request is proven with.
            TxnActor::Requester => {
                form.push(("actor_token", self.signer.credentials()?.wit().to_owned()));
                form.push(("actor_token_type", JWT_TOKEN_TYPE.to_owned()));
            }
            TxnActor::Token { token, token_type } => {
                form.push(("actor_token", token.clone()));
                form.push(("actor_token_type", token_type.clone()));
            }
        }
        let unavailable =
            |e: String| Error::with_detail(ErrorKind::KeyStoreUnavailable, format!("Transaction Token Service: {e}"));
        let response =
            self.client.post(&self.endpoint).form(&form).send().await.map_err(|e| unavailable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = read_capped(response, 64 * 1024).await.map_err(unavailable)?;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status != 200 {
            let code = answer["error"].as_str().unwrap_or("no error code").to_owned();
            let kind = match (status, code.as_str(), answer["reason"].as_str()) {
                (_, _, Some("delegation_denied")) => ErrorKind::DelegationDenied,
                (_, _, Some("delegation_too_deep")) => ErrorKind::DelegationTooDeep,
                (_, _, Some("actor_token_invalid")) => ErrorKind::ActorTokenInvalid,
                (429, _, _) => ErrorKind::RateLimited,
                (503, _, _) => ErrorKind::KeyStoreUnavailable,
                (_, "invalid_scope", _) => ErrorKind::InvalidScope,
                (_, "unauthorized_client", _) => ErrorKind::IssuanceDenied,
                (_, "invalid_target", _) => ErrorKind::InvalidTarget,
                (_, "invalid_client", _) => ErrorKind::CredentialsUnavailable,
                _ => ErrorKind::ExchangeRefused,
            };
            return Err(Error::with_detail(kind, format!("Transaction Token Service answered {status} {code}")));
        }
        let refused = |d: &'static str| Error::with_detail(ErrorKind::ExchangeRefused, d);
        if answer["issued_token_type"].as_str() != Some(TXN_TOKEN_TYPE) || answer["token_type"].as_str() != Some("N_A")
        {
            return Err(refused("the answer is not a Txn-Token (issued_token_type, token_type N_A)"));
        }
        let token = answer["access_token"].as_str().ok_or_else(|| refused("no access_token in the answer"))?;
        Ok(IssuedTxnToken {
            token: token.to_owned(),
            expires_in: answer["expires_in"].as_u64().unwrap_or(0),
            txn: None,
        })
    }
}

/// A redirect policy that follows redirects within one origin only (at most 10). A reqwest
/// client follows redirects below its middleware, so a `Txn-Token` sent to an origin of the
/// trust domain would follow a redirect anywhere: build clients that forward Txn-Tokens with
/// this policy (or `Policy::none()`).
///
/// ```
/// let http = reqwest::Client::builder().redirect(wimse_reqwest::same_origin_redirects()).build()?;
/// # Ok::<(), reqwest::Error>(())
/// ```
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt.previous().last().is_some_and(|previous| previous.origin() == attempt.url().origin());
        match (same, attempt.previous().len()) {
            (true, 0..10) => attempt.follow(),
            (true, _) => attempt.error("too many redirects"),
            (false, _) => attempt.stop(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wimse_core::client::cred::{Credentials, StaticCredentials};
    use wimse_core::jose::{Algorithm, SigningKey};
    use wimse_core::protocol::wit::WitIssuer;
    use wimse_core::time::FixedClock;

    /// A self-signed subject is dated by the signer's clock, like every proof the signer makes.
    #[test]
    fn self_signed_subjects_take_the_signers_time() {
        let issuer = SigningKey::generate(Algorithm::ES256).unwrap();
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let id = "spiffe://prod.example/batch".parse().unwrap();
        let wit = WitIssuer::new(issuer).issue(&id, key.public_jwk(), 1_000).unwrap();
        let signer =
            Signer::new(StaticCredentials::new(Credentials::new(wit, key).unwrap())).clock(FixedClock::new(1_000));
        let token = self_signed_subject(&signer, "https://tts.example/v1/token", "job-7").unwrap();
        let payload = wimse_core::jose::b64url_decode(token.split('.').nth(1).unwrap()).unwrap();
        let claims: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!((claims["iat"].as_u64(), claims["exp"].as_u64()), (Some(1_000), Some(1_060)));
        assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some(id.as_str()), Some("job-7")));
        assert_eq!(claims["aud"], "https://tts.example/v1/token");
    }
}
