//! The `SpiffeWorkloadAPI` service: every call is checked for the security header, its caller
//! attested and matched to registration entries, then answered from the credential snapshot
//! and followed as the snapshot changes; before each later message of a stream the caller is
//! attested again.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use wimse_core::id::WorkloadId;
use wimse_core::rate::{Rate, RateLimiter};
use wimse_core::server::audit_log::{AuditEvent, AuditLog};
use wimse_workload_api::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use wimse_workload_api::proto::{
    WitBundlesRequest, WitBundlesResponse, Witsvid, WitsvidRequest, WitsvidResponse, X509BundlesRequest,
    X509BundlesResponse, X509svid, X509svidRequest, X509svidResponse,
};

use crate::attest::{Attestor, Caller, ConnectedPeer, PeerCredentials};
use crate::config::{Limits, RegistrationEntry};
use crate::issuance::Snapshot;
use crate::slots::{Full, Place, Places};

type Messages<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// The service state shared by all calls.
pub(crate) struct WorkloadApi {
    pub(crate) snapshot: watch::Receiver<Arc<Snapshot>>,
    pub(crate) entries: Arc<Vec<RegistrationEntry>>,
    pub(crate) attestor: Arc<Attestor>,
    pub(crate) trust_domain: String,
    streams: Arc<Places>,
    refusals: Arc<Refusals>,
}

/// Counts every refusal and logs it, at most ten a minute per uid; records each in the audit
/// log, if any.
struct Refusals {
    logged: RateLimiter<u32>,
    audit: Option<AuditLog>,
}

/// The audit record of an attestation: `attest:<rpc>` by the caller the kernel names.
fn attestation(rpc: &str, peer: Option<&PeerCredentials>, exe: Option<&std::path::Path>) -> AuditEvent {
    let caller = peer.map(|p| {
        let pid = p.pid.map(|pid| format!(" pid:{pid}")).unwrap_or_default();
        // Quoted: a path may hold spaces (and look like another field).
        let exe = exe.map(|exe| format!(" exe:{:?}", exe.display().to_string())).unwrap_or_default();
        format!("uid:{}{pid}{exe}", p.uid)
    });
    AuditEvent { caller, action: Some(format!("attest:{rpc}")), ..Default::default() }
}

impl Refusals {
    fn refuse(
        &self,
        rpc: &'static str,
        reason: &'static str,
        peer: Option<&PeerCredentials>,
        status: Status,
    ) -> Status {
        metrics::counter!("wimse_agent_refused_total", "reason" => reason).increment(1);
        if let Some(audit) = &self.audit {
            // Dropped (counted) when the log's queue is full: a flood of refused calls
            // never holds more memory than the queue.
            let _ = audit.record(AuditEvent {
                decision: "deny".into(),
                reason: Some(reason.to_owned()),
                ..attestation(rpc, peer, None)
            });
        }
        let uid = peer.map_or(u32::MAX, |p| p.uid);
        if self.logged.take(&uid, 1, now()).is_ok() {
            tracing::warn!(
                rpc,
                reason,
                uid = peer.map(|p| p.uid),
                pid = peer.and_then(|p| p.pid),
                detail = status.message(),
                "wimse agent: call refused"
            );
        }
        status
    }
}

impl WorkloadApi {
    pub(crate) fn new(
        snapshot: watch::Receiver<Arc<Snapshot>>,
        entries: Vec<RegistrationEntry>,
        attestor: Arc<Attestor>,
        limits: Limits,
        trust_domain: String,
        audit: Option<AuditLog>,
    ) -> Self {
        Self {
            snapshot,
            entries: Arc::new(entries),
            attestor,
            trust_domain,
            streams: Places::new(limits.max_streams, limits.max_streams_per_uid, "wimse_agent_streams"),
            refusals: Arc::new(Refusals { logged: RateLimiter::new(Rate { burst: 10, per_minute: 10 }), audit }),
        }
    }
}

/// An authorized call: which method, who, which identities, and its stream slot.
struct Authorized {
    rpc: &'static str,
    peer: ConnectedPeer,
    caller: Caller,
    identities: Vec<(WorkloadId, String)>,
    slot: Place,
}

