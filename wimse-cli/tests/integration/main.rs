//! The `wimse` command's integration tests, one module per subject, in one binary (one link
//! instead of one per file). Each runs the built binary (`CARGO_BIN_EXE_wimse`) or its servers.

#[path = "../common/mod.rs"]
mod common;

mod adapters;
mod agent_attestation;
mod agent_config_mistakes;
mod agent_endpoint_errors;
mod agent_lifecycle;
mod audit;
mod backup_restore;
mod federation;
mod gateway;
mod issuer_faults;
mod issuer_ha;
mod issuer_lifecycle;
mod key_lifecycle;
mod logs;
mod otel;
mod readme_replicas;
mod round_trip;
mod sign_output;
mod txn;
