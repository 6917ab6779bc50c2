//! The SPIFFE Workload API with the WIT-SVID profile, for WIMSE workloads.
//!
//! Where workload identity is deployed today, workloads obtain their credentials from a
//! node-local Workload API endpoint (gRPC on a Unix socket, `SPIFFE_ENDPOINT_SOCKET`). This crate
//! speaks that API:
//!
//! - [`proto`]: the messages, client and server of `SpiffeWorkloadAPI` (the X.509-SVID and
//!   WIT-SVID profiles), generated from a `.proto` written to the standard's field numbers;
//! - [`Endpoint`]: the endpoint address (`unix:///path`, `tcp://ip:port`, or the environment);
//! - with the `client` feature (default): [`WorkloadApiClient`] for one-shot fetches, and the
//!   streaming sources that keep wimse's signers and verifiers current without a restart:
//!   [`WitSvidSource`] (a [`CredentialSource`](wimse_core::client::cred::CredentialSource) for a
//!   [`Signer`](wimse_core::client::sign::Signer)), [`WitBundleWatch`] (WIT bundles into a
//!   [`TrustHandle`](wimse_core::protocol::trust::TrustHandle)) and [`X509SvidWatch`] (X.509-SVIDs and
//!   bundles into [`CurrentCertificate`](wimse_core::protocol::wic::CurrentCertificate) and
//!   [`WicAnchors`](wimse_core::protocol::wic::WicAnchors) for mutual TLS);
//! - the generated server trait ([`proto::spiffe_workload_api_server`]) that a node agent
//!   implements: `wimse agent` (crate `wimse-agent`) does.
//!
//! The `spiffe` crate is the established Rust client for the X.509 and JWT profiles; it has no
//! WIT-SVID profile. This crate uses one connection, one `.proto` and one retry policy for both
//! profiles it serves, and the agent's tests use the `spiffe` crate as the independent client.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use wimse_core::client::sign::Signer;
//! use wimse_core::protocol::trust::{TrustHandle, TrustStore};
//! use wimse_workload_api::{Endpoint, WitBundleWatch, WitSvidSource};
//!
//! let endpoint = Endpoint::from_env()?; // SPIFFE_ENDPOINT_SOCKET
//! let credentials = WitSvidSource::builder(endpoint.clone()).hint("internal").start().await?;
//! let signer = Signer::new(credentials.clone());
//! let trust = TrustHandle::new(TrustStore::new());
//! let bundles = WitBundleWatch::start(endpoint, trust.clone()).await?;
//! # drop((signer, bundles)); Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod bundle;
pub mod der;
mod endpoint;
mod error;
pub mod proto;

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod source;

pub use bundle::wit_bundle_anchors;
pub use endpoint::{ENDPOINT_ENV, Endpoint};
pub use error::WorkloadApiError;

#[cfg(feature = "client")]
pub use client::{WitSvid, WorkloadApiClient, X509Svid, X509SvidUpdate};
#[cfg(feature = "client")]
pub use source::{WitBundleWatch, WitSvidSource, WitSvidSourceBuilder, X509SvidWatch};

/// The gRPC metadata every Workload API request carries (`workload.spiffe.io: true`), so a
/// browser or an SSRF-tricked HTTP client cannot call the endpoint.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The gRPC service name (the standard's `.proto` has no package).
pub const SERVICE: &str = "SpiffeWorkloadAPI";
