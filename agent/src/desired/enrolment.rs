//! Which of this node's workloads are in the mesh right now, each with its open network
//! namespace. Reconciled against every new cluster state.
use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _, sync::Arc};

use crate::{
    cluster::model::{ClusterState, ObjectKey, Workload},
    sys::netns::NetNs,
};

/// An enrolled workload and its namespace.
#[derive(Debug)]
pub struct EnrolledWorkload {
    pub workload: Arc<Workload>,
    pub netns: Arc<NetNs>,
    /// Device and inode of the namespace when opened, to notice a new namespace at the same path
    /// (a restarted pod).
    ns_id: (u64, u64),
}

#[derive(Default)]
pub(crate) struct Enrolment {
    pods: BTreeMap<ObjectKey, EnrolledWorkload>,
    /// Local workloads that could not be enrolled yet, with the reason (retried).
    pending: BTreeMap<ObjectKey, String>,
}

/// What a reconcile changed, for logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub enrolled: Vec<ObjectKey>,
    pub unenrolled: Vec<ObjectKey>,
    pub updated: Vec<ObjectKey>,
}

impl Enrolment {
    /// Enrols this node's workloads of `state`, unenrols the rest.
    pub(crate) fn reconcile(&mut self, node: &str, state: &ClusterState) -> Changes {
        let mut changes = Changes::default();
        let local: BTreeMap<&ObjectKey, &Arc<Workload>> =
            state.workloads.iter().filter(|w| w.node == node).map(|w| (&w.key, w)).collect();

        let gone: Vec<ObjectKey> = self.pods.keys().filter(|k| !local.contains_key(k)).cloned().collect();
        for key in gone {
            self.pods.remove(&key);
            changes.unenrolled.push(key);
        }
        self.pending.retain(|k, _| local.contains_key(k));

        for (key, workload) in local {
            match self.pods.get_mut(key) {
                Some(current) if same_namespace(current, workload) => {
                    if current.workload != *workload {
                        current.workload = workload.clone();
                        changes.updated.push(key.clone());
                    }
                }
                existing => {
                    let was_enrolled = existing.is_some();
                    match open(workload) {
                        Ok(pod) => {
                            self.pods.insert(key.clone(), pod);
                            self.pending.remove(key);
                            if was_enrolled {
                                changes.updated.push(key.clone());
                            } else {
                                changes.enrolled.push(key.clone());
                            }
                        }
                        Err(reason) => {
                            if self.pods.remove(key).is_some() {
                                changes.unenrolled.push(key.clone());
                            }
                            if self.pending.get(key) != Some(&reason) {
                                tracing::warn!(workload = %key, %reason, "cannot enrol workload yet; will retry");
                            }
                            self.pending.insert(key.clone(), reason);
                        }
                    }
                }
            }
        }
        changes
    }

    /// Some local workloads wait for their namespace to appear.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(crate) fn pods(&self) -> impl Iterator<Item = &EnrolledWorkload> {
        self.pods.values()
    }
}

fn open(workload: &Arc<Workload>) -> Result<EnrolledWorkload, String> {
    let Some(path) = &workload.netns else {
        return Err("spec.netns is not set; a workload on this node needs its network namespace path".into());
    };
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let netns = NetNs::open(path).map_err(|e| format!("{e:#}"))?;
    Ok(EnrolledWorkload {
        workload: workload.clone(),
        netns: Arc::new(netns),
        ns_id: (meta.dev(), meta.ino()),
    })
}

/// Still the same namespace: same path, and the path still names the namespace we opened.
fn same_namespace(current: &EnrolledWorkload, workload: &Workload) -> bool {
    let Some(path) = &workload.netns else { return false };
    path == current.netns.path() && std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == current.ns_id)
}
