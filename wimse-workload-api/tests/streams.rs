//! Stream semantics against a scripted Workload API endpoint on a real Unix socket: every
//! message is complete (an SVID or trust domain it leaves out is no longer used),
//! `PermissionDenied` mid-stream revokes, and rotations arrive without a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use wimse_core::client::cred::CredentialSource;
use wimse_core::id::TrustDomain;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::protocol::trust::{TrustHandle, TrustStore};
use wimse_core::protocol::wit::WitIssuer;
use wimse_workload_api::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use wimse_workload_api::proto::*;
use wimse_workload_api::{Endpoint, WitBundleWatch, WitSvidSource};

type Script<M> = Mutex<Option<mpsc::UnboundedReceiver<Result<M, Status>>>>;
type Messages<M> = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<M, Status>> + Send>>;

/// Answers the first call of each WIT RPC with the messages the test sends; later calls (the
/// client reconnecting) wait forever.
struct Scripted {
    svids: Script<WitsvidResponse>,
    bundles: Script<WitBundlesResponse>,
}

fn play<M: Send + 'static>(script: &Script<M>) -> Messages<M> {
    match script.lock().unwrap().take() {
        Some(receiver) => Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(receiver)),
        None => Box::pin(futures_util::stream::pending()),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Scripted {
    type FetchX509SVIDStream = Messages<X509svidResponse>;
    type FetchX509BundlesStream = Messages<X509BundlesResponse>;
    type FetchWITSVIDStream = Messages<WitsvidResponse>;
    type FetchWITBundlesStream = Messages<WitBundlesResponse>;

    async fn fetch_x509svid(&self, _: Request<X509svidRequest>) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
    async fn fetch_witsvid(&self, _: Request<WitsvidRequest>) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Ok(Response::new(play(&self.svids)))
    }
    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Ok(Response::new(play(&self.bundles)))
    }
}

struct Api {
    endpoint: Endpoint,
    svids: mpsc::UnboundedSender<Result<WitsvidResponse, Status>>,
    bundles: mpsc::UnboundedSender<Result<WitBundlesResponse, Status>>,
    _dir: wimse_testkit::servers::TempDir,
}

fn serve() -> Api {
    let dir = wimse_testkit::servers::TempDir::new("wimse-scripted-api");
    let path = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (svids, svid_script) = mpsc::unbounded_channel();
    let (bundles, bundle_script) = mpsc::unbounded_channel();
    let service = Scripted { svids: Mutex::new(Some(svid_script)), bundles: Mutex::new(Some(bundle_script)) };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let endpoint = Endpoint::parse(&format!("unix://{}", path.display())).unwrap();
    Api { endpoint, svids, bundles, _dir: dir }
}

struct Issuer(Arc<WitIssuer>);

impl Issuer {
    fn new() -> Self {
        Self(Arc::new(WitIssuer::new(SigningKey::generate(Algorithm::ES256).unwrap().with_kid("issuer-1"))))
    }

    fn svid(&self, id: &str, hint: &str) -> Witsvid {
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let wit = self.0.issue(&id.parse().unwrap(), key.public_jwk(), wimse_testkit::now()).unwrap();
        Witsvid {
            spiffe_id: id.into(),
            wit_svid: wit,
            wit_svid_key: serde_json::to_string(&key.to_private_jwk()).unwrap(),
            hint: hint.into(),
        }
    }
}

const PAYMENTS: &str = "spiffe://prod.example/ns/payments";
const ADMIN: &str = "spiffe://prod.example/ns/admin";

async fn changed<T>(updates: &mut tokio::sync::watch::Receiver<T>) {
    tokio::time::timeout(Duration::from_secs(5), updates.changed()).await.unwrap().unwrap();
    updates.borrow_and_update();
}

