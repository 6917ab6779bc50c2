//! OpenTelemetry trace export (OTLP over HTTP/protobuf) from `wimse issuer serve` and `wimse
//! gateway serve`, received by a collector written here (an HTTP server decoding the OTLP
//! protobuf messages of `opentelemetry-proto`): the identity server's request spans carry the
//! authenticated client and identifier, its Txn-Token issuance the requester and the `txn`; the
//! gateway's forward-auth span carries the verified caller and the same `txn`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};

use crate::common::IssuerProcess;

/// One exported span: its service, name and string or integer attributes.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// A collector on a loopback port: `POST /v1/traces` with an `ExportTraceServiceRequest`.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let received = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        let attributes = span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(a.value.as_ref().and_then(|v| v.value.as_ref()))))
                            .collect();
                        received.lock().unwrap().push(Span { service: service.clone(), name: span.name, attributes });
                    }
                }
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, spans)
}

/// Waits up to 10 s for a span matching `wanted`.
async fn exported(spans: &Mutex<Vec<Span>>, wanted: impl Fn(&Span) -> bool) -> Span {
    let start = Instant::now();
    loop {
        if let Some(span) = spans.lock().unwrap().iter().find(|s| wanted(s)) {
            return span.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not exported; got {:#?}", spans.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wimse(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wimse")).args(args).output().unwrap()
}

#[tokio::test]
async fn request_spans_carry_the_caller_and_the_transaction() {
    let (endpoint, spans) = collector().await;
    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let dir = wimse_testkit::servers::TempDir::new("wimse-otel");
    let p = |f: &str| dir.path().join(f).display().to_string();
    let port = wimse_testkit::servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let front = "spiffe://prod.example/front";
    let config = json!({
        "trust_domain": "spiffe://prod.example", "key_store": dir.path().join("keys.json"), "dev_mode": true,
        "token_endpoint": format!("{base}/v1/token"),
        "clients": [{"name": "front-client", "dev_secret": "0123456789abcdef-front", "allowed": [front], "max_lifetime": 600}],
        "txn_tokens": {"requesters": [{"workloads": [front], "scopes": ["orders.read"], "subject_token_types": ["unsigned_json"]}]}
    });
    std::fs::write(dir.path().join("issuer.json"), config.to_string()).unwrap();
    let _issuer =
        IssuerProcess::start_on(&dir.path().join("issuer.json"), &dir.path().join("issuer.log"), otel.clone(), port);

    // A WIT for the workload: a span naming the client and the identifier.
    assert!(wimse(&["key", "generate", "-o", &p("front.jwk")]).status.success());
    let key: Value = serde_json::from_str(&std::fs::read_to_string(p("front.jwk")).unwrap()).unwrap();
    let public =
        wimse_core::jose::SigningKey::from_jwk(&wimse_core::jose::Jwk::from_json(&key.to_string()).unwrap()).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/wit"))
        .bearer_auth("0123456789abcdef-front")
        .json(&json!({"sub": front, "jwk": public.public_jwk()}))
        .send()
        .await
        .unwrap();
    let wit = response.json::<Value>().await.unwrap()["wit"].as_str().unwrap().to_owned();
    std::fs::write(p("front.wit"), &wit).unwrap();
    let issued = exported(&spans, |s| s.attributes.get("http.route").is_some_and(|r| r == "/v1/wit")).await;
    assert_eq!(issued.service, "wimse-issuer");
    assert_eq!(issued.name, "POST /v1/wit");
    assert_eq!(issued.attributes["wimse.caller"], "front-client");
    assert_eq!(issued.attributes["wimse.workload"], front);
    assert_eq!(issued.attributes["http.response.status_code"], "200");
    assert!(!issued.attributes.values().any(|v| v.contains("0123456789abcdef-front")), "never the credential");

    // A Txn-Token: the span names the requester and the transaction.
    let out = wimse(&[
        "txn",
        "issue",
        "--tts",
        &format!("{base}/v1/token"),
        "--trust-domain",
        "spiffe://prod.example",
        "--wit",
        &p("front.wit"),
        "--key",
        &p("front.jwk"),
        "--subject-token-type",
        "unsigned_json",
        "--sub",
        "batch-7",
        "--scope",
        "orders.read",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let txn_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(txn_token.split('.').nth(1).unwrap()).unwrap();
    let txn = serde_json::from_slice::<Value>(&payload).unwrap()["txn"].as_str().unwrap().to_owned();
    let exchange = exported(&spans, |s| s.attributes.get("wimse.txn").is_some_and(|t| *t == txn)).await;
    assert_eq!((exchange.name.as_str(), exchange.attributes["wimse.caller"].as_str()), ("POST /v1/token", front));

    // The gateway verifies a request carrying that Txn-Token: its span names the caller and the txn.
    let gateway_port = wimse_testkit::servers::free_port();
    std::fs::write(
        p("gateway.toml"),
        format!(
            "[verifier]\ntrust = [{{ trust_domain = \"spiffe://prod.example\", bundle_url = \"{base}/v1/bundle/spiffe\" }}]\n\
             txn_tokens = {{ trust_domain = \"spiffe://prod.example\", required = true }}\n\n\
             [forward_auth]\nlisten = \"127.0.0.1:{gateway_port}\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
             [[routes]]\norigin = \"http://orders.example\"\npolicy = {{ name = \"orders\", allow = {{ workloads = [\"{front}\"] }} }}\n"
        ),
    )
    .unwrap();
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["gateway", "serve", "--config", &p("gateway.toml")])
        .envs(otel)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(p("gateway.log")).unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(&mut gateway);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(guard.0.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert!(
        line.contains("listening") || line.contains("forward"),
        "{line}\n{}",
        std::fs::read_to_string(p("gateway.log")).unwrap()
    );
    std::fs::write(
        p("request.http"),
        format!("GET http://orders.example/orders HTTP/1.1\r\nTxn-Token: {txn_token}\r\n\r\n"),
    )
    .unwrap();
    let out = wimse(&[
        "sign",
        "--request",
        &p("request.http"),
        "--key",
        &p("front.jwk"),
        "--wit",
        &p("front.wit"),
        "--format",
        "headers",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut check = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{gateway_port}/"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/orders")
        .header("x-original-host", "orders.example");
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (name, value) = line.split_once(": ").unwrap();
        check = check.header(name, value);
    }
    let answer = check.send().await.unwrap();
    assert_eq!(answer.status(), 200, "{}", std::fs::read_to_string(p("gateway.log")).unwrap());
    let checked = exported(&spans, |s| s.service == "wimse-gateway" && s.attributes.contains_key("wimse.caller")).await;
    assert_eq!(checked.attributes["wimse.caller"], front);
    assert_eq!(checked.attributes["wimse.txn"], txn);
    assert_eq!(checked.attributes["wimse.mode"], "forward_auth");
    assert_eq!(checked.attributes["http.response.status_code"], "200");
    drop(guard);
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
