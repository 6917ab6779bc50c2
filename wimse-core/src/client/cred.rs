//! Client-side credentials: the workload's current WIT and the private key it is bound to.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::id::WorkloadId;
use crate::jose::{Jwk, PublicKey, SigningKey, jws};
use crate::protocol::wit::DEFAULT_MAX_TOKEN_LEN;

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::CredentialsUnavailable, detail)
}

/// A WIT and its confirmation key, checked to belong together.
#[derive(Clone)]
pub struct Credentials {
    wit: Arc<str>,
    wit_hash: Arc<str>,
    key: SigningKey,
    subject: WorkloadId,
    expires_at: u64,
    issuer_kid: Option<Arc<str>>,
}

impl Credentials {
    /// Pairs a WIT with its private key. The WIT's `cnf.jwk` must be this key's public key with
    /// the same `alg`; its `sub` and `exp` are read (the signature is the recipient's business).
    pub fn new(wit: impl Into<String>, key: SigningKey) -> Result<Self> {
        let wit: String = wit.into();
        let jws = jws::parse(wit.trim(), DEFAULT_MAX_TOKEN_LEN).map_err(|e| unavailable(format!("WIT: {e}")))?;
        let sub = jws.claims.get("sub").and_then(Value::as_str).ok_or_else(|| unavailable("WIT has no sub"))?;
        let subject = WorkloadId::parse(sub).map_err(|e| unavailable(format!("WIT sub: {e}")))?;
        let expires_at = jws.claims.get("exp").and_then(Value::as_u64).ok_or_else(|| unavailable("WIT has no exp"))?;
        let cnf = jws
            .claims
            .get("cnf")
            .and_then(|c| c.get("jwk"))
            .cloned()
            .ok_or_else(|| unavailable("WIT has no cnf.jwk"))?;
        let cnf = PublicKey::from_jwk(&Jwk::from_value(cnf)?).map_err(|e| unavailable(format!("WIT cnf.jwk: {e}")))?;
        if cnf.thumbprint() != key.public_key().thumbprint() || cnf.algorithm() != Some(key.algorithm()) {
            return Err(unavailable("the key is not the WIT's confirmation key"));
        }
        let issuer_kid = jws.header.get("kid").and_then(Value::as_str).map(Arc::from);
        let wit = wit.trim();
        let wit_hash = Arc::from(crate::protocol::wit::token_hash(wit));
        Ok(Self { wit: Arc::from(wit), wit_hash, key, subject, expires_at, issuer_kid })
    }

