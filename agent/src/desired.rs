//! Desired kernel state, computed from the cluster state, Istio policy and this node's
//! enrolment: what the `ENROLLED`, `CAPTURE`, `STRICT` and `STRICT_EXEMPT` maps must hold. Pure:
//! the agent writes the result to the maps.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use lockmesh_common::{CaptureKey, EnrolledPod, ExemptKey, StrictKey, capture, strict};

use crate::{
    enrolment::Enrolment,
    model::{ClusterIp, ClusterState, Workload},
    policy::{self, Destination, MeshParams, MtlsMode},
};

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

/// A source allowed to reach STRICT ports in plaintext (`port` 0: every port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StrictExemption {
    pub source: Ipv4Addr,
    pub port: u16,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub enrolled: BTreeMap<u64, EnrolledPod>,
    pub capture: BTreeMap<CaptureKey, u32>,
    pub strict: BTreeMap<StrictKey, u32>,
    pub exempt: BTreeMap<ExemptKey, u32>,
}

pub fn kernel_state(
    state: &ClusterState,
    mesh: &MeshParams,
    enrolment: &Enrolment,
    classes: &mut Classes,
    exemptions: &[StrictExemption],
) -> KernelState {
    let mut desired = KernelState::default();
    let mut client_namespaces = BTreeMap::new();
    for pod in enrolment.pods() {
        let class = classes.of(&pod.workload.key.namespace);
        client_namespaces.insert(class, pod.workload.key.namespace.clone());
        let ip4 = pod.workload.primary_address().map(|ip| u32::from(ip).to_be()).unwrap_or(0);
        desired.enrolled.insert(pod.netns.cookie(), EnrolledPod { ip4, class });
        strict_entries(state, mesh, &pod.workload, &mut desired.strict);
    }
    for (class, namespace) in &client_namespaces {
        for workload in &state.workloads {
            capture_entries(state, mesh, *class, namespace, workload, &mut desired.capture);
        }
        // A cluster IP is only ever answered by the engine's load balancing (there is no
        // kube-proxy behind it here): always captured; the engine picks mTLS or plaintext.
        for service in &state.services {
            let Some(ClusterIp::Address(ip)) = service.cluster_ip else { continue };
            for port in &service.ports {
                let key = CaptureKey { class: *class, ip4: u32::from(ip).to_be(), port: port.port, _pad: 0 };
                desired.capture.insert(key, capture::TUNNEL);
            }
        }
    }
    for exemption in exemptions {
        let key = ExemptKey { src_ip4: u32::from(exemption.source).to_be(), port: exemption.port, _pad: 0 };
        desired.exempt.insert(key, 1);
    }
    desired
}

/// Capture decisions of one client namespace towards one workload: a port-0 default from the
/// workload's own mode, and exact ports wherever a Service port, a DestinationRule port or a
/// port-level PeerAuthentication decides differently.
fn capture_entries(
    state: &ClusterState,
    mesh: &MeshParams,
    class: u32,
    client_namespace: &str,
    workload: &Workload,
    capture: &mut BTreeMap<CaptureKey, u32>,
) {
    let decide = |port: u16| {
        let outbound = policy::outbound_tls(
            state,
            mesh,
            client_namespace,
            &Destination::Workload { workload, port },
            true,
        );
        if outbound.mtls { capture::TUNNEL } else { capture::DIRECT }
    };
    let default = decide(0);
    let mut ports: BTreeSet<u16> =
        policy::workload_mtls(state, mesh, workload).ports.keys().copied().collect();
    for service in state.services.iter().filter(|s| policy::selects(s, workload)) {
        ports.extend(service.ports.iter().map(|p| policy::target_port(p, workload)));
    }
    for ip in &workload.addresses {
        let ip4 = u32::from(*ip).to_be();
        if default == capture::TUNNEL {
            capture.insert(CaptureKey { class, ip4, port: 0, _pad: 0 }, default);
        }
        for &port in ports.iter().filter(|p| **p != 0) {
            let action = decide(port);
            if action != default {
                capture.insert(CaptureKey { class, ip4, port, _pad: 0 }, action);
            }
        }
    }
}

/// STRICT entries of an enrolled workload: its default mode on port 0, and its port-level
/// modes where they differ.
fn strict_entries(
    state: &ClusterState,
    mesh: &MeshParams,
    workload: &Workload,
    out: &mut BTreeMap<StrictKey, u32>,
) {
    let modes = policy::workload_mtls(state, mesh, workload);
    let default_strict = modes.default.mode == MtlsMode::Strict;
    for ip in &workload.addresses {
        let ip4 = u32::from(*ip).to_be();
        if default_strict {
            out.insert(StrictKey { ip4, port: 0, _pad: 0 }, strict::RESET);
        }
        for (&port, resolved) in &modes.ports {
            let port_strict = resolved.mode == MtlsMode::Strict;
            if port_strict != default_strict {
                let value = if port_strict { strict::RESET } else { strict::ALLOW };
                out.insert(StrictKey { ip4, port, _pad: 0 }, value);
            }
        }
    }
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
