//! wimse-axum's integration tests against real servers on loopback, one module per subject, in
//! one binary (one link instead of one per file).

mod httpsig;
mod mtls;
mod replay;
mod revocation;
mod server;
mod txn;
