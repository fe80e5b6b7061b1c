//! PeerAuthentication: the mTLS mode a workload accepts, resolved as Istio does
//! (`ComposePeerAuthentication` in pilot):
//!
//! - scopes: mesh-wide = no selector, in the root namespace; namespace-wide = no selector, in the
//!   workload's namespace; workload = `selector.matchLabels` ⊆ the workload's labels, in the
//!   workload's namespace. Policies with a selector in the root namespace are ignored. An empty
//!   `matchLabels` counts as no selector.
//! - within a scope, when several match, the oldest `creationTimestamp` wins, ties broken by
//!   `name.namespace`; a missing timestamp counts as the oldest (Istio reads it as Go's zero time).
//!   Policies are never merged.
//! - the mode starts PERMISSIVE; mesh, then namespace, then workload policy override it, skipping
//!   UNSET (inheritance).
//! - `portLevelMtls` is honoured only in the winning workload-scope policy, keyed by the
//!   workload's (container) port; a port-level UNSET takes the workload's effective mode.
use std::{collections::BTreeMap, fmt};

use serde::Serialize;

use super::MeshParams;
use crate::cluster::model::{
    ClusterState, ObjectKey, PeerAuthentication, PeerMtlsMode, Workload, creation_order,
};

/// The mode a server enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Plaintext and mTLS both accepted (Istio's default).
    Permissive,
    /// mTLS only.
    Strict,
    /// Plaintext only.
    Disable,
}

impl MtlsMode {
    fn from_peer(mode: PeerMtlsMode) -> Option<Self> {
        match mode {
            PeerMtlsMode::Unset => None,
            PeerMtlsMode::Disable => Some(Self::Disable),
            PeerMtlsMode::Permissive => Some(Self::Permissive),
            PeerMtlsMode::Strict => Some(Self::Strict),
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
            Self::Disable => "DISABLE",
        })
    }
}

/// An effective mode and what decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub mode: MtlsMode,
    /// The PeerAuthentication whose mode applies: the most specific one that is not UNSET, or for
    /// a port-level mode, the workload policy listing the port. `None`: no policy, the PERMISSIVE
    /// default.
    pub decided_by: Option<ObjectKey>,
    /// Whether a `portLevelMtls` entry decided (also when it is UNSET and inherits).
    pub port_level: bool,
}

impl Resolved {
    /// E.g. `PeerAuthentication istio-system/default STRICT`, or `default PERMISSIVE`.
    pub fn describe(&self) -> String {
        match &self.decided_by {
            Some(key) if self.port_level => format!("PeerAuthentication {key} port-level {}", self.mode),
            Some(key) => format!("PeerAuthentication {key} {}", self.mode),
            None => format!("default {}", self.mode),
        }
    }
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A workload's modes: the default and those of the ports its workload policy lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadMtls {
    pub default: Resolved,
    /// The ports of the winning workload-scope policy's `portLevelMtls`.
    pub ports: BTreeMap<u16, Resolved>,
}

impl WorkloadMtls {
    /// The mode on `port` (a workload port), or the default.
    pub fn for_port(&self, port: Option<u16>) -> &Resolved {
        port.and_then(|p| self.ports.get(&p)).unwrap_or(&self.default)
    }
}

/// The winning policy of each scope for one workload.
#[derive(Debug, Default)]
struct Applicable<'a> {
    mesh: Option<&'a PeerAuthentication>,
    namespace: Option<&'a PeerAuthentication>,
    workload: Option<&'a PeerAuthentication>,
}

fn applicable<'a>(state: &'a ClusterState, root_namespace: &str, workload: &Workload) -> Applicable<'a> {
    let oldest = |current: &mut Option<&'a PeerAuthentication>, candidate: &'a PeerAuthentication| {
        let older = current.is_none_or(|c| {
            creation_order((candidate.creation_timestamp, &candidate.key), (c.creation_timestamp, &c.key))
                .is_lt()
        });
        if older {
            *current = Some(candidate);
        }
    };
    let mut found = Applicable::default();
    for pa in &state.peer_authentications {
        let namespace = pa.key.namespace.as_str();
        if !pa.has_selector() {
            if namespace == root_namespace {
                oldest(&mut found.mesh, pa);
            } else if namespace == workload.key.namespace {
                oldest(&mut found.namespace, pa);
            }
        } else if namespace != root_namespace
            && namespace == workload.key.namespace
            && pa.selector.iter().all(|(k, v)| workload.labels.get(k) == Some(v))
        {
            oldest(&mut found.workload, pa);
        }
    }
    found
}

/// All of a workload's modes (see the module documentation for the rules).
pub fn workload_mtls(state: &ClusterState, params: &MeshParams, workload: &Workload) -> WorkloadMtls {
    let found = applicable(state, &params.root_namespace, workload);
    let mut default = Resolved { mode: MtlsMode::Permissive, decided_by: None, port_level: false };
    for pa in [found.mesh, found.namespace, found.workload].into_iter().flatten() {
        if let Some(mode) = MtlsMode::from_peer(pa.mode) {
            default = Resolved { mode, decided_by: Some(pa.key.clone()), port_level: false };
        }
    }
    let ports = found
        .workload
        .map(|pa| {
            pa.port_level_mtls
                .iter()
                .map(|(port, mode)| {
                    let mode = MtlsMode::from_peer(*mode).unwrap_or(default.mode);
                    (*port, Resolved { mode, decided_by: Some(pa.key.clone()), port_level: true })
                })
                .collect()
        })
        .unwrap_or_default();
    WorkloadMtls { default, ports }
}

/// The mode a workload enforces on `port` (a workload/container port; `None`: its default).
pub fn effective_mtls(
    state: &ClusterState,
    params: &MeshParams,
    workload: &Workload,
    port: Option<u16>,
) -> Resolved {
    workload_mtls(state, params, workload).for_port(port).clone()
}

#[cfg(test)]
mod tests;
