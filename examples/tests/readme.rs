//! The README's code cannot rot: every ```rust block in it must appear verbatim in
//! `readme/snippets.rs`, which this test target compiles (and whose functions it runs).

mod readme_snippets {
    include!("readme/snippets.rs");
}

/// The ```rust blocks of the README, each as its lines.
fn rust_blocks(readme: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```rust") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => block.push(line.to_owned()),
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_readme_snippet_is_compiled() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let snippets = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/readme/snippets.rs")).unwrap();
    // Compare ignoring indentation: the snippets sit one module deep.
    let snippet_lines: Vec<&str> = snippets.lines().map(str::trim).collect();
    let blocks = rust_blocks(&readme);
    assert!(blocks.len() >= 3, "the README shows a server, settings and a client");
    for block in blocks {
        let wanted: Vec<&str> = block.iter().map(|l| l.trim()).collect();
        let found = snippet_lines.windows(wanted.len()).any(|window| window == wanted.as_slice());
        assert!(found, "README block not in readme/snippets.rs (copy it there):\n{}", block.join("\n"));
    }
}

/// The README's section `## {title}`, up to the next `## ` heading.
fn section<'a>(readme: &'a str, title: &str) -> &'a str {
    let start = readme.find(&format!("\n## {title}\n")).unwrap_or_else(|| panic!("no \"## {title}\" in the README"));
    let rest = &readme[start + 1..];
    &rest[..rest[3..].find("\n## ").map_or(rest.len(), |end| end + 3)]
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Every `WIMSE_*` variable the code reads (a `"WIMSE_…"` literal in a crate's `src/`; the test
/// harness's own, in `testkit/`, are in "Quick start") is listed in "Configuration".
#[test]
fn the_configuration_section_lists_every_environment_variable() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let configuration = section(&readme, "Configuration");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let src = entry.path().join("src");
        if entry.file_name() != "testkit" && src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let mut variables = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("\"WIMSE_") {
            let name: String = text[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if text[at + 1 + name.len()..].starts_with('"') && name.len() > "WIMSE_".len() {
                variables.insert(name);
            }
        }
    }
    assert!(variables.contains("WIMSE_AUDIENCES") && variables.contains("WIMSE_ISSUER_KEK"), "{variables:?}");
    let missing: Vec<_> = variables.iter().filter(|name| !configuration.contains(&format!("`{name}`"))).collect();
    assert!(missing.is_empty(), "read by the code, missing from the README's Configuration section: {missing:?}");
}

/// Every key of a JSON value, at any depth.
fn keys(value: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                out.insert(key.clone());
                keys(value, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| keys(item, out)),
        _ => {}
    }
}

/// The Configuration section's TOML is a valid settings file and shows every key there is (a
/// key added to `wimse_core::config` and not to the README fails here).
#[test]
fn the_configuration_example_is_a_valid_settings_file_with_every_key() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let configuration = section(&readme, "Configuration");
    let toml = configuration.split("```toml\n").nth(1).and_then(|rest| rest.split("\n```").next()).unwrap();
    let settings = wimse_core::config::Settings::from_toml(toml).unwrap();
    assert!(settings.verifier.trust[1].bundle_url.is_some() && settings.verifier.txn_tokens.is_some());
    // Serialized, the settings name every field (an absent option as null).
    let mut all = std::collections::BTreeSet::new();
    keys(&serde_json::to_value(&settings).unwrap(), &mut all);
    let shown = |key: &str| {
        toml.lines().any(|line| {
            let line = line.trim_start();
            line.starts_with(&format!("{key} ="))
                || line.contains(&format!(" {key} ="))
                || line.contains(&format!("[{key}]"))
                || line.contains(&format!(".{key}]"))
        })
    };
    let missing: Vec<_> = all.iter().filter(|key| !shown(key)).collect();
    assert!(missing.is_empty(), "settings keys missing from the README's Configuration example: {missing:?}");
}
