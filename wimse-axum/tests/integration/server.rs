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

/// The case table with a Cedar policy that says what the table's rule list says: the same
/// answers, on the layer and on a route (feature `cedar`).
#[cfg(feature = "cedar")]
#[tokio::test]
async fn case_table_with_cedar_policies() {
    let cedar = || {
        let text = format!(
            r#"@id("the-allowed-caller") permit(principal == Workload::"{ALLOWED}", action == Action::"GET", resource);"#
        );
        let policies = wimse_core::server::cedar::CedarPolicies::new("testkit", "whoami", &text, None).unwrap();
        wimse_core::server::policy::Policy::cedar(policies)
    };
    let deployment = Deployment::new();
    let base = serve(|base| {
        Router::new().route("/whoami", get(whoami)).layer(WimseLayer::new(deployment.verifier(&base)).policy(cedar()))
    })
    .await;
    run_cases(&deployment, &base).await;
    // The action is the method: a POST is not permitted (refused before routing).
    let posted = deployment.client(ALLOWED).post(format!("{base}/whoami")).send().await.unwrap();
    assert_eq!(posted.status(), 403);
    let base = serve(|base| {
        Router::new()
            .route("/whoami", get(whoami).route_layer(RequirePolicyLayer::new(cedar())))
            .layer(WimseLayer::new(deployment.verifier(&base)).optional())
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

/// Every refusal is logged once on `wimse::audit` with its reason: a layer policy's denial is
/// the request's only event (no "allow" first), a route policy's denial and an anonymous caller
/// on a route that needs one are logged by the route layer.
#[tokio::test]
async fn every_refusal_is_logged_with_its_final_decision() {
    let logs = wimse_testkit::logs::Logs::global();
    let deployment = Deployment::new();
    let base = serve(|base| {
        let guarded = Router::new()
            .route("/layer", get(whoami))
            .layer(WimseLayer::new(deployment.verifier(&base)).policy(deployment.policy()));
        Router::new()
            .route("/route", get(whoami).route_layer(RequirePolicyLayer::new(deployment.policy())))
            .layer(WimseLayer::new(deployment.verifier(&base)).optional())
            .merge(guarded)
    })
    .await;
    let layer_probe = "spiffe://prod.example/audit-probe-layer";
    let denied = deployment.client(layer_probe).get(format!("{base}/layer")).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let lines = logs.lines_with(&["wimse::audit", layer_probe]);
    assert_eq!(lines.len(), 1, "one event for the request: {lines:?}");
    assert!(lines[0].contains(r#"decision="reject""#) && lines[0].contains(r#"reason="policy_denied""#), "{lines:?}");
    assert!(lines[0].contains("policy `testkit`"), "the policy's name: {lines:?}");

    let route_probe = "spiffe://prod.example/audit-probe-route";
    let denied = deployment.client(route_probe).get(format!("{base}/route")).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let rejected = logs.lines_with(&["wimse::audit", route_probe, r#"decision="reject""#, "policy `testkit`"]);
    assert_eq!(rejected.len(), 1, "{}", logs.text());

    let anonymous = reqwest::get(format!("{base}/route")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let lines = logs.lines_with(&["wimse::audit", r#"mode="none""#, "route requires a verified caller"]);
    assert!(!lines.is_empty(), "{}", logs.text());
}
