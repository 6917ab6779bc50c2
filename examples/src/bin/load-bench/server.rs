//! `load-bench serve <framework> <mode>`: one server process. It reads its [`ServerSetup`] from
//! standard input, binds `127.0.0.1:0`, prints `listening <address>` and serves `GET /bench`
//! until it is killed. Authenticated configurations answer with the caller and its proof mode.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use wimse_core::prelude::*;
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WorkloadCertificate, certificates_from_pem, server_config,
};
use wimse_core::replay::{Claim, RedisReplayStore, ReplayClaim, ReplayStore};

use crate::setup::{CLIENT_ID, PROOF_LIFETIME, ReplaySetup, ServerSetup, TRUST_DOMAIN};
use crate::{Error, Framework, Mode};

/// Generous for a loaded loopback Redis: a claim that times out stops the run (503).
const REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How an authenticated server checks its callers.
struct Auth {
    verifier: Verifier,
    policy: Policy,
    tls: Option<rustls::ServerConfig>,
    /// A Redis replay store joins (registers as a replica) before the server says it listens.
    redis: Option<RedisReplayStore>,
}

impl Auth {
    fn new(setup: &ServerSetup, mode: Mode, origin: &str) -> Result<Self, Error> {
        let backend = crate::backend(&setup.backend)?;
        let mut config = VerifierConfig::new().origin(origin).backend(backend).max_wpt_lifetime(PROOF_LIFETIME);
        config = match mode {
            Mode::Wpt => config.only_wpt(),
            Mode::HttpSignature => config.only_http_signatures(),
            Mode::None | Mode::Mtls => config,
        };
        let trust = TrustStore::new().with(
            setup_domain()?,
            TrustAnchors::from_jwks_json(&setup.trust_jwks)?.with_algorithms([Algorithm::ES256]),
        );
        let verifier = Verifier::new(trust, config)?;
        let (verifier, redis) = match &setup.replay {
            ReplaySetup::Memory(capacity) => (verifier.replay_store(InMemoryReplayStore::new(*capacity)), None),
            ReplaySetup::MemoryHandOff(capacity) => {
                (verifier.replay_store(HandedOff(Arc::new(InMemoryReplayStore::new(*capacity)))), None)
            }
            ReplaySetup::Redis(url) => {
                let store = RedisReplayStore::new(url)?.timeout(REDIS_TIMEOUT);
                (verifier.replay_store(store.clone()), Some(store))
            }
            ReplaySetup::Cluster(nodes) => {
                let store = RedisReplayStore::cluster(nodes)?.timeout(REDIS_TIMEOUT);
                (verifier.replay_store(store.clone()), Some(store))
            }
        };
        let policy = Policy::named("load-bench").allow(Rule::exact(CLIENT_ID)?);
        let tls = if mode == Mode::Mtls {
            let anchors = WicAnchors::new();
            anchors.set(setup_domain()?, certificates_from_pem(&setup.wic_ca_pem)?)?;
            let certificate = WorkloadCertificate::from_pem(&setup.server_chain_pem, &setup.server_key_pem)?;
            Some(server_config(&anchors, CurrentCertificate::new(&certificate, anchors.provider().clone())?)?)
        } else {
            None
        };
        Ok(Self { verifier, policy, tls, redis })
    }
}

/// A store that answers from a task of its own: the request's task waits for it as for Redis's
/// answer, so this row's cost over the in-memory one is what waiting costs a request.
#[derive(Debug)]
struct HandedOff(Arc<InMemoryReplayStore>);

impl ReplayStore for HandedOff {
    fn claim(&self, claim: &ReplayClaim, now: u64) -> Claim {
        let (store, claim) = (self.0.clone(), *claim);
        Claim::pending(async move {
            tokio::spawn(async move { store.claim(&claim, now).await }).await.unwrap_or_else(|_| {
                Err(wimse_core::Error::with_detail(ErrorKind::ReplayCacheUnavailable, "the claiming task failed"))
            })
        })
    }
}

fn setup_domain() -> Result<TrustDomain, Error> {
    Ok(TRUST_DOMAIN.parse()?)
}

async fn anonymous() -> &'static str {
    "anonymous"
}

async fn whoami_axum(wimse_axum::Caller(caller): wimse_axum::Caller) -> String {
    format!("{} {}", caller.id(), caller.method().name())
}

async fn whoami_actix(caller: wimse_actix::Caller) -> String {
    format!("{} {}", caller.id(), caller.method().name())
}

pub(crate) fn main(mut args: impl Iterator<Item = String>) -> Result<(), Error> {
    let usage = "usage: load-bench serve <axum|actix-web> <none|wpt|http-signature|mtls> (setup JSON on stdin)";
    let framework = args.next().as_deref().and_then(Framework::parse).ok_or(usage)?;
    let mode = args.next().as_deref().and_then(Mode::parse).ok_or(usage)?;
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let setup: ServerSetup = serde_json::from_str(&input)?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let auth = match mode {
        Mode::None => None,
        _ => Some(Auth::new(&setup, mode, &format!("{}://{address}", mode.scheme()))?),
    };
    let workers = setup.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    match framework {
        Framework::Axum => serve_axum(listener, auth, workers),
        Framework::Actix => serve_actix(listener, auth, workers),
    }
}

/// Says the server is ready once its Redis replay store (if any) joined, as a deployment does
/// before reporting ready: a replica that has not joined refuses claims. Runs on the server's
/// own runtime, where the store's heartbeat then lives. The listener is bound already:
/// connections wait in its backlog until the server runs.
async fn ready(listener: &TcpListener, auth: Option<&Auth>) -> Result<(), Error> {
    if let Some(store) = auth.and_then(|auth| auth.redis.as_ref()) {
        store.join().await?;
    }
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    Ok(())
}

/// axum on a multi-threaded tokio runtime with `workers` workers.
fn serve_axum(listener: TcpListener, auth: Option<Auth>, workers: usize) -> Result<(), Error> {
    use axum::Router;
    use axum::routing::get;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    runtime.block_on(async move {
        ready(&listener, auth.as_ref()).await?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let Some(auth) = auth else {
            return Ok(axum::serve(listener, Router::new().route("/bench", get(anonymous))).await?);
        };
        let app = Router::new()
            .route("/bench", get(whoami_axum))
            .layer(wimse_axum::WimseLayer::new(auth.verifier).policy(auth.policy));
        match auth.tls {
            Some(tls) => wimse_axum::tls::serve(listener, Arc::new(tls), app).await?,
            None => axum::serve(listener, app).await?,
        }
        Ok(())
    })
}

/// actix-web with `workers` workers.
fn serve_actix(listener: TcpListener, auth: Option<Auth>, workers: usize) -> Result<(), Error> {
    use actix_web::{App, HttpServer, web};
    actix_web::rt::System::new().block_on(async move {
        ready(&listener, auth.as_ref()).await?;
        let server = match auth {
            None => HttpServer::new(|| App::new().route("/bench", web::get().to(anonymous)))
                .workers(workers)
                .listen(listener)?
                .run(),
            Some(auth) => {
                let config = wimse_actix::Pipeline::new(auth.verifier).policy(auth.policy);
                let server = HttpServer::new(move || {
                    App::new()
                        .wrap(wimse_actix::WimseAuth::new(config.clone()))
                        .route("/bench", web::get().to(whoami_actix))
                })
                .workers(workers);
                match auth.tls {
                    Some(tls) => server.on_connect(wimse_actix::tls::on_connect).listen_rustls_0_23(listener, tls)?,
                    None => server.listen(listener)?,
                }
                .run()
            }
        };
        server.await?;
        Ok(())
    })
}
