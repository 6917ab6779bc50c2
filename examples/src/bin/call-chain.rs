//! A call chain on loopback, every hop authenticated with a WIT and a proof of possession:
//!
//! ```text
//! front (reqwest) --WPT--> orders (axum) --WPT--> billing (actix-web) --mTLS--> ledger (axum over rustls)
//! front (reqwest) --WPT--> orders (axum) --HTTP signature, signed response--> billing --mTLS--> ledger
//! ```
//!
//! An identity server for `spiffe://prod.example` runs on loopback; each workload generates a key
//! and obtains its WIT from it over HTTP (dev-mode bootstrap secrets), verifiers follow its
//! published bundle, and a partner workload of `partner.example` exchanges its JWT-SVID for a WIT
//! (RFC 8693). Each server verifies its caller, applies its policy, and prints who called.
//!
//! The identity server is also the trust domain's Transaction Token Service: `front` exchanges
//! the user's access token (from the shop's login service) for a Txn-Token with purpose
//! `orders.purchase` (draft-ietf-oauth-transaction-tokens-11). It travels unchanged across all
//! hops, bound by `tth` on each WPT hop, covered by the signature on the signed hop, carried by
//! the mTLS connection to the ledger; every hop requires it, verifies it against the identity
//! server's keys and prints its transaction id and purpose. A route that requires another
//! purpose answers 403, a Txn-Token a workload signed itself is refused, and orders' call to
//! partner.example leaves it out. Billing also signs its response and orders verifies it
//! against billing's expected identity. Then a workload the policies do not allow is refused,
//! and `front` cannot skip `orders` to reach `billing`. Finally the chain runs again
//! with every workload's WIT delivered by a `wimse agent`: the SPIFFE Workload API on a Unix
//! socket (WIT-SVID profile), the agent obtaining the credentials from the identity server.
//!
//! One hop is a Python service that links no WIMSE library, behind a real nginx whose
//! `auth_request` asks the wimse gateway (skipped, with a message, without nginx or python3):
//! it prints the identity the gateway verified, and calls orders through the gateway's egress
//! proxy, which signs the call and binds the Txn-Token, verified again by orders.
//!
//! Run: `cargo run -p wimse-examples --bin call-chain` (exits 0 when every check holds).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::{Value, json};
use wimse_core::prelude::*;
use wimse_core::protocol::trust::TrustHandle;
use wimse_core::protocol::txn::{TxnToken, TxnTokenValidation};
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WicAuthority, WicOptions, WicServerVerifier, WicUsage, client_config, server_config,
};
use wimse_issuer::IssuerConfig;
use wimse_reqwest::{
    Bootstrap, BundleSource, ContextTokens, IssuerCredentials, PlatformToken, ProofMode, TxnTokenRequest,
    TxnTokenService, WimseSignMiddleware,
};
use wimse_workload_api::WitSvidSource;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The shop's login service, which issues users' access tokens (RFC 9068) for the shop's API.
const USER_IDP: &str = "https://login.shop.example";
const SHOP_API: &str = "https://api.shop.example";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The workloads the identity server knows (each may obtain only its own identifier).
const FRONT: &str = "spiffe://prod.example/front";

const WORKLOADS: [&str; 5] = [
    "spiffe://prod.example/front",
    "spiffe://prod.example/orders",
    "spiffe://prod.example/billing",
    "spiffe://prod.example/intruder",
    GATEWAY,
];
/// AI agents acting for users: the planner asks for Txn-Tokens naming itself as actor, and
/// hands work to the booker; the payer would be a third actor, one too many.
const PLANNER: &str = "spiffe://prod.example/agents/planner";
const BOOKER: &str = "spiffe://prod.example/agents/booker";
const PAYER: &str = "spiffe://prod.example/agents/payer";
/// The wimse gateway's own workload: it signs the Python service's outgoing calls.
const GATEWAY: &str = "spiffe://prod.example/gateway";
/// The identifier a partner workload gets through token exchange.
const PARTNER: &str = "spiffe://prod.example/partners/partner.example/ns/web";

/// The identity server of `spiffe://prod.example`, running on loopback: workloads obtain their
/// WITs from it over HTTP, verifiers follow its published bundle, and partners exchange their
/// JWT-SVIDs for WITs. (WICs for the mTLS hop still come from an in-process CA.)
struct IdentityServer {
    base: String,
    trust: TrustHandle,
    wic: WicAuthority,
    wic_anchors: WicAnchors,
    partner_spire: SigningKey,
    /// The key of the (simulated) Kubernetes cluster's service-account token issuer.
    cluster: SigningKey,
    /// The key of the (simulated) login service that issues users' access tokens.
    user_idp: SigningKey,
    /// Once set, workloads obtain their WITs from this node agent instead.
    agent: std::sync::OnceLock<wimse_workload_api::Endpoint>,
    /// Every service's audit log.
    audit: AuditLogs,
}

/// The services' tamper-evident audit logs (`<name>.audit.jsonl`), one per service, each
/// checkpointed with an audit key of its own whose public half is written beside it.
struct AuditLogs {
    dir: std::path::PathBuf,
    logs: std::sync::Mutex<std::collections::BTreeMap<String, wimse_core::server::audit_log::AuditLog>>,
}

impl AuditLogs {
    fn new() -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!("wimse-call-chain-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, logs: Default::default() })
    }

    /// The log of the service `name` (`orders`…): opened once, shared by its restarts.
    fn log(&self, name: &str) -> Result<wimse_core::server::audit_log::AuditLog, Error> {
        use wimse_core::server::audit_log::{AuditLog, AuditOptions};
        let mut logs = self.logs.lock().map_err(|_| "audit logs poisoned")?;
        if let Some(log) = logs.get(name) {
            return Ok(log.clone());
        }
        let key = SigningKey::generate(Algorithm::ES256)?;
        std::fs::write(self.dir.join(format!("{name}.audit.pub.jwk")), serde_json::to_string(key.public_jwk())?)?;
        let options = AuditOptions { checkpoint_every: 8, ..Default::default() };
        let path = self.dir.join(format!("{name}.audit.jsonl"));
        let log = AuditLog::open(path, &format!("spiffe://prod.example/{name}"), key, options)?;
        logs.insert(name.to_owned(), log.clone());
        Ok(log)
    }

