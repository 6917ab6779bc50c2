//! A real axum server on loopback, called by real reqwest clients.

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use wimse_axum::{Caller, RequirePolicyLayer, WimseLayer};
use wimse_testkit::{ALLOWED, DENIED, Deployment, run_cases};

async fn whoami(Caller(caller): Caller) -> String {
    caller.id().to_string()
}

async fn maybe(caller: Option<Caller>) -> String {
    caller.map(|c| c.id().to_string()).unwrap_or_else(|| "anonymous".into())
}

async fn serve(app: impl FnOnce(String) -> Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = app(base.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn case_table() {
    let deployment = Deployment::new();
    let base = serve(|base| {
        Router::new()
            .route("/whoami", get(whoami))
            .layer(WimseLayer::new(deployment.verifier(&base)).policy(deployment.policy()))
    })
    .await;
    run_cases(&deployment, &base).await;
}

#[tokio::test]
async fn per_route_policy_and_optional_authentication() {
    let deployment = Deployment::new();
    let base = serve(|base| {
        Router::new()
            .route("/whoami", get(whoami).route_layer(RequirePolicyLayer::new(deployment.policy())))
            .route("/maybe", get(maybe))
            .route("/open", get(whoami))
            .layer(WimseLayer::new(deployment.verifier(&base)).optional())
    })
    .await;
    // The shared table holds with the policy on the route instead of the layer.
    run_cases(&deployment, &base).await;

    let plain = reqwest::Client::new();
    assert_eq!(plain.get(format!("{base}/maybe")).send().await.unwrap().text().await.unwrap(), "anonymous");
    // A bearer-only request is left to other authentication.
    let bearer = plain.get(format!("{base}/maybe")).bearer_auth("t").send().await.unwrap();
    assert_eq!(bearer.text().await.unwrap(), "anonymous");
    let signed = deployment.client(DENIED).get(format!("{base}/maybe")).send().await.unwrap();
    assert_eq!(signed.text().await.unwrap(), DENIED);
    // A handler that requires a caller, on an optional layer, refuses anonymous requests itself.
    let anonymous = plain.get(format!("{base}/open")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "WPT");
    // Optional does not mean lenient: bad credentials are still refused.
    let bad = plain.get(format!("{base}/maybe")).header("workload-identity-token", "x.y.z").send().await.unwrap();
    assert_eq!(bad.status(), 401);
    let ok = deployment.client(ALLOWED).get(format!("{base}/whoami")).send().await.unwrap();
    assert_eq!(ok.text().await.unwrap(), ALLOWED);
}
