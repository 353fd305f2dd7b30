//! The layer graph of the `drl` crate, checked from its source (issue 12, "a strict layer
//! graph"; drawn in ARCHITECTURE.md, "Layers").
//!
//! Every `crate::X` path in a file under `src/X'/` (or `src/X'.rs`) is an edge X' -> X between
//! top-level modules: `use crate::X::...`, `use crate::{X, Y::...}`, and paths written inline.
//! Comments are not edges; code in `#[cfg(test)]` modules is (a test that reaches up a layer
//! is a layer violation too). The test fails on an edge the graph below does not allow, and on
//! any cycle, so a new cycle cannot land even through edges that are allowed one by one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Who may use whom: each module with the modules it may name, lowest layers first. A module
/// may use anything a module it may use may use only if it is listed here itself: the list is
/// the whole truth, not a closure.
const ALLOWED: &[(&str, &[&str])] = &[
    // Leaves: every layer may use them.
    ("limits", &[]),
    ("units", &[]),
    ("table", &[]),
    ("secret", &[]),
    ("logrl", &["limits"]),
    // Parts that know nothing of replication.
    ("volume", &["limits", "logrl", "units"]),
    ("control", &["limits", "logrl"]),
    ("metrics", &["limits"]),
    ("snapshot", &["limits", "units", "volume"]),
    ("pipeline", &["snapshot", "volume"]),
    ("frontend", &["limits", "logrl", "metrics", "volume"]),
    ("shaping", &["limits", "table", "units"]),
    (
        "stream",
        &["limits", "logrl", "secret", "shaping", "units", "volume"],
    ),
    ("drill", &["frontend", "limits"]),
    // Replication and what builds on it.
    (
        "repl",
        &[
            "control", "limits", "logrl", "pipeline", "shaping", "snapshot", "units", "volume",
        ],
    ),
    (
        "detect",
        &[
            "control", "limits", "logrl", "repl", "secret", "units", "volume",
        ],
    ),
    // The config maps TOML onto the option types each layer owns.
    (
        "config",
        &[
            "detect", "limits", "repl", "secret", "shaping", "snapshot", "stream", "units",
            "volume",
        ],
    ),
    (
        "orchestrator",
        &[
            "config", "control", "limits", "logrl", "repl", "secret", "stream", "table", "units",
        ],
    ),
    // The daemon wires every part of one node together; it owns its arguments.
    (
        "daemon",
        &[
            "config",
            "control",
            "detect",
            "frontend",
            "limits",
            "logrl",
            "metrics",
            "orchestrator",
            "pipeline",
            "repl",
            "secret",
            "shaping",
            "snapshot",
            "stream",
            "table",
            "units",
            "volume",
        ],
    ),
    // The command line is the top: a thin client of the control socket, and `drl daemon`.
    (
        "cli",
        &[
            "config",
            "control",
            "daemon",
            "detect",
            "limits",
            "orchestrator",
            "repl",
            "shaping",
            "snapshot",
            "stream",
            "table",
            "units",
            "volume",
        ],
    ),
    // The fuzz harnesses drive parsers of any layer below the daemon.
    (
        "fuzzing",
        &[
            "config", "control", "detect", "frontend", "limits", "logrl", "repl", "stream",
            "units", "volume",
        ],
    ),
];

/// Edges that break the layering today and are known: each is a reason to change code, not
/// to grow this list. The test fails when one of them is gone, so the list only shrinks.
const KNOWN_DEBT: &[(&str, &str, &str)] = &[(
    "repl",
    "config",
    "the replicator holds the resource's whole ResourceConfig; it becomes a repl-owned \
     option type once consistency groups (multi-volume resources) have reshaped ResourceConfig",
)];