    /// Closes every log, checks each, and traces each of `txns` through them: prints the logs'
    /// paths, each chain of custody, and the paths of their pictures.
    async fn finish(&self, txns: &[&str]) -> Result<(), Error> {
        use wimse_core::server::audit_log::{check, trace};
        let logs: Vec<(String, wimse_core::server::audit_log::AuditLog)> =
            std::mem::take(&mut *self.logs.lock().map_err(|_| "audit logs poisoned")?).into_iter().collect();
        let mut files = Vec::new();
        let mut keys = Vec::new();
        for (name, log) in logs {
            tokio::task::spawn_blocking(move || log.close()).await??;
            let path = self.dir.join(format!("{name}.audit.jsonl"));
            let jwk = Jwk::from_json(&std::fs::read_to_string(self.dir.join(format!("{name}.audit.pub.jwk")))?)?;
            let key = wimse_core::jose::PublicKey::from_jwk(&jwk)?;
            let content = std::fs::read(&path)?;
            let report =
                check(vec![(name.clone(), std::io::BufReader::new(&content[..]))], std::slice::from_ref(&key), None);
            println!(
                "[audit]   {} ({} records, {})",
                path.display(),
                report.records,
                if report.is_intact() { "intact" } else { "TAMPERED" }
            );
            expect(report.is_intact() && report.closed, &format!("{name}'s audit log verifies"))?;
            files.push((path.display().to_string(), content));
            keys.push(key);
        }
        for (n, txn) in txns.iter().enumerate() {
            let custody = trace(&files, txn, &keys);
            print!("{}", custody.text());
            let dot = self.dir.join(format!("transaction-{}.dot", n + 1));
            std::fs::write(&dot, custody.dot())?;
            let svg = dot.with_extension("svg");
            // Rendered where Graphviz is installed; the DOT file otherwise.
            let rendered = std::process::Command::new("dot")
                .arg("-Tsvg")
                .arg("-o")
                .arg(&svg)
                .arg(&dot)
                .stderr(std::process::Stdio::null())
                .status();
            let picture = if rendered.is_ok_and(|s| s.success()) { svg } else { dot };
            println!("[audit]   the transaction's chain of custody, as a picture: {}", picture.display());
            expect(
                custody.all_verified() && custody.hops.len() >= 3,
                "the audit logs trace the transaction through its hops",
            )?;
            if n == 0 {
                // Billing's hops were made during orders' (the parent request each carried).
                let linked = custody.hops.iter().filter(|hop| matches!(custody.parent(hop), Some(Ok(_)))).count();
                expect(linked >= 1, "each call from orders to billing is linked to the request it served")?;
            } else {
                // Each tool call's record names the tool's policy, which decided it.
                let tools = custody
                    .hops
                    .iter()
                    .filter_map(|hop| hop.event.as_ref())
                    .filter(|event| event.action.as_deref().is_some_and(|action| action.starts_with("tool:")));
                let named = tools.clone().all(|event| event.policy.is_some());
                expect(tools.count() >= 2 && named, "each MCP tool decision names the policy that decided it")?;
            }
        }
        println!(
            "[audit]   check one yourself: wimse audit verify --key {0}/orders.audit.pub.jwk {0}/orders.audit.jsonl",
            self.dir.display()
        );
        Ok(())
    }
}

/// The node agent's bootstrap secret (a real deployment uses the agent's platform token).
const AGENT_SECRET: &str = "demo-dev-secret:node-agent";

/// The (simulated) Kubernetes API server that issues projected service-account tokens.
const CLUSTER_ISSUER: &str = "https://kubernetes.default.svc";

/// The dev-mode bootstrap secret of a workload (a real deployment uses platform tokens).
fn dev_secret(id: &str) -> String {
    format!("demo-dev-secret:{id}")
}

