//! The deployment under test: an identity server's key and WIC authority (held by the driver),
//! the client's credentials, and what each server process is given on its standard input.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use wimse_core::prelude::*;
use wimse_core::protocol::wic::{WicAnchors, WicAuthority, WicOptions, WicUsage, WorkloadCertificate};

use crate::{Error, Options};

/// The calling workload.
pub(crate) const CLIENT_ID: &str = "spiffe://bench.example/client";
/// The server workload (the identity in its WIC).
pub(crate) const SERVER_ID: &str = "spiffe://bench.example/server";
pub(crate) const TRUST_DOMAIN: &str = "spiffe://bench.example";
/// Proofs are all created before the timed phase, so they must outlive it.
pub(crate) const PROOF_LIFETIME: u64 = 300;

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a server process needs, sent as JSON on its standard input (no key material on disk).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ServerSetup {
    /// The identity server's public keys (JWKS) for WIT validation.
    pub(crate) trust_jwks: String,
    /// The WIC authority's certificate (PEM): the mTLS trust anchor.
    pub(crate) wic_ca_pem: String,
    /// The server's own WIC chain and PKCS#8 key (PEM).
    pub(crate) server_chain_pem: String,
    pub(crate) server_key_pem: String,
    /// Crypto backend name.
    pub(crate) backend: String,
    /// Where the server claims proofs.
    pub(crate) replay: ReplaySetup,
    /// Worker threads (`--workers`); `None`: one per CPU the server may use.
    pub(crate) workers: Option<usize>,
}

/// The server's replay store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ReplaySetup {
    /// In memory, with this capacity: every proof of a run stays live until it expires.
    Memory(usize),
    /// In memory, with this capacity, answering from a task of its own (see `Store`).
    MemoryHandOff(usize),
    /// Redis at this URL.
    Redis(String),
    /// A Redis Cluster reached through these nodes.
    Cluster(Vec<String>),
}

impl ReplaySetup {
    /// The in-memory store of this setup, answering from a task of its own.
    pub(crate) fn handed_off(self) -> Self {
        match self {
            ReplaySetup::Memory(capacity) => ReplaySetup::MemoryHandOff(capacity),
            other => other,
        }
    }
}

/// Everything the driver holds.
pub(crate) struct Deployment {
    pub(crate) server: ServerSetup,
    pub(crate) signer: Signer,
    pub(crate) client_wic: WorkloadCertificate,
    pub(crate) wic_anchors: WicAnchors,
    client_key: SigningKey,
    client_wit: String,
    algorithm: Algorithm,
    backend: Backend,
}

impl Deployment {
    pub(crate) fn new(options: &Options) -> Result<Self, Error> {
        let t = now();
        let issuer = WitIssuer::new(SigningKey::generate(Algorithm::ES256)?.with_kid("bench-1"))
            .backend(options.backend)
            .lifetime(3600);
        let client_key = SigningKey::generate(options.algorithm)?;
        let client_wit = issuer.issue(&CLIENT_ID.parse()?, client_key.public_jwk(), t)?;
        let credentials = Credentials::new(client_wit.clone(), client_key.clone())?;
        let signer = Signer::new(StaticCredentials::new(credentials)).lifetime(PROOF_LIFETIME).backend(options.backend);

        let authority = WicAuthority::new(TRUST_DOMAIN.parse()?, t, 86_400)?;
        let wic_anchors = WicAnchors::new();
        wic_anchors.set(authority.trust_domain().clone(), [authority.certificate().clone()])?;
        let server_wic = authority.issue(
            &SERVER_ID.parse()?,
            &WicOptions::new(WicUsage::Server, t, 3600).ip_address(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )?;
        let client_wic = authority.issue(&CLIENT_ID.parse()?, &WicOptions::new(WicUsage::Client, t, 3600))?;
        let (server_chain_pem, server_key_pem) = server_wic.to_pem();
        let server = ServerSetup {
            trust_jwks: serde_json::json!({"keys": [issuer.public_key().jwk()]}).to_string(),
            wic_ca_pem: authority.to_pem().0,
            server_chain_pem,
            server_key_pem,
            backend: options.backend.name().to_owned(),
            replay: ReplaySetup::Memory((options.requests + options.warmup + 1_000).max(100_000)),
            workers: options.workers,
        };
        Ok(Self {
            server,
            signer,
            client_wic,
            wic_anchors,
            client_key,
            client_wit,
            algorithm: options.algorithm,
            backend: options.backend,
        })
    }

    /// Times rounds of bare signature verifications of WPT-sized signing inputs with the
    /// client's key (what a server pays at least per authenticated request) and returns the
    /// cost of one verification in each round. Each verification checks another WPT's
    /// signature, as a server does (one signature checked again and again verifies measurably
    /// faster). The driver measures rounds before every configuration, so the floor is sampled
    /// across the run as the servers are.
    pub(crate) fn bare_verification_rounds(&self) -> Result<Vec<Duration>, Error> {
        const ROUNDS: usize = 5;
        const PER_ROUND: u32 = 400;
        let signed = (0..PER_ROUND)
            .map(|_| {
                let wpt = WptBuilder::new(&self.client_key, &self.client_wit, "http://127.0.0.1:1/bench")
                    .backend(self.backend)
                    .sign(now())?;
                let (message, signature) = wpt.rsplit_once('.').ok_or("a WPT has three parts")?;
                Ok((message.to_owned(), wimse_core::jose::b64url_decode(signature)?))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let public = self.client_key.public_key();
        let mut rounds = Vec::with_capacity(ROUNDS);
        for round in 0..=ROUNDS {
            let start = Instant::now();
            for (message, signature) in &signed {
                if !public.verify(self.backend, self.algorithm, black_box(message.as_bytes()), black_box(signature)) {
                    return Err("the bare verification failed".into());
                }
            }
            // The first round warms caches up.
            if round > 0 {
                rounds.push(start.elapsed() / PER_ROUND);
            }
        }
        Ok(rounds)
    }
}
