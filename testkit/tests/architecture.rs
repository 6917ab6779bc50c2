//! The architecture's rules, checked on the sources (see ARCHITECTURE.md):
//! - no import circle between the modules of any crate (a module and the modules nested in it
//!   are one family: a child using its parent's helpers is not a circle);
//! - in wimse-core, imports point down the layers only: base < protocol < client < server <
//!   config < tools (`CORE_LAYERS`; a new top-level module must be placed).
//!
//! Edges are the `crate::…` and `super::…` paths in code (comments and doc comments, whose links
//! are not imports, are left out), resolved to the longest module they name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace's crates with a `src/` to check.
const CRATES: &[&str] = &[
    "wimse-core",
    "wimse-tower",
    "wimse-axum",
    "wimse-actix",
    "wimse-reqwest",
    "wimse-issuer",
    "wimse-workload-api",
    "wimse-agent",
    "wimse-mcp",
    "wimse-cli",
    "testkit",
];

/// wimse-core's layers, lowest first, and the top-level modules in each (`protocol/`, `client/`,
/// `server/` are folders; the base modules sit at the root): a module may import its own layer
/// and those below. The replay store sits in the base: the server claims proofs in it and the
/// client claims signed responses' nonces.
const CORE_LAYERS: &[(&str, &[&str])] = &[
    ("base", &["error", "id", "jose", "time", "health", "draft", "headers", "rate", "replay"]),
    ("protocol", &["protocol"]),
    ("client", &["client"]),
    ("server", &["server"]),
    ("config", &["config"]),
    ("tools", &["raw"]),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file (`server/verify.rs` → `server::verify`, `mod.rs` and
/// `lib.rs`/`main.rs` name their directory / the crate root `""`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts.join("::")
}

/// The code of a file without comments, string literals kept (paths do not appear in them
/// except in doc text, which is a comment).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else if rest.starts_with('"') {
            // Skip a string literal (escapes included) so `//` inside one is not a comment.
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            rest = rest.get(i + 1..).unwrap_or("");
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The paths a file's code names: `crate::a::b::c` and `super::…` (resolved against `module`).
fn referenced(module: &str, code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = code.as_bytes();
    for (start, prefix) in code
        .match_indices("crate::")
        .map(|(i, _)| (i, "crate"))
        .chain(code.match_indices("super::").map(|(i, _)| (i, "super")))
    {
        // Not the tail of a longer identifier (`foo_crate::`, `$crate::`).
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'_' | b'$' | b':')) {
            continue;
        }
        let tail = &code[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        let mut segments: Vec<String> = tail[..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let mut base: Vec<String> =
            if module.is_empty() { Vec::new() } else { module.split("::").map(str::to_owned).collect() };
        if prefix == "crate" {
            segments.remove(0);
            base.clear();
        } else {
            while segments.first().is_some_and(|s| s == "super") {
                segments.remove(0);
                base.pop();
            }
        }
        base.extend(segments);
        paths.push(base);
    }
    paths
}

/// The longest module of `modules` that `path` starts with.
fn resolve(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains(m))
}

fn nested(a: &str, b: &str) -> bool {
    let inside =
        |outer: &str, inner: &str| outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}::"));
    inside(a, b) || inside(b, a)
}

/// The module graph of one crate: module → modules it imports (families merged out).
fn graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join(krate).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        for path in referenced(&module, &code(&text)) {
            if let Some(target) = resolve(&path, &modules)
                && !nested(&module, &target)
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
        edges.entry(module).or_default();
    }
    edges
}

