//! Desired kernel state, computed from the cluster state, Istio policy and this node's
//! enrolment: what the `ENROLLED`, `CAPTURE`, `STRICT` and `STRICT_EXEMPT` maps must hold. Pure:
//! the agent writes the result to the maps.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use lockmesh_common::{CaptureKey, EnrolledPod, ExemptKey, SourceKey, StrictKey, capture, strict};

use super::enrolment::Enrolment;
use crate::{
    cluster::model::{ClusterIp, ClusterState, Workload},
    policy::{self, Destination, MeshParams, MtlsMode},
};

/// Numbers Kubernetes namespaces for the kernel's per-class capture decisions; a number stays
/// with its namespace while the namespace has pods enrolled here (so map keys do not churn),
/// and is given again once it has none: at most one number per enrolled pod.
#[derive(Default)]
pub(crate) struct Classes {
    ids: HashMap<String, u32>,
}

impl Classes {
    pub(crate) fn of(&mut self, namespace: &str) -> u32 {
        if let Some(id) = self.ids.get(namespace) {
            return *id;
        }
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        let id = (1..).find(|id| !used.contains(id)).unwrap_or(u32::MAX);
        self.ids.insert(namespace.to_string(), id);
        id
    }

    /// The number of `namespace`, if it has one.
    pub(crate) fn get(&self, namespace: &str) -> Option<u32> {
        self.ids.get(namespace).copied()
    }

    /// The namespace numbered `class`, for messages.
    pub(crate) fn name_of(&self, class: u32) -> Option<&str> {
        self.ids.iter().find(|(_, id)| **id == class).map(|(name, _)| name.as_str())
    }

    /// Forgets the namespaces not in `in_use`.
    pub(crate) fn retain(&mut self, in_use: &BTreeSet<&str>) {
        self.ids.retain(|name, _| in_use.contains(name.as_str()));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// A source allowed to reach STRICT ports in plaintext (`port` 0: every port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StrictExemption {
    pub source: Ipv4Addr,
    pub port: u16,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelState {
    pub enrolled: BTreeMap<u64, EnrolledPod>,
    pub capture: BTreeMap<CaptureKey, u32>,
    pub strict: BTreeMap<StrictKey, u32>,
    pub exempt: BTreeMap<ExemptKey, u32>,
    /// Probed (pod address, port) pairs: what the node's probe SNAT covers.
    pub probed: BTreeSet<(Ipv4Addr, u16)>,
}

pub(crate) fn kernel_state(
    state: &ClusterState,
    mesh: &MeshParams,
    enrolment: &Enrolment,
    classes: &mut Classes,
    exemptions: &[StrictExemption],
    probe_snat: Option<Ipv4Addr>,
) -> KernelState {
    let mut desired = KernelState::default();
    let in_use: BTreeSet<&str> = enrolment.pods().map(|p| p.workload.key.namespace.as_str()).collect();
    classes.retain(&in_use);
    let mut client_namespaces = BTreeMap::new();
    for pod in enrolment.pods() {
        let class = classes.of(&pod.workload.key.namespace);
        client_namespaces.insert(class, pod.workload.key.namespace.clone());
        let ip4 = pod.workload.primary_address().map(|ip| u32::from(ip).to_be()).unwrap_or(0);
        desired.enrolled.insert(pod.netns.cookie(), EnrolledPod { ip4, class });
        strict_entries(state, mesh, &pod.workload, &mut desired.strict);
        probe_entries(&pod.workload, probe_snat, &mut desired.exempt);
        for probe in &pod.workload.probes {
            desired.probed.extend(pod.workload.addresses.iter().map(|ip| (*ip, probe.port)));
        }
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
        let src_ip4 = u32::from(exemption.source).to_be();
        let key = ExemptKey { src_ip4, dst_ip4: 0, port: exemption.port, _pad: 0 };
        desired.exempt.insert(key, 1);
    }
    desired
}

/// What `POD_SOURCES` must hold: each guarded pod's addresses (from its Workload, never from
/// what the pod configured itself), by the index of its host-side interface.
pub(crate) fn pod_sources<'a>(
    pods: impl IntoIterator<Item = (u32, &'a [Ipv4Addr])>,
) -> BTreeMap<SourceKey, u32> {
    pods.into_iter()
        .flat_map(|(ifindex, addresses)| {
            addresses.iter().map(move |ip| (SourceKey { ifindex, ip4: u32::from(*ip).to_be() }, 1))
        })
        .collect()
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

/// Exemptions of an enrolled workload's probe ports, to this pod only: from the node's probe
/// SNAT address, or (`--probe-snat off`) from the node's own address.
fn probe_entries(workload: &Workload, probe_snat: Option<Ipv4Addr>, out: &mut BTreeMap<ExemptKey, u32>) {
    for probe in &workload.probes {
        for ip in &workload.addresses {
            let key = ExemptKey {
                src_ip4: u32::from(probe_snat.unwrap_or(probe.from)).to_be(),
                dst_ip4: u32::from(*ip).to_be(),
                port: probe.port,
                _pad: 0,
            };
            out.insert(key, 1);
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
    let some_port_strict = modes.ports.values().any(|resolved| resolved.mode == MtlsMode::Strict);
    for ip in &workload.addresses {
        let ip4 = u32::from(*ip).to_be();
        if default_strict {
            out.insert(StrictKey { ip4, port: 0, _pad: 0 }, strict::RESET);
        } else if some_port_strict {
            // What the guard cannot check per port (fragments, unparsable headers) is refused.
            out.insert(StrictKey { ip4, port: 0, _pad: 0 }, strict::SOME);
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
mod tests;
