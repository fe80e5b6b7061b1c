//! The local config dir: every `*.yaml`/`*.yml` file in a directory, multi-document, holding
//! lockmesh's own kinds (and, later, Istio's and Kubernetes' kinds) — the embedded default source
//! when there is no Kubernetes API.
//!
//! Errors name the file, the document and the field. A broken file or object never takes the
//! agent down: the last good version of what it described stays in force (see [`ConfigDir`]).
mod error;
mod objects;
pub mod watch;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use error::ConfigError;
use objects::{ObjectId, ParsedObject, parse_file};

use crate::model::{ClusterState, Workload};

/// The config dir and, per file, the objects of its last good read.
pub struct ConfigDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, Vec<ParsedObject>>,
}

/// The result of one read of the directory.
#[derive(Debug)]
pub struct Reload {
    pub state: ClusterState,
    /// Problems found; what they concern kept its last good version (or was left out).
    pub errors: Vec<ConfigError>,
}

impl ConfigDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), files: BTreeMap::new() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again. Fails only if the directory itself cannot be listed.
    pub fn reload(&mut self) -> Result<Reload, ConfigError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| ConfigError::io(&self.dir, &e))?;
        let mut paths: Vec<PathBuf> =
            entries.filter_map(|entry| entry.ok().map(|e| e.path())).filter(|p| is_config_file(p)).collect();
        paths.sort();

        let mut errors = Vec::new();
        let mut files = BTreeMap::new();
        for path in paths {
            let previous = self.files.remove(&path).unwrap_or_default();
            let objects = match fs::read_to_string(&path) {
                Ok(text) => {
                    let (parsed, file_errors) = parse_file(&path, &text);
                    if file_errors.iter().any(ConfigError::is_syntax) {
                        // The file is unreadable as YAML: keep everything it held before.
                        errors.extend(file_errors);
                        previous
                    } else {
                        errors.extend(file_errors);
                        merge_with_previous(parsed, previous)
                    }
                }
                Err(e) => {
                    errors.push(ConfigError::io(&path, &e));
                    previous
                }
            };
            files.insert(path, objects);
        }
        self.files = files;
        let (state, merge_errors) = self.state();
        errors.extend(merge_errors);
        Ok(Reload { state, errors })
    }

    fn state(&self) -> (ClusterState, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let mut workloads: BTreeMap<_, (PathBuf, Arc<Workload>)> = BTreeMap::new();
        for (path, objects) in &self.files {
            for object in objects {
                match &object.kind {
                    objects::Object::Workload(w) => {
                        if let Some((first, _)) = workloads.get(&w.key) {
                            errors.push(ConfigError::object(
                                path,
                                object.document,
                                &object.id,
                                None,
                                format!("duplicate Workload, already defined in {}", first.display()),
                            ));
                            continue;
                        }
                        workloads.insert(w.key.clone(), (path.clone(), Arc::new(w.clone())));
                    }
                }
            }
        }
        let workloads = drop_address_conflicts(workloads, &mut errors);
        (ClusterState { workloads }, errors)
    }
}

/// Two workloads claiming one address would make flows and identities ambiguous: the one defined
/// later (by file, then document order) is left out.
fn drop_address_conflicts(
    workloads: BTreeMap<crate::model::ObjectKey, (PathBuf, Arc<Workload>)>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<Workload>> {
    let mut ordered: Vec<_> = workloads.into_values().collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0));
    let mut owners: BTreeMap<std::net::Ipv4Addr, crate::model::ObjectKey> = BTreeMap::new();
    let mut kept = Vec::new();
    for (path, w) in ordered {
        if let Some((ip, owner)) = w.addresses.iter().find_map(|ip| owners.get(ip).map(|o| (ip, o))) {
            errors.push(ConfigError::object(
                &path,
                None,
                &ObjectId::new("Workload", &w.key),
                Some("spec.addresses".into()),
                format!("address {ip} already belongs to Workload {owner}; workload ignored"),
            ));
            continue;
        }
        for ip in &w.addresses {
            owners.insert(*ip, w.key.clone());
        }
        kept.push(w);
    }
    kept
}

/// Objects that failed to parse keep their previous good version when we can tell which object
/// the broken document meant (same kind, namespace and name).
fn merge_with_previous(
    parsed: Vec<Result<ParsedObject, Option<ObjectId>>>,
    previous: Vec<ParsedObject>,
) -> Vec<ParsedObject> {
    let mut out = Vec::with_capacity(parsed.len());
    for item in parsed {
        match item {
            Ok(object) => out.push(object),
            Err(Some(id)) => {
                if let Some(old) = previous.iter().find(|p| p.id == id) {
                    out.push(old.clone());
                }
            }
            Err(None) => {}
        }
    }
    out
}

fn is_config_file(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    yaml && !hidden && path.is_file()
}

#[cfg(test)]
mod tests;
