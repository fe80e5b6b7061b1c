//! The house rules of `agent/src`, checked on the source: every file is a module of the crate
//! (a test file nobody declares is a test that never runs); the stages import one way, each
//! taking from its own stage and the stages before it, never from a later one; and inside a
//! stage, no two modules import each other, however indirectly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The top-level modules, in the order they may import each other: each may take from those
/// before it. `sys` and `identity` serve every stage; then the pipeline (cluster → policy →
/// desired → kernel → engine → report); then what serves or wires it.
const STAGES: &[&str] = &[
    "sys",
    "identity",
    "cluster",
    "policy",
    "desired",
    "kernel",
    "engine",
    "report",
    "admin",
    "ca_service",
    "app",
    "cli",
];

/// A module's path from the crate root, e.g. `["report", "flows", "sink"]`.
type ModulePath = Vec<String>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `agent/src`, with its path relative to it.
fn source_files() -> Vec<(PathBuf, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.into_iter().map(|file| (file.strip_prefix(src()).unwrap().to_path_buf(), file)).collect()
}

/// The module a file is: `report/flows/sink.rs` → `report::flows::sink`, `report/mod.rs` →
/// `report`, `lib.rs` → the root.
fn module_of(relative: &Path) -> ModulePath {
    let mut path: ModulePath =
        relative.with_extension("").iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if path.last().is_some_and(|last| last == "mod" || last == "lib" || last == "main") {
        path.pop();
    }
    path
}

/// The code of a file without its comments (line comments; doc comments are line comments).
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn identifier(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Reads a path (or a use tree: `a::{b, c::{d, e}}`) after `prefix`, adding each full path to
/// `out`. Returns the rest of the text.
fn use_tree<'a>(mut s: &'a str, mut prefix: ModulePath, out: &mut Vec<ModulePath>) -> &'a str {
    loop {
        s = s.trim_start();
        if let Some(group) = s.strip_prefix('{') {
            s = group;
            loop {
                s = s.trim_start();
                if let Some(rest) = s.strip_prefix('}') {
                    return rest;
                }
                let rest = use_tree(s, prefix.clone(), out);
                // Whatever the tree does not read (a glob, `as x`) is skipped up to the next item.
                let skip = rest.find([',', '}']).unwrap_or(rest.len());
                s = rest[skip..].strip_prefix(',').unwrap_or(&rest[skip..]);
            }
        }
        let name = identifier(s);
        if name.is_empty() || name == "self" {
            // `a::*`, `a::{self, …}` or the end of the path.
            out.push(prefix);
            return s.strip_prefix('*').unwrap_or(&s[name.len()..]);
        }
        prefix.push(name.to_string());
        s = &s[name.len()..];
        match s.trim_start().strip_prefix("::") {
            Some(rest) => s = rest,
            None => {
                out.push(prefix);
                return s;
            }
        }
    }
}

/// Every path a file names from `crate::`, `super::` or `self::`, resolved from the crate root
/// (items included: `["cluster", "model", "Workload"]`).
fn references(module: &[String], code: &str) -> Vec<ModulePath> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("::") {
        let before = &code[..at];
        let word_start =
            before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        // Only the first segment of a path: `crate`, `super` or `self` not itself after `::`.
        if before[..word_start].ends_with("::") {
            continue;
        }
        let mut prefix: ModulePath = match &before[word_start..] {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            _ => continue,
        };
        let mut rest = &code[at + 2..];
        while let Some(more) = rest.strip_prefix("super::") {
            prefix.pop();
            rest = more;
        }
        use_tree(rest, prefix, &mut out);
    }
    out
}

