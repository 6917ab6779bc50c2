//! wimse-core's integration tests, one module per subject, in one binary (one link of the
//! crypto backends and tokio instead of one per file). The tests that measure the process's
//! memory or allocations (`replay_store`, `request_allocations`, `wit_cache_memory`), run the
//! fuzz targets' seeds (`fuzz_seeds`) or rewrite the README (`error_table`) stay binaries of
//! their own.

#[path = "../common/mod.rs"]
mod common;

mod audit_log;
#[cfg(feature = "cedar")]
mod cedar;
mod client;
mod content_digest;
mod exchange;
mod foreign_signatures;
mod guard;
mod httpsig;
mod identifiers;
mod metrics;
mod mtls;
mod negative;
mod replay_limits;
mod responses;
mod settings;
mod trust_files;
mod txn;
mod vectors;
mod wit_cache;
mod wit_checklist;
