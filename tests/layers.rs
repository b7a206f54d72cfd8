//! The module graph of `src/`: layers point one way. Read from the source, every `crate::<module>`
//! a top-level module names is an edge; the graph must have no cycle, the database and the cache
//! must not know each other, and the core must not know its faces or the assembly above it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str();
            let module = first.to_str().unwrap().trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let named = graph.entry(module.clone()).or_default();
            for target in crate_references(&text) {
                if target != module {
                    named.insert(target);
                }
            }
        }
    }
    graph
}

/// The first path segment after each `crate::`, including every item of `crate::{a, b::c}`.
fn crate_references(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let end = list.find('}').unwrap_or(list.len());
            found.extend(list[..end].split(',').map(ident).filter(|s| !s.is_empty()));
        } else {
            found.push(ident(rest));
        }
    }
    found
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = module_graph();
    assert!(
        graph.contains_key("service") && graph.contains_key("db"),
        "{graph:?}"
    );
    assert_eq!(find_cycle(&graph), None, "{graph:#?}");
}

#[test]
fn the_core_sits_above_the_store_and_the_cache_and_below_its_faces() {
    let graph = module_graph();
    let names = |m: &str| graph.get(m).cloned().unwrap_or_default();
    assert!(!names("db").contains("cache"), "db imports the cache");
    assert!(!names("cache").contains("db"), "the cache imports db");
    for face in ["grpc", "http"] {
        assert!(names(face).contains("service"), "{face} calls the core");
        assert!(
            !names(face).contains("db") && !names(face).contains("cache"),
            "{face} reaches past the core: {:?}",
            names(face)
        );
    }
    for above in ["grpc", "http", "server", "cli", "dev"] {
        assert!(
            !names("service").contains(above),
            "the core imports {above}"
        );
    }
    for module in graph.keys() {
        let named = names(module);
        if module != "cli" {
            assert!(!named.contains("cli"), "{module} imports cli");
        }
        if !["cli", "dev"].contains(&module.as_str()) {
            assert!(!named.contains("server"), "{module} imports the assembly");
            assert!(!named.contains("local"), "{module} imports the dev harness");
        }
    }
    assert!(
        names("config").is_empty() || names("config") == BTreeSet::from(["error".to_string()]),
        "config imports {:?}",
        names("config")
    );
}

#[test]
fn references_are_read_from_braced_and_plain_paths() {
    let text = "use crate::{db, etl::load, server};\nlet x = crate::cache::Cache::new();";
    assert_eq!(crate_references(text), ["db", "etl", "server", "cache"]);
}
