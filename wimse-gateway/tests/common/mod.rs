//! What the gateway tests share: a deployment's trust anchor and credentials written to files,
//! an application that echoes what it received, and forward-auth subrequests.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use wimse_core::prelude::*;
use wimse_gateway::GatewayConfig;
use wimse_testkit::{ALLOWED, Deployment, now};

/// Files of one test: the trust anchor, the gateway's own credentials.
pub struct Files {
    pub dir: PathBuf,
    pub trust: PathBuf,
    pub wit: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// Writes `deployment`'s anchor and credentials for `gateway_id` into a fresh directory.
    pub fn new(deployment: &Deployment, gateway_id: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wimse-gateway-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("dir");
        let trust = dir.join("trust.jwk.json");
        std::fs::write(&trust, serde_json::to_string(deployment.issuer_public_jwk()).expect("jwk")).expect("trust");
        let credentials = deployment.credentials(gateway_id, false, 0);
        let (wit, key) = (dir.join("gateway.wit"), dir.join("gateway.key.json"));
        std::fs::write(&wit, credentials.wit()).expect("wit");
        std::fs::write(&key, serde_json::to_string(&credentials.key().to_private_jwk()).expect("jwk")).expect("key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("0600");
        }
        Self { dir, trust, wit, key }
    }

    /// A TOML configuration: `body` after the verifier's trust and the credentials.
    pub fn config(&self, body: &str) -> GatewayConfig {
        let text = format!(
            "[verifier]\nreveal_reasons = true\ntrust = [{{ trust_domain = \"spiffe://prod.example\", file = {:?} }}]\n\
             [credentials]\nwit_file = {:?}\nkey_file = {:?}\n{body}",
            self.trust, self.wit, self.key
        );
        GatewayConfig::from_toml(&text).expect("config")
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) * 1_000_003 + now() % 1_000_003
}

/// What the echo application received.
#[derive(Debug, serde::Deserialize)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|values| values.first()).map(String::as_str)
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers.get(name).map_or(0, Vec::len)
    }
}

/// An application that answers every request with JSON of what it received; `/redirect`
/// answers 302 to another origin.
pub async fn echo_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let service = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                if parts.uri.path() == "/redirect" {
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = http::StatusCode::FOUND;
                    response.headers_mut().insert("location", HeaderValue::from_static("http://elsewhere.example/"));
                    return Ok::<_, Infallible>(response);
                }
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (name, value) in &parts.headers {
                    headers.entry(name.as_str().to_owned()).or_default().push(value.to_str().unwrap_or("").to_owned());
                }
                let echo = serde_json::json!({
                    "method": parts.method.as_str(),
                    "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                    "headers": headers,
                    "body": String::from_utf8_lossy(&body),
                });
                Ok(Response::new(Full::new(Bytes::from(echo.to_string()))))
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// The header fields of a request as `credentials` would send it to `origin` + `path`
/// (`WPT` proof), without the original-request fields.
pub fn wpt_headers(credentials: &Credentials, origin: &str, path: &str) -> HeaderMap {
    let wpt =
        WptBuilder::new(credentials.key(), credentials.wit(), &format!("{origin}{path}")).sign(now()).expect("wpt");
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", HeaderValue::from_str(credentials.wit()).expect("wit"));
    headers.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}")).expect("wpt"));
    headers
}

/// Adds nginx-style original-request fields.
pub fn original(mut headers: HeaderMap, method: &str, uri: &str, host: &str) -> HeaderMap {
    headers.insert("x-original-method", HeaderValue::from_str(method).expect("method"));
    headers.insert("x-original-uri", HeaderValue::from_str(uri).expect("uri"));
    headers.insert("x-original-host", HeaderValue::from_str(host).expect("host"));
    headers
}

/// An allowed caller's credentials.
pub fn allowed(deployment: &Deployment) -> Credentials {
    deployment.credentials(ALLOWED, false, 0)
}

/// The `reason` of a problem body (the tests' verifier reveals them).
pub async fn reason(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default();
    (status, body["reason"].as_str().unwrap_or("").to_owned())
}

/// Starts `config`'s gateway and serves it until the test ends.
pub async fn serve(config: GatewayConfig) -> wimse_gateway::Gateway {
    let gateway = wimse_gateway::Gateway::start(config).await.expect("gateway");
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(std::future::pending()).await });
    gateway
}

/// An application's client that sends everything through `gateway`'s egress proxy.
pub fn through_egress(gateway: &wimse_gateway::Gateway) -> reqwest::Client {
    let egress = gateway.egress_address().expect("an egress proxy");
    let proxy = reqwest::Proxy::http(format!("http://{egress}")).expect("proxy");
    reqwest::Client::builder().proxy(proxy).build().expect("client")
}

/// Configuration of a loop through the gateway itself: its egress proxy signs for its own
/// reverse proxy on `port`, which lets `caller` through to `upstream` (`http://host:port`).
pub fn egress_to_own_proxy(port: u16, upstream: &str, caller: &str) -> String {
    format!(
        r#"
[reverse_proxy]
listen = "127.0.0.1:{port}"
[egress]
listen = "127.0.0.1:0"
destinations = [{{ origin = "http://127.0.0.1:{port}" }}]
[[routes]]
origin = "http://127.0.0.1:{port}"
upstream = "{upstream}"
policy = {{ name = "app", allow = {{ workloads = ["{caller}"] }} }}
"#
    )
}
