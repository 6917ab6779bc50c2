//! The tower layers between a real hyper server and a real hyper-util client on loopback.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use wimse_core::client::sign::AudienceOverride;
use wimse_core::prelude::*;
use wimse_testkit::{ALLOWED, DENIED, Deployment};
use wimse_tower::{WimseLayer, WimseRequestBody, WimseSignLayer};

async fn handler(req: Request<WimseRequestBody<Incoming>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let caller = req.extensions().get::<VerifiedCaller>().expect("WimseLayer sets the caller");
    let body = format!("{} txn={}", caller.id(), caller.txn_token().unwrap_or("-"));
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Serves `handler` behind `WimseLayer` on 127.0.0.1:0; returns the base URL.
async fn serve(deployment: &Deployment) -> String {
    serve_with(|base| WimseLayer::new(deployment.verifier(base)).policy(deployment.policy())).await
}

/// Serves `handler` behind the layer `make` builds for the base URL.
async fn serve_with(make: impl FnOnce(&str) -> WimseLayer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let layer = make(&base);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service =
                TowerToHyperService::new(ServiceBuilder::new().layer(layer.clone()).service(service_fn(handler)));
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    base
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn body(response: Response<Incoming>) -> String {
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn signed_hyper_client_calls_verified_hyper_server() {
    let deployment = Deployment::new();
    let base = serve(&deployment).await;
    let signing = ServiceBuilder::new().layer(WimseSignLayer::new(deployment.signer(ALLOWED))).service(client());

    let request =
        Request::get(format!("{base}/orders?id=1")).header("txn-token", "txn-42").body(Full::default()).unwrap();
    let response = signing.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, format!("{ALLOWED} txn=txn-42"));

    // A fresh proof per request: the same client can call again.
    let again =
        signing.clone().oneshot(Request::get(format!("{base}/orders")).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);

    // Unsigned, and signed by a caller the policy refuses.
    let unsigned =
        client().oneshot(Request::get(format!("{base}/orders")).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unsigned.headers()["www-authenticate"], "WPT");
    let denied = ServiceBuilder::new().layer(WimseSignLayer::new(deployment.signer(DENIED))).service(client());
    let response = denied.oneshot(Request::get(format!("{base}/orders")).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(body(response).await.contains("policy_denied"));
}

#[tokio::test]
async fn audience_alias_and_override() {
    let deployment = Deployment::new();
    let base = serve(&deployment).await;
    // The server is known to callers as its origin; an alias that names another audience fails.
    let aliased = ServiceBuilder::new()
        .layer(
            WimseSignLayer::new(deployment.signer(ALLOWED)).audience_alias(|_| Some("https://wrong.example/x".into())),
        )
        .service(client());
    let response =
        aliased.clone().oneshot(Request::get(format!("{base}/x")).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // A per-request override wins over the alias.
    let mut request = Request::get(format!("{base}/x")).body(Full::default()).unwrap();
    request.extensions_mut().insert(AudienceOverride(format!("{base}/x")));
    assert_eq!(aliased.oneshot(request).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn signing_errors_fail_the_call() {
    let deployment = Deployment::new();
    let signing = ServiceBuilder::new()
        .layer(WimseSignLayer::new(deployment.signer(ALLOWED)))
        .service(service_fn(|_req: Request<Full<Bytes>>| async { Ok::<_, Infallible>(Response::new(())) }));
    // A relative URI has no audience.
    let err = signing.clone().oneshot(Request::get("/relative").body(Full::default()).unwrap()).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Error>().unwrap().kind(), &ErrorKind::InvalidConfiguration);
    // A bearer token cannot travel beside the WPT.
    let request = Request::get("http://a.example/").header("authorization", "Bearer t").body(Full::default()).unwrap();
    let err = signing.oneshot(request).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Error>().unwrap().kind(), &ErrorKind::BearerWithWpt);
}

/// HTTP-signature mode between the hyper client and server, with a signed response.
#[tokio::test]
async fn signature_layer_with_signed_responses() {
    use wimse_testkit::SERVER;
    let deployment = Deployment::new();
    let base =
        serve_with(|base| WimseLayer::new(deployment.verifier(base)).sign_responses(deployment.signer(SERVER))).await;
    let expected: WorkloadId = SERVER.parse().unwrap();
    let signing = ServiceBuilder::new()
        .layer(
            WimseSignLayer::new(deployment.signer(ALLOWED))
                .http_signatures()
                .signed_responses(deployment.trust())
                .expected_identity(move |_| Some(expected.clone())),
        )
        .service(client());
    let request = Request::post(format!("{base}/orders?id=3"))
        .header("txn-token", "txn-9")
        .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
        .unwrap();
    let response = signing.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("signature"));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, format!("{ALLOWED} txn=txn-9"));

    // A client expecting another server refuses the signed response.
    let other: WorkloadId = "spiffe://prod.example/other".parse().unwrap();
    let suspicious = ServiceBuilder::new()
        .layer(
            WimseSignLayer::new(deployment.signer(ALLOWED))
                .http_signatures()
                .signed_responses(deployment.trust())
                .expected_identity(move |_| Some(other.clone())),
        )
        .service(client());
    let err = suspicious
        .oneshot(Request::get(format!("{base}/orders")).body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.downcast_ref::<Error>().unwrap().kind(), &ErrorKind::UnexpectedPeer);
}

/// A server MAY sign a response it was not asked to sign: a client without trust anchors for
/// responses leaves it alone instead of failing the call.
#[tokio::test]
async fn unsolicited_signed_responses_are_ignored_without_anchors() {
    use wimse_testkit::SERVER;
    let deployment = Deployment::new();
    let base = serve_with(|base| {
        WimseLayer::new(deployment.verifier(base)).sign_responses(deployment.signer(SERVER)).always_sign_responses()
    })
    .await;
    let plain = ServiceBuilder::new()
        .layer(WimseSignLayer::new(deployment.signer(ALLOWED)).http_signatures())
        .service(client());
    let response =
        plain.oneshot(Request::get(format!("{base}/orders")).body(Full::<Bytes>::default()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("signature"), "the server signed it unasked");
}

#[tokio::test]
async fn txn_tokens_are_forwarded_within_the_trust_domain_only() {
    let deployment = Deployment::new();
    let token = deployment.txn_token("user-1842", "orders.read", false);
    // The inner service reports the Txn-Token and the tth binding it received.
    let echo = service_fn(|req: Request<Full<Bytes>>| async move {
        let txn = req.headers().get("txn-token").map(|v| v.to_str().unwrap().to_owned());
        Ok::<_, Infallible>(Response::new(txn))
    });
    let layer = WimseSignLayer::new(deployment.signer(ALLOWED)).trust_domain_origins(["http://billing.prod.example"]);
    let client = ServiceBuilder::new().layer(layer).service(echo);
    let call = |uri: &str, by_hand: bool| {
        let mut req = Request::post(uri).body(Full::<Bytes>::default()).unwrap();
        req.extensions_mut().insert(wimse_core::protocol::txn::TxnToken(token.clone()));
        if by_hand {
            req.headers_mut().insert("txn-token", token.parse().unwrap());
        }
        client.clone().oneshot(req)
    };
    let inside = call("http://billing.prod.example/charge", false).await.unwrap();
    assert_eq!(inside.into_body().as_deref(), Some(token.as_str()));
    let outside = call("https://api.partner.example/charge", true).await.unwrap();
    assert_eq!(outside.into_body(), None, "dropped, even when set by hand");
    // A path-only request (a tonic Channel's) goes to the layer's origin: forwarded there only.
    let path_only = |origin: &str| {
        let layer = WimseSignLayer::for_origin(deployment.signer(ALLOWED), origin)
            .unwrap()
            .trust_domain_origins(["http://billing.prod.example"]);
        let mut req = Request::post("/charge").body(Full::<Bytes>::default()).unwrap();
        req.extensions_mut().insert(wimse_core::protocol::txn::TxnToken(token.clone()));
        ServiceBuilder::new().layer(layer).service(echo).oneshot(req)
    };
    let inside = path_only("http://billing.prod.example").await.unwrap();
    assert_eq!(inside.into_body().as_deref(), Some(token.as_str()));
    assert_eq!(path_only("https://api.partner.example").await.unwrap().into_body(), None);
}

/// The HTTP-signature layer follows the same client rules as the WPT one (they are the core's
/// `ClientExchange`): Txn-Tokens go to the trust domain's origins only, and a request picks its
/// proof with a `ProofMode` extension.
#[tokio::test]
async fn the_signature_layer_forwards_txn_tokens_and_takes_a_proof_mode_per_request() {
    let deployment = Deployment::new();
    let token = deployment.txn_token("user-1842", "orders.read", false);
    // Reports the Txn-Token and the proof it received.
    let echo = service_fn(|req: Request<Full<Bytes>>| async move {
        let txn = req.headers().get("txn-token").map_or("-", |v| v.to_str().unwrap()).to_owned();
        let proof = if req.headers().contains_key("signature-input") { "signature" } else { "wpt" };
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{txn} {proof}")))))
    });
    let layer = WimseSignLayer::new(deployment.signer(ALLOWED))
        .http_signatures()
        .trust_domain_origins(["http://billing.prod.example"]);
    let client = ServiceBuilder::new().layer(layer).service(echo);
    let call = |uri: &str, mode: Option<ProofMode>| {
        let mut req = Request::post(uri).body(Full::<Bytes>::default()).unwrap();
        req.extensions_mut().insert(wimse_core::protocol::txn::TxnToken(token.clone()));
        req.headers_mut().insert("txn-token", token.parse().unwrap());
        if let Some(mode) = mode {
            req.extensions_mut().insert(mode);
        }
        let client = client.clone();
        async move { body_of(client.oneshot(req).await.unwrap()).await }
    };
    assert_eq!(call("http://billing.prod.example/charge", None).await, format!("{token} signature"));
    assert_eq!(call("https://api.partner.example/charge", None).await, "- signature", "dropped, even set by hand");
    assert_eq!(call("http://billing.prod.example/charge", Some(ProofMode::Wpt)).await, format!("{token} wpt"));

    // The WPT layer streams bodies, so it cannot sign a request an HTTP signature is asked of:
    // refused before it is sent, naming the fix.
    let streaming = ServiceBuilder::new().layer(WimseSignLayer::new(deployment.signer(ALLOWED))).service(echo);
    let mut req = Request::post("http://billing.prod.example/charge").body(Full::<Bytes>::default()).unwrap();
    req.extensions_mut().insert(ProofMode::HttpSignature { sign_response: false });
    let err = streaming.oneshot(req).await.unwrap_err();
    let err = err.downcast_ref::<Error>().unwrap();
    assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    assert!(err.to_string().contains("http_signatures()"), "{err}");
}

async fn body_of<B: http_body::Body>(response: Response<B>) -> String
where
    B::Error: std::fmt::Debug,
{
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// A client without `trust_domain_origins` never sends a Txn-Token: it says so in a warning that
/// names the fix, once per origin, and the request goes on without it.
#[tokio::test]
async fn a_txn_token_not_sent_is_a_warning_once_per_origin() {
    let logs = wimse_testkit::logs::Logs::global();
    let deployment = Deployment::new();
    let token = deployment.txn_token("user-1842", "orders.read", false);
    let (first, second) = (serve(&deployment).await, serve(&deployment).await);
    let client = ServiceBuilder::new().layer(WimseSignLayer::new(deployment.signer(ALLOWED))).service(client());
    let call = |uri: String| {
        let mut req = Request::get(uri).body(Full::<Bytes>::default()).unwrap();
        req.extensions_mut().insert(wimse_core::protocol::txn::TxnToken(token.clone()));
        client.clone().oneshot(req)
    };
    for base in [&first, &first, &second] {
        let response = call(format!("{base}/orders")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, format!("{ALLOWED} txn=-"), "signed and sent without the token");
    }
    // Each test server has its own port: count this test's lines only.
    let warned = |origin: &str| {
        logs.lines_with(&["WARN", "Txn-Token not sent", "trust_domain_origins", &format!("origin=\"{origin}\"")])
    };
    let lines = warned(&first);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!(".trust_domain_origins([\"{first}\"])")), "{lines:?}");
    assert_eq!(warned(&second).len(), 1);
}
