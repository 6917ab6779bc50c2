//! `wimse agent`: a node agent that serves the SPIFFE Workload API to the workloads on its
//! machine.
//!
//! It listens on a Unix socket and serves the WIT-SVID profile (`FetchWITSVID`,
//! `FetchWITBundles`) and the X.509-SVID profile (`FetchX509SVID`, `FetchX509Bundles`). Each
//! call must carry `workload.spiffe.io: true` (else `InvalidArgument`); its caller is attested
//! from the socket's peer credentials (uid, gid, pid, and the executable read from `/proc`, when
//! the connection is accepted and again for each call: see [`attest`]) and matched against the
//! registration entries of the configuration (no match: `PermissionDenied`). Clients whose
//! `:authority` is the socket's path (gRPC's C core, grpc-java, grpc-swift) are served.
//! For every identity of its entries the agent generates a key, obtains a WIT (and a WIC) from
//! the identity server, where the agent is one client authorized for those identifiers, renews
//! them between half and two thirds of their lifetime, and streams every change to the
//! workloads holding that identity. While the identity server is unreachable it keeps serving
//! what it holds until expiry, and says so in its logs and metrics.
//!
//! Configuration mistakes are not outages: [`Agent::start`] fails when the agent has no token
//! (`token_env`'s variable unset or empty, `token_file` unreadable or empty), and
//! [`Agent::check_issuance`] when the identity server refuses the agent's token (401) or every
//! identity (403), each with its own [`StartError`]. While running, such a refusal is logged as
//! the configuration or authorization error it is and retried on the renewal schedule.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use wimse_agent::{Agent, AgentConfig};
//!
//! let config = AgentConfig::from_file("/etc/wimse/agent.json".as_ref())?;
//! let agent = Agent::start(config)?;
//! // The identity server's first answers: a refused token or refused identities end here.
//! agent.check_issuance().await?;
//! // Until the process ends; pass a shutdown future (a signal, say) to stop earlier.
//! agent.serve(std::future::pending()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod attest;
mod authority;
mod config;
mod error;
mod hpack;
mod issuance;
mod listener;
mod service;
mod slots;
mod token;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wimse_workload_api::proto::spiffe_workload_api_server::SpiffeWorkloadApiServer;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use authority::fuzz as fuzz_authority_rewriter;
pub use config::{AgentConfig, IssuerConnection, Limits, RegistrationEntry, Selectors};
pub use error::{Refusal, StartError};
pub use issuance::{IdentityCredentials, Snapshot, WitCredentials, X509Credentials};

use crate::attest::Attestor;
use crate::issuance::{Issuance, Part};

