//! # wimse-core
//!
//! The protocol core of the [WIMSE] workload-to-workload drafts, with no web framework and no
//! async runtime: Workload Identifiers, JOSE keys, Workload Identity Tokens (WIT), Workload
//! Proof Tokens (WPT), trust anchors, replay protection, and the HTTP framing every adapter shares.
//!
//! Implemented revisions: `draft-ietf-wimse-identifier-03`, `draft-ietf-wimse-workload-creds-02`
//! (WIT), `draft-ietf-wimse-wpt-02` (WPT in `Authorization: WPT …`). See [`draft`].
//!
//! ## Where to start
//! - Serving: [`crate::server::pipeline::Pipeline`] (verifier + policy) through an adapter, or
//!   [`crate::server::verify::Verifier`] directly; settings from a file with [`config::Settings`]; trust
//!   anchors from files with [`crate::protocol::trust::TrustAnchors::from_file`].
//! - Calling: [`crate::client::sign::Signer`] over a [`crate::client::cred::CredentialSource`] (files, static, or an identity
//!   server through `wimse-reqwest`).
//! - Everything common is in [`prelude`].
//!
//! ## Adapters
//! | crate | for |
//! |---|---|
//! | [`wimse-tower`](https://docs.rs/wimse-tower) | tower layers: verify (`WimseLayer`), per-route policy, sign outgoing requests (`WimseSignLayer`) |
//! | [`wimse-axum`](https://docs.rs/wimse-axum) | axum extractors (`Caller`) and rejections, mutual TLS serving |
//! | [`wimse-actix`](https://docs.rs/wimse-actix) | actix-web middleware (`WimseAuth`, `RequirePolicy`) and extractors |
//! | [`wimse-reqwest`](https://docs.rs/wimse-reqwest) | reqwest middleware (`WimseSignMiddleware`), bundle refresh, identity-server credentials |
//! | [`wimse-issuer`](https://docs.rs/wimse-issuer) | an identity server |
//!
//! ## Decisions on points the drafts leave open
//! - `typ` follows RFC 7515 §4.1.9: `wit+jwt` / `application/wit+jwt` (and `wpt+jwt` /
//!   `application/wpt+jwt`) in any case are accepted; everything else, including the legacy
//!   `wimse-id+jwt`/`wimse-proof+jwt`, is refused. Producers emit the short form.
//! - A WPT `aud` must be a single string; arrays are refused.
//! - Identifiers are compared as complete strings and must be canonical (lower-case scheme and
//!   trust domain, no percent-encoding, no dot segments); see [`id`].
//!
//! ## Crypto backends
//! Feature `aws-lc-rs` (default) or `rust-crypto` (pure Rust). With both, [`jose::Backend`]
//! picks aws-lc-rs by default and nothing panics.
//!
//! [WIMSE]: https://datatracker.ietf.org/wg/wimse/about/

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod client;
pub mod config;
pub mod draft;
mod error;
mod headers;
pub mod health;
pub mod id;
pub mod jose;
pub mod protocol;
pub mod rate;
#[cfg(feature = "raw-http")]
pub mod raw;
pub mod replay;
pub mod server;
pub mod time;

pub use error::{Answer, Error, ErrorKind, Result};

/// The types most programs need.
pub mod prelude {
    pub use crate::client::cred::{CredentialSource, Credentials, FileCredentials, StaticCredentials};
    pub use crate::client::exchange::ProofMode;
    pub use crate::client::sign::Signer;
    pub use crate::error::{Error, ErrorKind};
    pub use crate::id::{TrustDomain, WorkloadId};
    pub use crate::jose::{Algorithm, Backend, Jwk, PublicKey, SigningKey};
    pub use crate::protocol::trust::{TrustAnchors, TrustStore};
    pub use crate::protocol::wit::WitIssuer;
    pub use crate::protocol::wpt::WptBuilder;
    pub use crate::replay::{InMemoryReplayStore, ReplayStore};
    pub use crate::server::caller::{TlsPeer, VerifiedCaller};
    pub use crate::server::framing::{HeaderSource, Rejection};
    pub use crate::server::pipeline::Pipeline;
    pub use crate::server::policy::{Policy, Rule};
    pub use crate::server::verify::{RequestView, Verifier, VerifierConfig};
    pub use crate::time::{Clock, FixedClock, SystemClock};
}
