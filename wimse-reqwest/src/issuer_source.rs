//! Credentials obtained from an identity server and renewed before they expire.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use wimse_core::cred::{CredentialSource, Credentials};
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::time::{Clock, SystemClock};
use wimse_core::{Error, ErrorKind};

/// How the workload authenticates to the identity server.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// A token re-read from a file on every request (a Kubernetes projected service-account
    /// token, which the kubelet rotates in place).
    TokenFile(PathBuf),
    /// A fixed token or dev secret.
    Token(String),
}

/// Where Kubernetes projects a pod's default service-account token.
pub const KUBERNETES_SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl Bootstrap {
    /// The pod's projected service-account token: the path in `WIMSE_BOOTSTRAP_TOKEN_FILE`
    /// (a projected volume with this identity server as its audience, as the practices draft
    /// recommends), else [`KUBERNETES_SERVICE_ACCOUNT_TOKEN`].
    pub fn kubernetes() -> Self {
        let path =
            std::env::var_os("WIMSE_BOOTSTRAP_TOKEN_FILE").unwrap_or_else(|| KUBERNETES_SERVICE_ACCOUNT_TOKEN.into());
        Bootstrap::TokenFile(PathBuf::from(path))
    }

    fn token(&self) -> Result<String, Error> {
        match self {
            Bootstrap::Token(token) => Ok(token.clone()),
            Bootstrap::TokenFile(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| Error::with_detail(ErrorKind::CredentialsUnavailable, format!("{}: {e}", path.display()))),
        }
    }
}

/// A [`CredentialSource`] backed by an identity server's `POST /v1/wit`: a fresh key pair per
/// WIT (workload-creds-02 §9.4), renewed at about two thirds of its lifetime with jitter, and
/// retried with backoff while the current WIT is still valid.
#[derive(Clone)]
pub struct IssuerCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    sub: String,
    algorithm: Algorithm,
    bootstrap: Bootstrap,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    current: RwLock<Option<(Arc<Credentials>, u64)>>,
}

impl std::fmt::Debug for IssuerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerCredentials")
            .field("url", &self.inner.url)
            .field("sub", &self.inner.sub)
            .finish_non_exhaustive()
    }
}

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::CredentialsUnavailable, detail)
}

/// When to renew a credential issued at `issued_at` and expiring at `expires_at`: at two thirds
/// of its lifetime, moved earlier by up to a tenth of it (`jitter` in `[0, 1)`), so replicas do
/// not renew in lockstep.
pub fn renewal_time(issued_at: u64, expires_at: u64, jitter: f64) -> u64 {
    let lifetime = expires_at.saturating_sub(issued_at);
    let spread = (lifetime as f64 / 10.0 * jitter.clamp(0.0, 1.0)) as u64;
    issued_at + lifetime * 2 / 3 - spread.min(lifetime * 2 / 3)
}

fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    // Not for secrets: only to spread renewals.
    (RandomState::new().hash_one(std::time::SystemTime::now()) % 1000) as f64 / 1000.0
}

impl IssuerCredentials {
    /// Obtains a first WIT for `sub` from the identity server at `url` (its base URL).
    pub async fn connect(url: impl Into<String>, sub: impl Into<String>, bootstrap: Bootstrap) -> Result<Self, Error> {
        Self::connect_with(url, sub, bootstrap, reqwest::Client::new(), SystemClock).await
    }

    /// Like [`connect`](Self::connect), with an HTTP client and a clock.
    pub async fn connect_with(
        url: impl Into<String>,
        sub: impl Into<String>,
        bootstrap: Bootstrap,
        client: reqwest::Client,
        clock: impl Clock + 'static,
    ) -> Result<Self, Error> {
        let source = Self {
            inner: Arc::new(Inner {
                url: url.into(),
                sub: sub.into(),
                algorithm: Algorithm::ES256,
                bootstrap,
                client,
                clock: Arc::new(clock),
                current: RwLock::new(None),
            }),
        };
        source.renew().await?;
        Ok(source)
    }

