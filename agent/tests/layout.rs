//! The house rules of `agent/src`, checked on the source: every file is a module of the crate
//! (a test file nobody declares is a test that never runs), and the stages import one way:
//! a module takes from its own stage and the stages before it, never from a later one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
use std::{
    collections::BTreeSet,
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

/// The code of a file without its comments (line comments; doc comments are line comments).
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The top-level modules a file names through `crate::…` paths, grouped imports included.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::x, b, c::{y, z}}`: the first segment of each item at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[i..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        found.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            found.insert(name);
        }
    }
    found
}

#[test]
fn stages_import_only_from_earlier_stages() {
    let mut backwards = Vec::new();
    for (relative, file) in &source_files() {
        let Some(stage) = relative.components().next().and_then(|c| c.as_os_str().to_str()) else { continue };
        let stage = stage.trim_end_matches(".rs");
        let Some(rank) = STAGES.iter().position(|s| *s == stage) else {
            assert!(
                ["lib", "main"].contains(&stage),
                "{}: a top-level module missing from STAGES",
                relative.display()
            );
            continue;
        };
        for name in crate_references(&code(file)) {
            let Some(theirs) = STAGES.iter().position(|s| *s == name) else {
                panic!("{}: crate::{name} is not a stage", relative.display());
            };
            if theirs > rank {
                backwards.push(format!("{}: {stage} imports the later stage {name}", relative.display()));
            }
        }
    }
    assert!(backwards.is_empty(), "imports from later stages:\n{}", backwards.join("\n"));
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
