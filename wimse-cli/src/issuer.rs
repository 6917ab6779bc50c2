//! `wimse issuer serve`: the identity server, from a configuration file, with the signals an
//! operator expects; `wimse issuer validate`: the same file checked without starting.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tower::ServiceExt as _;
use wimse_core::time::SystemClock;
use wimse_issuer::{IdentityServer, load_config};

use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (JSON; see `wimse_issuer::IssuerConfig`).
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on. Port 0 picks a free port; the address is printed.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// After SIGTERM or SIGINT, how long requests in flight may take to finish, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` (key store reachable, signing
    /// keys loaded) on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM), read again whenever the file changes.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen beyond loopback without TLS (behind a proxy that terminates TLS). Without it, a
    /// non-loopback `--listen` needs `--tls-cert` and `--tls-key`.
    #[arg(long)]
    allow_plaintext: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// The configuration file to check.
    #[arg(long)]
    config: PathBuf,
}

/// Reads and checks `path` as `serve` would, without touching the key store.
fn checked_config(path: &Path) -> Result<wimse_issuer::IssuerConfig, String> {
    let config = load_config(path).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(config)
}

/// `wimse issuer validate`: exit 0 and a line saying so, or the refusal (exit 2).
pub(crate) fn validate(args: ValidateArgs) -> CliResult {
    let config = checked_config(&args.config)?;
    println!("{}: a valid identity-server configuration for {}", args.config.display(), config.trust_domain);
    Ok(ExitCode::SUCCESS)
}

/// An identity server from `config`, its key maintenance started, its router, and the feed of
/// its revocation signals (`signals`; polling while it lives).
async fn open(config: wimse_issuer::IssuerConfig) -> Result<Current, String> {
    if config.signals.as_ref().is_some_and(|signals| signals.poll_url.is_none()) {
        return Err("signals.poll_url: `wimse issuer serve` polls its SETs (it has no push route)".into());
    }
    let signals = config.signals.as_ref().map(wimse_reqwest::signals_from_settings).transpose();
    let signals = signals.map_err(|e| format!("signals: {e}"))?;
    let server = Arc::new(IdentityServer::open(config, SystemClock).await.map_err(|e| e.to_string())?);
    // Rotation and replica synchronisation run on a timer, not on traffic; they stop when the
    // server is dropped (replaced by a reload, once its last request has finished).
    server.start_maintenance();
    Ok(Current { server: server.clone(), router: wimse_issuer::router(server), _signals: signals })
}