#[test]
fn stages_import_only_from_earlier_stages() {
    let mut backwards = Vec::new();
    for (relative, file) in &source_files() {
        let module = module_of(relative);
        let Some(stage) = module.first() else { continue };
        let Some(rank) = STAGES.iter().position(|s| s == stage) else {
            panic!("{}: the top-level module {stage} is missing from STAGES", relative.display());
        };
        for path in references(&module, &code(file)) {
            let Some(theirs) = path.first() else { continue };
            let Some(their_rank) = STAGES.iter().position(|s| s == theirs) else {
                panic!("{}: crate::{theirs} is not a stage", relative.display());
            };
            if their_rank > rank {
                backwards.push(format!("{}: {stage} imports the later stage {theirs}", relative.display()));
            }
        }
    }
    backwards.dedup();
    assert!(backwards.is_empty(), "imports from later stages:\n{}", backwards.join("\n"));
}

#[test]
fn sibling_modules_do_not_import_each_other_in_a_circle() {
    let files = source_files();
    let modules: BTreeSet<ModulePath> = files.iter().map(|(relative, _)| module_of(relative)).collect();
    // Under each parent module, which child imports which (through any of its files). Tests and
    // their fixtures are left out: a writer's test that reads the log back with the verifier is a
    // round trip, not a dependency of the writer on the verifier.
    let mut edges: BTreeMap<ModulePath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (relative, file) in &files {
        let module = module_of(relative);
        if module.last().is_some_and(|m| m == "tests" || m == "fixtures") {
            continue;
        }
        for path in references(&module, &code(file)) {
            let common = module.iter().zip(&path).take_while(|(a, b)| a == b).count();
            if common >= module.len() || common >= path.len() {
                continue; // into itself, a descendant or an ancestor
            }
            let target = path[..=common].to_vec();
            if !modules.contains(&target) {
                continue; // an item of the common parent, not a sibling module
            }
            let parent = module[..common].to_vec();
            edges
                .entry(parent)
                .or_default()
                .entry(module[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    let mut circles = Vec::new();
    for (parent, graph) in &edges {
        for start in graph.keys() {
            // Depth-first from `start`: a path that comes back to it is a circle.
            let mut stack = vec![vec![start.clone()]];
            while let Some(walk) = stack.pop() {
                let last = walk.last().unwrap();
                for next in graph.get(last).into_iter().flatten() {
                    if next == start {
                        circles.push(format!("{}: {} → {start}", parent.join("::"), walk.join(" → ")));
                    } else if !walk.contains(next) && next > start {
                        let mut longer = walk.clone();
                        longer.push(next.clone());
                        stack.push(longer);
                    }
                }
            }
        }
    }
    assert!(circles.is_empty(), "modules that import each other:\n{}", circles.join("\n"));
}

#[test]
fn every_source_file_is_a_module_of_the_crate() {
    let mut orphans = Vec::new();
    for (relative, file) in &source_files() {
        let name = file.file_stem().unwrap().to_str().unwrap();
        if relative.parent() == Some(Path::new("")) && ["lib", "main"].contains(&name) {
            continue;
        }
        let dir = file.parent().unwrap();
        // `foo/bar.rs` and `foo/bar/mod.rs` are declared in `foo.rs` or `foo/mod.rs` (`lib.rs` at
        // the root).
        let (declared_in, module) = if name == "mod" {
            (dir.parent().unwrap(), dir.file_name().unwrap().to_str().unwrap())
        } else {
            (dir, name)
        };
        let parents = if declared_in == src() {
            vec![src().join("lib.rs")]
        } else {
            vec![declared_in.join("mod.rs"), declared_in.with_extension("rs")]
        };
        let declared = parents.iter().filter(|p| p.exists()).any(|parent| {
            code(parent).lines().any(|line| {
                let line = line.trim();
                let line =
                    line.strip_prefix("pub(crate) ").or_else(|| line.strip_prefix("pub ")).unwrap_or(line);
                line == format!("mod {module};")
            })
        });
        if !declared {
            orphans.push(relative.display().to_string());
        }
    }
    assert!(
        orphans.is_empty(),
        "files no module declares (never compiled, their tests never run): {orphans:?}"
    );
}
