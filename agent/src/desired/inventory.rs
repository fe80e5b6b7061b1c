//! The node's view of the cluster, derived from a [`ClusterState`]: which workloads are enrolled
//! here (with their network namespaces), and who owns each address. Immutable; the agent swaps
//! in a new one on every change.
use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

use crate::{
    cluster::model::{ClusterState, Workload},
    policy::MeshParams,
};

#[derive(Debug, Default)]
pub struct Inventory {
    pub node: String,
    pub trust_domain: String,
    pub mesh: MeshParams,
    /// The cluster state this inventory was derived from (policies, services).
    pub state: Arc<ClusterState>,
    /// Every known workload by address (local and remote).
    by_ip: HashMap<Ipv4Addr, Arc<Workload>>,
    /// Enrolled workloads of this node by network-namespace cookie.
    by_netns: HashMap<u64, Arc<Workload>>,
}

impl Inventory {
    /// `enrolled` pairs each enrolled workload of this node with its namespace cookie.
    pub fn new(
        node: &str,
        trust_domain: &str,
        mesh: &MeshParams,
        state: Arc<ClusterState>,
        enrolled: impl IntoIterator<Item = (u64, Arc<Workload>)>,
    ) -> Self {
        let by_ip =
            state.workloads.iter().flat_map(|w| w.addresses.iter().map(move |ip| (*ip, w.clone()))).collect();
        Self {
            node: node.to_string(),
            trust_domain: trust_domain.to_string(),
            mesh: mesh.clone(),
            state,
            by_ip,
            by_netns: enrolled.into_iter().collect(),
        }
    }

    pub fn workload_by_ip(&self, ip: Ipv4Addr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    pub fn enrolled_by_netns(&self, cookie: u64) -> Option<&Arc<Workload>> {
        self.by_netns.get(&cookie)
    }

    pub fn enrolled(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.by_netns.values()
    }

    /// Every known workload (local and remote), once each, in no particular order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        let mut seen = std::collections::HashSet::new();
        self.by_ip.values().filter(move |w| seen.insert(Arc::as_ptr(w)))
    }
}
