//! The fuzz targets without libFuzzer: every target's body (`fuzz/src/`, the crate outside the
//! workspace) over every file of its seed corpus (`fuzz/seeds/<target>/`), so CI runs them all
//! (a seed that panics fails here); and the `verify_request` seeds are live (accepted as they
//! are), so the fuzzer's mutations of them reach the WPT and HTTP-signature checks.

#[allow(dead_code, unreachable_pub)]
#[path = "../../fuzz/src/lib.rs"]
mod fuzz;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use wimse_core::prelude::*;
use wimse_core::server::caller::ProofMethod;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The file names in `dir` (files or directories).
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The seed files of `target`, with their contents.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut seeds: Vec<_> = names(&dir)
        .into_iter()
        .map(|name| {
            let data = std::fs::read(dir.join(&name)).unwrap();
            (name, data)
        })
        .collect();
    seeds.sort();
    seeds
}

/// Each target in `fuzz_targets/` has its body in the table, a `[[bin]]` in the fuzz crate and
/// a seed directory, and the other way round: a new target cannot miss this test.
/// Targets whose body belongs to a crate wimse-core cannot depend on, and the test of that
/// crate that runs their seeds.
const ELSEWHERE: &[(&str, &str)] =
    &[("authority_rewriter", "wimse-agent: authority::tests::fuzz_seeds_and_their_mutations_pass_the_checks")];

#[test]
fn every_target_is_run_and_seeded() {
    let table: BTreeSet<String> = fuzz::TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    let all: BTreeSet<String> =
        table.iter().cloned().chain(ELSEWHERE.iter().map(|(name, _)| (*name).to_owned())).collect();
    let files: BTreeSet<String> = all.iter().map(|name| format!("{name}.rs")).collect();
    assert_eq!(names(&fuzz_dir().join("fuzz_targets")), files);
    assert_eq!(names(&fuzz_dir().join("seeds")), all);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &table {
        assert!(manifest.contains(&format!("name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\"")), "[[bin]] {name}");
        let wrapper = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs"))).unwrap();
        assert!(wrapper.contains(&format!("wimse_fuzz::{name}::run(data)")), "fuzz_targets/{name}.rs runs its body");
    }
}

#[test]
fn every_seed_of_every_target_runs() {
    let mut failed = Vec::new();
    for (target, run) in fuzz::TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for (name, data) in seeds {
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(format!("{target}/{name}"));
            }
        }
    }
    assert!(failed.is_empty(), "seeds that panic: {failed:?}");
}

/// The `verify_request` seeds get through every check: both proof modes, signed body included.
#[test]
fn the_verify_request_seeds_are_live() {
    let mut modes = BTreeSet::new();
    for (name, data) in seeds("verify_request") {
        let caller = fuzz::verify_request::check(&data).unwrap_or_else(|e| panic!("seed {name} refused: {e:?}"));
        assert_eq!(caller.id().as_str(), fuzz::verify_request::WORKLOAD, "{name}");
        modes.insert(match caller.method() {
            ProofMethod::Wpt { .. } => "wpt",
            ProofMethod::HttpSignature { .. } => "http-signature",
            other => panic!("{name}: {other:?}"),
        });
    }
    assert_eq!(modes, BTreeSet::from(["http-signature", "wpt"]));
}

/// One byte changed after the WIT reaches the check behind it: the target is not stuck at the
/// WIT (as it was with a random trusted key and expired seeds of another trust domain).
#[test]
fn mutations_of_the_seeds_reach_the_proof_checks() {
    let seed = |name: &str| std::fs::read(fuzz_dir().join("seeds/verify_request").join(name)).unwrap();
    let field = |data: &[u8], index: usize| data.split(|b| *b == 0).nth(index).unwrap().to_vec();
    let kind = |data: &[u8]| fuzz::verify_request::check(data).unwrap_err().kind().clone();
    // The WPT's signature (field 1, `WPT <token>`): its last character.
    let mut wpt = seed("wpt");
    let end = field(&wpt, 0).len() + 1 + field(&wpt, 1).len() - 1;
    wpt[end] = if wpt[end] == b'A' { b'B' } else { b'A' };
    assert_eq!(kind(&wpt), ErrorKind::InvalidWptSignature);
    // The signed body: one byte of it.
    let mut signed = seed("httpsig");
    let last = signed.len() - 1;
    signed[last] ^= 1;
    assert_eq!(kind(&signed), ErrorKind::ContentDigestMismatch);
    // The HTTP signature's value (field 3, `wimse=:<base64>:`): its first base64 character.
    let mut signed = seed("httpsig");
    let start = (0..3).map(|i| field(&signed, i).len() + 1).sum::<usize>() + "wimse=:".len();
    signed[start] = if signed[start] == b'A' { b'B' } else { b'A' };
    assert_eq!(kind(&signed), ErrorKind::InvalidHttpSignature);
}

/// Writes fresh `verify_request` seeds (run when the keys, the clock or the format change):
/// `cargo test -p wimse-core --test fuzz_seeds -- --ignored write_verify_request_seeds`.
#[test]
#[ignore = "writes fuzz/seeds/verify_request"]
fn write_verify_request_seeds() {
    let dir = fuzz_dir().join("seeds/verify_request");
    for old in names(&dir) {
        std::fs::remove_file(dir.join(old)).unwrap();
    }
    for (name, data) in fuzz::verify_request::seeds() {
        assert!(fuzz::verify_request::check(&data).is_ok(), "{name}");
        std::fs::write(dir.join(name), data).unwrap();
    }
}
