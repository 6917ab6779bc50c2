//! `wimse`: keys, Workload Identity Tokens, Workload Proof Tokens, and checking WIMSE requests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod agent;
mod audit;
mod exchange;
mod files;
mod gateway;
mod inspect;
mod issuer;
mod keys;
mod ops;
#[cfg(feature = "otel")]
mod otel;
mod sign;
mod sign_response;
mod tls_listener;
mod tokens;
mod txn;
mod verify;
mod verify_response;
mod wic;

/// WIMSE workload identity from the command line (identifier-03, workload-creds-02, wpt-02).
#[derive(Debug, Parser)]
#[command(name = "wimse", version, about, propagate_version = true)]
struct Cli {
    /// How the servers log to standard error: `text` (coloured only on a terminal) or `json`
    /// (one object per line). Default `text`, or `WIMSE_LOG_FORMAT`.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate and convert keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Workload Identity Tokens.
    #[command(subcommand)]
    Wit(WitCommand),
    /// Workload Proof Tokens.
    #[command(subcommand)]
    Wpt(WptCommand),
    /// Workload Identity Certificates (X.509, for mutual TLS).
    #[command(subcommand)]
    Wic(WicCommand),
    /// Run an identity server.
    #[command(subcommand)]
    Issuer(IssuerCommand),
    /// Run a node agent (the SPIFFE Workload API on a Unix socket), or fetch from one.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Run a gateway: forward-auth for nginx/Caddy/Traefik, reverse proxy, egress signing proxy.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Exchange a token of another system for a WIT (RFC 8693).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Transaction Tokens: issue (locally, or from a Transaction Token Service), inspect, verify.
    #[command(subcommand)]
    Txn(TxnCommand),
    /// Trust bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Tamper-evident audit logs: verify them, trace a transaction across services' logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Decode a token and explain it. Verifies nothing.
    Inspect(inspect::InspectArgs),
    /// Verify the WIT + WPT (or WIT + HTTP signature) of a raw HTTP/1.1 request; prints JSON, exits 1 on rejection.
    Verify(verify::VerifyArgs),
    /// Add a WIT and a fresh WPT (or an HTTP message signature) to a raw HTTP/1.1 request.
    Sign(sign::SignArgs),
    /// Verify the signature of a raw HTTP/1.1 response to a signed request; prints JSON, exits 1 on rejection.
    VerifyResponse(verify_response::VerifyResponseArgs),
    /// Sign a raw HTTP/1.1 response to a signed request, as the server (its WIT, `wimse-req-nonce`).
    SignResponse(sign_response::SignResponseArgs),
}