    /// The WIT as sent.
    pub fn wit(&self) -> &str {
        &self.wit
    }
    /// base64url(SHA-256(WIT)): the `wth` of every proof, computed once.
    pub fn wit_hash(&self) -> &str {
        &self.wit_hash
    }
    /// The confirmation key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }
    /// The workload identifier in the WIT.
    pub fn subject(&self) -> &WorkloadId {
        &self.subject
    }
    /// The WIT's expiry.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
    /// The `kid` of the identity-server key that signed the WIT, if its header names one. When
    /// the identity server no longer publishes that key (its key store was lost or replaced),
    /// verifiers refuse the WIT as `unknown_key`: renew then.
    pub fn issuer_kid(&self) -> Option<&str> {
        self.issuer_kid.as_deref()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("subject", &self.subject)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Publishes when a workload's current WIT expires (`wimse_credential_expires_at_seconds`), so
/// a renewal that stopped working shows up before requests fail.
pub fn record_expiry(credentials: &Credentials) {
    metrics::gauge!("wimse_credential_expires_at_seconds", "workload" => credentials.subject().to_string())
        .set(credentials.expires_at() as f64);
}

/// Where a signer gets its current credentials. Implementations renew them before they expire.
pub trait CredentialSource: Send + Sync + fmt::Debug {
    /// Credentials valid at `now`; [`ErrorKind::CredentialsUnavailable`] when there are none.
    fn credentials(&self, now: u64) -> Result<Arc<Credentials>>;
}

/// Fixed credentials (tests, short jobs). Refused once the WIT has expired: a key must not be
/// used past its credential.
#[derive(Debug, Clone)]
pub struct StaticCredentials(Arc<Credentials>);

impl StaticCredentials {
    /// Wraps `credentials`.
    pub fn new(credentials: Credentials) -> Self {
        Self(Arc::new(credentials))
    }
}

impl CredentialSource for StaticCredentials {
    fn credentials(&self, now: u64) -> Result<Arc<Credentials>> {
        if now >= self.0.expires_at {
            return Err(unavailable("the WIT has expired"));
        }
        Ok(self.0.clone())
    }
}

/// Writes `contents` to `path` the way the practices draft asks delivery agents to: into a
/// temporary file in the same directory, flushed, then renamed over the target, so a reader
/// never sees a half-written credential. The file is created readable by its owner only (0600
/// on Unix): it may hold private keys.
pub fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // An exclusive, unpredictable temporary name next to the target: nobody can have prepared
    // it (a symlink, a file with looser permissions), and two writers never share one.
    let tmp = path.with_file_name(format!(".{name}.{}.{}.tmp", std::process::id(), crate::jose::random_id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Refuses a file holding private keys that its group or others may read (Unix permissions;
/// elsewhere nothing is checked).
pub fn check_private_file(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is readable or writable by group or others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a WIT and its private JWK as a pair for [`FileCredentials`]: the key first, then the
/// WIT, each atomically (a reader that sees the new WIT finds its key already there).
pub fn write_credential_files(
    wit_path: &std::path::Path,
    key_path: &std::path::Path,
    credentials: &Credentials,
) -> std::io::Result<()> {
    write_atomically(key_path, credentials.key().to_private_jwk().to_json().as_bytes())?;
    write_atomically(wit_path, credentials.wit().as_bytes())
}

/// Credentials read from a WIT file and a private-JWK file, as delivered by an agent that
/// rotates them (SPIFFE helper, Kubernetes projected volume, CI runner); see
/// [`write_credential_files`] for the writer's side.
///
/// The files are re-read every `recheck_every` seconds and whenever the WIT is within
/// `renew_before` seconds of expiry. Changes are detected by content, not modification time
/// (mtimes are coarse, and volume updates may keep them). A half-rotated pair (new WIT, old key)
/// does not replace the current credentials; it is retried on the next check.
pub struct FileCredentials {
    wit_path: PathBuf,
    key_path: PathBuf,
    recheck_every: u64,
    renew_before: u64,
    state: Mutex<FileState>,
}

#[derive(Default)]
struct FileState {
    current: Option<Arc<Credentials>>,
    digest: [u8; 32],
    checked_at: u64,
}

impl FileCredentials {
    /// Reads both files now (on the system clock); fails if they do not hold matching, unexpired
    /// credentials.
    ///
    /// ```no_run
    /// use wimse_core::client::cred::FileCredentials;
    /// use wimse_core::client::sign::Signer;
    ///
    /// // Files a node agent or a Kubernetes volume keeps current; re-read as they change.
    /// let credentials = FileCredentials::new("/run/wimse/wit.jwt", "/run/wimse/key.jwk")?;
    /// let signer = Signer::new(credentials);
    /// # Ok::<(), wimse_core::Error>(())
    /// ```
    pub fn new(wit_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Self> {
        use crate::time::Clock as _;
        Self::new_at(wit_path, key_path, crate::time::SystemClock.now())
    }

    /// Like [`new`](Self::new), as of `now` (seconds since the epoch; for tests and tools).
    pub fn new_at(wit_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>, now: u64) -> Result<Self> {
        let source = Self {
            wit_path: wit_path.into(),
            key_path: key_path.into(),
            recheck_every: 30,
            renew_before: 300,
            state: Mutex::new(FileState::default()),
        };
        {
            let mut state = source.lock()?;
            source.reload(&mut state, now)?;
            if let Some(current) = state.current.as_ref().filter(|c| now >= c.expires_at) {
                return Err(unavailable(format!(
                    "{}: the WIT expired at {} (now {now})",
                    source.wit_path.display(),
                    current.expires_at
                )));
            }
        }
        Ok(source)
    }

    /// How often the files are re-read, in seconds (default 30).
    pub fn recheck_every(mut self, secs: u64) -> Self {
        self.recheck_every = secs;
        self
    }

    /// How long before the WIT's expiry the files are re-read on every use, in seconds (default 300).
    pub fn renew_before(mut self, secs: u64) -> Self {
        self.renew_before = secs;
        self
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, FileState>> {
        self.state.lock().map_err(|_| unavailable("credential state poisoned"))
    }

    fn read(&self) -> Result<(String, String)> {
        let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| unavailable(format!("{}: {e}", p.display())));
        Ok((read(&self.wit_path)?, read(&self.key_path)?))
    }

    fn reload(&self, state: &mut FileState, now: u64) -> Result<()> {
        state.checked_at = now;
        let (wit, key) = self.read()?;
        let digest: [u8; 32] =
            Sha256::new().chain_update(wit.as_bytes()).chain_update([0]).chain_update(key.as_bytes()).finalize().into();
        if state.current.is_some() && digest == state.digest {
            return Ok(());
        }
        let key = SigningKey::from_jwk(&Jwk::from_json(&key).map_err(|e| unavailable(format!("key file: {e}")))?)
            .map_err(|e| unavailable(format!("key file: {e}")))?;
        let credentials = Credentials::new(wit, key)?;
        tracing::info!(subject = %credentials.subject(), expires_at = credentials.expires_at(), "wimse: loaded workload credentials");
        record_expiry(&credentials);
        state.current = Some(Arc::new(credentials));
        state.digest = digest;
        Ok(())
    }
}

impl fmt::Debug for FileCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCredentials")
            .field("wit_path", &self.wit_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CredentialSource for FileCredentials {
    fn credentials(&self, now: u64) -> Result<Arc<Credentials>> {
        let mut state = self.lock()?;
        let due = now >= state.checked_at.saturating_add(self.recheck_every)
            || state.current.as_ref().is_none_or(|c| now.saturating_add(self.renew_before) >= c.expires_at);
        if due && let Err(e) = self.reload(&mut state, now) {
            tracing::warn!(error = %e, "wimse: could not reload workload credentials; keeping the current ones");
        }
        match &state.current {
            Some(c) if now < c.expires_at => Ok(c.clone()),
            _ => Err(unavailable("the WIT has expired and no renewed one was found")),
        }
    }
}