fn now() -> u64 {
    wimse_core::time::Clock::now(&wimse_core::time::SystemClock)
}

impl WorkloadApi {
    fn refuse(
        &self,
        rpc: &'static str,
        reason: &'static str,
        peer: Option<&PeerCredentials>,
        status: Status,
    ) -> Status {
        self.refusals.refuse(rpc, reason, peer, status)
    }

    /// The checks every call passes: the security header, attestation, at least one entry, a
    /// free stream slot.
    async fn authorize<T>(&self, request: &Request<T>, rpc: &'static str) -> Result<Authorized, Status> {
        let peer = request.extensions().get::<ConnectedPeer>().cloned();
        let header = request.metadata().get(wimse_workload_api::SECURITY_HEADER);
        if header.is_none_or(|v| v.as_bytes() != b"true") {
            let status = Status::invalid_argument("security header missing from request (workload.spiffe.io: true)");
            return Err(self.refuse(rpc, "missing_security_header", peer.as_ref().map(|p| &p.credentials), status));
        }
        let Some(peer) = peer else {
            return Err(self.refuse(
                rpc,
                "no_peer_credentials",
                None,
                Status::permission_denied("no peer credentials"),
            ));
        };
        // The slot first, keyed by the kernel-reported uid: a caller flooding calls holds at most
        // its stream limit of attestations (blocking-pool work) at once.
        let slot = match self.streams.take(peer.credentials.uid) {
            Ok(slot) => slot,
            Err(full) => {
                let detail = match full {
                    Full::Uid => format!(
                        "this uid holds {} open Workload API streams, the most allowed",
                        self.streams.max_per_uid()
                    ),
                    Full::Total => "the agent holds as many Workload API streams as it allows; retry".to_owned(),
                };
                return Err(self.refuse(
                    rpc,
                    "stream_limit",
                    Some(&peer.credentials),
                    Status::resource_exhausted(detail),
                ));
            }
        };
        let attestor = self.attestor.clone();
        let entries = self.entries.clone();
        let connected = peer.clone();
        // Attestation and `exe` matching read /proc and stat files: off the runtime's threads.
        let attested = tokio::task::spawn_blocking(move || {
            attestor.attest_call(&connected).map(|caller| {
                let mut identities: Vec<(WorkloadId, String)> = Vec::new();
                for entry in entries.iter().filter(|entry| matches(entry, &caller)) {
                    if !identities.iter().any(|(id, _)| id == &entry.spiffe_id) {
                        identities.push((entry.spiffe_id.clone(), entry.hint.clone()));
                    }
                }
                (caller, identities)
            })
        });
        let (caller, identities) = match attested.await {
            Ok(Ok(attested)) => attested,
            Ok(Err(error)) => {
                let status = Status::permission_denied(error.to_string());
                return Err(self.refuse(rpc, error.reason(), Some(&peer.credentials), status));
            }
            Err(_) => return Err(Status::internal("attestation task failed")),
        };
        if identities.is_empty() {
            let detail = format!(
                "no registration entry matches this caller (uid {}, gid {}, exe {})",
                caller.uid,
                caller.gid,
                caller.exe.as_ref().map_or("unknown".into(), |p| p.display().to_string())
            );
            let status = Status::permission_denied(detail);
            return Err(self.refuse(rpc, "no_matching_entry", Some(&peer.credentials), status));
        }
        metrics::counter!("wimse_agent_calls_total", "rpc" => rpc).increment(1);
        if let Some(audit) = &self.refusals.audit {
            let identities: Vec<String> = identities.iter().map(|(id, _)| id.to_string()).collect();
            let event = AuditEvent {
                decision: "allow".into(),
                resource: Some(identities.join(" ")),
                ..attestation(rpc, Some(&peer.credentials), caller.exe.as_deref())
            };
            if let Err(error) = audit.record(event) {
                // A log that refuses when full refuses the call: nothing is handed out unrecorded.
                return Err(Status::unavailable(format!("the audit log refused the record: {error}")));
            }
        }
        tracing::debug!(rpc, uid = caller.uid, pid = caller.pid, identities = identities.len(), "wimse agent: call");
        Ok(Authorized { rpc, peer, caller, identities, slot })
    }

