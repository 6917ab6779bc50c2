//! PostgreSQL storage for several identity-server replicas (feature `postgres`).

use tokio::sync::Mutex;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use wimse_core::{Error, ErrorKind, Result};

use crate::config::PostgresConfig;
use crate::keys::KeyState;
use crate::seal::Kek;
use crate::store::{Change, IssuanceRecord, KeyStorage, Overwrite, unavailable};
use wimse_core::replay::ReplayClaim;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS wimse_issuer_state (
    trust_domain text PRIMARY KEY,
    epoch text NOT NULL,
    sequence bigint NOT NULL,
    sealed bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS wimse_issuer_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    trust_domain text NOT NULL,
    replica text NOT NULL,
    kind text NOT NULL,
    client text NOT NULL,
    identifier text NOT NULL,
    lifetime bigint NOT NULL,
    key_id text NOT NULL
);
CREATE INDEX IF NOT EXISTS wimse_issuer_audit_at ON wimse_issuer_audit (trust_domain, at);
CREATE TABLE IF NOT EXISTS wimse_issuer_seen (
    key bytea PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
";

/// Keys, rotation and audit rows in PostgreSQL, for several identity-server replicas (feature
/// `postgres`).
///
/// - One row per trust domain in `wimse_issuer_state` holds the whole [`KeyState`] sealed with
///   the key-encryption key (AES-256-GCM): the database never sees a private key in the clear.
///   The epoch and sequence are stored beside it in the clear, for operators, and are bound into
///   the seal with the trust domain, so no column can be swapped between rows. A whole older row
///   put back opens, but replicas refuse to go backwards (see [`IdentityServer::maintain`](crate::IdentityServer::maintain)).
/// - Changes (rotation, retirement) run in a transaction under a transaction-scoped advisory
///   lock per trust domain, so replicas that find a rotation due at the same moment make exactly
///   one new key: the second one sees the first one's key and has nothing to do.
/// - Every issuance and exchange is a row of `wimse_issuer_audit` (who, what identifier,
///   lifetime, key id, replica; never a token), written before the credential is handed out:
///   while PostgreSQL is down, issuance answers 503 and verification is unaffected.
/// - Each operation is bounded by `timeout_ms`; a connection that failed or timed out is dropped
///   and made again on the next operation.
/// - Connections use TLS (rustls, `sslmode=require`, the server's name checked against
///   `ca_file`) whenever PostgreSQL is not on this host; plaintext to a remote server needs
///   `insecure_plaintext`.
pub struct PostgresStorage {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    trust_domain: String,
    kek: Kek,
    /// Previous key-encryption keys: rows sealed with them still open (and are sealed again).
    previous_keks: Vec<Kek>,
    timeout: std::time::Duration,
    /// Transactions (one at a time).
    admin: Mutex<Option<Client>>,
    /// Reads and audit rows (concurrent, pipelined on one connection).
    queries: Mutex<Option<std::sync::Arc<Client>>>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

/// What one transaction on the state row does.
enum Step<'c, 'a> {
    /// An ordinary change (maintenance, replacement, a lifecycle step).
    Change(&'c mut Change<'a>),
    /// Seal the stored state again with the current key-encryption key.
    Reseal,
    /// Write a new state over one that no configured key-encryption key opens.
    OverwriteUnreadable(&'c mut Overwrite<'a>),
}

fn db_error(e: impl std::fmt::Display) -> Error {
    unavailable(format!("postgres: {e}"))
}

fn config_error(field: &str, e: impl std::fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("postgres.{field}: {e}"))
}

/// Whether every host is on this machine: a Unix socket, `localhost` or a loopback address.
fn all_local(config: &tokio_postgres::Config) -> bool {
    let hosts_local = config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => wimse_core::server::framing::is_loopback_host(name),
        Host::Unix(_) => true,
    });
    hosts_local && config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