#[derive(Debug, Subcommand)]
enum TxnCommand {
    /// Obtain a Txn-Token from a Transaction Token Service (`--tts`), or sign one locally as a
    /// TTS would (`--tts-key`).
    Issue(Box<txn::IssueArgs>),
    /// Decode a Txn-Token and explain it. Verifies nothing.
    Inspect(txn::InspectArgs),
    /// Verify a Txn-Token against the TTS keys; prints JSON, exits 1 on rejection.
    Verify(txn::VerifyArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check a log's chain and checkpoints against the audit keys; says where it was changed,
    /// exits 1 if it was.
    Verify(audit::VerifyArgs),
    /// Collect one transaction's records from many services' logs: who called whom, with which
    /// proof, for whom, decided how; as text, and as a picture (DOT, SVG).
    Trace(audit::TraceArgs),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Generate a private key (JWK).
    Generate(keys::GenerateArgs),
    /// Print the public JWK of a private key.
    Public(keys::PublicArgs),
}

#[derive(Debug, Subcommand)]
enum WitCommand {
    /// Issue a WIT, as an identity server would.
    Issue(tokens::WitIssueArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Exchange a subject token at an identity server for a WIT bound to a key.
    Exchange(exchange::ExchangeArgs),
    /// Obtain an access token from any RFC 7523 authorization server with a platform token as
    /// the assertion (optionally DPoP-bound).
    Assert(exchange::AssertArgs),
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Fetch and check a trust bundle (SPIFFE bundle or JWKS).
    Fetch(exchange::FetchArgs),
}

#[derive(Debug, Subcommand)]
enum IssuerCommand {
    /// Serve the identity server's HTTP API with a configuration file.
    ///
    /// SIGTERM and SIGINT stop accepting and let requests in flight finish (`--drain-timeout`),
    /// then exit 0; SIGHUP reloads the file for the requests that arrive next (a file that does
    /// not load is refused and the running configuration kept, with a log line saying why).
    /// Exits 2 on an invalid configuration.
    Serve(issuer::ServeArgs),
    /// Check a configuration file without starting (exit 0, or 2 naming the problem).
    Validate(issuer::ValidateArgs),
    /// Replace the key store on purpose (after a compromise): a new epoch, new signing keys and
    /// WIC authority; every credential issued before stops verifying. Running replicas follow.
    ReplaceKeyStore(issuer::ReplaceArgs),
    /// On-demand key rotation in two steps, and the keys' status.
    ///
    /// `prepare` publishes a new signing key that signs nothing yet; `activate` makes it sign,
    /// once it has been published for two refresh hints (verifiers have it). Running replicas
    /// follow each step within seconds. Prints JSON.
    Keys(issuer::KeysArgs),
    /// Seal the stored state again with the configured key-encryption key (after a KEK change:
    /// the old one in `postgres.previous_kek_files`). Prints `{"resealed": true|false}`.
    Reseal(issuer::ResealArgs),
}

#[derive(Debug, Subcommand)]
enum GatewayCommand {
    /// Serve the listeners of a gateway configuration file (TOML, or JSON by extension).
    ///
    /// SIGHUP reloads the file (a file that does not build is refused and the running
    /// configuration kept, with a log line saying why); SIGTERM and SIGINT stop accepting and let
    /// requests in flight finish (30 s at most). Exits 2 on an invalid configuration.
    Serve(gateway::ServeArgs),
    /// Check a configuration file without serving: it is built as `serve` would build it
    /// (trust bundles fetched, the gateway's credentials obtained). Exit 0, or 2 naming the
    /// problem.
    Validate(gateway::ServeArgs),
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Serve the SPIFFE Workload API (WIT-SVIDs and X.509-SVIDs) to this machine's workloads.
    ///
    /// SIGTERM and SIGINT stop serving (open streams closed within 5 s), then exit 0; SIGHUP
    /// reloads the file once a new agent on it has its credentials (a file that does not load is
    /// refused and the running configuration kept, with a log line saying why). Exits 3 without a token, 4 when the identity server refuses the agent's token (401), 5
    /// when it refuses every identity (403), 2 on an invalid configuration.
    Serve(agent::ServeArgs),
    /// Fetch this process's SVIDs from a Workload API endpoint and print them (no keys).
    Fetch(agent::FetchArgs),
    /// Check a configuration file without starting (exit 0, or 2 naming the problem).
    Validate(agent::ValidateArgs),
}

#[derive(Debug, Subcommand)]
enum WicCommand {
    /// Create a certificate authority for a trust domain.
    Ca(wic::CaArgs),
    /// Issue a WIC for a workload.
    Issue(wic::IssueArgs),
    /// Verify a WIC chain: identity, trust domain anchors, EKU, expiry (and server name).
    Verify(wic::VerifyArgs),
}

#[derive(Debug, Subcommand)]
enum WptCommand {
    /// Create a WPT for one request.
    New(tokens::WptNewArgs),
}

/// Where a command writes its main output.
#[derive(Debug, Args)]
struct Output {
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

type CliResult = Result<ExitCode, String>;

/// Logs to standard error, filtered by `RUST_LOG`; by default the identity server and the agent log at
/// `info` (start, key creation, rotation, store loss, issuance), other commands only errors
/// (their answer is their output). Colours only when standard error is a terminal, so logs
/// redirected to a file or a collector carry no escape codes. A server (`service`) also exports
/// its spans over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (feature `otel`): the guard
/// returned flushes them when dropped.
fn install_logging(verbose: bool, service: Option<&str>, format: Option<&str>) -> Option<Telemetry> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let default = if verbose { "info" } else { "error" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = match format {
        Some(format) => format == "json",
        None => std::env::var("WIMSE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json().with_current_span(false).boxed()
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).boxed()
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "otel")]
    if let Some(service) = service {
        match otel::layer(service) {
            Ok(Some((export, guard))) => {
                let _ = registry.with(export).try_init();
                return Some(guard);
            }
            Ok(None) => {}
            // Serving matters more than its traces: logged, and the server starts without them.
            Err(error) => eprintln!("wimse: trace export off: {error}"),
        }
    }
    let _ = service;
    let _ = registry.try_init();
    None
}

/// What keeps trace export running (and flushes it when dropped).
#[cfg(feature = "otel")]
type Telemetry = otel::Export;
#[cfg(not(feature = "otel"))]
type Telemetry = ();

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The servers export traces; every identity-server command logs at info by default.
    let service = match &cli.command {
        Command::Issuer(IssuerCommand::Serve(_)) => Some("wimse-issuer"),
        Command::Agent(AgentCommand::Serve(_)) => Some("wimse-agent"),
        Command::Gateway(GatewayCommand::Serve(_)) => Some("wimse-gateway"),
        _ => None,
    };
    let verbose = service.is_some() || matches!(cli.command, Command::Issuer(_));
    let _telemetry = install_logging(verbose, service, cli.log_format.as_deref());
    let result = match cli.command {
        Command::Key(KeyCommand::Generate(args)) => keys::generate(args),
        Command::Key(KeyCommand::Public(args)) => keys::public(args),
        Command::Wit(WitCommand::Issue(args)) => tokens::wit_issue(args),
        Command::Txn(TxnCommand::Issue(args)) => txn::issue(*args),
        Command::Txn(TxnCommand::Inspect(args)) => txn::inspect(args),
        Command::Txn(TxnCommand::Verify(args)) => txn::verify(args),
        Command::Wpt(WptCommand::New(args)) => tokens::wpt_new(args),
        Command::Wic(WicCommand::Ca(args)) => wic::ca(args),
        Command::Wic(WicCommand::Issue(args)) => wic::issue(args),
        Command::Wic(WicCommand::Verify(args)) => wic::verify(args),
        Command::Issuer(IssuerCommand::Serve(args)) => issuer::serve(args),
        Command::Issuer(IssuerCommand::Validate(args)) => issuer::validate(args),
        Command::Issuer(IssuerCommand::ReplaceKeyStore(args)) => issuer::replace_key_store(args),
        Command::Issuer(IssuerCommand::Keys(args)) => issuer::keys(args),
        Command::Issuer(IssuerCommand::Reseal(args)) => issuer::reseal(args),
        Command::Agent(AgentCommand::Serve(args)) => agent::serve(args),
        Command::Agent(AgentCommand::Fetch(args)) => agent::fetch(args),
        Command::Gateway(GatewayCommand::Serve(args)) => gateway::serve(args),
        Command::Gateway(GatewayCommand::Validate(args)) => gateway::validate(args),
        Command::Agent(AgentCommand::Validate(args)) => agent::validate(args),
        Command::Token(TokenCommand::Exchange(args)) => exchange::exchange(args),
        Command::Token(TokenCommand::Assert(args)) => exchange::assert(args),
        Command::Bundle(BundleCommand::Fetch(args)) => exchange::fetch(args),
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(args),
        Command::Audit(AuditCommand::Trace(args)) => audit::trace(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Verify(args) => verify::run(args),
        Command::SignResponse(args) => sign_response::run(args),
        Command::Sign(args) => sign::run(args),
        Command::VerifyResponse(args) => verify_response::run(args),
    };
    result.unwrap_or_else(|message| {
        eprintln!("wimse: {message}");
        ExitCode::from(2)
    })
}