/// Top-level modules of the crate: `src/X/` and `src/X.rs`, without the binaries' roots.
fn modules(src: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(src).expect("read src/") {
        let e = e.expect("a src/ entry");
        let name = e.file_name().into_string().expect("a UTF-8 file name");
        let p = e.path();
        if p.is_dir() && name != "bin" {
            out.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                out.insert(stem.to_owned());
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read a source directory") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its comments (line, doc and block comments); string literals
/// are kept, as a `crate::` inside one is rare and at worst a false edge that names itself.
fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut in_str) = (0, false);
    while i < b.len() {
        if in_str {
            if b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == b'"' {
                in_str = false;
            }
            out.push(b[i] as char);
            i += 1;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            in_str = true;
            out.push('"');
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else {
            // Only ASCII matters for the scan; other characters are copied whole.
            let ch = text[i..].chars().next().expect("a character");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level names a piece of code reaches through `crate::`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::` in a macro, or a longer identifier
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the names at depth 1.
            let (mut depth, mut want) = (1, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => want = true,
                    c if want && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                        out.insert(ident_at(&group[j..]).to_owned());
                        want = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident_at(rest).to_owned());
        }
    }
    out
}

/// module -> (module it uses -> a file that shows the edge).
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let mods = modules(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src/");
        let first = rel
            .components()
            .next()
            .expect("a path")
            .as_os_str()
            .to_string_lossy();
        let from = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
        if !mods.contains(&from) {
            continue; // lib.rs, main.rs, bin/
        }
        let text = std::fs::read_to_string(&f).expect("read a source file");
        for to in crate_refs(&strip_comments(&text)) {
            if to != from && mods.contains(&to) {
                g.entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| rel.to_owned());
            }
        }
    }
    g
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_edge_between_top_level_modules_is_allowed() {
    let src = src_dir();
    let mods = modules(&src);
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, to)| (*m, to.iter().copied().collect()))
        .collect();
    let debt: BTreeSet<(&str, &str)> = KNOWN_DEBT.iter().map(|(a, b, _)| (*a, *b)).collect();
    let mut bad = Vec::new();
    for m in &mods {
        assert!(
            allowed.contains_key(m.as_str()),
            "src/{m} is a new top-level module: give it a place in ALLOWED (tests/layers.rs) \
             and in ARCHITECTURE.md's layer drawing"
        );
    }
    let g = graph(&src);
    for (from, tos) in &g {
        for (to, file) in tos {
            let ok = allowed[from.as_str()].contains(to.as_str())
                || debt.contains(&(from.as_str(), to.as_str()));
            if !ok {
                bad.push(format!("{from} -> {to} (src/{})", file.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "edges the layer graph does not allow (tests/layers.rs ALLOWED):\n  {}",
        bad.join("\n  ")
    );
    for (from, to, why) in KNOWN_DEBT {
        assert!(
            g.get(*from).is_some_and(|t| t.contains_key(*to)),
            "{from} -> {to} is gone ({why}): remove it from KNOWN_DEBT"
        );
    }
}

/// Depth-first search for a cycle in `g`; the cycle's modules in order.
fn find_cycle(g: &BTreeMap<&str, BTreeSet<&str>>) -> Option<Vec<String>> {
    fn visit<'a>(
        n: &'a str,
        g: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for &m in g.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|&s| s == m).expect("on the stack");
                    let mut c: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
                    c.push(m.to_owned());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for &n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_allowed_graph_and_the_code_have_no_cycle() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, to)| (*m, to.iter().copied().collect()))
        .collect();
    assert_eq!(find_cycle(&allowed), None, "ALLOWED itself has a cycle");
    let real = graph(&src_dir());
    let debt: BTreeSet<(&str, &str)> = KNOWN_DEBT.iter().map(|(a, b, _)| (*a, *b)).collect();
    let code: BTreeMap<&str, BTreeSet<&str>> = real
        .iter()
        .map(|(m, to)| {
            let to = to.keys().map(String::as_str);
            (
                m.as_str(),
                to.filter(|t| !debt.contains(&(m.as_str(), *t))).collect(),
            )
        })
        .collect();
    // Without the known debt (which is listed with its reason and may only shrink), the code
    // has no cycle; every other edge already passed ALLOWED, which has none either.
    if let Some(c) = find_cycle(&code) {
        panic!(
            "an import cycle between top-level modules: {}",
            c.join(" -> ")
        );
    }
}

#[test]
fn the_scanner_sees_every_form_of_edge() {
    let code = strip_comments(
        "use crate::a::b;\n// crate::commented\n/* crate::blocked */\nuse crate::{c, d::e, f::{g, h}};\n\
         let x = crate::i::j();\n$crate::logrl::x!();\nlet s = \"http://x\"; crate::k::l;",
    );
    let refs = crate_refs(&code);
    let want: BTreeSet<String> = ["a", "c", "d", "f", "i", "k"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, want);
    let mut g = BTreeMap::new();
    g.insert("x", BTreeSet::from(["y"]));
    g.insert("y", BTreeSet::from(["z"]));
    g.insert("z", BTreeSet::from(["x"]));
    assert_eq!(
        find_cycle(&g),
        Some(vec!["x".into(), "y".into(), "z".into(), "x".into()])
    );
}