/// TLS with the roots in `ca_file` (PEM), through aws-lc-rs.
fn tls_connector(ca_file: &std::path::Path) -> Result<MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let field = |e: &dyn std::fmt::Display| config_error("ca_file", format!("{}: {e}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_file).map_err(|e| field(&e))? {
        roots.add(certificate.map_err(|e| field(&e))?).map_err(|e| field(&e))?;
    }
    if roots.is_empty() {
        return Err(field(&"no certificate"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| field(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl PostgresStorage {
    /// Reads the key-encryption key, connects and creates the tables if they are missing.
    pub async fn connect(config: &PostgresConfig, trust_domain: &str) -> Result<Self> {
        let kek = match (&config.kek_file, &config.kek_env) {
            (Some(path), None) => Kek::from_file(path)?,
            (None, variable) => Kek::from_env(variable.as_deref().unwrap_or("WIMSE_ISSUER_KEK"))?,
            (Some(_), Some(_)) => {
                return Err(Error::with_detail(
                    ErrorKind::InvalidConfiguration,
                    "postgres: set kek_file or kek_env, not both",
                ));
            }
        };
        let previous_keks = config
            .previous_kek_files
            .iter()
            .map(|path| Kek::from_file_for(path, "postgres.previous_kek_files"))
            .collect::<Result<Vec<_>>>()?;
        if config.timeout_ms == 0 {
            return Err(Error::with_detail(ErrorKind::InvalidConfiguration, "postgres.timeout_ms: must be positive"));
        }
        let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e| config_error("url", e))?;
        let tls = match (&config.ca_file, config.insecure_plaintext || all_local(&pg)) {
            (Some(ca_file), _) => {
                pg.ssl_mode(SslMode::Require);
                Some(tls_connector(ca_file)?)
            }
            (None, true) => None,
            (None, false) => {
                return Err(config_error(
                    "ca_file",
                    "PostgreSQL is not on this host: give its certificate authority (TLS), or set insecure_plaintext",
                ));
            }
        };
        if tls.is_none() && !all_local(&pg) {
            tracing::warn!("wimse issuer: talking to a remote PostgreSQL without TLS (insecure_plaintext)");
        }
        let storage = Self {
            config: pg,
            tls,
            trust_domain: trust_domain.to_owned(),
            kek,
            previous_keks,
            timeout: std::time::Duration::from_millis(config.timeout_ms),
            admin: Mutex::new(None),
            queries: Mutex::new(None),
        };
        storage
            .bounded(async {
                let mut admin = storage.admin.lock().await;
                let client = storage.admin_client(&mut admin).await?;
                // Replicas starting together: one creates the tables, the others wait for it.
                let tx = client.transaction().await.map_err(db_error)?;
                tx.execute("SELECT pg_advisory_xact_lock(hashtext('wimse-issuer-schema'))", &[])
                    .await
                    .map_err(db_error)?;
                tx.batch_execute(SCHEMA).await.map_err(db_error)?;
                tx.commit().await.map_err(db_error)
            })
            .await?;
        Ok(storage)
    }

    async fn open_connection(&self) -> Result<Client> {
        let closed =
            |error: tokio_postgres::Error| tracing::debug!(%error, "wimse issuer: PostgreSQL connection closed");
        match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await.map_err(db_error)?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                Ok(client)
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(db_error)?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                Ok(client)
            }
        }
    }

    async fn admin_client<'a>(&self, slot: &'a mut Option<Client>) -> Result<&'a mut Client> {
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.open_connection().await?);
        }
        slot.as_mut().ok_or_else(|| db_error("no connection"))
    }

    async fn query_client(&self) -> Result<std::sync::Arc<Client>> {
        let mut slot = self.queries.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = std::sync::Arc::new(self.open_connection().await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `operation` within the timeout; on failure the connections are dropped, so the
    /// next operation starts on fresh ones (a stalled server leaves no half-used connection).
    async fn bounded<T>(&self, operation: impl Future<Output = Result<T>>) -> Result<T> {
        let outcome = match tokio::time::timeout(self.timeout, operation).await {
            Ok(outcome) => outcome,
            Err(_) => Err(db_error(format!("no answer within {:?}", self.timeout))),
        };
        if outcome.as_ref().is_err_and(|e| e.kind() == &ErrorKind::KeyStoreUnavailable) {
            if let Ok(mut admin) = self.admin.try_lock() {
                *admin = None;
            }
            *self.queries.lock().await = None;
        }
        outcome
    }

    /// Runs `step` on the state row in one transaction under the trust domain's advisory lock:
    /// the state afterwards, and whether it was written.
    async fn transact(&self, step: Step<'_, '_>) -> Result<(KeyState, bool)> {
        let mut admin = self.admin.lock().await;
        let outcome = tokio::time::timeout(self.timeout, async {
            let client = self.admin_client(&mut admin).await?;
            let tx = client.transaction().await.map_err(db_error)?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext('wimse-issuer:' || $1::text))", &[&self.trust_domain])
                .await
                .map_err(db_error)?;
            let row = tx
                .query_opt(
                    "SELECT sealed, epoch, sequence FROM wimse_issuer_state WHERE trust_domain = $1",
                    &[&self.trust_domain],
                )
                .await
                .map_err(db_error)?;
            let opened = row.as_ref().map(|row| self.unseal(row));
            let (current, write) = match step {
                Step::Change(change) => {
                    let (current, stale_seal) = match opened.transpose()? {
                        Some((state, stale_seal)) => (Some(state), stale_seal),
                        None => (None, false),
                    };
                    // Housekeeping once per maintenance: forget single-use tokens past their expiry.
                    tx.execute("DELETE FROM wimse_issuer_seen WHERE expires_at < now()", &[]).await.map_err(db_error)?;
                    // A row still sealed with a previous KEK is sealed again with the current one
                    // at the next write, or now.
                    let write = change(current.clone())?.or_else(|| current.clone().filter(|_| stale_seal));
                    (current, write)
                }
                Step::Reseal => {
                    let (current, stale_seal) = opened.transpose()?.ok_or_else(|| {
                        Error::with_detail(ErrorKind::KeyLifecycleRefused, "nothing is stored to seal again")
                    })?;
                    (Some(current.clone()), stale_seal.then_some(current))
                }
                Step::OverwriteUnreadable(make) => match (opened, &row) {
                    (Some(Ok(_)), _) => {
                        return Err(Error::with_detail(
                            ErrorKind::KeyLifecycleRefused,
                            "the stored keys open with the configured key-encryption key: the KEK is not lost (replace the key store without --kek-lost, or seal it again with reseal)",
                        ));
                    }
                    (Some(Err(error)), Some(row)) if error.kind() == &ErrorKind::InvalidConfiguration => {
                        let epoch: String = row.try_get(1).map_err(db_error)?;
                        (None, Some(make(Some(epoch))?))
                    }
                    (Some(Err(error)), _) => return Err(error),
                    (None, _) => (None, Some(make(None)?)),
                },
            };
            let Some(next) = write else {
                tx.commit().await.map_err(db_error)?;
                return current.map(|state| (state, false)).ok_or_else(|| db_error("nothing stored"));
            };
            let plaintext = serde_json::to_vec(&next).map_err(db_error)?;
            let sequence = i64::try_from(next.sequence()).map_err(db_error)?;
            let sealed = self.kek.seal(&plaintext, &self.associated_data(next.epoch(), sequence))?;
            tx.execute(
                "INSERT INTO wimse_issuer_state (trust_domain, epoch, sequence, sealed) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (trust_domain) DO UPDATE
                 SET epoch = EXCLUDED.epoch, sequence = EXCLUDED.sequence, sealed = EXCLUDED.sealed, updated_at = now()",
                &[&self.trust_domain, &next.epoch(), &sequence, &sealed],
            )
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok((next, true))
        })
        .await
        .unwrap_or_else(|_| Err(db_error(format!("no answer within {:?}", self.timeout))));
        if outcome.as_ref().is_err_and(|e| e.kind() == &ErrorKind::KeyStoreUnavailable) {
            *admin = None;
        }
        outcome
    }

    /// What a sealed row is bound to: its trust domain, epoch and sequence (the clear columns),
    /// so that no column can be swapped without the seal failing.
    fn associated_data(&self, epoch: &str, sequence: i64) -> Vec<u8> {
        format!("wimse-issuer-state\n{}\n{epoch}\n{sequence}", self.trust_domain).into_bytes()
    }

    /// Opens a `(sealed, epoch, sequence)` row with the KEK or one of the previous ones (then
    /// `true`: it should be sealed again); a malformed row is an error, never a panic.
    fn unseal(&self, row: &tokio_postgres::Row) -> Result<(KeyState, bool)> {
        let malformed = |e: tokio_postgres::Error| db_error(format!("malformed state row: {e}"));
        let sealed: Vec<u8> = row.try_get(0).map_err(malformed)?;
        let epoch: String = row.try_get(1).map_err(malformed)?;
        let sequence: i64 = row.try_get(2).map_err(malformed)?;
        let aad = self.associated_data(&epoch, sequence);
        let (json, stale_seal) = match self.kek.open(&sealed, &aad) {
            Ok(json) => (json, false),
            Err(error) => (self.previous_keks.iter().find_map(|kek| kek.open(&sealed, &aad).ok()).ok_or(error)?, true),
        };
        let state: KeyState = serde_json::from_slice(&json).map_err(|e| db_error(format!("stored state: {e}")))?;
        if state.epoch() != epoch || i64::try_from(state.sequence()).ok() != Some(sequence) {
            return Err(db_error("stored state does not match its row"));
        }
        Ok((state, stale_seal))
    }
}

