//! The server's module graph has no cycles.
//!
//! The rule: a module may use the modules below it, never one that (even
//! through others) uses it back. Each top-level module of `server/src` is
//! one node (`src/x.rs`, or the folder `src/x/` with everything in it);
//! `x` depends on `y` when any non-comment line under `x` names
//! `crate::y` (in a `use`, a path or a `use crate::{y, ..}` group). `lib.rs`
//! and `main.rs` are the roots and are left out. When this test fails it
//! prints the cycle: break it by moving what both sides need into a module
//! below them (ids in `ids`, wire conversions in `wire`, ...) or by
//! passing a dependency in instead of importing its owner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges known to be wrong and owned elsewhere, each with the reason.
/// Empty: every module points down (add none without a reason and a plan).
const ALLOWED: &[(&str, &str, &str)] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code names through `crate::`.
fn named_modules(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let code = code.split("//").next().unwrap_or(code);
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        // `crate::{a, b::c}`: every first segment of the group.
        let names: Vec<&str> = match after.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or("");
                group
                    .split(',')
                    .map(|part| part.trim().split("::").next().unwrap_or(""))
                    .collect()
            }
            None => vec![after],
        };
        for name in names {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
        rest = after;
    }
    found
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative
            .components()
            .next()
            .expect("a path under src")
            .as_os_str()
            .to_string_lossy()
            .to_string();
        let node = first.trim_end_matches(".rs").to_string();
        if node == "lib" || node == "main" || node == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a source file is readable");
        let edges = graph.entry(node.clone()).or_default();
        for line in text.lines() {
            for target in named_modules(line) {
                if target != node
                    && !ALLOWED
                        .iter()
                        .any(|(from, to, _)| *from == node && *to == target)
                {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

/// A cycle through `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path
                        .iter()
                        .position(|n| n == next)
                        .expect("open is on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycles() {
    let graph = module_graph();
    assert!(graph.contains_key("session") && graph.contains_key("room"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between the server's modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_checker_finds_a_cycle_and_reads_groups() {
    assert_eq!(
        named_modules("use crate::{ids::RoomId, wire}; // crate::nope"),
        vec!["ids", "wire"]
    );
    assert!(named_modules("//! see [`crate::room`]").is_empty());
    assert_eq!(
        named_modules("let x = crate::store::ids::fresh();"),
        vec!["store"]
    );
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
    graph.get_mut("c").unwrap().insert("a".to_string());
    assert_eq!(
        find_cycle(&graph),
        Some(
            vec!["a", "b", "c", "a"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );
}
