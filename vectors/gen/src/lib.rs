//! The repository's conformance vectors (`vectors/*.json`): built here, deterministically, from
//! fixed seeds, fixed identifiers and a frozen clock, so that every run writes the same bytes.
//!
//! `cargo run -p wimse-vectors` writes the files; `cargo run -p wimse-vectors -- --check` says
//! whether the committed ones are current. `vectors/README.md` describes the format and how
//! another implementation runs them; this crate's test runs every case through wimse-core.

mod jwt;
mod keys;
mod message;
mod responses;
mod signatures;
mod suite;
mod txn;
mod wit_svid;
mod wpt;

/// Every vector file: its name in `vectors/` and its text.
pub fn files() -> Vec<(&'static str, String)> {
    let keys = keys::Keys::new();
    vec![
        ("wpt.json", wpt::suite(&keys)),
        ("http-signature-requests.json", signatures::suite(&keys)),
        ("http-signature-responses.json", responses::suite(&keys)),
        ("txn-token.json", txn::suite(&keys)),
        ("wit-svid.json", wit_svid::suite(&keys)),
    ]
}

/// The folder the files live in: `vectors/` at the root of the repository.
pub fn vectors_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
