//! A call chain on loopback, every hop authenticated with a WIT and a proof of possession:
//!
//! ```text
//! front (reqwest) --WPT--> orders (axum) --WPT--> billing (actix-web) --mTLS--> ledger (axum over rustls)
//! front (reqwest) --WPT--> orders (axum) --HTTP signature, signed response--> billing --mTLS--> ledger
//! ```
//!
//! An in-process identity server for `spiffe://prod.example` issues each workload a key and a
//! WIT. Each server verifies its caller, applies its policy, and prints who called. A
//! `Txn-Token` travels unchanged across all hops, bound by `tth` on each WPT hop and covered by
//! the signature on the signed hop, where billing also signs its response and orders verifies
//! it against billing's expected identity. Then a workload the policies do not allow is
//! refused, and `front` cannot skip `orders` to reach `billing`.
//!
//! Run: `cargo run -p wimse-examples --bin call-chain` (exits 0 when every check holds).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use wimse_core::prelude::*;
use wimse_core::wic::{
    CurrentCertificate, WicAnchors, WicAuthority, WicOptions, WicServerVerifier, WicUsage, client_config, server_config,
};
use wimse_reqwest::{ProofMode, WimseMiddleware};

type Error = Box<dyn std::error::Error + Send + Sync>;

const TXN_TOKEN: &str = "txn.order-7d1f.purchase";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The identity server of the trust domain: issues WITs and WICs, and publishes its keys.
struct IdentityServer {
    issuer: WitIssuer,
    wic: WicAuthority,
    wic_anchors: WicAnchors,
}

impl IdentityServer {
    fn new() -> Result<Self, Error> {
        let key = SigningKey::generate(Algorithm::ES256)?.with_kid("prod-2026-11");
        let wic = WicAuthority::new("spiffe://prod.example".parse()?, now(), 86_400)?;
        let wic_anchors = WicAnchors::new();
        wic_anchors.set(wic.trust_domain().clone(), [wic.certificate().clone()])?;
        Ok(Self {
            issuer: WitIssuer::new(key).with_issuer("https://issuer.prod.example").with_lifetime(3600),
            wic,
            wic_anchors,
        })
    }

    /// A Workload Identity Certificate for `id`, as the workload's current TLS certificate.
    fn enroll_wic(&self, id: &str, usage: WicUsage) -> Result<CurrentCertificate, Error> {
        let options = WicOptions::new(usage, now(), 3600).ip_address(std::net::Ipv4Addr::LOCALHOST.into());
        let certificate = self.wic.issue(&id.parse()?, &options)?;
        Ok(CurrentCertificate::new(&certificate, self.wic_anchors.provider().clone())?)
    }

    fn trust(&self) -> Result<TrustStore, Error> {
        let anchors = TrustAnchors::new().with_key(self.issuer.public_key().clone());
        Ok(TrustStore::new().with("spiffe://prod.example".parse()?, anchors))
    }

    /// What a workload gets at start-up: a fresh key and a WIT binding its identifier to it.
    fn enroll(&self, id: &str) -> Result<Signer, Error> {
        let key = SigningKey::generate(Algorithm::ES256)?;
        let wit = self.issuer.issue(&id.parse()?, key.public_jwk(), now())?;
        Ok(Signer::new(StaticCredentials::new(Credentials::new(wit, key)?)))
    }
}

fn client(signer: Signer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(WimseMiddleware::new(signer)).build()
}

fn verifier(ids: &IdentityServer, origin: &str) -> Result<Verifier, Error> {
    Ok(Verifier::new(ids.trust()?, VerifierConfig::new().with_origin(origin))?)
}

// ---- billing: actix-web ----

/// How billing reaches the ledger: over mutual TLS, with its own certificate.
struct Ledger {
    url: String,
    client: reqwest::Client,
}

async fn charge(caller: wimse_actix::Caller, ledger: actix_web::web::Data<Ledger>) -> actix_web::HttpResponse {
    let txn = caller.txn_token().unwrap_or("none");
    println!("[billing] verified caller {} | {} | txn-token {txn}", caller.id(), caller.method().name());
    let recorded = match ledger.client.post(&ledger.url).send().await {
        Ok(response) if response.status().is_success() => response.text().await.unwrap_or_default(),
        Ok(response) => {
            return actix_web::HttpResponse::BadGateway().body(format!("ledger answered {}", response.status()));
        }
        Err(e) => return actix_web::HttpResponse::BadGateway().body(format!("ledger unreachable: {e}")),
    };
    actix_web::HttpResponse::Ok().body(format!("charged (billing saw txn-token {txn}); {recorded}"))
}

