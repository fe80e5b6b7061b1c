//! The local config dir: every `*.yaml`/`*.yml` file in a directory, multi-document, holding
//! lockmesh's own kinds (`Workload`), Kubernetes `Service`s and Istio's `PeerAuthentication` and
//! `DestinationRule` — the embedded default source when there is no Kubernetes API.
//!
//! Errors name the file, the document and the field. A broken file or object never takes the
//! agent down: the last good version of what it described stays in force (see [`ConfigDir`]).
//! Warnings ([`ConfigError::is_warning`]) report what Istio would accept but ignore, or what
//! lockmesh does not honour; the object is kept.
mod documents;
mod error;
pub(crate) mod watch;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use documents::{Object, ObjectId, ParsedObject, parse_file};
pub use error::ConfigError;

use crate::cluster::model::{ClusterState, ObjectKey, PeerAuthentication, Workload, creation_order};

/// Istio's default root namespace: where mesh-wide policies live.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The config dir and, per file, the objects of its last good read.
pub struct ConfigDir {
    dir: PathBuf,
    root_namespace: String,
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
        Self { dir: dir.into(), root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(), files: BTreeMap::new() }
    }

    /// Sets Istio's root namespace (`istio-system` by default), for the warnings that need it.
    pub fn with_root_namespace(mut self, root_namespace: impl Into<String>) -> Self {
        self.root_namespace = root_namespace.into();
        self
    }

    /// Reads the directory again. Fails only if the directory itself cannot be listed.
    pub fn reload(&mut self) -> Result<Reload, ConfigError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| ConfigError::io(&self.dir, &e))?;
        let mut paths: Vec<PathBuf> =
            entries.filter_map(|entry| entry.ok().map(|e| e.path())).filter(|p| is_config_file(p)).collect();
        paths.sort();
        Ok(self.load(paths.into_iter().map(|path| {
            let text = fs::read_to_string(&path);
            (path, text)
        })))
    }

    /// What [`reload`](Self::reload) does with the directory's files (each path, in order, with
    /// its text or the error reading it): parse them, keep the last good version of what a broken
    /// one described, and merge everything into the state. Files not listed are forgotten.
    /// Public for the fuzz targets (`agent/fuzz`), which feed it without a directory.
    #[doc(hidden)]
    pub fn load(&mut self, files: impl IntoIterator<Item = (PathBuf, std::io::Result<String>)>) -> Reload {
        let mut errors = Vec::new();
        let mut files_now = BTreeMap::new();
        for (path, text) in files {
            let previous = self.files.remove(&path).unwrap_or_default();
            let objects = match text {
                Ok(text) => {
                    let (parsed, file_errors) = parse_file(&path, &text, &self.root_namespace);
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
            files_now.insert(path, objects);
        }
        self.files = files_now;
        let (state, merge_errors) = self.state();
        errors.extend(merge_errors);
        Reload { state, errors }
    }

    fn state(&self) -> (ClusterState, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let mut workloads = Unique::default();
        let mut services = Unique::default();
        let mut peer_authentications = Unique::default();
        let mut destination_rules = Unique::default();
        for (path, objects) in &self.files {
            for object in objects {
                let at = (path, object);
                match &object.kind {
                    Object::Workload(w) => workloads.insert(at, &w.key, w, &mut errors),
                    Object::Service(s) => services.insert(at, &s.key, s, &mut errors),
                    Object::PeerAuthentication(p) => peer_authentications.insert(at, &p.key, p, &mut errors),
                    Object::DestinationRule(d) => destination_rules.insert(at, &d.key, d, &mut errors),
                }
            }
        }
        shadowed_peer_authentications(&peer_authentications, &mut errors);
        let workloads = drop_address_conflicts(workloads.0, &mut errors);
        let state = ClusterState {
            workloads,
            services: services.into_values(),
            peer_authentications: peer_authentications.into_values(),
            destination_rules: destination_rules.into_values(),
        };
        (state, errors)
    }
}

/// An object with the file and document that defined it.
type Located<T> = (PathBuf, Option<usize>, Arc<T>);

/// Objects of one kind by key.
struct Unique<T>(BTreeMap<ObjectKey, Located<T>>);

impl<T> Default for Unique<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<T: Clone> Unique<T> {
    /// Keeps the first definition of a key (by file, then document order); reports the others.
    fn insert(
        &mut self,
        (path, object): (&PathBuf, &ParsedObject),
        key: &ObjectKey,
        value: &T,
        errors: &mut Vec<ConfigError>,
    ) {
        if let Some((first, _, _)) = self.0.get(key) {
            errors.push(ConfigError::object(
                path,
                object.document,
                &object.id,
                None,
                format!("duplicate {}, already defined in {}", object.id.kind, first.display()),
            ));
            return;
        }
        self.0.insert(key.clone(), (path.clone(), object.document, Arc::new(value.clone())));
    }

    fn into_values(self) -> Vec<Arc<T>> {
        self.0.into_values().map(|(_, _, v)| v).collect()
    }
}

/// Istio applies one policy without selector per namespace (the oldest) and ignores the others.
fn shadowed_peer_authentications(all: &Unique<PeerAuthentication>, errors: &mut Vec<ConfigError>) {
    let mut by_namespace: BTreeMap<&str, Vec<&Located<PeerAuthentication>>> = BTreeMap::new();
    for located in all.0.values() {
        if !located.2.has_selector() {
            by_namespace.entry(located.2.key.namespace.as_str()).or_default().push(located);
        }
    }
    for policies in by_namespace.values_mut() {
        policies.sort_by(|a, b| {
            creation_order((a.2.creation_timestamp, &a.2.key), (b.2.creation_timestamp, &b.2.key))
        });
        let Some(((_, _, winner), rest)) = policies.split_first() else { continue };
        for (path, document, pa) in rest.iter().copied() {
            errors.push(ConfigError::warning(
                path,
                *document,
                Some(&ObjectId::new("PeerAuthentication", &pa.key)),
                None,
                format!(
                    "PeerAuthentication {} (older) already applies to namespace {}; this one is ignored",
                    winner.key, pa.key.namespace
                ),
            ));
        }
    }
}

/// Two workloads claiming one address would make flows and identities ambiguous: the one defined
/// later (by file, then document order) is left out.
fn drop_address_conflicts(
    workloads: BTreeMap<ObjectKey, Located<Workload>>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<Workload>> {
    let mut ordered: Vec<_> = workloads.into_values().collect();
    ordered.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut owners: BTreeMap<std::net::Ipv4Addr, ObjectKey> = BTreeMap::new();
    let mut kept = Vec::new();
    for (path, document, w) in ordered {
        if let Some((ip, owner)) = w.addresses.iter().find_map(|ip| owners.get(ip).map(|o| (ip, o))) {
            errors.push(ConfigError::object(
                &path,
                document,
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
/// the broken document meant (same kind, namespace and name). A previous version that a valid
/// document of this read still defines (at the same position) is that document's, not the broken
/// one's: a broken duplicate of a valid object has no good version to keep.
fn merge_with_previous(
    parsed: Vec<Result<ParsedObject, Option<ObjectId>>>,
    previous: Vec<ParsedObject>,
) -> Vec<ParsedObject> {
    let valid: Vec<(ObjectId, Option<usize>)> =
        parsed.iter().filter_map(|p| p.as_ref().ok()).map(|p| (p.id.clone(), p.document)).collect();
    let mut out = Vec::with_capacity(parsed.len());
    for item in parsed {
        match item {
            Ok(object) => out.push(object),
            Err(Some(id)) => {
                let still_valid =
                    |p: &ParsedObject| valid.iter().any(|(i, d)| *i == p.id && *d == p.document);
                if let Some(old) = previous.iter().find(|p| p.id == id && !still_valid(p)) {
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
