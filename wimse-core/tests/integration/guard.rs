//! The pipeline as adapters drive it: credentials, then the policy, then the replay claim.

use std::sync::Arc;

use crate::common::*;
use wimse_core::prelude::*;
use wimse_core::server::pipeline::Pipeline;

#[tokio::test]
async fn the_policy_runs_before_the_claim_and_the_quota_counts_claims() {
    let f = Fixture::new();
    let store = Arc::new(InMemoryReplayStore::new(100));
    let verifier = f.verifier_with(f.config().caller_quota(2)).replay_store(store.clone());
    let refusing = Pipeline::new(verifier.clone()).policy(Policy::named("nobody"));
    let headers = f.headers(&f.wit, &f.wpt());
    let err = refusing.check(&RequestView::new(PATH, &headers), None).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::PolicyDenied);
    assert!(err.detail().is_some_and(|d| d.contains("nobody")), "the detail names the policy");
    assert!(store.is_empty(), "a refused caller costs no replay slot");

    // The same proof is still good for a guard that allows the caller: it was never claimed.
    let allowing = Pipeline::new(verifier.clone()).policy(Policy::allow_all());
    let pending = allowing.admit(&RequestView::new(PATH, &headers), None).unwrap().unwrap();
    assert_eq!(pending.id(), &f.id);
    assert!(pending.claim().is_some());
    let caller = allowing.confirm(pending).await.unwrap();
    assert_eq!(caller.id(), &f.id);
    assert_eq!(caller.wit().map(|w| w.hash()), Some(wimse_core::protocol::wit::token_hash(&f.wit).as_str()));
    assert_eq!(store.len(), 1);
    let owner = verifier.caller_quota().owner(&f.id);
    assert_eq!(verifier.caller_quota().live(owner, NOW), 1);

    // A replay gives its quota unit back; a second fresh proof fills the quota of 2.
    let again = allowing.check(&RequestView::new(PATH, &headers), None).await.unwrap_err();
    assert_eq!(again.kind(), &ErrorKind::ReplayedProof);
    assert_eq!(verifier.caller_quota().live(owner, NOW), 1);
    allowing.check(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt())), None).await.unwrap();
    let over = allowing.check(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt())), None).await.unwrap_err();
    assert_eq!(over.kind(), &ErrorKind::ReplayQuotaExceeded);
    let rejection = wimse_core::server::framing::Rejection::from_error(&over);
    assert_eq!(rejection.status(), 429);
    assert_eq!(rejection.headers()["retry-after"], "90", "until the oldest claim (exp + leeway) ends");
    assert_eq!(store.len(), 2, "the refused proof was not stored");
}

#[tokio::test]
async fn anonymous_requests_pass_an_optional_guard_only() {
    let f = Fixture::new();
    let empty = http::HeaderMap::new();
    let optional = Pipeline::new(f.verifier()).optional();
    assert!(optional.check(&RequestView::new(PATH, &empty), None).await.unwrap().is_none());
    let required = Pipeline::new(f.verifier());
    let err = required.check(&RequestView::new(PATH, &empty), None).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::MissingWit);
}

/// mutual-tls-03: an application credential replaces the TLS identity only when configured to.
#[tokio::test]
async fn credentials_of_another_workload_than_the_tls_peer_are_refused_by_default() {
    use wimse_core::protocol::wic::{WicAuthority, WicOptions, WicUsage};
    let f = Fixture::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ca = WicAuthority::new(f.id.trust_domain(), now, 3600).unwrap();
    let peer_of = |id: &str| {
        let cert = ca.issue(&id.parse().unwrap(), &WicOptions::new(WicUsage::Client, now, 600)).unwrap();
        TlsPeer::from_verified_chain(cert.chain()).unwrap()
    };
    let proxy = peer_of("spiffe://prod.example/ns/proxy");
    let same = peer_of(f.id.as_str());
    let guard = Pipeline::new(f.verifier());

    let headers = f.headers(&f.wit, &f.wpt());
    let err = guard.check(&RequestView::new(PATH, &headers), Some(&proxy)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::TlsPeerMismatch);
    assert_eq!(wimse_core::server::framing::Rejection::from_error(&err).status(), 403);
    // The same workload on both layers is fine; so is the TLS peer alone.
    let caller = guard.check(&RequestView::new(PATH, &headers), Some(&same)).await.unwrap().unwrap();
    assert_eq!(caller.method().name(), "wpt");
    let empty = http::HeaderMap::new();
    let caller = guard.check(&RequestView::new(PATH, &empty), Some(&proxy)).await.unwrap().unwrap();
    assert_eq!(caller.method().name(), "mtls");
    // Configured for a trusted proxy, the application credential is the caller.
    let proxied = Pipeline::new(f.verifier()).allow_application_identity();
    let caller =
        proxied.check(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt())), Some(&proxy)).await.unwrap().unwrap();
    assert_eq!(caller.id(), &f.id);
}

/// A revoked workload's mutual-TLS certificates are refused by their issuance time (read from
/// `notBefore`): one issued before the revocation is refused, one issued after it admitted,
/// and a disabled workload refused whatever its certificate.
#[tokio::test]
async fn certificates_issued_before_a_revocation_are_refused_and_later_ones_admitted() {
    use wimse_core::protocol::wic::{WicAuthority, WicOptions, WicUsage};
    use wimse_core::server::signals::Revocations;
    let f = Fixture::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ca = WicAuthority::new(f.id.trust_domain(), now - 7200, 7 * 3600).unwrap();
    let id: WorkloadId = "spiffe://prod.example/ns/payments".parse().unwrap();
    // WicOptions backdate `notBefore` 60 s before the issuance time given.
    let peer_issued_at = |at: u64| {
        let cert = ca.issue(&id, &WicOptions::new(WicUsage::Client, at, 3600)).unwrap();
        TlsPeer::from_verified_chain(cert.chain()).unwrap()
    };
    let (old, renewed) = (peer_issued_at(now - 1000), peer_issued_at(now - 100));
    let revocations = Revocations::new();
    revocations.revoke_before(id.as_str(), now - 500, now).unwrap();
    let guard = Pipeline::new(f.verifier().revocations(revocations.clone()));
    let empty = http::HeaderMap::new();
    let err = guard.check(&RequestView::new(PATH, &empty), Some(&old)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::WorkloadRevoked);
    let caller = guard.check(&RequestView::new(PATH, &empty), Some(&renewed)).await.unwrap().unwrap();
    assert_eq!((caller.id(), caller.method().name()), (&id, "mtls"));
    revocations.disable(id.as_str(), now).unwrap();
    let err = guard.check(&RequestView::new(PATH, &empty), Some(&renewed)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::WorkloadRevoked);
}