impl IdentityServer {
    async fn start() -> Result<Self, Error> {
        let partner_spire = SigningKey::generate(Algorithm::ES256)?.with_kid("partner-spire-1");
        let store = std::env::temp_dir().join(format!("wimse-call-chain-{}-keys.json", std::process::id()));
        let _ = std::fs::remove_file(&store);
        let cluster = SigningKey::generate(Algorithm::ES256)?.with_kid("cluster-sa-1");
        let user_idp = SigningKey::generate(Algorithm::ES256)?.with_kid("login-1");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        // `front` federates the standard way: its pod's projected service-account token is an
        // RFC 7523 assertion, matched by namespace and service account. The others use dev secrets.
        let mut clients: Vec<Value> = WORKLOADS
            .iter()
            .chain(&[PLANNER, BOOKER, PAYER])
            .filter(|id| **id != FRONT)
            .map(|id| json!({"name": id, "dev_secret": dev_secret(id), "allowed": [id], "max_lifetime": 3600}))
            .collect();
        // The node agent may obtain the identities of the workloads on its node.
        clients.push(json!({"name": "node-agent", "dev_secret": AGENT_SECRET, "max_lifetime": 3600,
                            "allowed": [FRONT, "spiffe://prod.example/orders", "spiffe://prod.example/billing"]}));
        clients.push(json!({"name": "front", "platform": "cluster", "allowed": [FRONT], "max_lifetime": 3600,
                            "claims": {"/kubernetes.io/namespace": "shop", "/kubernetes.io/serviceaccount/name": "front"}}));
        let config: IssuerConfig = serde_json::from_value(json!({
            "trust_domain": "spiffe://prod.example",
            "issuer": "https://issuer.prod.example",
            "key_store": store,
            "dev_mode": true,
            "token_endpoint": format!("{base}/v1/token"),
            "platforms": [{"name": "cluster", "issuer": CLUSTER_ISSUER, "audience": "wimse-issuer",
                           "jwks": {"keys": [cluster.public_jwk()]}, "single_use": false}],
            "clients": clients,
            "exchange": [{"name": "partner.example", "kind": "jwt-svid", "issuer": "https://spire.partner.example",
                          "audience": "spiffe://prod.example", "jwks": {"keys": [partner_spire.public_jwk()]},
                          "subject_template": "spiffe://prod.example/partners/{trust_domain}/{path}", "max_lifetime": 600,
                          "subject_trust_domain": "spiffe://partner.example"}],
            // The Transaction Token Service: front turns users' access tokens into Txn-Tokens
            // for purchases and reads; partners start their own transactions (self-signed).
            "txn_tokens": {
                "lifetime": 300,
                "subject_issuers": [{"name": "shop-users", "kind": "access-token", "issuer": USER_IDP,
                                     "audience": SHOP_API, "jwks": {"keys": [user_idp.public_jwk()]}}],
                "requesters": [
                    {"workloads": [FRONT], "scopes": ["orders.purchase", "orders.read"],
                     "subject_token_types": ["access_token"], "subject_issuers": ["shop-users"]},
                    {"prefixes": ["spiffe://prod.example/partners"], "scopes": ["orders.purchase"],
                     "subject_token_types": ["self_signed"]},
                    // Agents act for users (`act`): the planner from the user's access token,
                    // the others only on a Txn-Token handed to them; two actors at most.
                    {"workloads": [PLANNER], "scopes": ["orders.purchase", "orders.read"], "actor": true,
                     "subject_token_types": ["access_token"], "subject_issuers": ["shop-users"]},
                    {"workloads": [BOOKER, PAYER], "scopes": ["orders.purchase", "orders.read"], "actor": true,
                     "subject_token_types": ["txn_token"]}
                ],
                "max_actors": 2
            }
        }))?;
        let server = Arc::new(wimse_issuer::IdentityServer::open(config, SystemClock).await?);
        tokio::spawn(async move { axum::serve(listener, wimse_issuer::router(server)).await });

        // Verifiers follow the published bundle: fetched now, then refreshed in the background.
        let trust = TrustHandle::default();
        let domain: TrustDomain = "spiffe://prod.example".parse()?;
        let bundle = format!("{base}/v1/bundle/spiffe");
        BundleSource::new(domain.clone(), bundle.clone()).refresh(&trust).await?;
        let _refresher = BundleSource::new(domain, bundle).spawn(trust.clone());

        let wic = WicAuthority::new("spiffe://prod.example".parse()?, now(), 86_400)?;
        let wic_anchors = WicAnchors::new();
        wic_anchors.set(wic.trust_domain().clone(), [wic.certificate().clone()])?;
        let audit = AuditLogs::new()?;
        Ok(Self { base, trust, wic, wic_anchors, partner_spire, cluster, user_idp, agent: Default::default(), audit })
    }

    /// A Workload Identity Certificate for `id`, as the workload's current TLS certificate.
    fn enroll_wic(&self, id: &str, usage: WicUsage) -> Result<CurrentCertificate, Error> {
        let options = WicOptions::new(usage, now(), 3600).ip_address(std::net::Ipv4Addr::LOCALHOST.into());
        let certificate = self.wic.issue(&id.parse()?, &options)?;
        Ok(CurrentCertificate::new(&certificate, self.wic_anchors.provider().clone())?)
    }

    /// The anchors as verifiers see them (kept current by the bundle refresher).
    fn trust(&self) -> Result<TrustStore, Error> {
        let domain: TrustDomain = "spiffe://prod.example".parse()?;
        let anchors = self.trust.read(|store| store.get(&domain).cloned()).ok_or("no bundle yet")?;
        Ok(TrustStore::new().with(domain, anchors))
    }

    /// What a workload does at start-up: obtain a WIT (and a fresh key) from the identity
    /// server, and keep renewing it.
    async fn enroll(&self, id: &str) -> Result<Signer, Error> {
        if let Some(endpoint) = self.agent.get() {
            // From the Workload API: the WIT-SVID of this identity, renewed through the stream.
            let source = WitSvidSource::builder(endpoint.clone()).spiffe_id(id.parse()?).start().await?;
            let short = id.rsplit('/').next().unwrap_or(id);
            println!("[{short}] WIT-SVID from the node agent at {endpoint}");
            return Ok(Signer::new(source));
        }
        let credentials = IssuerCredentials::connect(&self.base, id, Bootstrap::Token(dev_secret(id))).await?;
        let _renewal = credentials.spawn_renewal();
        Ok(Signer::new(credentials))
    }

    /// What `front`'s pod has: a projected service-account token file for this identity server
    /// (as the kubelet writes it), exchanged through the RFC 7523 grant for a WIT bound to a
    /// fresh key proven with DPoP. The file is re-read at every renewal.
    async fn enroll_from_projected_token(&self) -> Result<Signer, Error> {
        let claims = json!({
            "iss": CLUSTER_ISSUER, "sub": "system:serviceaccount:shop:front", "aud": format!("{}/v1/token", self.base),
            "iat": now(), "exp": now() + 3600,
            "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "front", "uid": "4f1e"}}
        });
        let token = wimse_core::jose::jws::sign("JWT", self.cluster.kid(), &claims, &self.cluster, Default::default())?;
        let path = std::env::temp_dir().join(format!("wimse-call-chain-{}-front-token", std::process::id()));
        std::fs::write(&path, token)?;
        let bootstrap = Bootstrap::Assertion(PlatformToken::File(path));
        let credentials = IssuerCredentials::connect(&self.base, FRONT, bootstrap).await?;
        println!("[front]   WIT from its projected service-account token (RFC 7523 grant, DPoP-bound key)");
        let _renewal = credentials.spawn_renewal();
        Ok(Signer::new(credentials))
    }