// ---- ledger: axum over rustls, mutual TLS ----

async fn record(wimse_axum::Caller(caller): wimse_axum::Caller) -> String {
    println!("[ledger]  verified caller {} | {}", caller.id(), caller.method().name());
    format!("ledger recorded it for {}", caller.id())
}

async fn start_ledger(ids: &IdentityServer) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("https://{}", listener.local_addr()?);
    let tls = server_config(&ids.wic_anchors, ids.enroll_wic("spiffe://prod.example/ledger", WicUsage::Server)?)?;
    let policy = Policy::named("ledger").allow(Rule::exact("spiffe://prod.example/billing".parse()?));
    let app = axum::Router::new()
        .route("/record", post(record))
        .layer(wimse_axum::WimseLayer::new(verifier(ids, &base)?).policy(policy));
    tokio::spawn(wimse_axum::tls::serve(listener, Arc::new(tls), app));
    Ok(base)
}

fn start_billing(ids: &IdentityServer, ledger: &str) -> Result<String, Error> {
    // Billing presents its WIC to the ledger and requires the ledger's identity in return.
    let ledger_id: WorkloadId = "spiffe://prod.example/ledger".parse()?;
    let server_check = WicServerVerifier::new(ids.wic_anchors.clone()).expect(move |_| Some(ledger_id.clone()));
    let tls = client_config(server_check, ids.enroll_wic("spiffe://prod.example/billing", WicUsage::Client)?)?;
    let ledger = actix_web::web::Data::new(Ledger {
        url: format!("{ledger}/record"),
        client: wimse_reqwest::mtls_client_builder(tls).build()?,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let policy = Policy::named("billing").allow(Rule::exact("spiffe://prod.example/orders".parse()?));
    let config = wimse_actix::WimseConfig::new(verifier(ids, &base)?)
        .policy(policy)
        .sign_responses(ids.enroll("spiffe://prod.example/billing")?);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(actix_web::web::Data::new(config.clone()))
            .app_data(ledger.clone())
            .wrap(wimse_actix::Wimse::from_app_data())
            .route("/charge", actix_web::web::post().to(charge))
    })
    .workers(1)
    .listen(listener)?
    .run();
    // actix-web runs on its own single-threaded runtime.
    std::thread::spawn(move || actix_web::rt::System::new().block_on(server));
    Ok(base)
}

// ---- orders: axum ----

struct Orders {
    billing: String,
    client: ClientWithMiddleware,
}

async fn place_order(
    State(orders): State<Arc<Orders>>,
    wimse_axum::Caller(caller): wimse_axum::Caller,
) -> Result<String, (StatusCode, String)> {
    call_billing(&orders, &caller, ProofMode::Wpt).await
}

async fn place_order_signed(
    State(orders): State<Arc<Orders>>,
    wimse_axum::Caller(caller): wimse_axum::Caller,
) -> Result<String, (StatusCode, String)> {
    call_billing(&orders, &caller, ProofMode::HttpSignature { sign_response: true }).await
}

async fn call_billing(
    orders: &Orders,
    caller: &VerifiedCaller,
    mode: ProofMode,
) -> Result<String, (StatusCode, String)> {
    let txn = caller.txn_token();
    println!(
        "[orders]  verified caller {} | {} | txn-token {}",
        caller.id(),
        caller.method().name(),
        txn.unwrap_or("none")
    );
    // Forward the transaction token only because the caller's proof bound it (tth); the
    // inbound WIT and proof are never forwarded: the client signs with orders' own credentials.
    let mut request = orders.client.post(format!("{}/charge", orders.billing)).with_extension(mode);
    if let Some(txn) = txn {
        request = request.header("txn-token", txn);
    }
    let response = request.send().await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let status = response.status();
    if response.headers().contains_key("signature-input") {
        // The middleware has verified it (or the call would have failed): billing's own
        // signature over status, body and this request.
        println!("[orders]  billing's response is signed by spiffe://prod.example/billing: verified");
    }
    let body = response.text().await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    if !status.is_success() {
        return Err((StatusCode::BAD_GATEWAY, format!("billing answered {status}: {body}")));
    }
    Ok(format!("order placed; {body}"))
}