    /// The stream of messages `build` makes from each snapshot, sent when they change. `build`
    /// failing ends the stream with its status (credentials not issued yet, or expired), and so
    /// does the caller failing attestation again before a later message.
    fn follow<M>(
        &self,
        call: Authorized,
        build: impl Fn(&Snapshot) -> Result<M, Status> + Send + Sync + 'static,
    ) -> Result<Messages<M>, Status>
    where
        M: PartialEq + Clone + Send + 'static,
    {
        let mut snapshot = self.snapshot.clone();
        let first = build(&snapshot.borrow_and_update())?;
        let build = Arc::new(build);
        let state = Follow {
            snapshot,
            pending: Some(first),
            last: None,
            caller: Reattest {
                rpc: call.rpc,
                peer: call.peer,
                attestor: self.attestor.clone(),
                refusals: self.refusals.clone(),
            },
            _slot: call.slot,
            done: false,
        };
        let stream = futures_util::stream::unfold(state, move |mut state| {
            let build = build.clone();
            async move {
                if state.done {
                    return None;
                }
                if let Some(message) = state.pending.take() {
                    state.last = Some(message.clone());
                    return Some((Ok(message), state));
                }
                loop {
                    // The agent is shutting down when the sender is gone.
                    state.snapshot.changed().await.ok()?;
                    let built = build(&state.snapshot.borrow_and_update());
                    match built {
                        Ok(message) if state.last.as_ref() == Some(&message) => continue,
                        Ok(message) => {
                            if let Err(status) = state.caller.attest_again().await {
                                state.done = true;
                                return Some((Err(status), state));
                            }
                            state.last = Some(message.clone());
                            return Some((Ok(message), state));
                        }
                        Err(status) => {
                            state.done = true;
                            return Some((Err(status), state));
                        }
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// The state of one followed stream.
struct Follow<M> {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    pending: Option<M>,
    /// The last message sent: an unchanged message is not sent again.
    last: Option<M>,
    caller: Reattest,
    _slot: Place,
    done: bool,
}

/// What a stream needs to attest its caller again.
struct Reattest {
    rpc: &'static str,
    peer: ConnectedPeer,
    attestor: Arc<Attestor>,
    refusals: Arc<Refusals>,
}

impl Reattest {
    /// The caller still passes attestation: its connection's process has neither exited nor
    /// run another executable since the stream began.
    async fn attest_again(&self) -> Result<(), Status> {
        let (attestor, peer) = (self.attestor.clone(), self.peer.clone());
        match tokio::task::spawn_blocking(move || attestor.attest_call(&peer)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => {
                let status = Status::permission_denied(error.to_string());
                Err(self.refusals.refuse(self.rpc, error.reason(), Some(&self.peer.credentials), status))
            }
            Err(_) => Err(Status::internal("attestation task failed")),
        }
    }
}

/// Whether `caller` has every property `entry` selects. Stats the `exe` file: blocking.
fn matches(entry: &RegistrationEntry, caller: &Caller) -> bool {
    let selectors = &entry.selectors;
    selectors.uid.is_none_or(|uid| uid == caller.uid)
        && selectors.gid.is_none_or(|gid| gid == caller.gid)
        && selectors.exe.as_ref().is_none_or(|exe| caller.runs(exe))
}

fn not_ready() -> Status {
    Status::unavailable(
        "credentials for this workload are not issued yet (or expired while the identity server is unreachable); retry",
    )
}

/// The WIT-SVIDs of `identities` that are valid now.
fn wit_svids(snapshot: &Snapshot, identities: &[(WorkloadId, String)]) -> Result<WitsvidResponse, Status> {
    let now = now();
    let svids: Vec<Witsvid> = identities
        .iter()
        .filter_map(|(id, hint)| {
            let credentials = snapshot.identities.get(id)?.wit.as_ref().filter(|c| c.expires_at > now)?;
            Some(Witsvid {
                spiffe_id: id.to_string(),
                wit_svid: credentials.wit.to_string(),
                wit_svid_key: credentials.key.to_string(),
                hint: hint.clone(),
            })
        })
        .collect();
    if svids.is_empty() { Err(not_ready()) } else { Ok(WitsvidResponse { svids }) }
}

/// The X.509-SVIDs of `identities` that are valid now, with their trust domain's CAs and the
/// other trust domains' as federated bundles.
fn x509_svids(snapshot: &Snapshot, identities: &[(WorkloadId, String)]) -> Result<X509svidResponse, Status> {
    let now = now();
    let svids: Vec<X509svid> = identities
        .iter()
        .filter_map(|(id, hint)| {
            let x509 = snapshot.identities.get(id)?.x509.as_ref()?;
            let bundle = snapshot.x509_bundles.get(&id.trust_domain().to_string())?;
            (x509.expires_at > now).then(|| X509svid {
                spiffe_id: id.to_string(),
                x509_svid: x509.chain.to_vec(),
                x509_svid_key: x509.key.to_vec(),
                bundle: bundle.clone(),
                hint: hint.clone(),
            })
        })
        .collect();
    if svids.is_empty() {
        return Err(not_ready());
    }
    let own: Vec<String> = identities.iter().map(|(id, _)| id.trust_domain().to_string()).collect();
    let federated_bundles = snapshot
        .x509_bundles
        .iter()
        .filter(|(td, _)| !own.contains(td))
        .map(|(td, der)| (td.clone(), der.clone()))
        .collect();
    Ok(X509svidResponse { svids, crl: Vec::new(), federated_bundles })
}

fn wit_bundles(snapshot: &Snapshot, own: &str) -> Result<WitBundlesResponse, Status> {
    if !snapshot.wit_bundles.contains_key(own) {
        return Err(Status::unavailable("the trust bundle is not fetched yet; retry"));
    }
    Ok(WitBundlesResponse { bundles: snapshot.wit_bundles.iter().map(|(k, v)| (k.clone(), v.clone())).collect() })
}

fn x509_bundles(snapshot: &Snapshot, own: &str) -> Result<X509BundlesResponse, Status> {
    if !snapshot.x509_bundles.contains_key(own) {
        return Err(Status::unavailable("the trust bundle is not fetched yet; retry"));
    }
    Ok(X509BundlesResponse {
        crl: Vec::new(),
        bundles: snapshot.x509_bundles.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    })
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Messages<X509svidResponse>;
    type FetchX509BundlesStream = Messages<X509BundlesResponse>;
    type FetchWITSVIDStream = Messages<WitsvidResponse>;
    type FetchWITBundlesStream = Messages<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let mut call = self.authorize(&request, "FetchX509SVID").await?;
        let identities = std::mem::take(&mut call.identities);
        self.follow(call, move |snapshot| x509_svids(snapshot, &identities)).map(Response::new)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let call = self.authorize(&request, "FetchX509Bundles").await?;
        let own = self.trust_domain.clone();
        self.follow(call, move |snapshot| x509_bundles(snapshot, &own)).map(Response::new)
    }

    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        let mut call = self.authorize(&request, "FetchWITSVID").await?;
        let mut identities = std::mem::take(&mut call.identities);
        let wanted = &request.get_ref().spiffe_id;
        if !wanted.is_empty() {
            let wanted = WorkloadId::parse(wanted)
                .map_err(|e| Status::invalid_argument(format!("spiffe_id is not a SPIFFE ID: {e}")))?;
            identities.retain(|(id, _)| id == &wanted);
            if identities.is_empty() {
                let status = Status::permission_denied(format!("this caller is not entitled to {wanted}"));
                return Err(self.refuse("FetchWITSVID", "identity_not_entitled", Some(&call.peer.credentials), status));
            }
        }
        tracing::debug!(uid = call.caller.uid, "wimse agent: WIT-SVID stream");
        self.follow(call, move |snapshot| wit_svids(snapshot, &identities)).map(Response::new)
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        let call = self.authorize(&request, "FetchWITBundles").await?;
        let own = self.trust_domain.clone();
        self.follow(call, move |snapshot| wit_bundles(snapshot, &own)).map(Response::new)
    }
}
