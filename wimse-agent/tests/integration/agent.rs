//! `wimse agent` over a real Unix socket, with a real identity server on loopback: an
//! independent client (the `spiffe` crate), our WIT-SVID client, rotation reaching a
//! long-running client, and the refusals of the Workload Endpoint standard.

use std::time::Duration;

use crate::common::{DOMAIN, Issuer, entry_for_me, my_ids, start_agent};
use serde_json::json;
use wimse_core::client::cred::CredentialSource;
use wimse_core::id::WorkloadId;
use wimse_core::protocol::trust::{TrustHandle, TrustStore};
use wimse_workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use wimse_workload_api::proto::{WitsvidRequest, X509BundlesResponse};
use wimse_workload_api::{WitBundleWatch, WitSvidSource, WorkloadApiClient, WorkloadApiError, X509SvidWatch};

fn now() -> u64 {
    wimse_testkit::now()
}

/// The `spiffe` crate (a third-party Workload API client) fetches its X.509 context and the
/// bundles from our agent.
#[tokio::test]
async fn spiffe_crate_fetches_x509_svids_and_bundles() {
    let issuer = Issuer::start(600).await;
    let agent = start_agent(&issuer, json!([entry_for_me("/ns/payments", "internal")]), json!({})).await;
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint.to_string()).await.unwrap();
    let context = client.fetch_x509_context().await.unwrap();
    let svid = context.default_svid().expect("an X.509-SVID");
    assert_eq!(svid.spiffe_id().to_string(), format!("{DOMAIN}/ns/payments"));
    assert_eq!(svid.hint(), Some("internal"));
    let domain = spiffe::TrustDomain::new("prod.example").unwrap();
    let bundle = context.bundle_set().get(&domain).expect("the trust domain's bundle");
    assert!(!bundle.authorities().is_empty());
    let bundles = client.fetch_x509_bundles().await.unwrap();
    assert_eq!(bundles.get(&domain).unwrap().authorities(), bundle.authorities());
    // The SVID chains to the bundle as a TLS peer would check it.
    let anchors = wimse_core::protocol::wic::WicAnchors::new();
    let watch = X509SvidWatch::start(agent.endpoint.clone(), anchors.clone(), None).await.unwrap();
    let ours = watch.current().unwrap();
    assert_eq!(ours.spiffe_id.as_str(), format!("{DOMAIN}/ns/payments"));
    assert_eq!(ours.certificate.chain()[0].as_ref(), svid.cert_chain()[0].as_ref());
    use rustls::server::danger::ClientCertVerifier as _;
    let verifier = wimse_core::protocol::wic::WicClientVerifier::new(anchors);
    let chain = ours.certificate.chain();
    verifier.verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now()).unwrap();
}

