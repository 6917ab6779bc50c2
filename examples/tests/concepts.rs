//! The README's "One name per concept" table names only types that exist: each name in it must
//! be one this file imports (so the build fails on a name that does not exist), and each import
//! must be in the table.

#![allow(unused_imports)]

use wimse_actix::{
    Caller as ActixCaller, RequirePolicy as ActixRequirePolicy, RequirePolicyMiddleware,
    Transaction as ActixTransaction, WimseAuth, WimseAuthMiddleware, WimseRejection as ActixRejection,
};
use wimse_axum::{
    Caller, RequirePolicyLayer as AxumRequirePolicyLayer, Transaction, WimseLayer as AxumWimseLayer, WimseRejection,
    WimseSignLayer as AxumWimseSignLayer,
};
use wimse_core::client::exchange::{ClientExchange, ProofMode};
use wimse_core::client::sign::Signer;
use wimse_core::protocol::txn::VerifiedTxnToken;
use wimse_core::server::caller::VerifiedCaller;
use wimse_core::server::framing::Rejection;
use wimse_core::server::pipeline::Pipeline;
use wimse_core::server::policy::Policy;
use wimse_reqwest::{TxnToken, WimseSignMiddleware};
use wimse_tower::{RequirePolicy, RequirePolicyLayer, WimseLayer, WimseService, WimseSign, WimseSignLayer};

/// The names this file imports (as the README spells them).
const IMPORTED: &[&str] = &[
    "Pipeline",
    "Policy",
    "VerifiedCaller",
    "VerifiedTxnToken",
    "Rejection",
    "Signer",
    "WimseLayer",
    "WimseService",
    "RequirePolicyLayer",
    "RequirePolicy",
    "WimseSignLayer",
    "WimseSign",
    "ClientExchange",
    "ProofMode",
    "Caller",
    "Transaction",
    "WimseRejection",
    "WimseAuth",
    "WimseAuthMiddleware",
    "RequirePolicyMiddleware",
    "TxnToken",
    "WimseSignMiddleware",
];

/// The backticked names in the README's concept table.
fn table_names() -> std::collections::BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("### One name per concept").nth(1).expect("the README has the concept table");
    let table: Vec<&str> =
        section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).collect();
    assert!(table.len() > 2, "a table with rows");
    let mut names = std::collections::BTreeSet::new();
    for row in &table[2..] {
        // The first cell describes the concept; the others name types.
        for cell in row.split('|').skip(2) {
            for (i, part) in cell.split('`').enumerate() {
                if i % 2 == 1 {
                    names.insert(part.to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn every_name_in_the_concept_table_exists() {
    let names = table_names();
    let imported: std::collections::BTreeSet<String> = IMPORTED.iter().map(|s| (*s).to_owned()).collect();
    let missing: Vec<&String> = names.difference(&imported).collect();
    assert!(missing.is_empty(), "names in the README table that this test does not import: {missing:?}");
    let unused: Vec<&String> = imported.difference(&names).collect();
    assert!(unused.is_empty(), "names imported here that the README table does not have: {unused:?}");
}
