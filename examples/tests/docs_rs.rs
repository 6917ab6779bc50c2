//! docs.rs builds each published library with every feature and `--cfg docsrs`, so that
//! feature-gated items are documented and marked with the feature they need (`.ci/run` builds
//! the documentation the same way, and with the default features, warnings denied).

use std::path::Path;

/// Whether any `.rs` file under `dir` gates an item on a feature.
fn gates_on_features(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            gates_on_features(&path)
        } else {
            path.extension().is_some_and(|ext| ext == "rs")
                && std::fs::read_to_string(&path).unwrap().contains("cfg(feature")
        }
    })
}

#[test]
fn every_published_library_is_documented_as_docs_rs_builds_it() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let (manifest, lib) = (entry.path().join("Cargo.toml"), entry.path().join("src/lib.rs"));
        let Ok(cargo) = std::fs::read_to_string(&manifest) else { continue };
        if !lib.exists() || cargo.contains("publish = false") || !cargo.starts_with("[package]") {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let metadata =
            cargo.split("[package.metadata.docs.rs]").nth(1).map(|rest| rest.split("\n[").next().unwrap_or(""));
        let metadata = metadata.unwrap_or_else(|| panic!("{name}: no [package.metadata.docs.rs]"));
        assert!(metadata.contains("all-features = true"), "{name}: {metadata}");
        assert!(metadata.contains(r#"rustdoc-args = ["--cfg", "docsrs"]"#), "{name}: {metadata}");
        if gates_on_features(&entry.path().join("src")) {
            let lib = std::fs::read_to_string(&lib).unwrap();
            assert!(
                lib.contains("#![cfg_attr(docsrs, feature(doc_cfg))]"),
                "{name} gates items on features: mark them on docs.rs with #![cfg_attr(docsrs, feature(doc_cfg))]"
            );
        }
        checked.push(name);
    }
    assert!(checked.len() >= 8 && checked.iter().any(|name| name == "wimse-core"), "{checked:?}");
}
