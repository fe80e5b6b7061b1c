//! What Istio's policies mean for a connection, as pure functions over a [`ClusterState`]:
//!
//! - [`peer`]: which mTLS mode a workload's server side enforces (PeerAuthentication);
//! - [`services`]: Services, their hosts, endpoints and ports;
//! - [`destination`]: whether a client uses mesh mTLS towards a destination (DestinationRule,
//!   auto mTLS).
//!
//! The rules follow Istio's (pilot's) resolution; where the model lacks something Istio has, the
//! function's documentation says what is done instead.
//!
//! [`ClusterState`]: crate::cluster::model::ClusterState
mod destination;
mod peer;
mod services;

pub use destination::{DecidedBy, Decision, Destination, Outbound, decide, outbound_tls};
pub use peer::{MtlsMode, Resolved, effective_mtls, workload_mtls};
pub use services::{
    endpoints, selects, service_by_cluster_ip, service_for_workload_port, service_fqdn, target_port,
};

/// Mesh-wide settings the resolution depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshParams {
    /// Istio's root (config) namespace: its policies without selector are mesh-wide.
    pub root_namespace: String,
    /// The cluster's DNS domain, as in `name.namespace.svc.<domain>`.
    pub domain: String,
}

impl Default for MeshParams {
    fn default() -> Self {
        Self { root_namespace: "istio-system".into(), domain: "cluster.local".into() }
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