async fn start_orders(ids: &IdentityServer, billing: String) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let policy = Policy::named("orders").allow(Rule::exact("spiffe://prod.example/front".parse()?));
    // Orders verifies billing's signed responses against billing's expected identity.
    let billing_id: WorkloadId = "spiffe://prod.example/billing".parse()?;
    let middleware = WimseMiddleware::new(ids.enroll("spiffe://prod.example/orders")?)
        .signed_responses(ids.trust()?)
        .expected_identity(move |_| Some(billing_id.clone()));
    let state =
        Arc::new(Orders { billing, client: ClientBuilder::new(reqwest::Client::new()).with(middleware).build() });
    let app = axum::Router::new()
        .route("/orders", post(place_order))
        .route("/orders-signed", post(place_order_signed))
        .layer(wimse_axum::WimseLayer::new(verifier(ids, &base)?).policy(policy))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

// ---- the chain ----

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: String,
}

async fn call(client: &ClientWithMiddleware, url: &str) -> Result<Answer, Error> {
    let response = client.post(url).header("txn-token", TXN_TOKEN).send().await?;
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok(Answer { status, challenge, body: response.text().await? })
}

fn expect(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

async fn run() -> Result<(), Error> {
    let ids = IdentityServer::new()?;
    let ledger = start_ledger(&ids).await?;
    let billing = start_billing(&ids, &ledger)?;
    let orders = start_orders(&ids, billing.clone()).await?;
    println!(
        "identity server: spiffe://prod.example | orders (axum) {orders} | billing (actix-web) {billing} | ledger (axum, mTLS) {ledger}\n"
    );

    println!("== front -> orders -> billing -> ledger, with Txn-Token {TXN_TOKEN}");
    let front = client(ids.enroll("spiffe://prod.example/front")?);
    let Answer { status, body, .. } = call(&front, &format!("{orders}/orders")).await?;
    println!("[front]   {status} {body}");
    expect(status == 200, "the chain succeeds")?;
    expect(body.contains(&format!("billing saw txn-token {TXN_TOKEN}")), "the Txn-Token arrived unchanged at billing")?;
    expect(
        body.contains("ledger recorded it for spiffe://prod.example/billing"),
        "the mTLS hop authenticated billing",
    )?;

    println!("\n== front -> orders -> billing, the second hop with an HTTP signature and a signed response");
    let Answer { status, body, .. } = call(&front, &format!("{orders}/orders-signed")).await?;
    println!("[front]   {status} {body}");
    expect(status == 200, "the mixed chain succeeds")?;
    expect(
        body.contains(&format!("billing saw txn-token {TXN_TOKEN}")),
        "the Txn-Token arrived unchanged, covered by the signature",
    )?;

    println!("\n== intruder (valid WIT, not allowed by orders' policy) -> orders");
    let intruder = client(ids.enroll("spiffe://prod.example/intruder")?);
    let Answer { status, body, .. } = call(&intruder, &format!("{orders}/orders")).await?;
    println!("[intruder] {status} {body}");
    expect(status == 403 && body.contains("policy_denied"), "orders refuses the intruder with 403")?;

    println!("\n== front -> billing directly (billing only accepts orders)");
    let Answer { status, body, .. } = call(&front, &format!("{billing}/charge")).await?;
    println!("[front]   {status} {body}");
    expect(status == 403, "billing refuses front")?;

    println!("\n== an unsigned request -> orders");
    let anonymous = ClientBuilder::new(reqwest::Client::new()).build();
    let Answer { status, challenge, .. } = call(&anonymous, &format!("{orders}/orders")).await?;
    println!("[anonymous] {status} WWW-Authenticate: {}", challenge.as_deref().unwrap_or("-"));
    expect(status == 401 && challenge.as_deref() == Some("WPT"), "orders asks for credentials")?;

    println!("\nall hops behaved as expected");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("call-chain: {e}");
            ExitCode::FAILURE
        }
    }
}