/// A circle in `graph`, if there is one (as the modules along it).
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut found = stack[from..].to_vec();
                found.push(node.to_owned());
                return Some(found);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, marks, stack) {
                return Some(found);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn no_crate_has_an_import_circle() {
    let mut circles = Vec::new();
    for krate in CRATES {
        if let Some(found) = circle(&graph(krate)) {
            circles.push(format!("{krate}: {}", found.join(" -> ")));
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

/// The layer of a wimse-core module: its first segment's.
fn layer(module: &str) -> Option<usize> {
    let first = module.split("::").next().unwrap_or("");
    CORE_LAYERS.iter().position(|(_, members)| members.contains(&first))
}

#[test]
fn wimse_core_imports_point_down_the_layers() {
    let mut wrong = Vec::new();
    let mut unplaced = BTreeSet::new();
    for (module, targets) in graph("wimse-core") {
        if module.is_empty() {
            continue; // the crate root assembles everything
        }
        let Some(from) = layer(&module) else {
            unplaced.insert(module);
            continue;
        };
        for target in targets {
            if let Some(to) = layer(&target)
                && to > from
            {
                wrong.push(format!("{module} ({}) imports {target} ({})", CORE_LAYERS[from].0, CORE_LAYERS[to].0));
            }
        }
    }
    assert!(unplaced.is_empty(), "wimse-core modules in no layer (add them to CORE_LAYERS): {unplaced:?}");
    assert!(wrong.is_empty(), "imports that point up:\n{}", wrong.join("\n"));
}

/// The checks above can fail: a made-up circle is found, paths resolve to their modules, and an
/// upward import is told from a downward one.
#[test]
fn the_checks_find_what_they_look_for() {
    let mut made_up: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    made_up.entry("http".into()).or_default().insert("httpsig".into());
    made_up.entry("httpsig".into()).or_default().insert("http".into());
    assert_eq!(circle(&made_up), Some(vec!["http".into(), "httpsig".into(), "http".into()]));
    let modules: BTreeSet<String> = ["server::verify".to_owned(), "protocol::wit".to_owned()].into();
    let paths =
        referenced("protocol::wit", &code("use crate::server::verify::Verifier; // crate::x::y\n/// [`crate::y`]"));
    assert_eq!(paths.len(), 1);
    assert_eq!(resolve(&paths[0], &modules).as_deref(), Some("server::verify"));
    assert!(layer("server::pipeline") > layer("protocol::wit"), "server above protocol");
    assert!(layer("client::sign") < layer("server::verify"), "client below server");
    assert_eq!(referenced("a::b", "super::super::c::d")[0], vec!["c".to_owned(), "d".to_owned()]);
}

/// The `with_*` setters of a source text that break the setter rule: a builder setter is named
/// bare, for what it sets (`policy(..)`, `origin(..)`, `clock(..)`, as tower's, reqwest's and
/// tonic's builders are); `with_` starts only a constructor (no `self`: `Error::with_detail`)
/// or a setter whose bare name is the getter of the same value (`SigningKey::kid()` reads it,
/// `with_kid(..)` sets it).
fn setter_rule_breaks(text: &str) -> Vec<String> {
    let mut breaks = Vec::new();
    for (at, _) in text.match_indices("pub fn with_") {
        let rest = &text[at + "pub fn with_".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let params = rest[name.len()..].split_once('(').map_or("", |(_, p)| p).trim_start();
        let takes_self = params.starts_with("self") || params.starts_with("mut self");
        if takes_self && !text.contains(&format!("fn {name}(&self")) {
            breaks.push(format!("with_{name}"));
        }
    }
    breaks
}

#[test]
fn builder_setters_follow_one_rule() {
    let mut breaks = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        sources(&root().join(krate).join("src"), &mut files);
        for file in files {
            // Generated by tonic-build, not ours to name.
            if file.ends_with("generated.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for name in setter_rule_breaks(&text) {
                breaks.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(breaks.is_empty(), "setters named with_ that should be bare (see setter_rule_breaks): {breaks:#?}");
}

#[test]
fn the_setter_rule_finds_what_it_looks_for() {
    let text = "impl A {\n pub fn with_kid(mut self, k: u8) -> Self { self }\n pub fn kid(&self) -> u8 { 0 }\n \
                pub fn with_detail(kind: u8) -> Self { A }\n pub fn with_origin(mut self, o: u8) -> Self { self }\n \
                pub fn with_clock<C: Clock>(self, c: C) -> Self { self }\n}";
    assert_eq!(setter_rule_breaks(text), ["with_origin", "with_clock"]);
}
