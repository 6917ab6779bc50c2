//! The error table: every reason code is unique, and the README lists every one of them with its
//! answer and meaning, exactly as the code defines them.

use std::collections::HashSet;

use wimse_core::{Answer, ErrorKind};

fn answer(kind: &ErrorKind) -> String {
    match kind.answer() {
        Answer::Credential => "401 + `WWW-Authenticate: WPT` (signed request: 400)".to_owned(),
        Answer::Status(code) => code.to_string(),
    }
}

/// The README's table, as the code defines it.
fn table() -> String {
    let mut out = String::from("| reason | answer | meaning |\n|---|---|---|\n");
    for kind in ErrorKind::all() {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            kind.reason(),
            answer(&kind),
            kind.summary().replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn reason_codes_are_unique() {
    let mut seen = HashSet::new();
    for kind in ErrorKind::all() {
        assert!(seen.insert(kind.reason()), "reason `{}` is used twice", kind.reason());
        assert!(kind.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", kind.reason());
    }
}

/// `WIMSE_UPDATE_README=1 cargo test -p wimse-core --test error_table` rewrites the table.
#[test]
fn the_readme_lists_every_reason() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let expected = table();
    if readme.contains(&expected) {
        return;
    }
    if std::env::var_os("WIMSE_UPDATE_README").is_some() {
        let start = readme.find("| reason | answer | meaning |").expect("the README has the table");
        let end = readme[start..].find("\n\n").map_or(readme.len(), |e| start + e + 1);
        std::fs::write(path, format!("{}{expected}{}", &readme[..start], &readme[end..])).unwrap();
        return;
    }
    panic!("README.md's error table is out of date (WIMSE_UPDATE_README=1 rewrites it); it should read:\n\n{expected}");
}

#[test]
fn kinds_that_carry_a_value_say_it() {
    assert_eq!(ErrorKind::MissingClaim("exp").description(), "a required claim is missing or has the wrong type: exp");
    assert_eq!(ErrorKind::MissingClaim("exp").summary(), "a required claim is missing or has the wrong type");
    assert_eq!(ErrorKind::MissingWit.description(), ErrorKind::MissingWit.summary());
}
