//! A WIMSE identity server: it authenticates workloads (platform tokens such as Kubernetes
//! projected service-account tokens or CI OIDC tokens), issues each the Workload Identity Tokens
//! (WITs) and Workload Identity Certificates (WICs) its configuration grants and no more,
//! exchanges other systems' tokens for WITs (RFC 8693), and publishes its keys as a SPIFFE trust
//! bundle.
//!
//! - [`IdentityServer`]: the logic, framework-free; [`router`] serves it over HTTP (axum).
//! - Keys rotate on a timer ([`IdentityServer::start_maintenance`]), are published two refresh
//!   hints before they sign, and are retired after the longest lifetime of anything they signed.
//! - Storage behind one seam, [`KeyStorage`]: [`FileStorage`] (one node, the default) or, with
//!   the `postgres` feature, `PostgresStorage` for several replicas (private keys sealed with a
//!   key-encryption key, rotation once across replicas, an audit row per issuance).
//! - The bundle names the key store's epoch ([`STORE_EPOCH_MEMBER`]): after a disaster that
//!   loses the store, verifiers accept the new store's keys without accepting a rollback.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use wimse_core::jose::{Algorithm, SigningKey};
//! use wimse_core::time::SystemClock;
//! use wimse_issuer::{IdentityServer, IssuerConfig};
//!
//! let dir = std::env::temp_dir().join(format!("wimse-issuer-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let config: IssuerConfig = serde_json::from_value(serde_json::json!({
//!     "trust_domain": "spiffe://prod.example",
//!     "key_store": dir.join("keys.json"),
//!     "dev_mode": true,
//!     "clients": [{ "name": "demo", "dev_secret": "a-long-dev-secret", "allowed": ["spiffe://prod.example/demo"], "max_lifetime": 600 }]
//! }))?;
//! let server = IdentityServer::open(config, SystemClock).await?;
//! let workload_key = SigningKey::generate(Algorithm::ES256)?;
//! let issued = server.issue_wit("a-long-dev-secret", "spiffe://prod.example/demo", &workload_key.public_jwk(), None).await?;
//! assert_eq!(issued.expires_at - issued.issued_at, 600);
//! # let _ = std::fs::remove_dir_all(dir); Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod external;
mod http;
mod keys;
#[cfg(feature = "openapi")]
mod openapi;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "openapi")]
mod schemas;
#[cfg(feature = "postgres")]
mod seal;
mod server;
mod store;
mod tts;

pub use config::{
    ClientConfig, ExchangeKind, ExchangeProfile, IssuerConfig, PlatformConfig, PostgresConfig, RateLimits,
    SubjectIssuer, TxnRequester, TxnTokenServiceConfig, load_config,
};
pub use http::ClientWic;
pub use http::router;
pub use keys::{KeyRole, KeyState, KeyStatus};
#[cfg(feature = "openapi")]
pub use openapi::openapi_json;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStorage;
pub use server::{ClientAuthentication, IdentityServer, IssuedWit, WicRequest};
pub use store::{Change, FileStorage, IssuanceRecord, KeyStorage, Overwrite};
pub use wimse_core::protocol::oauth::{ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE};
pub use wimse_core::protocol::trust::STORE_EPOCH_MEMBER;
pub use wimse_core::protocol::txn::{IssuedTxnToken, TxnTokenRequest};
