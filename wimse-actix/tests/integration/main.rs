//! wimse-actix's integration tests against real actix-web servers on loopback, one module per
//! subject, in one binary (one link instead of one per file).

mod httpsig;
mod mtls;
mod server;
mod txn;
