//! The per-pod programs: the STRICT guard (TC egress of the host side of an enrolled pod's
//! interface, where traffic towards the pod can be checked before the pod can touch it) and the
//! anti-spoofing guard (TC ingress of the same interface), kept on every enrolled pod.
use std::collections::{BTreeMap, HashMap};

use super::{
    Datapath,
    sync::{KernelMaps, MapProblem},
};
use lockmesh_common::PodIface;

use crate::{
    cluster::model::ObjectKey,
    desired::{
        enrolment::Enrolment,
        maps::{Classes, pod_sources},
    },
    sys::podnet,
};

/// The host-side interface each enrolled pod's guards are on, with the namespace they were
/// found for (a new namespace at the same pod means a new interface).
#[derive(Default)]
pub(crate) struct Guards {
    by_pod: HashMap<ObjectKey, (u64, String)>,
}

impl Guards {
    /// Keeps the STRICT guard on the host side of every enrolled pod's interface; removes the
    /// guards of pods that left (or whose namespace changed). A pod that cannot be guarded now
    /// is retried on the next call.
    pub(crate) async fn guard_pods(&mut self, datapath: &mut Datapath, enrolment: &Enrolment) {
        let current: HashMap<&ObjectKey, u64> =
            enrolment.pods().map(|p| (&p.workload.key, p.netns.cookie())).collect();
        let stale: Vec<ObjectKey> = self
            .by_pod
            .iter()
            .filter(|(key, (cookie, _))| current.get(key) != Some(cookie))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some((_, interface)) = self.by_pod.remove(&key) {
                datapath.unguard(&interface);
            }
        }
        for pod in enrolment.pods() {
            if self.by_pod.contains_key(&pod.workload.key) {
                continue;
            }
            let Some(ip) = pod.workload.primary_address() else { continue };
            let guarded = match podnet::host_interface(&pod.netns, ip).await {
                Ok(interface) => datapath.guard(&interface).map(|()| interface),
                Err(e) => Err(e),
            };
            match guarded {
                Ok(interface) => {
                    tracing::info!(pod = %pod.workload.key, %interface, "STRICT guard on the pod's interface");
                    self.by_pod.insert(pod.workload.key.clone(), (pod.netns.cookie(), interface));
                }
                // Retried on the next tick; STRICT cannot be enforced for this pod until then.
                Err(e) => {
                    tracing::error!(pod = %pod.workload.key, error = %format!("{e:#}"), "cannot guard the pod")
                }
            }
        }
    }

    /// Keeps the anti-spoofing guard on the interface of every pod the STRICT guard found:
    /// first the allowed sources, then the program (which drops whatever is not listed). A pod
    /// whose sources did not fit in `POD_SOURCES` gets no new guard: it would drop all of the
    /// pod's traffic (logged, counted, retried). Also tells the STRICT guard which pod is behind
    /// each interface (`POD_IFACES`, for IPv6). Returns the two maps' problems.
    pub(crate) fn guard_sources(
        &self,
        datapath: &mut Datapath,
        maps: &mut KernelMaps,
        enrolment: &Enrolment,
        classes: &Classes,
    ) -> Vec<MapProblem> {
        let mut interfaces = Vec::new();
        for pod in enrolment.pods() {
            let Some((_, interface)) = self.by_pod.get(&pod.workload.key) else { continue };
            match nix::net::if_::if_nametoindex(interface.as_str()) {
                Ok(ifindex) => interfaces.push((
                    ifindex,
                    interface.clone(),
                    pod.workload.key.to_string(),
                    pod.workload.key.namespace.as_str(),
                    &pod.workload.addresses[..],
                )),
                // The pod is going away; its guards go with the next reconcile.
                Err(e) => tracing::debug!(%interface, error = %e, "pod interface gone"),
            }
        }
        let sources = pod_sources(interfaces.iter().map(|(ifindex, _, _, _, addrs)| (*ifindex, *addrs)));
        let pods: HashMap<u32, String> =
            interfaces.iter().map(|(i, _, pod, _, _)| (*i, pod.clone())).collect();
        let (problem, incomplete) = maps.sync_pod_sources(&sources, &pods);
        let ifaces: BTreeMap<u32, PodIface> = interfaces
            .iter()
            .filter_map(|(ifindex, _, _, namespace, addrs)| {
                let class = classes.get(namespace)?;
                addrs.first().map(|ip| (*ifindex, PodIface { ip4: u32::from(*ip).to_be(), class }))
            })
            .collect();
        let ifaces_problem = maps.sync_pod_ifaces(&ifaces, &pods);
        for (ifindex, interface, _, _, _) in &interfaces {
            if incomplete.contains(ifindex) {
                continue;
            }
            if let Err(e) = datapath.guard_sources(interface) {
                // Retried on the next tick; the pod can spoof until then.
                tracing::error!(%interface, error = %format!("{e:#}"), "cannot attach the anti-spoofing guard");
            }
        }
        vec![problem, ifaces_problem]
    }
}