/// A running agent: its credentials are maintained from [`start`](Self::start) on; serve them
/// with [`serve`](Self::serve). Dropping it stops the maintenance.
#[derive(Debug)]
pub struct Agent {
    issuance: Arc<Issuance>,
    attestor: Arc<Attestor>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where attestations are recorded (`AgentConfig::audit`).
    audit: Option<wimse_core::server::audit_log::AuditLog>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl Agent {
    /// Starts obtaining and renewing the credentials of every identity of `config` (on the
    /// current Tokio runtime), attesting callers through `/proc`. Fails on an invalid
    /// configuration ([`StartError::Configuration`]) and when the agent has no token
    /// ([`StartError::NoToken`]: `token_env`'s variable unset or empty, `token_file`
    /// unreadable or empty). See [`check_issuance`](Self::check_issuance) for what the identity
    /// server answers.
    pub fn start(config: AgentConfig) -> Result<Self, StartError> {
        let attestor = Attestor::new().map_err(|e| {
            wimse_core::Error::with_detail(wimse_core::ErrorKind::InvalidConfiguration, format!("/proc: {e}"))
        })?;
        Self::start_with(config, attestor)
    }

    /// Like [`start`](Self::start) with another attestor (tests read a fake `/proc`).
    pub fn start_with(config: AgentConfig, attestor: Attestor) -> Result<Self, StartError> {
        config.validate()?;
        // Known before anything is asked of the identity server: no token, no credentials.
        token::read_blocking(&config.issuer)
            .map_err(|e| StartError::NoToken(e.detail().unwrap_or_default().to_owned()))?;
        let audit = config.audit.as_ref().map(wimse_core::config::AuditSettings::open).transpose()?;
        let issuance = Arc::new(Issuance::new(config)?);
        let mut tasks = vec![tokio::spawn(issuance.clone().maintain_bundles())];
        let mut started = Vec::new();
        for entry in &issuance.config().entries {
            // One task per identity, even when several entries name it.
            if !started.contains(&entry.spiffe_id) {
                started.push(entry.spiffe_id.clone());
                tasks.push(tokio::spawn(issuance.clone().maintain(entry.clone(), Part::Wit)));
                if issuance.config().x509 {
                    tasks.push(tokio::spawn(issuance.clone().maintain(entry.clone(), Part::X509)));
                }
            }
        }
        Ok(Self { issuance, attestor: Arc::new(attestor), tasks, audit })
    }

    /// Waits for the identity server's first answer for every identity (and part: WIT,
    /// X.509-SVID), each attempt bounded by `issuer.timeout_ms`, and fails when they show a
    /// mistake that no retry fixes: the agent's token refused (401 `bootstrap_token_invalid`:
    /// [`StartError::TokenRefused`]), every identity refused (403 `issuance_denied`:
    /// [`StartError::IdentitiesRefused`]) or no token ([`StartError::NoToken`]). Returns `Ok`
    /// as soon as one identity is issued or the identity server is unreachable or failing (an
    /// outage is waited out: the agent keeps trying, as it does while running), and when some
    /// identities are refused and others not (those are logged as refused and retried on the
    /// renewal schedule).
    pub async fn check_issuance(&self) -> Result<(), StartError> {
        let issuer = &self.issuance.config().issuer;
        // Each first attempt ends within the HTTP timeout; the margin covers key generation.
        let bound = Duration::from_millis(issuer.timeout_ms.max(100)) + Duration::from_secs(5);
        let mut answers = self.issuance.first_answers.subscribe();
        let decided = tokio::time::timeout(bound, answers.wait_for(|a| a.hopeful || a.pending == 0)).await;
        let answers = match decided {
            Ok(Ok(answers)) => answers.clone(),
            // Undecided (a task that ended early): nothing shows a mistake.
            _ => return Ok(()),
        };
        if answers.hopeful {
            return Ok(());
        }
        if let Some(problem) = answers.no_token {
            return Err(StartError::NoToken(problem));
        }
        let url = issuer.url.clone();
        if let Some(refused) =
            answers.refusals.iter().find(|r| r.reason == wimse_core::ErrorKind::BootstrapTokenInvalid.reason())
        {
            return Err(StartError::TokenRefused {
                url,
                source_name: token::source_name(issuer),
                detail: refused.detail.clone(),
            });
        }
        if answers.refusals.is_empty() {
            return Ok(());
        }
        Err(StartError::IdentitiesRefused { url, refusals: answers.refusals })
    }

    /// The Workload API socket it serves on.
    pub fn socket(&self) -> &std::path::Path {
        &self.issuance.config().socket
    }

    /// The credentials and bundles served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.issuance.snapshot.borrow().clone()
    }

