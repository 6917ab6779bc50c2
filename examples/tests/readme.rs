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