/// Serves until SIGTERM or SIGINT (then drains for `--drain-timeout`); SIGHUP reloads the file.
pub(crate) fn serve(args: ServeArgs) -> CliResult {
    // Refuse to start on a bad configuration, naming the field.
    let config = checked_config(&args.config)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let opened = open(config).await?;
        let server = opened.server.clone();
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        // Client WICs (renewal) are asked for when a client renews with one: verified against
        // this server's WIC authority, followed every 2 s (a replaced key store has a new one).
        let client_wics = server.renews_with_wics().then(|| {
            wimse_core::protocol::wic::WicAnchors::with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        });
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(chain), Some(key)) => {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let certificate = crate::tls_listener::ReloadingCertificate::new(chain.clone(), key.clone(), provider)?;
                Some(crate::tls_listener::server_config(certificate, client_wics.clone())?)
            }
            _ => None,
        };
        if tls.is_none() && !address.ip().is_loopback() && !args.allow_plaintext {
            return Err(format!(
                "refusing to listen on {address} without TLS: give --tls-cert and --tls-key, or --allow-plaintext behind a proxy that terminates TLS"
            ));
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (epoch, sequence) = server.key_state();
        tracing::info!(trust_domain = %server.trust_domain(), %address, %epoch, sequence, tls = tls.is_some(), summary = %server.describe(), "wimse issuer: started");
        println!("wimse issuer for {} listening on {scheme}://{address}", server.trust_domain());
        // Each request goes to the configuration current when it arrives.
        let current = Arc::new(RwLock::new(opened));
        if let Some(anchors) = client_wics.filter(|_| tls.is_some()) {
            follow_wic_authority(current.clone(), anchors).await;
        }
        if let Some(listen) = &args.metrics_listen {
            let probed = current.clone();
            let ready = move || {
                let server = probed.read().map(|c| c.server.clone()).unwrap_or_else(|e| e.into_inner().server.clone());
                async move { server.ready().await.map_err(|e| e.to_string()) }
            };
            let address = crate::ops::serve(listen, ready).await?;
            println!("wimse issuer metrics and health on http://{address}");
        }
        let serving = current.clone();
        let app = Router::new().fallback_service(tower::service_fn(move |request: axum::extract::Request| {
            let router =
                serving.read().map(|c| c.router.clone()).unwrap_or_else(|e| e.into_inner().router.clone());
            router.oneshot(request)
        }));
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut hangup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let path = args.config.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = terminate.recv() => break,
                    _ = hangup.recv() => reload(&path, &current).await,
                }
            }
            tracing::info!("wimse issuer: stopping; letting requests in flight finish");
            let _ = stop.send(true);
        });
        let mut drain = stopping.clone();
        let stop_accepting = async move {
            let _ = drain.wait_for(|stop| *stop).await;
        };
        let served: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> = match tls {
            Some(settings) => Box::pin(async move {
                crate::tls_listener::serve(listener, settings, app, stop_accepting).await;
                Ok(())
            }),
            None => Box::pin(
                axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                    .with_graceful_shutdown(stop_accepting)
                    .into_future(),
            ),
        };
        let deadline = Duration::from_secs(args.drain_timeout);
        let mut stopped = stopping;
        let overdue = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(deadline).await;
        };
        tokio::select! {
            served = served => served.map_err(|e| e.to_string())?,
            () = overdue => tracing::warn!(?deadline, "wimse issuer: requests still running after the drain timeout; stopping anyway"),
        }
        tracing::info!("wimse issuer: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Keeps `anchors` on the current server's WIC authority: set now, then checked every 2 s.
async fn follow_wic_authority(current: Arc<RwLock<Current>>, anchors: wimse_core::protocol::wic::WicAnchors) {
    use rustls::pki_types::pem::PemObject as _;
    let update = move || {
        let server = current.read().map(|c| c.server.clone()).unwrap_or_else(|e| e.into_inner().server.clone());
        let authority = server.wic_bundle_pem().ok().and_then(|pem| {
            rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().ok()
        });
        match authority {
            Some(certificates) => {
                if let Err(error) = anchors.set(server.trust_domain().clone(), certificates) {
                    tracing::warn!(%error, "wimse issuer: the WIC authority cannot verify client WICs");
                }
            }
            None => anchors.remove(server.trust_domain()),
        }
    };
    update();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            update();
        }
    });
}

/// The server the requests that arrive now go to.
struct Current {
    server: Arc<IdentityServer>,
    router: Router,
    /// Polls the revocation signals while this configuration serves.
    _signals: Option<wimse_reqwest::SignalFeed>,
}

/// SIGHUP: the file read and checked again, and a server on it swapped in for the requests
/// that arrive next; a file that does not load keeps the running configuration.
async fn reload(path: &Path, current: &RwLock<Current>) {
    tracing::info!(file = %path.display(), "wimse issuer: SIGHUP; reloading the configuration");
    let opened = match checked_config(path) {
        Ok(config) => open(config).await,
        Err(error) => Err(error),
    };
    match opened {
        Ok(opened) => {
            let (domain, summary) = (opened.server.trust_domain().clone(), opened.server.describe());
            if let Ok(mut current) = current.write() {
                *current = opened;
            }
            tracing::info!(trust_domain = %domain, summary = %summary, "wimse issuer: configuration reloaded");
        }
        Err(error) => tracing::error!(%error, "wimse issuer: new configuration refused; keeping the running one"),
    }
}

