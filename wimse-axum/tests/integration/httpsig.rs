//! HTTP-signature mode end to end: reqwest signs, axum (behind `WimseLayer`) verifies and signs
//! its response, the client verifies that.

use axum::Router;
use axum::routing::post;
use tokio::net::TcpListener;
use wimse_axum::{Caller, WimseLayer};
use wimse_core::server::verify::Verifier;
use wimse_testkit::{
    Deployment, SERVER, SIGNATURE_BODY_BUDGET, SIGNATURE_BODY_DEADLINE, SIGNATURE_BODY_LIMIT, run_reveal_reasons_cases,
    run_signature_cases,
};

async fn echo(Caller(caller): Caller, body: String) -> String {
    format!("{} {} {body}", caller.id(), caller.method().name())
}

async fn serve(deployment: &Deployment, sign_responses: bool) -> String {
    serve_with(deployment, sign_responses, Deployment::verifier).await
}

async fn serve_with(
    deployment: &Deployment,
    sign_responses: bool,
    verifier: impl Fn(&Deployment, &str) -> Verifier,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut layer = WimseLayer::new(verifier(deployment, &base))
        .body_limit(SIGNATURE_BODY_LIMIT)
        .body_budget(SIGNATURE_BODY_BUDGET)
        .body_deadline(SIGNATURE_BODY_DEADLINE);
    if sign_responses {
        layer = layer.sign_responses(deployment.signer(SERVER));
    }
    let app = Router::new().route("/pay", post(echo)).layer(layer);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn signature_cases() {
    let deployment = Deployment::new();
    let signing = serve(&deployment, true).await;
    let plain = serve(&deployment, false).await;
    run_signature_cases(&deployment, &signing, &plain).await;
}

#[tokio::test]
async fn reasons_are_revealed_only_when_asked() {
    let deployment = Deployment::new();
    let quiet = serve(&deployment, false).await;
    let revealing = serve_with(&deployment, false, Deployment::revealing_verifier).await;
    run_reveal_reasons_cases(&deployment, &quiet, &revealing).await;
}