    /// Notified whenever the served credentials or bundles change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.issuance.snapshot.subscribe()
    }

    /// Waits until every identity has credentials and the bundles are fetched, up to `timeout`.
    /// Returns whether they are.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let wanted = self.issuance.config().identities();
        let x509 = self.issuance.config().x509;
        let mut updates = self.subscribe();
        let complete = |s: &Snapshot| {
            wanted.iter().all(|id| s.identities.get(id).is_some_and(|c| c.wit.is_some() && (!x509 || c.x509.is_some())))
                && !s.wit_bundles.is_empty()
                && (!x509 || !s.x509_bundles.is_empty())
        };
        tokio::time::timeout(timeout, updates.wait_for(|s| complete(s))).await.is_ok_and(|r| r.is_ok())
    }

    /// Whether the agent can do its job at `now` (what `/readyz` of `wimse agent serve
    /// --metrics-listen` answers): the bundles are fetched, and some identity holds a WIT (and,
    /// when the agent serves them, an X.509-SVID) that has not expired. An identity the identity
    /// server refuses, or one whose credentials lapsed while others are current, does not make
    /// the whole node unready (its workloads get an error; the log and metrics say why); an agent
    /// whose identity server is down stays ready while what it serves is valid. The reason
    /// otherwise.
    pub fn readiness(&self, now: u64) -> Result<(), String> {
        let config = self.issuance.config();
        let snapshot = self.snapshot();
        if snapshot.wit_bundles.is_empty() || (config.x509 && snapshot.x509_bundles.is_empty()) {
            return Err("trust bundles not fetched yet".into());
        }
        let held = |id: &wimse_core::id::WorkloadId, x509: bool| {
            let credentials = snapshot.identities.get(id);
            let expires_at = match x509 {
                false => credentials.and_then(|c| c.wit.as_ref()).map(|c| c.expires_at),
                true => credentials.and_then(|c| c.x509.as_ref()).map(|c| c.expires_at),
            };
            match expires_at {
                Some(at) if at > now => Ok(()),
                Some(at) => Err(format!("{id}: its {} expired at {at}", if x509 { "X.509-SVID" } else { "WIT" })),
                None => Err(format!("{id}: no {} yet", if x509 { "X.509-SVID" } else { "WIT" })),
            }
        };
        let identities = config.identities();
        for x509 in [false, true] {
            if x509 && !config.x509 {
                continue;
            }
            let states: Vec<Result<(), String>> = identities.iter().map(|id| held(id, x509)).collect();
            if !states.iter().any(Result::is_ok) {
                let first = states.into_iter().find_map(Result::err).unwrap_or_else(|| "no identity".into());
                return Err(format!("no identity holds current credentials ({first})"));
            }
        }
        Ok(())
    }

    /// Obtains new keys and credentials for every identity now (the workloads' streams carry
    /// them at once), as on a schedule. Renewal tasks in the middle of an issuance renew again
    /// when it ends.
    pub fn rotate(&self) {
        self.issuance.rotate_all();
    }

    /// Serves the Workload API on the configured socket until `shutdown` completes.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let listener = self.bind()?;
        self.serve_on(listener, shutdown).await
    }

    /// Binds the configured socket (replacing a socket file already there: connections that
    /// arrive from now on reach this listener), for [`serve_on`](Self::serve_on).
    pub fn bind(&self) -> std::io::Result<tokio::net::UnixListener> {
        let config = self.issuance.config();
        let listener = listener::bind(&config.socket)?;
        tracing::info!(socket = %config.socket.display(), entries = config.entries.len(), "wimse agent: serving the Workload API");
        Ok(listener)
    }

    /// Serves the Workload API on `listener` until `shutdown` completes.
    pub async fn serve_on(
        &self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let config = self.issuance.config();
        let limits = config.limits;
        let service = service::WorkloadApi::new(
            self.issuance.snapshot.subscribe(),
            config.entries.clone(),
            self.attestor.clone(),
            limits,
            config.trust_domain.to_string(),
            self.audit.clone(),
        );
        let service = SpiffeWorkloadApiServer::new(service).max_decoding_message_size(limits.max_request_bytes);
        tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_streams_per_connection)
            // A dead peer (its process frozen, say) is noticed and its connection closed.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service)
            .serve_with_incoming_shutdown(listener::incoming(listener, limits, self.attestor.clone()), shutdown)
            .await
            .map_err(std::io::Error::other)
    }
}