#[derive(Debug, Args)]
pub(crate) struct ReplaceArgs {
    /// The identity server's configuration file (its key store or PostgreSQL).
    #[arg(long)]
    config: PathBuf,
    /// Do not ask: every credential issued before stops verifying. Without it the command asks
    /// on a terminal for the trust domain, and refuses when there is none to ask on.
    #[arg(long)]
    yes: bool,
    /// The key-encryption key is lost: no configured KEK opens the stored keys. Writes a new
    /// key store (sealed with the configured, new KEK) over the unreadable one; refused when
    /// the stored keys do open. Stop every replica first: one still running with the lost KEK
    /// in memory keeps signing with the old keys until it is restarted with the new one.
    #[arg(long)]
    kek_lost: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    step: KeyStep,
    /// The identity server's configuration file (its key store or PostgreSQL).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum KeyStep {
    /// Every stored signing key: `kid`, `created`, `active_from`, `role` (active, prepared,
    /// scheduled, previous).
    Status,
    /// Publish a new signing key that signs nothing until `activate`. Refused while another
    /// key waits.
    Prepare,
    /// Make the waiting key sign from now on. Refused until it has been published for two
    /// refresh hints, unless `--force`.
    Activate {
        /// Activate even if verifiers that refresh on the hint may not have the key yet
        /// (they then fetch it on the first unknown `kid`).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ResealArgs {
    /// The identity server's configuration file.
    #[arg(long)]
    config: PathBuf,
}

/// Runs `step` on an identity server opened from `config` (its key store read, maintenance
/// run once) in a runtime of its own.
fn with_server<T>(config: &Path, step: impl AsyncFnOnce(IdentityServer) -> Result<T, String>) -> Result<T, String> {
    let config = checked_config(config)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let server = IdentityServer::open(config, SystemClock).await.map_err(|e| e.to_string())?;
        step(server).await
    })
}

/// `wimse issuer keys status|prepare|activate`: prints the outcome as JSON.
pub(crate) fn keys(args: KeysArgs) -> CliResult {
    let config = args.config.ok_or("--config is required")?;
    let output = with_server(&config, async |server| {
        let show = |e: wimse_core::Error| e.to_string();
        Ok(match args.step {
            KeyStep::Status => serde_json::json!({"keys": server.key_statuses().await.map_err(show)?}),
            KeyStep::Prepare => serde_json::json!({"prepared": server.prepare_key().await.map_err(show)?}),
            KeyStep::Activate { force } => {
                serde_json::json!({"activated": server.activate_key(force).await.map_err(show)?})
            }
        })
    })?;
    println!("{output}");
    Ok(ExitCode::SUCCESS)
}

/// `wimse issuer reseal`: prints `{"resealed": bool}`.
pub(crate) fn reseal(args: ResealArgs) -> CliResult {
    let config = checked_config(&args.config)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let resealed = runtime.block_on(IdentityServer::reseal_key_store(&config)).map_err(|e| e.to_string())?;
    println!("{}", serde_json::json!({"resealed": resealed}));
    Ok(ExitCode::SUCCESS)
}

/// Asks for the trust domain on the terminal; `Err` unless it is typed back.
fn confirm(trust_domain: &str) -> Result<(), String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        return Err(
            "replace-key-store drops every key: every credential issued before stops verifying; pass --yes to confirm"
                .into(),
        );
    }
    eprint!(
        "This drops every signing key of {trust_domain}: every WIT and WIC issued before stops verifying.\nType the trust domain to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() == trust_domain { Ok(()) } else { Err("not confirmed; nothing was changed".into()) }
}

/// Writes a new key store over the configured one and prints `{"old_epoch", "new_epoch"}`.
pub(crate) fn replace_key_store(args: ReplaceArgs) -> CliResult {
    let config = load_config(&args.config).map_err(|e| e.to_string())?;
    if !args.yes {
        confirm(&config.trust_domain)?;
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let (old_epoch, new_epoch) = if args.kek_lost {
            IdentityServer::replace_lost_key_store(config, SystemClock).await.map_err(|e| e.to_string())?
        } else {
            let server = IdentityServer::open(config, SystemClock).await.map_err(|e| e.to_string())?;
            server.replace_key_store().await.map_err(|e| e.to_string())?
        };
        println!("{}", serde_json::json!({"old_epoch": old_epoch, "new_epoch": new_epoch}));
        Ok(ExitCode::SUCCESS)
    })
}
