//! The runtime's layers, checked: no module imports from a layer above it.
//!
//! Reads every source file under `runtime/src`, finds each `crate::…` path
//! (in `use` items and inline, names re-exported at the crate root resolved
//! to the module that defines them) and fails on any that points up the
//! order below, unless it is one of the known upward imports listed in
//! [`KNOWN_UPWARD`], each of which is to be removed (and then struck from the
//! list: an entry that no longer occurs fails the test too, so the list only
//! shrinks). Only top-level modules are checked; submodules of one module
//! are its own business.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The top-level modules of the runtime, lowest layer first. A module may
/// import from any module before it, never from one after it.
const LAYERS: &[&str] = &[
    "wire",
    "transport",
    "error",
    "descriptor",
    "discovery",
    "peer",
    "observe",
    "intercept",
    "access",
    "connection",
    "codec",
    "router",
    "health",
    "reflection",
    "endpoint",
    "typed",
    "socket",
    "node",
    "patterns",
    "files",
];

/// Upward imports that exist today, each with what it is waiting for: none.
/// An entry here is a debt to pay, not a way to pass the check.
const KNOWN_UPWARD: &[(&str, &str, &str)] = &[];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for the crate root).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src_dir()).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib").then_some(name)
}

/// The code of a file, without comment lines (doc links are not imports).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of every `crate::…` path in `code` (each item of a
/// `crate::{…}` group counts).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        // `$crate::` in macros and `foo_crate::` are not this crate's paths.
        if before.is_some_and(|c| c == '$' || c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        out.push(ident_at(&group[i..]).to_owned());
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident_at(after).to_owned());
        }
    }
    out
}

/// The root's inline modules that only gather re-exports for the public
/// surface (`pub mod server { pub use crate::endpoint::…; }`): a path through
/// one hides the module that defines the item, so inside the crate items are
/// named by their defining module instead.
fn facade_modules(lib: &str) -> BTreeSet<String> {
    let lib = code(lib);
    let mut out = BTreeSet::new();
    let mut rest = lib.as_str();
    while let Some(at) = rest.find("pub mod ") {
        let after = &rest[at + "pub mod ".len()..];
        rest = after;
        let name = ident_at(after);
        let Some(body) = after[name.len()..].trim_start().strip_prefix('{') else {
            continue;
        };
        let body = &body[..body.find('}').unwrap_or(body.len())];
        if body.contains("pub use crate::") {
            out.insert(name.to_owned());
        }
    }
    out
}

/// What the crate root re-exports from its own modules: name → module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let lib = code(lib);
    let mut rest = lib.as_str();
    while let Some(at) = rest.find("pub use crate::") {
        let stmt_start = &rest[at + "pub use crate::".len()..];
        let end = stmt_start.find(';').expect("a use ends with ;");
        let stmt = &stmt_start[..end];
        rest = &stmt_start[end..];
        let module = ident_at(stmt).to_owned();
        let names: Vec<&str> = match (stmt.find('{'), stmt.rfind('}')) {
            (Some(a), Some(b)) => stmt[a + 1..b].split(',').collect(),
            _ => vec![stmt.rsplit("::").next().unwrap_or(stmt)],
        };
        for name in names {
            // `A as B` is reached as `B`.
            let name = name.rsplit(" as ").next().unwrap_or(name).trim();
            let name = name.rsplit("::").next().unwrap_or(name).trim();
            if !name.is_empty() {
                map.insert(name.to_owned(), module.clone());
            }
        }
    }
    map
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = src_dir();
    let lib = fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let reexports = root_reexports(&lib);
    let facades = facade_modules(&lib);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();

    let mut unplaced = BTreeSet::new();
    let mut unresolved = BTreeSet::new();
    let mut through_facade = BTreeSet::new();
    let mut upward: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(own) = rank(&module) else {
            unplaced.insert(module);
            continue;
        };
        let text = fs::read_to_string(file).expect("source file");
        let shown = file
            .strip_prefix(&src)
            .expect("under src")
            .display()
            .to_string();
        for first in crate_paths(&code(&text)) {
            if facades.contains(&first) {
                through_facade.insert(format!("crate::{first} in {shown}"));
                continue;
            }
            let target = if rank(&first).is_some() {
                first.clone()
            } else if let Some(m) = reexports.get(&first) {
                m.clone()
            } else if lib.contains(&format!("pub mod {first}"))
                || lib.contains(&format!("macro_rules! {first}"))
                || lib.contains(&format!("::{first};"))
                || first == "self"
            {
                // The root's own items (the `codegen` module) and names it
                // takes from other crates (`Bytes`, `service`).
                continue;
            } else {
                unresolved.insert(format!("crate::{first} in {shown}"));
                continue;
            };
            if target == module {
                continue;
            }
            let Some(theirs) = rank(&target) else {
                unplaced.insert(target);
                continue;
            };
            if theirs > own {
                upward
                    .entry((module.clone(), target))
                    .or_default()
                    .insert(shown.clone());
            }
        }
    }

    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS (give each its place in the order): {unplaced:?}"
    );
    assert!(
        unresolved.is_empty(),
        "paths this check cannot place in a module: {unresolved:?}"
    );
    assert!(
        through_facade.is_empty(),
        "paths through the root's re-export modules (name the defining module instead, so this check sees the layer): {through_facade:?}"
    );
    let known: BTreeSet<(String, String)> = KNOWN_UPWARD
        .iter()
        .map(|(a, b, _)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<String> = upward
        .iter()
        .filter(|(edge, _)| !known.contains(*edge))
        .map(|((from, to), files)| format!("{from} → {to} (in {files:?})"))
        .collect();
    assert!(
        new.is_empty(),
        "imports from a layer above (the order is LAYERS in this file, and lib.rs's docs): {new:#?}"
    );
    let gone: Vec<&(String, String)> = known.iter().filter(|e| !upward.contains_key(*e)).collect();
    assert!(
        gone.is_empty(),
        "known upward imports that no longer occur; strike them from KNOWN_UPWARD: {gone:?}"
    );
}

#[test]
fn the_path_reader_sees_groups_reexports_and_not_macros() {
    let paths = crate_paths(
        "use crate::wire::{self, Frame};\nuse crate::{error::Reject, connection::{A, B}};\n\
         let x = crate::NodeId(1); $crate::codec::MsgPack; my_crate::x;",
    );
    assert_eq!(paths, ["wire", "error", "connection", "NodeId"]);
    let map = root_reexports("pub use crate::connection::{\n    Connection, NodeId,\n};\npub use crate::transport::Url;\npub use bytes::Bytes;");
    assert_eq!(map.get("NodeId").map(String::as_str), Some("connection"));
    assert_eq!(map.get("Url").map(String::as_str), Some("transport"));
    assert!(!map.contains_key("Bytes"));
    let facades = facade_modules(
        "pub mod wire;\npub mod server {\n    pub use crate::endpoint::Listening;\n}\n\
         pub mod codegen {\n    pub use prost;\n}",
    );
    assert_eq!(facades.into_iter().collect::<Vec<_>>(), ["server"]);
}
