//! Txn-Tokens through the axum adapter on loopback: the `Transaction` extractor, required and
//! optional validation, purpose policies per route, forged and foreign tokens, and forwarding
//! by the reqwest middleware only within the trust domain.

use axum::Router;
use axum::routing::post;
use reqwest_middleware::ClientBuilder;
use serde_json::Value;
use tokio::net::TcpListener;
use wimse_axum::{Caller, RequirePolicyLayer, Transaction, WimseLayer};
use wimse_core::prelude::*;
use wimse_core::protocol::txn::{NewTxnToken, TxnTokenIssuer};
use wimse_reqwest::{TxnToken, WimseSignMiddleware};
use wimse_testkit::{ALLOWED, Deployment};

async fn purchase(Caller(caller): Caller, txn: Transaction) -> String {
    format!("{} for {} txn {} purpose {}", caller.id(), txn.subject(), txn.txn(), txn.scope())
}

async fn status(txn: Option<Transaction>) -> String {
    txn.map_or("no transaction".to_owned(), |t| format!("txn {}", t.txn()))
}

async fn answer(response: reqwest::Response) -> (u16, String) {
    (response.status().as_u16(), response.text().await.unwrap())
}

fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body).map(|v| v["reason"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn transactions_are_verified_and_extracted() {
    let deployment = Deployment::new();
    // Optional validation: extractors decide per route.
    let base = serve_with(&deployment, false).await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)).trust_domain_origins([base.clone()]))
        .build();
    let token = deployment.txn_token("user-1842", "orders.purchase", false);
    let with_txn =
        |path: &str, token: &str| client.post(format!("{base}{path}")).with_extension(TxnToken(token.to_owned()));

    let (status, body) = answer(with_txn("/purchase", &token).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with(&format!("{ALLOWED} for user-1842 txn ")) && body.ends_with("purpose orders.purchase"),
        "{body}"
    );

    // The handler needs a transaction; none was sent.
    let (status, body) = answer(client.post(format!("{base}/purchase")).send().await.unwrap()).await;
    assert_eq!((status, reason(&body).as_str()), (403, "missing_txn_token"));
    let (status, body) = answer(client.post(format!("{base}/status")).send().await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "no transaction"));

    // A route whose policy requires another purpose: refused for the purpose, not the caller.
    let (status, body) = answer(with_txn("/refund", &token).send().await.unwrap()).await;
    assert_eq!((status, reason(&body).as_str()), (403, "txn_scope_denied"));
    let title = serde_json::from_str::<Value>(&body).unwrap()["title"].clone();
    assert_eq!(title, "the Txn-Token's purpose (scope) is not allowed here");
    // Without a transaction the route's requirement says the request has none.
    let (status, body) = answer(client.post(format!("{base}/refund")).send().await.unwrap()).await;
    assert_eq!((status, reason(&body).as_str()), (403, "missing_txn_token"));
    let refund = deployment.txn_token("user-1842", "orders.refund", false);
    assert_eq!(answer(with_txn("/refund", &refund).send().await.unwrap()).await.0, 200);

    // Forged: bound by tth like any other, signed by a key that is not the TTS's.
    let forged = deployment.txn_token("user-1842", "orders.refund", true);
    let (status, body) = answer(with_txn("/refund", &forged).send().await.unwrap()).await;
    assert_eq!((status, reason(&body).as_str()), (400, "invalid_txn_token_signature"));
    // Minted by a workload with its own key and kid.
    let own = TxnTokenIssuer::new(
        SigningKey::generate(Algorithm::ES256).unwrap().with_kid("mine"),
        &"spiffe://prod.example".parse().unwrap(),
    )
    .issue(&NewTxnToken::new("admin", "orders.refund").requested_by(ALLOWED), wimse_testkit::now())
    .unwrap();
    let (status, body) = answer(with_txn("/status", &own).send().await.unwrap()).await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (400, "txn_token_unknown_key"),
        "optional, yet an invalid one is refused"
    );
    // For another trust domain.
    let partner = TxnTokenIssuer::new(
        SigningKey::generate(Algorithm::ES256).unwrap().with_kid("prod-1"),
        &"spiffe://partner.example".parse().unwrap(),
    )
    .issue(&NewTxnToken::new("u", "orders.purchase").requested_by(ALLOWED), wimse_testkit::now())
    .unwrap();
    let (status, body) = answer(with_txn("/status", &partner).send().await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    // Sent without the proof binding it (a raw field next to a WPT that has no tth).
    let unbound =
        ClientBuilder::new(reqwest::Client::new()).with(WimseSignMiddleware::new(deployment.signer(ALLOWED))).build();
    let mut request = unbound.post(format!("{base}/status")).build().unwrap();
    let signed = deployment.signer(ALLOWED);
    signed.sign_headers(request.headers_mut(), &format!("{base}/status")).unwrap();
    request.headers_mut().insert("txn-token", token.parse().unwrap());
    let (status, body) = answer(reqwest::Client::new().execute(request).await.unwrap()).await;
    assert_eq!((status, reason(&body).as_str()), (401, "txn_token_binding_mismatch"));
}

