//! The client side of federation against a minimal authorization server and CI OIDC endpoint
//! written here (the interop with third-party servers is in wimse-issuer's and wimse-cli's
//! tests): where the platform token comes from, tokens cached per resource, errors.

use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query};
use axum::routing::{get, post};
use serde_json::json;
use wimse_core::client::cred::StaticCredentials;
use wimse_core::time::{Clock as _, SystemClock};
use wimse_reqwest::{AssertionGrant, OAuthTokenMiddleware, PlatformToken, TokenResource};
use wimse_testkit::{ALLOWED, Deployment};

type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// An authorization server that answers every jwt-bearer or token-exchange request with a token
/// naming its resource, and records the forms it got.
async fn authorization_server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new()
        .route(
            "/token",
            post(move |Form(form): Form<Vec<(String, String)>>| {
                record.lock().unwrap().push(form.clone());
                let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                let grant = get("grant_type").unwrap_or_default();
                let bad = get("assertion").or(get("subject_token")).as_deref() == Some("bad");
                let resource = get("resource").unwrap_or_default();
                async move {
                    if bad {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            axum::Json(json!({"error": "invalid_grant", "error_description": "no"})),
                        );
                    }
                    let token = format!("tok-{}-{resource}", grant.rsplit(':').next().unwrap_or(""));
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 300})),
                    )
                }
            }),
        )
        .route(
            "/oidc",
            get(|headers: axum::http::HeaderMap, Query(query): Query<Vec<(String, String)>>| async move {
                let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let audience = query.iter().find(|(k, _)| k == "audience").map(|(_, v)| v.clone()).unwrap_or_default();
                let api = query.iter().any(|(k, v)| k == "api-version" && v == "2.0");
                axum::Json(json!({"value": format!("ci-token:{bearer}:{audience}:{api}")}))
            }),
        )
        .route(
            "/api",
            get(|headers: axum::http::HeaderMap| async move {
                headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

fn field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn platform_tokens_from_a_ci_oidc_endpoint_and_from_the_wit() {
    let (base, seen) = authorization_server().await;
    // GitHub's shape: the request URL already has a query; the audience is added to it.
    let ci = PlatformToken::OidcEndpoint {
        url: format!("{base}/oidc?api-version=2.0"),
        request_token: "runner-secret".into(),
        audience: format!("{base}/token"),
    };
    assert!(!format!("{ci:?}").contains("runner-secret"), "Debug shows no secret");
    let token = AssertionGrant::new(format!("{base}/token"), ci).request().await.unwrap();
    assert_eq!(token.token, "tok-jwt-bearer-");
    let form = seen.lock().unwrap().pop().unwrap();
    assert_eq!(field(&form, "assertion").unwrap(), format!("ci-token:Bearer runner-secret:{base}/token:true"));
    assert_eq!(field(&form, "grant_type").unwrap(), "urn:ietf:params:oauth:grant-type:jwt-bearer");

    // RFC 7523 §2.2: the token as client authentication, with the grant's fixed parameters.
    let grant = AssertionGrant::new(format!("{base}/token"), PlatformToken::Static("platform-token".into()))
        .as_client_assertion()
        .client_id("app-1")
        .resource("https://api.example")
        .scope("read");
    assert_eq!(grant.request().await.unwrap().token, "tok-client_credentials-https://api.example");
    let form = seen.lock().unwrap().pop().unwrap();
    assert_eq!(
        field(&form, "client_assertion_type").unwrap(),
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(field(&form, "client_assertion").unwrap(), "platform-token");
    assert_eq!((field(&form, "client_id").unwrap(), field(&form, "scope").unwrap()), ("app-1".into(), "read".into()));
    assert!(field(&form, "assertion").is_none());

    // The WIT toward another trust domain, by RFC 8693 token exchange (identity chaining).
    let deployment = Deployment::new();
    let credentials = deployment.credentials(ALLOWED, false, 0);
    let wit = credentials.wit().to_owned();
    let source = PlatformToken::Wit(Arc::new(StaticCredentials::new(credentials)));
    assert_eq!(source.read(&reqwest::Client::new(), SystemClock.now()).await.unwrap(), wit);
    let grant = AssertionGrant::new(format!("{base}/token"), source)
        .token_exchange("urn:ietf:params:oauth:token-type:jwt")
        .param("audience", "https://partner.example");
    assert_eq!(grant.request().await.unwrap().token, "tok-token-exchange-");
    let form = seen.lock().unwrap().pop().unwrap();
    assert_eq!(field(&form, "subject_token").unwrap(), wit);
    assert_eq!(field(&form, "subject_token_type").unwrap(), "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(field(&form, "audience").unwrap(), "https://partner.example");
}

#[tokio::test]
async fn tokens_are_cached_per_resource_and_refusals_are_explained() {
    let (base, seen) = authorization_server().await;
    let grant = AssertionGrant::new(format!("{base}/token"), PlatformToken::Static("platform-token".into()));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(OAuthTokenMiddleware::new(grant).for_origin(&base))
        .build();
    let call = |resource: Option<&'static str>| {
        let mut request = client.get(format!("{base}/api"));
        if let Some(resource) = resource {
            request = request.with_extension(TokenResource(resource.to_owned()));
        }
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(call(None).await, "Bearer tok-jwt-bearer-");
    assert_eq!(call(Some("https://a.example")).await, "Bearer tok-jwt-bearer-https://a.example");
    assert_eq!(call(Some("https://b.example")).await, "Bearer tok-jwt-bearer-https://b.example");
    assert_eq!(call(Some("https://a.example")).await, "Bearer tok-jwt-bearer-https://a.example");
    assert_eq!(call(None).await, "Bearer tok-jwt-bearer-");
    assert_eq!(seen.lock().unwrap().len(), 3, "one token request per resource, then the cache");
    // Another origin never gets the token.
    let elsewhere = client.get("http://127.0.0.2:9/api").send().await.unwrap_err();
    assert!(elsewhere.to_string().contains("not an origin this access token is for"), "{elsewhere}");
    // Assertions never go over plain http to a remote host.
    let remote = AssertionGrant::new("http://auth.example/token", PlatformToken::Static("t".into()));
    assert!(remote.request().await.unwrap_err().detail().unwrap().contains("only over https"));

    let refused = AssertionGrant::new(format!("{base}/token"), PlatformToken::Static("bad".into()));
    let err = refused.request().await.unwrap_err();
    assert_eq!(err.detail().unwrap(), format!("{base}/token answered 400 Bad Request: invalid_grant no"));
    let missing = AssertionGrant::new(format!("{base}/token"), PlatformToken::File("/nonexistent/token".into()));
    assert!(missing.request().await.unwrap_err().detail().unwrap().contains("/nonexistent/token"));
}