/// Our client: a WIT-SVID signs a request that a verifier fed by the WIT bundle stream accepts;
/// a rotation at the agent reaches the long-running client without a restart.
#[tokio::test]
async fn wit_svids_sign_verify_and_rotate() {
    let issuer = Issuer::start(600).await;
    let entries = json!([entry_for_me("/ns/payments", "internal"), entry_for_me("/ns/payments-admin", "external")]);
    let agent = start_agent(&issuer, entries, json!({})).await;

    // Both identities arrive; the hint picks one.
    let client = WorkloadApiClient::new(agent.endpoint.clone());
    let all = client.fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap();
    assert_eq!(all.len(), 2);
    let source = WitSvidSource::builder(agent.endpoint.clone()).hint("external").start().await.unwrap();
    let first = source.credentials(now()).unwrap();
    assert_eq!(first.subject().as_str(), format!("{DOMAIN}/ns/payments-admin"));
    let admin: WorkloadId = format!("{DOMAIN}/ns/payments").parse().unwrap();
    let only = client.fetch_wit_svids(Some(&admin), Duration::from_secs(5)).await.unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].hint, "internal");

    // A verifier whose anchors come from the agent's WIT bundle stream accepts the signature.
    let trust = TrustHandle::new(TrustStore::new());
    let _bundles = WitBundleWatch::start(agent.endpoint.clone(), trust.clone()).await.unwrap();
    let domain: wimse_core::id::TrustDomain = DOMAIN.parse().unwrap();
    let anchors = trust.read(|store| store.get(&domain).cloned()).expect("WIT anchors from the agent");
    let verifier = wimse_core::server::verify::Verifier::new(
        TrustStore::new().with(domain, anchors),
        wimse_core::server::verify::VerifierConfig::new().origin("https://orders.prod.example"),
    )
    .unwrap();
    let signer = wimse_core::client::sign::Signer::new(source.clone());
    let mut headers = http::HeaderMap::new();
    signer.sign_headers(&mut headers, "https://orders.prod.example/v1/orders").unwrap();
    let caller = verifier.verify_sync(&wimse_core::server::verify::RequestView::new("/v1/orders", &headers)).unwrap();
    assert_eq!(caller.id().as_str(), format!("{DOMAIN}/ns/payments-admin"));

    // Rotation: new keys and WITs reach the running source through its stream.
    let mut updates = source.subscribe();
    agent.agent.rotate();
    tokio::time::timeout(Duration::from_secs(10), updates.changed()).await.unwrap().unwrap();
    let rotated = source.credentials(now()).unwrap();
    assert_ne!(rotated.wit(), first.wit());
    assert_ne!(rotated.key().public_key().thumbprint(), first.key().public_key().thumbprint());
    assert!(source.is_following());
}

