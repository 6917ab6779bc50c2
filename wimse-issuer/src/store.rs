//! Where the identity server keeps its [`KeyState`] and audit records: one seam, two
//! implementations. [`FileStorage`] is the embedded default (one node, nothing to install);
//! `PostgresStorage` (feature `postgres`) serves several replicas.

use std::path::PathBuf;

use serde::Serialize;
use wimse_core::{Error, ErrorKind, Result};

use crate::keys::KeyState;
use wimse_core::replay::{InMemoryReplayStore, ReplayClaim, ReplayStore as _};

/// A change to the stored state, applied under the storage's lock: given what is stored
/// (`None`: nothing yet), returns the state to write, or `None` to leave it as it is.
pub type Change<'a> = dyn FnMut(Option<KeyState>) -> Result<Option<KeyState>> + Send + 'a;

/// Makes the state written over an unreadable one, given that one's epoch (`None`: nothing
/// was stored): see [`KeyStorage::overwrite_unreadable`].
pub type Overwrite<'a> = dyn FnMut(Option<String>) -> Result<KeyState> + Send + 'a;

/// One issuance, for the audit trail. Never holds a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuanceRecord {
    /// When, in seconds since the epoch.
    pub at: u64,
    /// `wit`, `exchange` or `wic`.
    pub kind: &'static str,
    /// The client (or exchange profile) that asked.
    pub client: String,
    /// The identifier issued.
    pub identifier: String,
    /// Its lifetime in seconds.
    pub lifetime: u64,
    /// The signing key's id (for a WIC, the authority).
    pub key_id: String,
    /// The replica that issued it.
    pub replica: String,
}

/// Durable storage of an identity server's keys.
#[async_trait::async_trait]
pub trait KeyStorage: Send + Sync + std::fmt::Debug + 'static {
    /// What it is, for the logs (a path, a database; never a secret).
    fn describe(&self) -> String;

    /// The stored state, if any.
    async fn load(&self) -> Result<Option<KeyState>>;

    /// Applies `change` atomically: no other replica changes the state between the read and the
    /// write. Returns the state stored afterwards.
    async fn update(&self, change: &mut Change<'_>) -> Result<KeyState>;

    /// Seals the stored state again with the current key-encryption key when it was sealed with
    /// a previous one; whether it was written. Storages that seal nothing have nothing to do.
    async fn reseal(&self) -> Result<bool> {
        Ok(false)
    }

    /// Writes `make(epoch)` over a stored state that no configured key-encryption key opens (the
    /// KEK is lost), under the storage's lock; `epoch` is the lost state's epoch (kept in the
    /// clear), so it is remembered as replaced. Refused when the stored state opens. Storages
    /// that seal nothing refuse: nothing of theirs can be lost that way.
    async fn overwrite_unreadable(&self, make: &mut Overwrite<'_>) -> Result<KeyState> {
        let _ = make;
        Err(Error::with_detail(
            ErrorKind::KeyLifecycleRefused,
            format!("{} is not sealed with a key-encryption key: use an ordinary replacement", self.describe()),
        ))
    }

    /// Records an issuance before the credential is handed out; an error refuses the issuance.
    async fn record(&self, record: &IssuanceRecord) -> Result<()>;

    /// Claims a single-use token (an assertion's or a DPoP proof's `jti`) until it expires:
    /// [`ErrorKind::ReplayedProof`] if it was claimed before, by this replica or (with shared
    /// storage) any other.
    async fn claim_once(&self, claim: &ReplayClaim, now: u64) -> Result<()>;
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::with_detail(ErrorKind::KeyStoreUnavailable, format!("key store: {e}"))
}

/// The state in one JSON file, written atomically with mode 0600 and refused when group- or
/// world-readable. Issuance records go to the audit log (`wimse::audit`) only.
#[derive(Debug)]
pub struct FileStorage {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
    /// Single-use tokens, in memory (one node).
    seen: InMemoryReplayStore,
}

impl FileStorage {
    /// The store at `path` (created on the first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), lock: tokio::sync::Mutex::new(()), seen: InMemoryReplayStore::new(100_000) }
    }

    /// An exclusive lock on `<key_store>.lock`, held until the file handle is dropped. Taken on
    /// the blocking pool (it may wait for another process).
    async fn lock_file(&self) -> Result<std::fs::File> {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let path = self.path.with_file_name(name);
        let locked = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        });
        locked.await.map_err(unavailable)?.map_err(|e| unavailable(format!("{}.lock: {e}", self.path.display())))
    }

    async fn read(&self) -> Result<Option<KeyState>> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
            Ok(text) => {
                // It holds the signing keys and the WIC authority's key.
                wimse_core::client::cred::check_private_file(&path).map_err(|e| invalid(&path, e))?;
                serde_json::from_str::<KeyState>(&text).map(Some).map_err(|e| invalid(&path, e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(format!("{}: {e}", path.display()))),
        });
        read.await.map_err(unavailable)?
    }
}

/// A store that exists but cannot be used as it is: a configuration problem, not an outage.
fn invalid(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("key_store {}: {e}", path.display()))
}

#[async_trait::async_trait]
impl KeyStorage for FileStorage {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn load(&self) -> Result<Option<KeyState>> {
        let _guard = self.lock.lock().await;
        self.read().await
    }

    async fn update(&self, change: &mut Change<'_>) -> Result<KeyState> {
        let _guard = self.lock.lock().await;
        // Other processes on the same file (`wimse issuer keys`, `replace-key-store` beside a
        // running server) wait for this change, and this one for theirs.
        let _file_lock = self.lock_file().await?;
        let current = self.read().await?;
        let Some(next) = change(current.clone())? else {
            return current.ok_or_else(|| unavailable("nothing stored"));
        };
        let text = serde_json::to_vec_pretty(&next).map_err(unavailable)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || wimse_core::client::cred::write_atomically(&path, &text))
            .await
            .map_err(unavailable)?
            .map_err(|e| unavailable(format!("{}: {e}", self.path.display())))?;
        Ok(next)
    }

    async fn record(&self, _record: &IssuanceRecord) -> Result<()> {
        Ok(())
    }

    async fn claim_once(&self, claim: &ReplayClaim, now: u64) -> Result<()> {
        match self.seen.claim(claim, now).into_ready() {
            Ok(result) => result,
            Err(pending) => pending.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FileStorage, KeyStorage as _};
    use crate::keys::KeyState;

    /// Two storages on one file (a running server and a `wimse issuer keys` command): the second
    /// change waits for the first and sees it, so neither is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_on_one_key_file_change_it_in_turn() {
        let dir = std::env::temp_dir().join(format!("wimse-file-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        let (a, b) = (FileStorage::new(&path), FileStorage::new(&path));
        a.update(&mut |_| Ok(Some(KeyState::new()))).await.unwrap();
        let slow = tokio::spawn(async move {
            a.update(&mut |stored| {
                let mut state = stored.unwrap();
                // Holds the file while another process wants it.
                std::thread::sleep(std::time::Duration::from_millis(300));
                state.sequence += 1;
                Ok(Some(state))
            })
            .await
            .unwrap()
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let second = b
            .update(&mut |stored| {
                let mut state = stored.unwrap();
                state.sequence += 10;
                Ok(Some(state))
            })
            .await
            .unwrap();
        slow.await.unwrap();
        assert_eq!(second.sequence(), 11, "the second change saw the first");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