async fn serve_with(deployment: &Deployment, required: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let refunds = Policy::named("refunds").allow(Rule::any()).require(Rule::txn_scope("orders.refund"));
    let app = Router::new()
        .route("/purchase", post(purchase))
        .route("/refund", post(purchase).route_layer(RequirePolicyLayer::new(refunds)))
        .route("/status", post(status))
        .layer(WimseLayer::new(deployment.txn_verifier(&base, required)));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn required_transactions_and_forwarding_within_the_trust_domain() {
    let deployment = Deployment::new();
    let inside = serve_with(&deployment, true).await;
    let token = deployment.txn_token("user-1842", "orders.purchase", false);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)).trust_domain_origins([inside.clone()]))
        .build();
    // Required: even a route without the extractor refuses a request without one.
    let (status, body) = answer(client.post(format!("{inside}/status")).send().await.unwrap()).await;
    assert_eq!((status, reason(&body).as_str()), (403, "missing_txn_token"));
    let (status, body) =
        answer(client.post(format!("{inside}/status")).with_extension(TxnToken(token.clone())).send().await.unwrap())
            .await;
    assert_eq!(status, 200, "{body}");
    // To an origin outside the trust domain (a partner's) neither the extension nor a field
    // set by hand is sent; the request is still signed. Within it, the token is bound by tth.
    let capture = wimse_testkit::Capture::default();
    let recording = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)).trust_domain_origins([inside.clone()]))
        .with(capture.clone())
        .build();
    let partner = "https://api.partner.example/orders";
    recording.post(partner).with_extension(TxnToken(token.clone())).header("txn-token", &token).send().await.unwrap();
    let seen = capture.take().expect("request captured");
    assert!(seen.headers.get("txn-token").is_none(), "the Txn-Token left the trust domain");
    assert!(seen.headers.get("workload-identity-token").is_some(), "still signed");
    recording.post(format!("{inside}/status")).with_extension(TxnToken(token.clone())).send().await.unwrap();
    let seen = capture.take().expect("request captured");
    assert_eq!(seen.headers["txn-token"], token.as_str(), "forwarded exactly as received");
    // Without the origins configured, a TxnToken extension is never sent.
    let unconfigured = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)))
        .with(capture.clone())
        .build();
    unconfigured.post(format!("{inside}/status")).with_extension(TxnToken(token)).send().await.unwrap();
    assert!(capture.take().unwrap().headers.get("txn-token").is_none());
}

#[tokio::test]
async fn a_txn_token_does_not_follow_a_redirect_out_of_the_trust_domain() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let deployment = Deployment::new();
    // partner.example's server notes whether a Txn-Token reached it.
    let reached = Arc::new(AtomicBool::new(false));
    let seen = reached.clone();
    let partner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let partner_url = format!("http://{}/quote", partner.local_addr().unwrap());
    let app = Router::new().route(
        "/quote",
        post(move |headers: axum::http::HeaderMap| async move {
            seen.store(headers.contains_key("txn-token"), Ordering::SeqCst);
            "quote"
        }),
    );
    tokio::spawn(async move { axum::serve(partner, app).await.unwrap() });
    // An in-domain service that redirects (307 keeps the method and the fields) to the partner.
    let inside = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inside_url = format!("http://{}", inside.local_addr().unwrap());
    let target = partner_url.clone();
    let app = Router::new().route("/moved", post(move || async move { axum::response::Redirect::temporary(&target) }));
    tokio::spawn(async move { axum::serve(inside, app).await.unwrap() });

    let http = reqwest::Client::builder().redirect(wimse_reqwest::same_origin_redirects()).build().unwrap();
    let client = ClientBuilder::new(http)
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)).trust_domain_origins([inside_url.clone()]))
        .build();
    let token = deployment.txn_token("user-1842", "orders.purchase", false);
    let response = client.post(format!("{inside_url}/moved")).with_extension(TxnToken(token)).send().await.unwrap();
    assert_eq!(response.status(), 307, "not followed to another origin");
    assert!(!reached.load(Ordering::SeqCst));
}

/// A client without `trust_domain_origins` drops the Txn-Token the application attached and the
/// service answers that the request has none: the client says why in a warning naming the fix,
/// once per origin; one with the origins configured warns the same way for an origin outside.
#[tokio::test]
async fn a_txn_token_not_sent_is_a_warning_once_per_origin() {
    let logs = wimse_testkit::logs::Logs::global();
    let deployment = Deployment::new();
    let (first, second) = (serve_with(&deployment, true).await, serve_with(&deployment, true).await);
    let token = deployment.txn_token("user-1842", "orders.purchase", false);
    let unconfigured =
        ClientBuilder::new(reqwest::Client::new()).with(WimseSignMiddleware::new(deployment.signer(ALLOWED))).build();
    for base in [&first, &first, &second] {
        let request = unconfigured.post(format!("{base}/status")).with_extension(TxnToken(token.clone()));
        let (status, body) = answer(request.send().await.unwrap()).await;
        assert_eq!((status, reason(&body).as_str()), (403, "missing_txn_token"));
    }
    // Each test server has its own port: count this test's lines only.
    let warned = |needle: &str, origin: &str| {
        logs.lines_with(&["WARN", "Txn-Token not sent", needle, &format!("origin=\"{origin}\"")])
    };
    let lines = warned("this client has no trust_domain_origins", &first);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!(".trust_domain_origins([\"{first}\"])")), "the fix: {lines:?}");
    assert_eq!(warned("this client has no trust_domain_origins", &second).len(), 1);

    // Configured for `first` only: `second` is outside (twice, one warning).
    let configured = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)).trust_domain_origins([first.clone()]))
        .build();
    for _ in 0..2 {
        let request = configured.post(format!("{second}/status")).with_extension(TxnToken(token.clone()));
        assert_eq!(answer(request.send().await.unwrap()).await.0, 403);
    }
    let request = configured.post(format!("{first}/status")).with_extension(TxnToken(token.clone()));
    assert_eq!(answer(request.send().await.unwrap()).await.0, 200);
    assert_eq!(warned("is not one of this client's trust_domain_origins", &second).len(), 1);
    assert!(warned("is not one of this client's trust_domain_origins", &first).is_empty());
}