    /// What the user's browser sends to the shop: an access token from the login service for
    /// user alice, allowing purchases and reads.
    fn user_access_token(&self) -> Result<String, Error> {
        let claims = json!({"iss": USER_IDP, "sub": "alice", "aud": SHOP_API, "client_id": "shop-web",
                            "scope": "orders.purchase orders.read", "iat": now(), "exp": now() + 900});
        Ok(wimse_core::jose::jws::sign("at+jwt", self.user_idp.kid(), &claims, &self.user_idp, Default::default())?)
    }

    /// A Txn-Token from the Transaction Token Service, asked for by the workload `signer` signs as.
    async fn txn_token(&self, signer: &Signer, request: TxnTokenRequest) -> Result<String, Error> {
        let tts =
            TxnTokenService::new(signer.clone(), format!("{}/v1/token", self.base), &"spiffe://prod.example".parse()?)?;
        Ok(tts.request(&request).await?.token)
    }

    /// A workload of partner.example: its SPIRE issues it a JWT-SVID, which it exchanges here
    /// (RFC 8693) for a WIT of this trust domain.
    async fn partner_exchange(&self) -> Result<Signer, Error> {
        let claims = json!({"iss": "https://spire.partner.example", "sub": "spiffe://partner.example/ns/web",
                            "aud": ["spiffe://prod.example"], "exp": now() + 300});
        let svid = wimse_core::jose::jws::sign(
            "JWT",
            Some("partner-spire-1"),
            &claims,
            &self.partner_spire,
            Default::default(),
        )?;
        let key = SigningKey::generate(Algorithm::ES256)?;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
            ("subject_token", svid),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt".to_owned()),
            ("wimse_jwk", key.public_jwk().to_json()),
        ];
        let answer: Value = serde_json::from_str(
            &reqwest::Client::new().post(format!("{}/v1/token", self.base)).form(&form).send().await?.text().await?,
        )?;
        let wit = answer["access_token"].as_str().ok_or("token exchange refused")?;
        Ok(Signer::new(StaticCredentials::new(Credentials::new(wit, key)?)))
    }
}