/// Refusals, each with its own gRPC status: no security header, an unregistered caller, an
/// identity the caller is not entitled to, a malformed or oversized request, too many streams.
#[tokio::test]
async fn refusals_have_clear_statuses() {
    let issuer = Issuer::start(600).await;
    let entries = json!([entry_for_me("/ns/payments", "")]);
    let agent = start_agent(&issuer, entries, json!({"limits": {"max_streams_per_uid": 3}})).await;
    let raw = SpiffeWorkloadApiClient::new(agent.endpoint.channel());

    // No `workload.spiffe.io: true`: InvalidArgument, which our client does not retry.
    let status = raw.clone().fetch_witsvid(WitsvidRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let mut request = tonic::Request::new(WitsvidRequest::default());
    request.metadata_mut().insert("workload.spiffe.io", "false".parse().unwrap());
    assert_eq!(raw.clone().fetch_witsvid(request).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    let client = WorkloadApiClient::new(agent.endpoint.clone());
    // An identity of the trust domain this caller has no entry for.
    let other: WorkloadId = format!("{DOMAIN}/ns/billing").parse().unwrap();
    let error = client.fetch_wit_svids(Some(&other), Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, WorkloadApiError::PermissionDenied(_)), "{error}");

    let with_header = |id: &str| {
        let mut request = tonic::Request::new(WitsvidRequest { spiffe_id: id.into() });
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        request
    };
    let status = raw.clone().fetch_witsvid(with_header("not a spiffe id")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Larger than max_request_bytes (4 KiB): refused before it is decoded.
    let status = raw.clone().fetch_witsvid(with_header(&"a".repeat(64 * 1024))).await.unwrap_err();
    assert!(matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{status:?}");
    // Bytes that do not decode as a WITSVIDRequest (field 1 not UTF-8).
    let mut grpc = tonic::client::Grpc::new(agent.endpoint.channel());
    grpc.ready().await.unwrap();
    let mut request =
        tonic::Request::new(X509BundlesResponse { crl: vec![vec![0xff, 0xfe, 0xfd]], ..Default::default() });
    request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchWITSVID");
    let codec = tonic_prost::ProstCodec::<X509BundlesResponse, wimse_workload_api::proto::WitsvidResponse>::default();
    let status = grpc.server_streaming(request, path, codec).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");

    // Streams per uid: three open, the fourth refused, one closed makes room again.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(client.stream_wit_svids(None).await.unwrap());
    }
    let error = client.stream_wit_svids(None).await.unwrap_err();
    assert!(matches!(error, WorkloadApiError::Status { code: tonic::Code::ResourceExhausted, .. }), "{error}");
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        match client.stream_wit_svids(None).await {
            Ok(stream) => {
                again = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(again.is_some(), "a closed stream frees its slot");
    // The JWT-SVID profile is not served: clients of the standard get Unimplemented.
    let mut jwt = tonic::client::Grpc::new(agent.endpoint.channel());
    jwt.ready().await.unwrap();
    let mut request = tonic::Request::new(X509BundlesResponse::default());
    request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    let codec = tonic_prost::ProstCodec::<X509BundlesResponse, X509BundlesResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchJWTBundles");
    assert_eq!(jwt.server_streaming(request, path, codec).await.unwrap_err().code(), tonic::Code::Unimplemented);
}

/// The `gid` selector: an entry for this process's group serves it, one for another group does
/// not, and selectors combine (this uid with another gid matches nothing). Runs as any user.
#[tokio::test]
async fn gid_selectors_match_the_callers_group() {
    let issuer = Issuer::start(600).await;
    let (uid, gid) = my_ids();
    let other = gid.wrapping_add(4242);
    let entries = json!([
        {"spiffe_id": format!("{DOMAIN}/ns/by-gid"), "selectors": {"gid": gid}},
        {"spiffe_id": format!("{DOMAIN}/ns/other-gid"), "selectors": {"gid": other}},
        {"spiffe_id": format!("{DOMAIN}/ns/uid-and-other-gid"), "selectors": {"uid": uid, "gid": other}},
    ]);
    let agent = start_agent(&issuer, entries, json!({})).await;
    let client = WorkloadApiClient::new(agent.endpoint.clone());
    let svids = client.fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap();
    let ids: Vec<&str> = svids.iter().map(|svid| svid.spiffe_id.as_str()).collect();
    assert_eq!(ids, [format!("{DOMAIN}/ns/by-gid")]);
    // Asking for another group's identity by name is refused too.
    let other: WorkloadId = format!("{DOMAIN}/ns/other-gid").parse().unwrap();
    let error = client.fetch_wit_svids(Some(&other), Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, WorkloadApiError::PermissionDenied(_)), "{error}");
}

/// A caller no entry matches gets PermissionDenied, and our client says so at start.
#[tokio::test]
async fn unregistered_caller_is_denied() {
    let issuer = Issuer::start(600).await;
    let someone_else = my_ids().0.wrapping_add(4242);
    let entries = json!([{"spiffe_id": format!("{DOMAIN}/ns/payments"), "selectors": {"uid": someone_else}}]);
    let agent = start_agent(&issuer, entries, json!({})).await;
    let error =
        WitSvidSource::builder(agent.endpoint.clone()).timeout(Duration::from_secs(1)).start().await.unwrap_err();
    assert!(
        matches!(error, WorkloadApiError::PermissionDenied(ref m) if m.contains("no registration entry")),
        "{error}"
    );
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint.to_string()).await.unwrap();
    assert!(client.fetch_x509_context().await.is_err());
}

/// Connections over a uid's limit are closed at once; a closed connection frees its place.
#[tokio::test]
async fn connections_over_the_per_uid_limit_are_closed() {
    let issuer = Issuer::start(600).await;
    let entries = json!([entry_for_me("/ns/payments", "")]);
    let agent = start_agent(&issuer, entries, json!({"limits": {"max_connections_per_uid": 2}})).await;
    let connect = || async {
        let client = WorkloadApiClient::new(agent.endpoint.clone());
        let stream = client.stream_wit_svids(None).await;
        (client, stream)
    };
    let (first, first_stream) = connect().await;
    let (_second, second_stream) = connect().await;
    assert!(first_stream.is_ok() && second_stream.is_ok());
    let (_third, third_stream) = connect().await;
    let error = third_stream.unwrap_err();
    // The connection is closed before HTTP/2 starts: tonic reports a transport error.
    assert!(matches!(error, WorkloadApiError::Status { .. }) && error.is_retryable(), "{error}");
    drop((first, first_stream));
    let mut reconnected = false;
    for _ in 0..100 {
        if connect().await.1.is_ok() {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reconnected, "a closed connection frees its place");
}

/// Bundles are refreshed with conditional requests: once fetched, an unchanged bundle costs the
/// identity server a 304 without a body, and the agent keeps serving what it holds.
#[tokio::test]
async fn unchanged_bundles_are_refreshed_with_304s() {
    let issuer = Issuer::start(600).await;
    let dir = wimse_testkit::servers::TempDir::new("wimse-agent-304");
    let token = dir.path().join("agent-token");
    // Refreshing every second.
    let extra = json!({"x509": true, "issuer": {"url": issuer.base, "token_file": token, "retry_interval_ms": 200,
                                                "timeout_ms": 2000, "bundle_refresh_secs": 1}});
    let config = crate::common::agent_config(&issuer, dir.path(), json!([entry_for_me("/ns/bundles", "")]), extra);
    let agent = wimse_agent::Agent::start(config).unwrap();
    assert!(agent.ready(Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let answers = issuer.bundle_answers.lock().unwrap().clone();
    for path in ["/v1/bundle/jwks", "/v1/bundle/x509"] {
        let statuses: Vec<u16> = answers.iter().filter(|(p, _)| p == path).map(|(_, s)| *s).collect();
        assert_eq!(statuses.first(), Some(&200), "{path}: {statuses:?}");
        assert!(statuses.len() >= 3 && statuses[1..].iter().all(|s| *s == 304), "{path}: {statuses:?}");
    }
    assert!(agent.ready(Duration::ZERO).await, "still serving the bundles it holds");
}

/// With `audit` in its configuration, the agent records each attestation: the calls it
/// authorized (who, by uid, pid and executable, and which identities it was given) and the
/// ones it refused (which check), in a log that verifies.
#[tokio::test]
async fn attestations_are_recorded_in_the_audit_log() {
    use wimse_core::jose::{Algorithm, SigningKey};
    let issuer = Issuer::start(600).await;
    let dir = std::env::temp_dir().join(format!("wimse-agent-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    std::fs::write(dir.join("audit.jwk"), serde_json::to_string(&key.to_private_jwk()).unwrap()).unwrap();
    let log = dir.join("agent.audit.jsonl");
    let audit = json!({"audit": {"file": log, "service": format!("{DOMAIN}/agent"), "key": dir.join("audit.jwk")}});
    let entries = json!([entry_for_me("/ns/payments", "internal")]);
    let agent = start_agent(&issuer, entries, audit).await;

    let client = WorkloadApiClient::new(agent.endpoint.clone());
    assert_eq!(client.fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap().len(), 1);
    // Without the security header: refused.
    let mut raw = SpiffeWorkloadApiClient::new(agent.endpoint.channel());
    assert!(raw.fetch_witsvid(WitsvidRequest::default()).await.is_err());

    let started = std::time::Instant::now();
    let decisions = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let decisions: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["kind"] == "decision")
            .collect();
        if decisions.len() >= 2 {
            break decisions;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{decisions:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let allowed = decisions.iter().find(|r| r["decision"] == "allow").expect("an authorized call");
    assert_eq!(allowed["action"], "attest:FetchWITSVID");
    assert_eq!(allowed["resource"].as_str(), Some(format!("{DOMAIN}/ns/payments").as_str()));
    let caller = allowed["caller"].as_str().unwrap();
    assert!(caller.starts_with(&format!("uid:{} pid:{}", my_ids().0, std::process::id())), "{caller}");
    let refused = decisions.iter().find(|r| r["decision"] == "deny").expect("a refused call");
    assert_eq!(
        (refused["action"].as_str(), refused["reason"].as_str()),
        (Some("attest:FetchWITSVID"), Some("missing_security_header"))
    );
    let report = wimse_core::server::audit_log::check(
        vec![("agent".to_owned(), std::io::BufReader::new(std::fs::File::open(&log).unwrap()))],
        std::slice::from_ref(key.public_key()),
        None,
    );
    assert!(report.is_intact(), "{report:?}");
    let _ = std::fs::remove_dir_all(dir);
}