#[tokio::test]
async fn complete_messages_rotate_and_revoke_wit_svids() {
    let api = serve();
    let issuer = Issuer::new();
    let first = issuer.svid(PAYMENTS, "internal");
    let first_wit = first.wit_svid.clone();
    api.svids.send(Ok(WitsvidResponse { svids: vec![issuer.svid(ADMIN, "external"), first] })).unwrap();
    let source = WitSvidSource::builder(api.endpoint.clone()).hint("internal").start().await.unwrap();
    let now = wimse_testkit::now();
    assert_eq!(source.credentials(now).unwrap().wit(), first_wit);
    let mut updates = source.subscribe();
    updates.borrow_and_update();

    // Rotation: a new WIT for the chosen identity replaces the old one.
    let rotated = issuer.svid(PAYMENTS, "internal");
    let rotated_wit = rotated.wit_svid.clone();
    api.svids.send(Ok(WitsvidResponse { svids: vec![rotated] })).unwrap();
    changed(&mut updates).await;
    assert_eq!(source.credentials(now).unwrap().wit(), rotated_wit);

    // A message without the chosen SVID: it is no longer used.
    api.svids.send(Ok(WitsvidResponse { svids: vec![issuer.svid(ADMIN, "external")] })).unwrap();
    changed(&mut updates).await;
    assert!(source.current().is_none());
    assert!(source.credentials(now).is_err());

    // Back; a broken other identity in the same message does not hold it back.
    let mut broken = issuer.svid(ADMIN, "external");
    broken.wit_svid_key = "{}".into();
    let back = issuer.svid(PAYMENTS, "internal");
    let back_wit = back.wit_svid.clone();
    api.svids.send(Ok(WitsvidResponse { svids: vec![broken, back] })).unwrap();
    changed(&mut updates).await;
    assert_eq!(source.credentials(now).unwrap().wit(), back_wit);

    // PermissionDenied mid-stream: everything the stream delivered is revoked.
    api.svids.send(Err(Status::permission_denied("entry deleted"))).unwrap();
    changed(&mut updates).await;
    assert!(source.credentials(now).is_err());
    assert!(source.is_following(), "PermissionDenied is retried: entries can come back");
}

#[tokio::test]
async fn bundle_messages_replace_trust_domains() {
    let api = serve();
    let key = |kid: &str| SigningKey::generate(Algorithm::ES256).unwrap().with_kid(kid);
    let jwks = |k: &SigningKey| serde_json::json!({"keys": [k.public_jwk()]}).to_string();
    let (ours, partner) = (key("ours-1"), key("partner-1"));
    let prod: TrustDomain = "spiffe://prod.example".parse().unwrap();
    let other: TrustDomain = "spiffe://partner.example".parse().unwrap();
    let both = [(prod.to_string(), jwks(&ours)), (other.to_string(), jwks(&partner))];
    api.bundles.send(Ok(WitBundlesResponse { bundles: both.into() })).unwrap();
    let trust = TrustHandle::new(TrustStore::new());
    let watch = WitBundleWatch::start(api.endpoint.clone(), trust.clone()).await.unwrap();
    let has = |domain: &TrustDomain| trust.read(|store| store.get(domain).is_some());
    assert!(has(&prod) && has(&other));
    let mut updates = watch.updates();
    updates.borrow_and_update();

    // The partner's bundle is left out: it is removed; ours rotates to a new key.
    let rotated = key("ours-2");
    api.bundles.send(Ok(WitBundlesResponse { bundles: [(prod.to_string(), jwks(&rotated))].into() })).unwrap();
    changed(&mut updates).await;
    assert!(has(&prod) && !has(&other));
    let kid = trust.read(|store| store.get(&prod).unwrap().keys()[0].kid().map(str::to_owned));
    assert_eq!(kid.as_deref(), Some("ours-2"));

    // A SPIFFE bundle: only its `wit-svid` keys are WIT anchors (its X.509 authority is not).
    let mut wit_key = serde_json::to_value(rotated.public_jwk()).unwrap();
    wit_key["use"] = "wit-svid".into();
    let mut jwt_key = serde_json::to_value(key("jwt-1").public_jwk()).unwrap();
    jwt_key["use"] = "jwt-svid".into();
    let bundle = serde_json::json!({"keys": [wit_key, jwt_key], "spiffe_sequence": 2}).to_string();
    api.bundles.send(Ok(WitBundlesResponse { bundles: [(prod.to_string(), bundle)].into() })).unwrap();
    changed(&mut updates).await;
    let kids: Vec<String> = trust
        .read(|store| store.get(&prod).unwrap().keys().iter().filter_map(|k| k.kid().map(str::to_owned)).collect());
    assert_eq!(kids, ["ours-2"]);

    // Revoked: the stream's trust domains go.
    api.bundles.send(Err(Status::permission_denied("no entry"))).unwrap();
    changed(&mut updates).await;
    assert!(!has(&prod));
}