impl IdentityServer {
    /// Starts a node agent serving front, orders and billing (all in this process, so all
    /// selected by its uid) on a Unix socket, and makes `enroll` use it.
    async fn start_agent(&self) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, Error> {
        let dir = std::env::temp_dir().join(format!("wimse-call-chain-{}-agent", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let uid = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find_map(|l| l.strip_prefix("Uid:").and_then(|ids| ids.split_whitespace().nth(1)?.parse::<u32>().ok()))
            .ok_or("no uid")?;
        let entries: Vec<Value> = [FRONT, "spiffe://prod.example/orders", "spiffe://prod.example/billing"]
            .iter()
            .map(|id| json!({"spiffe_id": id, "selectors": {"uid": uid}}))
            .collect();
        wimse_core::client::cred::write_atomically(&dir.join("token"), AGENT_SECRET.as_bytes())?;
        let config = wimse_agent::AgentConfig::from_json(
            &json!({
                "socket": dir.join("agent.sock"), "trust_domain": "spiffe://prod.example", "x509": false,
                "issuer": {"url": self.base, "token_file": dir.join("token")}, "entries": entries
            })
            .to_string(),
        )?;
        let socket = config.socket.clone();
        let agent = Arc::new(wimse_agent::Agent::start(config)?);
        if !agent.ready(std::time::Duration::from_secs(20)).await {
            return Err("the node agent obtained no credentials".into());
        }
        let serving = agent.clone();
        let task = tokio::spawn(async move { serving.serve(std::future::pending()).await });
        while !socket.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        println!("node agent: unix://{} (entries: front, orders, billing, selected by uid {uid})", socket.display());
        let _ = self.agent.set(wimse_workload_api::Endpoint::parse(&format!("unix://{}", socket.display()))?);
        Ok(task)
    }
}

/// A client signing as `signer`'s workload, forwarding Txn-Tokens to `in_domain` origins only.
fn client(signer: Signer, in_domain: &[&str]) -> ClientWithMiddleware {
    let middleware = WimseSignMiddleware::new(signer).trust_domain_origins(in_domain.iter().copied());
    ClientBuilder::new(reqwest::Client::new()).with(middleware).build()
}

/// Every service of prod.example requires a Txn-Token, verified with the identity server's keys
/// (it is the Transaction Token Service), next to the caller's WIT and proof; each records its
/// decisions in its audit log.
fn verifier(ids: &IdentityServer, service: &str, origin: &str) -> Result<Verifier, Error> {
    let txn = TxnTokenValidation::new("spiffe://prod.example".parse()?).required();
    Ok(Verifier::new(TrustStore::new(), VerifierConfig::new().origin(origin).txn_tokens(txn))?
        .trust_handle(ids.trust.clone())
        .audit_log(ids.audit.log(service)?))
}

/// How a hop names the transaction it serves.
fn txn_summary(caller: &VerifiedCaller) -> String {
    caller.transaction().map_or("no transaction".into(), |t| format!("txn {} purpose {}", t.txn(), t.scope()))
}

// ---- billing: actix-web ----

/// How billing reaches the ledger: over mutual TLS, with its own certificate.
struct Ledger {
    url: String,
    client: reqwest::Client,
}

async fn charge(caller: wimse_actix::Caller, ledger: actix_web::web::Data<Ledger>) -> actix_web::HttpResponse {
    let txn = txn_summary(&caller);
    println!("[billing] verified caller {} | {} | {txn}", caller.id(), caller.method().name());
    // The ledger is in the trust domain: the Txn-Token goes along exactly as received, carried
    // by the mutual-TLS connection.
    let mut request = ledger.client.post(&ledger.url);
    if let Some(token) = caller.txn_token() {
        request = request.header("txn-token", token);
    }
    let recorded = match request.send().await {
        Ok(response) if response.status().is_success() => response.text().await.unwrap_or_default(),
        Ok(response) => {
            return actix_web::HttpResponse::BadGateway().body(format!("ledger answered {}", response.status()));
        }
        Err(e) => return actix_web::HttpResponse::BadGateway().body(format!("ledger unreachable: {e}")),
    };
    actix_web::HttpResponse::Ok().body(format!("charged (billing saw {txn}); {recorded}"))
}

// ---- ledger: axum over rustls, mutual TLS ----

async fn record(wimse_axum::Caller(caller): wimse_axum::Caller, txn: wimse_axum::Transaction) -> String {
    println!(
        "[ledger]  verified caller {} | {} | txn {} purpose {}",
        caller.id(),
        caller.method().name(),
        txn.txn(),
        txn.scope()
    );
    format!("ledger recorded it for {} (user {})", caller.id(), txn.subject())
}

async fn start_ledger(ids: &IdentityServer) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("https://{}", listener.local_addr()?);
    let tls = server_config(&ids.wic_anchors, ids.enroll_wic("spiffe://prod.example/ledger", WicUsage::Server)?)?;
    let policy = Policy::named("ledger").allow(Rule::exact("spiffe://prod.example/billing")?);
    let app = axum::Router::new()
        .route("/record", post(record))
        .layer(wimse_axum::WimseLayer::new(verifier(ids, "ledger", &base)?).policy(policy));
    tokio::spawn(wimse_axum::tls::serve(listener, Arc::new(tls), app));
    Ok(base)
}

async fn start_billing(ids: &IdentityServer, ledger: &str) -> Result<String, Error> {
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
    let policy = Policy::named("billing").allow(Rule::exact("spiffe://prod.example/orders")?);
    let config = wimse_actix::Pipeline::new(verifier(ids, "billing", &base)?)
        .policy(policy)
        .sign_responses(ids.enroll("spiffe://prod.example/billing").await?);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(actix_web::web::Data::new(config.clone()))
            .app_data(ledger.clone())
            .wrap(wimse_actix::WimseAuth::from_app_data())
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
    partner: String,
    client: ClientWithMiddleware,
}

async fn place_order(
    State(orders): State<Arc<Orders>>,
    wimse_axum::Caller(caller): wimse_axum::Caller,
) -> Result<String, (StatusCode, String)> {
    let charged = call_billing(&orders, &caller, ProofMode::Wpt).await?;
    // A shipping quote from partner.example: another trust domain, where the Txn-Token is
    // meaningless, so the client leaves it out.
    let mut quote = orders.client.post(&orders.partner);
    if let Some(token) = caller.txn_token() {
        quote = quote.with_extension(TxnToken(token.to_owned()));
    }
    let quote = quote.send().await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let quote = quote.text().await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(format!("{charged}; {quote}"))
}

/// What the Python inventory service asks, through the gateway's egress proxy.
async fn stock(wimse_axum::Caller(caller): wimse_axum::Caller) -> String {
    println!("[orders]  verified caller {} | {} | {}", caller.id(), caller.method().name(), txn_summary(&caller));
    format!("orders verified caller {} with {}: 3 in stock", caller.id(), txn_summary(&caller))
}

/// Refunds need a transaction for that purpose: the route's policy says so.
async fn refund(wimse_axum::Caller(caller): wimse_axum::Caller) -> String {
    format!("refunded for {}", txn_summary(&caller))
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
    println!("[orders]  verified caller {} | {} | {}", caller.id(), caller.method().name(), txn_summary(caller));
    // Forward the Txn-Token exactly as received (the middleware binds it to orders' own proof,
    // and sends it within the trust domain only); the inbound WIT and proof are never forwarded.
    let mut request = orders.client.post(format!("{}/charge", orders.billing)).with_extension(mode);
    if let Some(token) = caller.txn_token() {
        request = request.with_extension(TxnToken(token.to_owned()));
    }
    // Names the request this call serves, so billing's audit record links to orders' own.
    if let Some(request_id) = caller.method().proof_id() {
        request = request.with_extension(ContextTokens::default().parent_request(request_id));
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

// ---- partner.example: a shipping service of another trust domain ----

async fn quote(headers: axum::http::HeaderMap) -> String {
    let seen = if headers.contains_key("txn-token") { "received a Txn-Token" } else { "saw no Txn-Token" };
    println!("[partner] shipping quote requested; partner.example {seen}");
    format!("partner.example {seen}")
}

async fn start_partner() -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/quote", listener.local_addr()?);
    let app = axum::Router::new().route("/quote", post(quote));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

async fn start_orders(ids: &IdentityServer, billing: String, partner: String) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let policy = Policy::named("orders").allow(Rule::one_of([
        "spiffe://prod.example/front".parse()?,
        PARTNER.parse()?,
        GATEWAY.parse()?,
    ]));
    // Orders verifies billing's signed responses against billing's expected identity.
    let billing_id: WorkloadId = "spiffe://prod.example/billing".parse()?;
    let middleware = WimseSignMiddleware::new(ids.enroll("spiffe://prod.example/orders").await?)
        .signed_responses(ids.trust()?)
        .expected_identity(move |_| Some(billing_id.clone()))
        .trust_domain_origins([billing.as_str()]);
    let client = ClientBuilder::new(reqwest::Client::new()).with(middleware).build();
    let state = Arc::new(Orders { billing, partner, client });
    let refunds = Policy::named("refunds").allow(Rule::any()).require(Rule::txn_scope("orders.refund"));
    let app = axum::Router::new()
        .route("/orders", post(place_order))
        .route("/orders-signed", post(place_order_signed))
        .route("/stock", axum::routing::get(stock))
        .route("/refunds", post(refund).route_layer(wimse_axum::RequirePolicyLayer::new(refunds)))
        .layer(wimse_axum::WimseLayer::new(verifier(ids, "orders", &base)?).policy(policy))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

// ---- inventory: a Python service behind nginx and the wimse gateway ----

/// The gateway's credentials as the files a node agent would keep current (written once here).
async fn gateway_credentials(ids: &IdentityServer, dir: &std::path::Path) -> Result<(String, String), Error> {
    let credentials = ids.enroll(GATEWAY).await?.credentials()?;
    let (wit, key) = (dir.join("gateway.wit"), dir.join("gateway.key.json"));
    std::fs::write(&wit, credentials.wit())?;
    std::fs::write(&key, serde_json::to_string(&credentials.key().to_private_jwk())?)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((wit.display().to_string(), key.display().to_string()))
}

/// front -> nginx (auth_request: the wimse gateway verifies front's WPT and Txn-Token) ->
/// inventory, a Python service that links no WIMSE library -> the gateway's egress proxy
/// (signs as the gateway, binds the Txn-Token) -> orders, which verifies both. Skipped, with a
/// message, without nginx or python3.
async fn gateway_hop(ids: &IdentityServer, orders: &str, front: Signer, txn: &str) -> Result<(), Error> {
    use wimse_testkit::servers::{free_port, start_nginx, start_python};
    let dir = std::env::temp_dir().join(format!("wimse-call-chain-{}-gateway", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wimse-gateway/deploy");
    let site = format!("http://127.0.0.1:{}", free_port());
    let (wit, key) = gateway_credentials(ids, &dir).await?;
    let config = wimse_gateway::GatewayConfig::from_toml(&format!(
        r#"
[verifier]
trust = [{{ trust_domain = "spiffe://prod.example", bundle_url = "{base}/v1/bundle/spiffe" }}]
txn_tokens = {{ trust_domain = "spiffe://prod.example", required = true }}
[credentials]
wit_file = {wit:?}
key_file = {key:?}
[forward_auth]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1"]
[egress]
listen = "127.0.0.1:0"
destinations = [{{ origin = "{orders}", forward_txn_token = true }}]
[[routes]]
origin = "{site}"
policy = {{ name = "inventory", allow = {{ workloads = ["{FRONT}"] }} }}
"#,
        base = ids.base
    ))?;
    let gateway = wimse_gateway::Gateway::start(config).await?;
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(std::future::pending()).await });
    let (checks, egress) =
        (gateway.forward_auth_address().ok_or("no forward-auth")?, gateway.egress_address().ok_or("no egress")?);
    let env = [("NEXT_HOP", format!("{orders}/stock")), ("HTTP_PROXY", format!("http://{egress}"))];
    let Some(app) = start_python(&dir, "inventory", &deploy.join("echo_app.py"), &env) else { return Ok(()) };
    let port = site.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("port")?;
    let Some(_nginx) =
        start_nginx(&dir, port, &deploy.join("nginx.conf"), &[("wimse_gateway", checks.port()), ("app", app.port())])
    else {
        return Ok(());
    };
    println!(
        "nginx {site} -> inventory (Python) {} | wimse gateway: forward-auth {checks}, egress {egress}",
        app.origin()
    );
    let front = client(front, &[site.as_str()]);
    let Answer { status, body, .. } = call(&front, &format!("{site}/hop"), Some(txn)).await?;
    let log = || std::fs::read_to_string(dir.join("inventory.log")).unwrap_or_default();
    for line in log().lines().filter(|l| l.starts_with("python app: ")) {
        println!("[inventory] {line}");
    }
    let echo: Value = serde_json::from_str(&body).unwrap_or_default();
    let next = echo["next"]["body"].as_str().unwrap_or("");
    let seen = echo["headers"]["x-wimse-caller"][0].as_str().unwrap_or("-");
    println!("[front]   {status} inventory saw X-Wimse-Caller {seen}; orders answered it: {next}");
    expect(status == 200 && seen == FRONT, "the gateway verified front for the Python service")?;
    expect(
        echo["next"]["status"] == 200 && next.starts_with(&format!("orders verified caller {GATEWAY} with txn ")),
        "orders verified the Python service's call, signed by the gateway's egress proxy, with the Txn-Token",
    )?;
    let anonymous = ClientBuilder::new(reqwest::Client::new()).build();
    let spoofed = anonymous.post(format!("{site}/hop")).header("x-wimse-caller", FRONT).send().await?;
    println!("[anonymous] {} for a request straight to nginx with X-Wimse-Caller: {FRONT}", spoofed.status().as_u16());
    expect(
        spoofed.status() == 401 && log().matches("python app: ").count() == 1,
        "a spoofed identity field sent straight to nginx never reaches the Python service",
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---- tools: the MCP server agents call (rmcp behind WimseLayer) ----

/// The MCP tool service (`wimse_examples::mcp`): searching needs the user's read delegation,
/// booking the purchase one, refunds the refund one; the chain may name two agents at most.
async fn start_tools(ids: &IdentityServer) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let host = listener.local_addr()?.to_string();
    let origin = format!("http://{host}");
    let app = wimse_examples::mcp::router(verifier(ids, "tools", &origin)?, host)?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("{origin}/mcp"))
}

type McpAgent = rmcp::service::RunningService<rmcp::RoleClient, rmcp::model::ClientConfig>;

/// An MCP client signing as `signer`'s agent, carrying `txn` to the tool service.
async fn mcp_agent(signer: Signer, tools: &str, txn: &str) -> Result<McpAgent, Error> {
    use rmcp::ServiceExt;
    let origin = tools.trim_end_matches("/mcp");
    let signing = WimseSignMiddleware::new(signer).trust_domain_origins([origin]);
    let signed = wimse_mcp::SignedMcpClient::from_middleware(signing)?.txn_token(TxnToken(txn.to_owned()));
    Ok(rmcp::model::ClientConfig::default().serve(signed.transport(tools.to_owned())).await?)
}

/// Calls `tool` and returns its text, or the refusal's status and reason ("403 txn_scope_denied").
async fn call_tool(agent: &McpAgent, tool: &str, item: &str) -> Result<String, String> {
    let arguments = json!({ "item": item }).as_object().cloned();
    let params = rmcp::model::CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments.unwrap_or_default());
    match agent.call_tool(params).await {
        Ok(result) => Ok(result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect()),
        Err(rmcp::service::ServiceError::McpError(error)) => {
            let data = error.data.unwrap_or_default();
            Err(format!("{} {}: {}", data["status"], data["reason"].as_str().unwrap_or_default(), error.message))
        }
        Err(other) => Err(other.to_string()),
    }
}

/// The agent pass: a user asks the planner agent to act; it obtains a Txn-Token naming itself
/// as actor, calls tools, hands the work to the booker; a third agent is one too many. Returns
/// the transaction's id.
async fn agent_pass(ids: &IdentityServer) -> Result<String, Error> {
    let tools = start_tools(ids).await?;
    println!("tools (MCP, rmcp) {tools}: search needs orders.read, book orders.purchase, refund orders.refund");
    let planner_signer = ids.enroll(PLANNER).await?;
    // alice's access token grants orders.purchase and orders.read; she delegates both.
    let acting = TxnTokenRequest::for_access_token(ids.user_access_token()?, "orders.purchase orders.read").acting();
    let txn = ids.txn_token(&planner_signer, acting).await?;
    let planner = mcp_agent(planner_signer, &tools, &txn).await?;
    let listed = planner.list_tools(Default::default()).await?;
    let names: Vec<&str> = listed.tools.iter().map(|t| t.name.as_ref()).collect();
    println!("[planner] tools/list: {}", names.join(", "));
    let answer = call_tool(&planner, "search", "flights to Oslo").await;
    println!("[planner] search -> {answer:?}");
    expect(
        answer.is_ok_and(|text| text.contains(&format!("agent {PLANNER} for user alice (chain {PLANNER})"))),
        "the planner acts for alice",
    )?;
    let answer = call_tool(&planner, "refund", "order 7d1f").await;
    println!("[planner] refund -> {answer:?}");
    expect(
        answer.is_err_and(|refusal| refusal.starts_with("403 txn_scope_denied")),
        "a tool outside alice's delegation answers 403",
    )?;

    // The planner hands booking to the booker: a narrower Txn-Token, the chain one longer.
    let booker_signer = ids.enroll(BOOKER).await?;
    let handed = ids.txn_token(&booker_signer, TxnTokenRequest::replacing(&txn, "orders.purchase").acting()).await?;
    let booker = mcp_agent(booker_signer, &tools, &handed).await?;
    let answer = call_tool(&booker, "book", "flight OSL-123").await;
    println!("[booker]  book -> {answer:?}");
    expect(
        answer.is_ok_and(|text| text.contains(&format!("agent {BOOKER} for user alice (chain {BOOKER} <- {PLANNER})"))),
        "the booker acts for alice on the planner's behalf",
    )?;
    let answer = call_tool(&booker, "search", "hotels").await;
    println!("[booker]  search -> {answer:?} (its Txn-Token was narrowed to orders.purchase)");
    expect(
        answer.is_err_and(|refusal| refusal.starts_with("403 ")),
        "the chain only narrows: the booker cannot search",
    )?;
    let _ = planner.cancel().await;
    let _ = booker.cancel().await;

    // A third agent would make the chain three actors long: the TTS refuses.
    let payer_signer = ids.enroll(PAYER).await?;
    let refused = ids.txn_token(&payer_signer, TxnTokenRequest::replacing(&handed, "orders.purchase").acting()).await;
    let reason = refused.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
    println!("[payer]   refused by the Transaction Token Service: {reason}");
    expect(reason.contains("delegation"), "re-delegating beyond two actors is refused")?;
    let validation = TxnTokenValidation::new("spiffe://prod.example".parse()?);
    Ok(wimse_core::protocol::txn::validate(&txn, &ids.trust()?, &validation, now())?.txn().to_owned())
}

// ---- the chain ----

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: String,
}

async fn call(client: &ClientWithMiddleware, url: &str, txn: Option<&str>) -> Result<Answer, Error> {
    let mut request = client.post(url);
    if let Some(txn) = txn {
        request = request.with_extension(TxnToken(txn.to_owned()));
    }
    let response = request.send().await?;
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
    let ids = IdentityServer::start().await?;
    let partner_api = start_partner().await?;
    let ledger = start_ledger(&ids).await?;
    let billing = start_billing(&ids, &ledger).await?;
    let orders = start_orders(&ids, billing.clone(), partner_api.clone()).await?;
    println!("identity server and Transaction Token Service for spiffe://prod.example: {}", ids.base);
    println!("orders (axum) {orders} | billing (actix-web) {billing} | ledger (axum, mTLS) {ledger}");
    println!("partner.example shipping service {partner_api}\n");
    let in_domain = [orders.as_str(), billing.as_str()];

    println!("== front: the user's access token -> a Txn-Token from the Transaction Token Service");
    let front_signer = ids.enroll_from_projected_token().await?;
    let txn = ids
        .txn_token(
            &front_signer,
            TxnTokenRequest::for_access_token(ids.user_access_token()?, "orders.purchase")
                .request_details(json!({"action": "purchase", "order": "7d1f"})),
        )
        .await?;
    let verified = wimse_core::protocol::txn::validate(
        &txn,
        &ids.trust()?,
        &TxnTokenValidation::new("spiffe://prod.example".parse()?),
        now(),
    )?;
    println!("[front]   Txn-Token for {} | txn {} purpose {}", verified.subject(), verified.txn(), verified.scope());
    let summary = format!("txn {} purpose orders.purchase", verified.txn());
    let first_txn = verified.txn().to_owned();

    println!("\n== front -> orders -> billing -> ledger, with the Txn-Token");
    let front = client(front_signer.clone(), &in_domain);
    let Answer { status, body, .. } = call(&front, &format!("{orders}/orders"), Some(&txn)).await?;
    println!("[front]   {status} {body}");
    expect(status == 200, "the chain succeeds")?;
    expect(body.contains(&format!("billing saw {summary}")), "billing verified the same transaction")?;
    expect(
        body.contains("ledger recorded it for spiffe://prod.example/billing (user alice)"),
        "the mTLS hop authenticated billing and verified the transaction",
    )?;
    expect(body.contains("partner.example saw no Txn-Token"), "the Txn-Token did not cross to partner.example")?;

    println!("\n== front -> nginx -> inventory (Python, behind the wimse gateway) -> orders, with the Txn-Token");
    gateway_hop(&ids, &orders, front_signer.clone(), &txn).await?;

    println!("\n== front -> orders -> billing, the second hop with an HTTP signature and a signed response");
    let Answer { status, body, .. } = call(&front, &format!("{orders}/orders-signed"), Some(&txn)).await?;
    println!("[front]   {status} {body}");
    expect(status == 200, "the mixed chain succeeds")?;
    expect(
        body.contains(&format!("billing saw {summary}")),
        "the Txn-Token arrived unchanged, covered by the signature",
    )?;

    println!("\n== front -> orders/refunds with the purchase transaction (the route requires orders.refund)");
    let Answer { status, body, .. } = call(&front, &format!("{orders}/refunds"), Some(&txn)).await?;
    println!("[front]   {status} {body}");
    expect(
        status == 403 && body.contains("txn_scope_denied"),
        "a hop whose policy requires another purpose answers 403 txn_scope_denied",
    )?;

    println!("\n== front -> orders with a Txn-Token front signed itself (bound by tth, wrong signer)");
    let kid =
        ids.trust()?.get(&"spiffe://prod.example".parse()?).and_then(|a| a.keys().first()?.kid().map(str::to_owned));
    let own_key = front_signer.credentials()?.key().clone().with_kid(kid.unwrap_or_default());
    let forged = wimse_core::protocol::txn::TxnTokenIssuer::new(own_key, &"spiffe://prod.example".parse()?)
        .issue(&wimse_core::protocol::txn::NewTxnToken::new("alice", "orders.refund").requested_by(FRONT), now())?;
    let Answer { status, body, .. } = call(&front, &format!("{orders}/refunds"), Some(&forged)).await?;
    println!("[front]   {status} {body}");
    expect(status == 400 && body.contains("invalid_txn_token_signature"), "the forged Txn-Token is refused")?;

    println!("\n== front -> orders without a Txn-Token");
    let Answer { status, body, .. } = call(&front, &format!("{orders}/orders"), None).await?;
    println!("[front]   {status} {body}");
    expect(status == 403 && body.contains("missing_txn_token"), "orders requires a transaction")?;

    println!("\n== partner.example/ns/web: JWT-SVID -> token exchange -> orders, across trust domains");
    let partner_signer = ids.partner_exchange().await?;
    // The partner starts its own transaction (a self-signed subject token) at prod.example's TTS.
    let partner_txn =
        ids.txn_token(&partner_signer, TxnTokenRequest::self_signed_for("partner.example", "orders.purchase")).await?;
    let partner = client(partner_signer, &in_domain);
    let Answer { status, body, .. } = call(&partner, &format!("{orders}/orders"), Some(&partner_txn)).await?;
    println!("[partner] {status} {body}");
    expect(status == 200, "the partner's exchanged WIT and its own transaction are accepted")?;

    println!("\n== intruder (valid WIT, a copied valid Txn-Token, not allowed by orders' policy) -> orders");
    let intruder = client(ids.enroll("spiffe://prod.example/intruder").await?, &in_domain);
    let Answer { status, body, .. } = call(&intruder, &format!("{orders}/orders"), Some(&txn)).await?;
    println!("[intruder] {status} {body}");
    expect(status == 403 && body.contains("policy_denied"), "orders refuses the intruder with 403")?;

    println!("\n== front -> billing directly (billing only accepts orders)");
    let Answer { status, body, .. } = call(&front, &format!("{billing}/charge"), Some(&txn)).await?;
    println!("[front]   {status} {body}");
    expect(status == 403, "billing refuses front")?;

    println!("\n== an unsigned request -> orders");
    let anonymous = ClientBuilder::new(reqwest::Client::new()).build();
    let Answer { status, challenge, .. } = call(&anonymous, &format!("{orders}/orders"), None).await?;
    println!("[anonymous] {status} WWW-Authenticate: {}", challenge.as_deref().unwrap_or("-"));
    expect(status == 401 && challenge.as_deref() == Some("WPT"), "orders asks for credentials")?;

    println!("\n== agents: alice asks the planner agent to act for her; it hands booking to the booker agent");
    let agents_txn = agent_pass(&ids).await?;

    println!("\n== the chain again, every workload's WIT from a node agent (SPIFFE Workload API, WIT-SVIDs)");
    let _agent = ids.start_agent().await?;
    let ledger = start_ledger(&ids).await?;
    let billing = start_billing(&ids, &ledger).await?;
    let orders = start_orders(&ids, billing.clone(), partner_api).await?;
    let front_signer = ids.enroll(FRONT).await?;
    let txn = ids
        .txn_token(&front_signer, TxnTokenRequest::for_access_token(ids.user_access_token()?, "orders.purchase"))
        .await?;
    let front = client(front_signer, &[orders.as_str(), billing.as_str()]);
    let Answer { status, body, .. } = call(&front, &format!("{orders}/orders"), Some(&txn)).await?;
    println!("[front]   {status} {body}");
    expect(status == 200, "the chain succeeds with WIT-SVIDs from the agent")?;
    expect(body.contains("ledger recorded it for spiffe://prod.example/billing"), "every hop verified")?;
    _agent.abort();
    let _ =
        std::fs::remove_dir_all(std::env::temp_dir().join(format!("wimse-call-chain-{}-agent", std::process::id())));

    println!("\n== the audit logs: every service's decisions, hash-chained and signed; one transaction traced");
    ids.audit.finish(&[&first_txn, &agents_txn]).await?;

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
