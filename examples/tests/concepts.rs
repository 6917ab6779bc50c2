//! The README's "One name per concept" table names only types that exist: each name in it must
//! be one this file imports (so the build fails on a name that does not exist), and each import
//! must be in the table.

#![allow(unused_imports)]

use wimse_actix::{
    Caller as ActixCaller, RequirePolicy as ActixRequirePolicy, RequirePolicyMiddleware,
    Transaction as ActixTransaction, WimseAuth, WimseAuthMiddleware, WimseRejection as ActixRejection,
};
use wimse_axum::{
    Caller, ProofMode as AxumProofMode, RequirePolicyLayer as AxumRequirePolicyLayer, Transaction,
    WimseLayer as AxumWimseLayer, WimseRejection, WimseSignLayer as AxumWimseSignLayer,
};
use wimse_core::client::exchange::{ClientExchange, ProofMode};
use wimse_core::client::sign::Signer;
use wimse_core::protocol::txn::VerifiedTxnToken;
use wimse_core::server::caller::VerifiedCaller;
use wimse_core::server::framing::Rejection;
use wimse_core::server::pipeline::Pipeline;
use wimse_core::server::policy::Policy;
use wimse_reqwest::{TxnToken, WimseSignMiddleware};
use wimse_tower::{
    ProofMode as TowerProofMode, RequirePolicy, RequirePolicyLayer, WimseLayer, WimseService, WimseSign, WimseSignLayer,
};

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

/// The public type names (`pub struct`, `enum`, `trait`, `type`, and the names of `pub use`
/// lists) declared in the `.rs` files under `dir`.
fn public_type_names(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            public_type_names(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // `pub use a::{B, C as D};`: the names it exports (`D`, not `C`).
        for (at, _) in text.match_indices("pub use ") {
            let statement = text[at..].split(';').next().unwrap_or_default();
            let words: Vec<&str> =
                statement.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
            for (i, word) in words.iter().enumerate() {
                let renamed = words.get(i + 1) == Some(&"as");
                if word.starts_with(|c: char| c.is_ascii_uppercase()) && !renamed {
                    out.insert((*word).to_owned());
                }
            }
        }
        for line in text.lines().map(str::trim_start) {
            for keyword in ["pub struct ", "pub enum ", "pub trait ", "pub type "] {
                if let Some(rest) = line.strip_prefix(keyword) {
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                        out.insert(name);
                    }
                }
            }
        }
    }
}

/// The source folder of each package this workspace builds with, from `cargo metadata`.
fn package_sources() -> std::collections::BTreeMap<String, std::path::PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // This machine's packages only: what a build here has downloaded.
    let rustc = std::process::Command::new("rustc").arg("-vV").output().expect("rustc -vV");
    let rustc = String::from_utf8(rustc.stdout).unwrap();
    let host = rustc.lines().find_map(|l| l.strip_prefix("host: ")).expect("the host triple");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform", host])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut sources = std::collections::BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let manifest = std::path::Path::new(package["manifest_path"].as_str().unwrap());
        sources.insert(package["name"].as_str().unwrap().to_owned(), manifest.parent().unwrap().join("src"));
    }
    sources
}

/// No public type of an adapter has the name of a type its framework exports (an application
/// imports both: `wimse_actix::Guard` once shadowed actix-web's `guard::Guard`).
#[test]
fn no_adapter_type_has_a_name_its_framework_uses() {
    let sources = package_sources();
    let adapters: &[(&str, &[&str])] = &[
        ("wimse-tower", &["tower", "tower-layer", "tower-service", "http", "http-body", "http-body-util", "tonic"]),
        ("wimse-axum", &["axum", "axum-core", "tower", "http"]),
        ("wimse-actix", &["actix-web", "actix-http", "actix-service"]),
        ("wimse-reqwest", &["reqwest", "reqwest-middleware", "http"]),
    ];
    let mut clashes = Vec::new();
    for (adapter, frameworks) in adapters {
        let mut ours = std::collections::BTreeSet::new();
        public_type_names(&sources[*adapter], &mut ours);
        assert!(ours.len() > 3, "{adapter}: its public types were found");
        for framework in *frameworks {
            let dir = sources.get(*framework).unwrap_or_else(|| panic!("{framework} is a dependency"));
            let mut theirs = std::collections::BTreeSet::new();
            public_type_names(dir, &mut theirs);
            assert!(!theirs.is_empty(), "{framework}: its public types were found");
            clashes.extend(ours.intersection(&theirs).map(|name| format!("{adapter}::{name} and {framework}")));
        }
    }
    assert!(clashes.is_empty(), "adapter types named like their framework's: {clashes:?}");
}
