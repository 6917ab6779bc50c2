//! The fuzz targets' bodies, one module per target of `fuzz_targets/` (each target there is a
//! one-line `fuzz_target!` calling its module's `run`). Outside libFuzzer the same bodies run
//! over the seed corpora (`seeds/<target>/`) as a plain test of the workspace,
//! `cargo test -p wimse-core --test fuzz_seeds`, which includes this file: so CI runs every
//! target over every seed without building the fuzz crate.
#![forbid(unsafe_code)]

pub mod identifier;
pub mod jws_parse;
pub mod key_set;
pub mod raw_request;
pub mod signature_fields;
pub mod txn_token;
pub mod verify_request;

/// A target's body: one input, never a panic.
pub type Body = fn(&[u8]);

/// Every target: its name (of its file in `fuzz_targets/` and of its seed directory) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("identifier", identifier::run),
    ("jws_parse", jws_parse::run),
    ("key_set", key_set::run),
    ("raw_request", raw_request::run),
    ("signature_fields", signature_fields::run),
    ("txn_token", txn_token::run),
    ("verify_request", verify_request::run),
];
