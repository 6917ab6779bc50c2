//! The gateway's own credentials from a Workload API endpoint (a node agent) on a real Unix
//! socket: the WIT-SVID it serves signs the egress proxy's requests.

use std::pin::Pin;

use tonic::{Request, Response, Status};
use wimse_testkit::Deployment;
use wimse_workload_api::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use wimse_workload_api::proto::*;

use crate::common::{Echo, Files, echo_app};

const GATEWAY_ID: &str = "spiffe://prod.example/gateway";

type Messages<M> = Pin<Box<dyn futures_util::Stream<Item = Result<M, Status>> + Send>>;

/// Serves one WIT-SVID, then keeps the stream open.
struct Agent(Witsvid);

#[tonic::async_trait]
impl SpiffeWorkloadApi for Agent {
    type FetchX509SVIDStream = Messages<X509svidResponse>;
    type FetchX509BundlesStream = Messages<X509BundlesResponse>;
    type FetchWITSVIDStream = Messages<WitsvidResponse>;
    type FetchWITBundlesStream = Messages<WitBundlesResponse>;

    async fn fetch_x509svid(&self, _: Request<X509svidRequest>) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Err(Status::unimplemented("no X.509-SVIDs here"))
    }
    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("no X.509 bundles here"))
    }
    async fn fetch_witsvid(&self, _: Request<WitsvidRequest>) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        let first = futures_util::stream::iter([Ok(WitsvidResponse { svids: vec![self.0.clone()] })]);
        let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("bundles come from files here"))
    }
}

#[tokio::test]
async fn egress_requests_are_signed_with_the_wit_svid_of_the_workload_api() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, "spiffe://prod.example/unused");
    // The agent's WIT-SVID for the gateway, from the deployment's identity server.
    let credentials = deployment.credentials(GATEWAY_ID, false, 0);
    let svid = Witsvid {
        spiffe_id: GATEWAY_ID.into(),
        wit_svid: credentials.wit().to_owned(),
        wit_svid_key: serde_json::to_string(&credentials.key().to_private_jwk()).expect("jwk"),
        hint: String::new(),
    };
    let socket = files.dir.join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("socket");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(Agent(svid)))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );

    let app = echo_app().await;
    let port = wimse_testkit::servers::free_port();
    // No credential files: the Workload API instead.
    let mut config = files.config(&crate::common::egress_to_own_proxy(port, &format!("http://{app}"), GATEWAY_ID));
    config.credentials = None;
    config.workload_api = Some(format!("unix://{}", socket.display()));
    let gateway = crate::common::serve(config).await;
    let application = crate::common::through_egress(&gateway);
    let response = application.get(format!("http://127.0.0.1:{port}/stock")).send().await.expect("answer");
    assert_eq!(response.status(), 200);
    let seen: Echo = serde_json::from_slice(&response.bytes().await.expect("body")).expect("echo");
    assert_eq!(seen.header("x-wimse-caller"), Some(GATEWAY_ID));
}