#[async_trait::async_trait]
impl KeyStorage for PostgresStorage {
    fn describe(&self) -> String {
        "postgres".to_owned()
    }

    async fn load(&self) -> Result<Option<KeyState>> {
        self.bounded(async {
            let client = self.query_client().await?;
            let row = client
                .query_opt(
                    "SELECT sealed, epoch, sequence FROM wimse_issuer_state WHERE trust_domain = $1",
                    &[&self.trust_domain],
                )
                .await
                .map_err(db_error)?;
            row.map(|row| self.unseal(&row).map(|(state, _)| state)).transpose()
        })
        .await
    }

    async fn update(&self, change: &mut Change<'_>) -> Result<KeyState> {
        self.transact(Step::Change(change)).await.map(|(state, _)| state)
    }

    async fn reseal(&self) -> Result<bool> {
        self.transact(Step::Reseal).await.map(|(_, written)| written)
    }

    async fn overwrite_unreadable(&self, make: &mut Overwrite<'_>) -> Result<KeyState> {
        self.transact(Step::OverwriteUnreadable(make)).await.map(|(state, _)| state)
    }

    async fn claim_once(&self, claim: &ReplayClaim, _now: u64) -> Result<()> {
        self.bounded(async {
            let client = self.query_client().await?;
            let key = claim.key().to_be_bytes().to_vec();
            let inserted = client
                .execute(
                    "INSERT INTO wimse_issuer_seen (key, expires_at) VALUES ($1, to_timestamp($2)) ON CONFLICT (key) DO NOTHING",
                    &[&key, &(claim.expires_at() as f64)],
                )
                .await
                .map_err(db_error)?;
            if inserted == 0 {
                return Err(wimse_core::ErrorKind::ReplayedProof.into());
            }
            Ok(())
        })
        .await
    }

    async fn record(&self, record: &IssuanceRecord) -> Result<()> {
        self.bounded(async {
            let client = self.query_client().await?;
            let lifetime = i64::try_from(record.lifetime).map_err(db_error)?;
            client
                .execute(
                    "INSERT INTO wimse_issuer_audit (at, trust_domain, replica, kind, client, identifier, lifetime, key_id)
                     VALUES (to_timestamp($1), $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &(record.at as f64),
                        &self.trust_domain,
                        &record.replica,
                        &record.kind,
                        &record.client,
                        &record.identifier,
                        &lifetime,
                        &record.key_id,
                    ],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }
}
