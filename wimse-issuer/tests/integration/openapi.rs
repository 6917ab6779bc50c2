//! `wimse-issuer/openapi.json` is what the code generates (`WIMSE_UPDATE_OPENAPI=1` rewrites
//! it), and it describes the real router: every documented operation exists and answers with
//! a documented status; other methods are refused (405) and other paths unknown (404); real
//! answers (successes and refusals, JSON and problem bodies) validate against the documented
//! schemas with a JSON Schema validator (the `jsonschema` crate, draft 2020-12 as OpenAPI 3.1).

use std::sync::Arc;

use serde_json::{Value, json};
use wimse_core::jose::{Algorithm, SigningKey, jws};
use wimse_core::time::FixedClock;
use wimse_issuer::{IdentityServer, IssuerConfig};

const NOW: u64 = 1_900_000_000;
const SECRET: &str = "an-openapi-dev-secret";
const SUB: &str = "spiffe://prod.example/demo";
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn checked_in_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}

#[test]
fn the_checked_in_description_is_what_the_code_generates() {
    let generated = wimse_issuer::openapi_json();
    if std::env::var_os("WIMSE_UPDATE_OPENAPI").is_some() {
        std::fs::write(checked_in_path(), &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(checked_in_path()).unwrap_or_default();
    assert!(
        checked_in == generated,
        "wimse-issuer/openapi.json is stale: run `WIMSE_UPDATE_OPENAPI=1 cargo test -p wimse-issuer --test integration openapi`"
    );
}

/// A validator for the schema of `path`/`method`/`status` answered as `content_type`, with the
/// description's components beside it so that `$ref`s resolve.
fn validator(doc: &Value, path: &str, method: &str, status: u16, content_type: &str) -> jsonschema::Validator {
    let response = &doc["paths"][path][method.to_lowercase()]["responses"][status.to_string()];
    assert!(response.is_object(), "{method} {path} does not document {status}");
    let mut schema = response["content"][content_type]["schema"].clone();
    assert!(schema.is_object(), "{method} {path} {status} has no {content_type} schema");
    schema["components"] = doc["components"].clone();
    jsonschema::draft202012::new(&schema).unwrap()
}

/// A validator for the request body of `path`/`method` sent as `content_type`.
fn request_validator(doc: &Value, path: &str, method: &str, content_type: &str) -> jsonschema::Validator {
    let mut schema =
        doc["paths"][path][method.to_lowercase()]["requestBody"]["content"][content_type]["schema"].clone();
    assert!(schema.is_object(), "{method} {path} takes no {content_type}");
    schema["components"] = doc["components"].clone();
    jsonschema::draft202012::new(&schema).unwrap()
}

/// Checks an answer against the description: its status is documented for the operation, and
/// its body validates against the schema of its content type.
async fn check(doc: &Value, path: &str, method: &str, response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let text = response.text().await.unwrap();
    let body = if content_type.contains("json") { serde_json::from_str(&text).unwrap() } else { Value::String(text) };
    let validator = validator(doc, path, method, status, content_type.split(';').next().unwrap());
    let errors: Vec<String> = validator.iter_errors(&body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{method} {path} {status}: {errors:?}\n{body}");
    (status, body)
}

#[tokio::test]
async fn the_router_answers_as_documented() {
    let doc: Value = serde_json::from_str(&wimse_issuer::openapi_json()).unwrap();
    let dir = std::env::temp_dir().join(format!("wimse-issuer-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ci = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("ci-1");
    let config: IssuerConfig = serde_json::from_value(json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.join("keys.json"),
        "dev_mode": true,
        "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": 600}],
        "exchange": [{"name": "ci", "kind": "jwt", "issuer": "https://ci.example", "audience": "wimse-issuer",
                      "jwks": {"keys": [ci.public_jwk()]}, "subject_template": "spiffe://prod.example/ci/{sub}", "max_lifetime": 120}]
    }))
    .unwrap();
    let server = Arc::new(IdentityServer::open(config, FixedClock::new(NOW)).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = wimse_issuer::router(server).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();

    // Every documented operation exists (an empty request gets a documented answer); every
    // other method of a documented path is refused; other paths are unknown.
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 6, "{:?}", paths.keys());
    for (path, operations) in paths {
        for method in METHODS {
            let response = http.request(method.parse().unwrap(), format!("{base}{path}")).send().await.unwrap();
            if operations.get(method.to_lowercase()).is_some() {
                let status = response.status().as_u16();
                assert!(
                    operations[method.to_lowercase()]["responses"].get(status.to_string()).is_some(),
                    "{method} {path}: undocumented {status}"
                );
            } else {
                assert_eq!(response.status(), 405, "{method} {path} is not documented");
            }
        }
    }
    for unknown in ["/v1/bundle", "/v1/wits", "/v1/bundle/pem", "/"] {
        assert_eq!(http.get(format!("{base}{unknown}")).send().await.unwrap().status(), 404, "{unknown}");
    }

    // Real answers against their schemas.
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let wit = |secret: &str, body: Value| http.post(format!("{base}/v1/wit")).bearer_auth(secret).json(&body).send();
    let good = json!({"sub": SUB, "jwk": key.public_jwk(), "lifetime": 60});
    assert_eq!(check(&doc, "/v1/wit", "POST", wit(SECRET, good.clone()).await.unwrap()).await.0, 200);
    let (status, problem) =
        check(&doc, "/v1/wit", "POST", wit("a-wrong-dev-secret", good.clone()).await.unwrap()).await;
    assert_eq!((status, problem["reason"].as_str()), (401, Some("bootstrap_token_invalid")));
    let other = json!({"sub": "spiffe://prod.example/other", "jwk": key.public_jwk()});
    assert_eq!(check(&doc, "/v1/wit", "POST", wit(SECRET, other).await.unwrap()).await.0, 403);
    let unknown_member = json!({"sub": SUB, "jwk": key.public_jwk(), "color": "blue"});
    // What the description says of the request agrees with what the server accepts.
    let requests = request_validator(&doc, "/v1/wit", "POST", "application/json");
    assert!(requests.is_valid(&good) && !requests.is_valid(&unknown_member));
    let (status, problem) = check(&doc, "/v1/wit", "POST", wit(SECRET, unknown_member).await.unwrap()).await;
    assert_eq!((status, problem["reason"].as_str()), (400, Some("malformed_request")));
    assert!(problem["detail"].as_str().unwrap().contains("color"));

    let spki = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        rcgen::PublicKeyData::subject_public_key_info(&rcgen::KeyPair::generate().unwrap()),
    );
    let asked = json!({"sub": SUB, "spki": spki});
    assert!(request_validator(&doc, "/v1/wic", "POST", "application/json").is_valid(&asked));
    let wic = http.post(format!("{base}/v1/wic")).bearer_auth(SECRET).json(&asked);
    let (status, issued) = check(&doc, "/v1/wic", "POST", wic.send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(issued["chain_pem"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    let bad_usage = json!({"sub": SUB, "spki": spki, "usage": "everything"});
    let wic = http.post(format!("{base}/v1/wic")).bearer_auth(SECRET).json(&bad_usage);
    assert_eq!(check(&doc, "/v1/wic", "POST", wic.send().await.unwrap()).await.0, 400);

    let ci_token = jws::sign(
        "JWT",
        Some("ci-1"),
        &json!({"iss": "https://ci.example", "sub": "build-7", "aud": "wimse-issuer", "iat": NOW, "exp": NOW + 300}),
        &ci,
        Default::default(),
    )
    .unwrap();
    let exchange = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
        ("subject_token", ci_token),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt".to_owned()),
        ("wimse_jwk", key.public_jwk().to_json()),
    ];
    let as_object: serde_json::Map<String, Value> =
        exchange.iter().map(|(k, v)| ((*k).to_owned(), v.clone().into())).collect();
    let form = request_validator(&doc, "/v1/token", "POST", "application/x-www-form-urlencoded");
    assert!(form.is_valid(&Value::Object(as_object)));
    let response = http.post(format!("{base}/v1/token")).form(&exchange).send().await.unwrap();
    let (status, token) = check(&doc, "/v1/token", "POST", response).await;
    assert_eq!((status, token["token_type"].as_str()), (200, Some("N_A")), "{token}");
    let response = http.post(format!("{base}/v1/token")).form(&[("grant_type", "password")]).send().await.unwrap();
    let (status, error) = check(&doc, "/v1/token", "POST", response).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("unsupported_grant_type")));

    for path in ["/v1/bundle/jwks", "/v1/bundle/spiffe", "/v1/bundle/x509"] {
        let (status, _) = check(&doc, path, "GET", http.get(format!("{base}{path}")).send().await.unwrap()).await;
        assert_eq!(status, 200, "{path}");
    }

    // The schemas are strict: a member they do not name fails validation.
    let mut bundle: Value = http.get(format!("{base}/v1/bundle/spiffe")).send().await.unwrap().json().await.unwrap();
    bundle["surprise"] = true.into();
    assert!(!validator(&doc, "/v1/bundle/spiffe", "GET", 200, "application/json").is_valid(&bundle));
    let _ = std::fs::remove_dir_all(dir);
}