    /// Obtains a new WIT (with a new key) now.
    pub async fn renew(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let key = SigningKey::generate(inner.algorithm)?;
        let body = json!({"sub": inner.sub, "jwk": key.public_jwk()});
        let response = inner
            .client
            .post(format!("{}/v1/wit", inner.url.trim_end_matches('/')))
            .bearer_auth(inner.bootstrap.token()?)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| unavailable(format!("identity server: {e}")))?;
        let status = response.status();
        let text = crate::bundle::read_capped(response, crate::bundle::MAX_DOCUMENT)
            .await
            .map_err(|e| unavailable(format!("identity server: {e}")))?;
        if !status.is_success() {
            let reason =
                serde_json::from_str::<Value>(&text).ok().and_then(|v| v["reason"].as_str().map(str::to_owned));
            return Err(unavailable(format!("identity server answered {status} ({})", reason.unwrap_or_default())));
        }
        let issued: Value =
            serde_json::from_str(&text).map_err(|_| unavailable("identity server answer is not JSON"))?;
        let wit = issued["wit"].as_str().ok_or_else(|| unavailable("no wit in the answer"))?;
        let credentials = Credentials::new(wit, key)?;
        let issued_at = issued["issued_at"].as_u64().unwrap_or_else(|| inner.clock.now());
        tracing::info!(sub = %credentials.subject(), expires_at = credentials.expires_at(), "wimse: obtained a WIT");
        wimse_core::cred::record_expiry(&credentials);
        *inner.current.write().map_err(|_| unavailable("credential state poisoned"))? =
            Some((Arc::new(credentials), issued_at));
        Ok(())
    }

    /// Renews in the background until the task is aborted: at [`renewal_time`], retrying with
    /// exponential backoff (1 s to 60 s) on failure.
    pub fn spawn_renewal(&self) -> tokio::task::JoinHandle<()> {
        let source = self.clone();
        tokio::spawn(async move {
            let mut backoff = 1u64;
            loop {
                let due = source
                    .inner
                    .current
                    .read()
                    .ok()
                    .and_then(|c| c.as_ref().map(|(c, issued)| renewal_time(*issued, c.expires_at(), jitter())))
                    .unwrap_or(0);
                let now = source.inner.clock.now();
                if now < due {
                    tokio::time::sleep(Duration::from_secs((due - now).min(60))).await;
                    continue;
                }
                match source.renew().await {
                    Ok(()) => backoff = 1,
                    Err(error) => {
                        tracing::warn!(
                            reason = error.reason(),
                            detail = error.detail(),
                            "wimse: WIT renewal failed; retrying"
                        );
                        tokio::time::sleep(Duration::from_secs(backoff)).await;
                        backoff = (backoff * 2).min(60);
                    }
                }
            }
        })
    }
}

impl CredentialSource for IssuerCredentials {
    fn credentials(&self, now: u64) -> Result<Arc<Credentials>, Error> {
        let current = self.inner.current.read().map_err(|_| unavailable("credential state poisoned"))?;
        match current.as_ref() {
            Some((credentials, _)) if now < credentials.expires_at() => Ok(credentials.clone()),
            _ => Err(unavailable("the WIT expired and was not renewed")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kubernetes_bootstrap_path() {
        match super::Bootstrap::kubernetes() {
            super::Bootstrap::TokenFile(path) => {
                let expected = std::env::var_os("WIMSE_BOOTSTRAP_TOKEN_FILE")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| super::KUBERNETES_SERVICE_ACCOUNT_TOKEN.into());
                assert_eq!(path, expected);
            }
            other => panic!("{other:?}"),
        }
        assert!(super::Bootstrap::TokenFile("/nonexistent/token".into()).token().is_err());
    }

    #[test]
    fn renewal_happens_at_two_thirds_minus_jitter() {
        assert_eq!(super::renewal_time(1000, 4000, 0.0), 3000);
        assert_eq!(super::renewal_time(1000, 4000, 0.999), 2701);
        assert_eq!(super::renewal_time(1000, 1000, 0.5), 1000);
        let j = super::jitter();
        assert!((0.0..1.0).contains(&j));
    }
}
