//! Desired kernel state, computed from the cluster state and this node's enrolment: what the
//! `ENROLLED` and `CAPTURE` maps must hold. Pure: the agent writes the result to the maps.
use std::collections::{BTreeMap, HashMap};

use lockmesh_common::{CaptureKey, EnrolledPod, capture};

use crate::{enrolment::Enrolment, model::ClusterState};

/// Numbers Kubernetes namespaces for the kernel's per-class capture decisions; a number, once
/// given, stays with its namespace for the life of the agent (so map keys do not churn).
#[derive(Default)]
pub struct Classes {
    ids: HashMap<String, u32>,
}

impl Classes {
    pub fn of(&mut self, namespace: &str) -> u32 {
        let next = self.ids.len() as u32 + 1;
        *self.ids.entry(namespace.to_string()).or_insert(next)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub enrolled: BTreeMap<u64, EnrolledPod>,
    pub capture: BTreeMap<CaptureKey, u32>,
}

/// Every enrolled pod is steered into the engine for every mesh workload's address (all
/// ports): a mesh destination gets mTLS. Addresses not in the mesh are never captured.
pub fn kernel_state(state: &ClusterState, enrolment: &Enrolment, classes: &mut Classes) -> KernelState {
    let mut desired = KernelState::default();
    let mut pod_classes = std::collections::BTreeSet::new();
    for pod in enrolment.pods() {
        let class = classes.of(&pod.workload.key.namespace);
        pod_classes.insert(class);
        let ip4 = pod.workload.primary_address().map(|ip| u32::from(ip).to_be()).unwrap_or(0);
        desired.enrolled.insert(pod.netns.cookie(), EnrolledPod { ip4, class });
    }
    for class in pod_classes {
        for workload in &state.workloads {
            for ip in &workload.addresses {
                let key = CaptureKey { class, ip4: u32::from(*ip).to_be(), port: 0, _pad: 0 };
                desired.capture.insert(key, capture::TUNNEL);
            }
        }
    }
    desired
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_stable() {
        let mut classes = Classes::default();
        let a = classes.of("bookinfo");
        let b = classes.of("default");
        assert_ne!(a, b);
        assert_eq!(classes.of("bookinfo"), a);
    }
}
