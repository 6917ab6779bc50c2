//! `wimse wic …`: Workload Identity Certificates.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use serde_json::json;
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::protocol::wic::{
    WicAnchors, WicAuthority, WicClientVerifier, WicOptions, WicServerVerifier, WicUsage, certificates_from_pem,
    wimse_error, workload_id_of,
};

use crate::CliResult;
use crate::files::{now_or, read_text};

fn write(path: &PathBuf, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn domain(value: &str) -> Result<TrustDomain, String> {
    TrustDomain::parse(value).map_err(|e| format!("trust domain {value}: {e} (write it as scheme://name)"))
}

#[derive(Debug, Args)]
pub(crate) struct CaArgs {
    /// The trust domain, e.g. spiffe://prod.example.
    #[arg(long)]
    trust_domain: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 30 * 86_400)]
    ttl: u64,
    /// As of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
    /// Where to write the CA certificate (PEM).
    #[arg(long)]
    out_cert: PathBuf,
    /// Where to write the CA private key (PEM).
    #[arg(long)]
    out_key: PathBuf,
}

pub(crate) fn ca(args: CaArgs) -> CliResult {
    let ca = WicAuthority::new(domain(&args.trust_domain)?, now_or(args.now), args.ttl).map_err(|e| e.to_string())?;
    let (cert, key) = ca.to_pem();
    write(&args.out_cert, &cert)?;
    crate::files::write_private(Some(&args.out_key), &key)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Usage {
    Client,
    Server,
    Both,
}

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// The CA certificate (PEM).
    #[arg(long)]
    ca_cert: PathBuf,
    /// The CA private key (PEM).
    #[arg(long)]
    ca_key: PathBuf,
    /// The CA's trust domain.
    #[arg(long)]
    trust_domain: String,
    /// The workload identifier.
    #[arg(long)]
    sub: String,
    /// Extended key usage.
    #[arg(long, value_enum, default_value = "client")]
    usage: Usage,
    /// A DNS name SAN for a server certificate (repeatable).
    #[arg(long = "dns")]
    dns_names: Vec<String>,
    /// An IP address SAN for a server certificate (repeatable).
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// As of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
    /// Where to write the certificate chain (PEM, leaf first).
    #[arg(long)]
    out_cert: PathBuf,
    /// Where to write the private key (PKCS#8 PEM).
    #[arg(long)]
    out_key: PathBuf,
}

pub(crate) fn issue(args: IssueArgs) -> CliResult {
    let ca = WicAuthority::from_pem(domain(&args.trust_domain)?, &read_text(&args.ca_cert)?, &read_text(&args.ca_key)?)
        .map_err(|e| e.to_string())?;
    let usage = match args.usage {
        Usage::Client => WicUsage::Client,
        Usage::Server => WicUsage::Server,
        Usage::Both => WicUsage::ClientAndServer,
    };
    let mut options = WicOptions::new(usage, now_or(args.now), args.ttl);
    for name in args.dns_names {
        options = options.dns_name(name);
    }
    for ip in args.ips {
        options = options.ip_address(ip);
    }
    let sub = WorkloadId::parse(&args.sub).map_err(|e| format!("--sub: {e}"))?;
    let certificate = ca.issue(&sub, &options).map_err(|e| e.to_string())?;
    let (chain, key) = certificate.to_pem();
    write(&args.out_cert, &chain)?;
    crate::files::write_private(Some(&args.out_key), &key)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The certificate chain to check (PEM, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// CA certificate of a trust domain, as DOMAIN=PEM_FILE (repeatable).
    #[arg(long = "trust-anchor", value_name = "DOMAIN=FILE", required = true)]
    trust_anchors: Vec<String>,
    /// Check it as a client (clientAuth) or a server (serverAuth) certificate.
    #[arg(long, value_enum, default_value = "client")]
    usage: Usage,
    /// For a server certificate: the DNS name or IP address the client connects to.
    #[arg(long)]
    server_name: Option<String>,
    /// The workload the certificate must name (required for a server certificate, unless
    /// `--any-workload`).
    #[arg(long)]
    expect: Option<String>,
    /// For a server certificate: accept any workload of a trusted domain for that name (weaker:
    /// a DNS name in a WIC proves only that some trusted workload obtained it).
    #[arg(long)]
    any_workload: bool,
    /// As of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
}

fn check(args: &VerifyArgs) -> Result<WorkloadId, (String, String)> {
    let usage_error = |m: String| ("invalid_configuration".to_owned(), m);
    let anchors = WicAnchors::new();
    for spec in &args.trust_anchors {
        let (name, file) =
            spec.split_once('=').ok_or_else(|| usage_error(format!("--trust-anchor {spec}: expected DOMAIN=FILE")))?;
        let cas = certificates_from_pem(&read_text(file.as_ref()).map_err(usage_error)?)
            .map_err(|e| usage_error(e.to_string()))?;
        anchors.set(domain(name).map_err(usage_error)?, cas).map_err(|e| usage_error(e.to_string()))?;
    }
    let chain = certificates_from_pem(&read_text(&args.cert).map_err(usage_error)?)
        .map_err(|e| (e.reason().to_owned(), e.to_string()))?;
    let leaf = chain.first().ok_or_else(|| usage_error("no certificate in the file".into()))?;
    let id = workload_id_of(leaf).map_err(|e| (e.reason().to_owned(), e.to_string()))?;
    if let Some(expected) = &args.expect
        && id.as_str() != expected
    {
        return Err(("unexpected_peer".into(), format!("the certificate names {id}")));
    }
    let now = UnixTime::since_unix_epoch(Duration::from_secs(now_or(args.now)));
    let refused = |e: rustls::Error| match wimse_error(&e) {
        Some(inner) => (inner.reason().to_owned(), inner.to_string()),
        None => ("certificate_refused".to_owned(), e.to_string()),
    };
    match args.usage {
        Usage::Client | Usage::Both => {
            WicClientVerifier::new(anchors.clone()).verify_client_cert(leaf, &chain[1..], now).map_err(refused)?;
        }
        Usage::Server => {}
    }
    if matches!(args.usage, Usage::Server | Usage::Both) {
        let name = args
            .server_name
            .as_deref()
            .ok_or_else(|| usage_error("--server-name is needed for a server certificate".into()))?;
        let name = ServerName::try_from(name.to_owned()).map_err(|e| usage_error(format!("--server-name: {e}")))?;
        let verifier = match (&args.expect, args.any_workload) {
            (Some(expected), _) => {
                let expected = WorkloadId::parse(expected).map_err(|e| usage_error(format!("--expect: {e}")))?;
                WicServerVerifier::new(anchors).expect(move |_| Some(expected.clone()))
            }
            (None, true) => WicServerVerifier::new(anchors).any_trusted_workload(),
            (None, false) => {
                return Err(usage_error(
                    "--expect is needed for a server certificate: the workload that must serve that name (or --any-workload)"
                        .into(),
                ));
            }
        };
        verifier.verify_server_cert(leaf, &chain[1..], &name, &[], now).map_err(refused)?;
    }
    Ok(id)
}

pub(crate) fn verify(args: VerifyArgs) -> CliResult {
    let (out, code) = match check(&args) {
        Ok(id) => (json!({"verified": true, "id": id, "trust_domain": id.trust_domain()}), ExitCode::SUCCESS),
        Err((reason, message)) => (json!({"verified": false, "reason": reason, "message": message}), ExitCode::FAILURE),
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(code)
}
