//! The node agent's integration tests, one module per subject, in one binary (one link instead
//! of one per file): a real agent on a Unix socket, real clients (Rust, and Python's `spiffe`).
//! `faults` and `refusals` are binaries of their own: each installs the process's one metrics
//! recorder and counts what the agent records, which other tests would add to.

#[path = "../common/mod.rs"]
mod common;

mod agent;
mod config_mistakes;
mod fork_exec;
mod python_clients;
mod socket_path_authority;
