//! The cluster model every source (the local config dir, Kubernetes) feeds: workloads and, later,
//! services and Istio policies. Sources produce a [`ClusterState`]; the agent derives what the
//! kernel and the engine should do from it, never from the sources directly.
use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::PathBuf, sync::Arc};

use serde::Serialize;

/// `namespace/name`, how Kubernetes names an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod (or any process group with its own network namespace) that can be in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub key: ObjectKey,
    pub labels: BTreeMap<String, String>,
    /// The node the workload runs on; the agent of that node enrols it.
    pub node: String,
    pub service_account: String,
    pub addresses: Vec<Ipv4Addr>,
    /// Path of the workload's network namespace (needed only on its own node).
    pub netns: Option<PathBuf>,
}

impl Workload {
    /// The SPIFFE ID the workload's certificate carries.
    pub fn identity(&self, trust_domain: &str) -> String {
        spiffe_id(trust_domain, &self.key.namespace, &self.service_account)
    }

    /// The workload's primary address (the first listed).
    pub fn primary_address(&self) -> Option<Ipv4Addr> {
        self.addresses.first().copied()
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, Istio's identity format.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Everything the sources know, as one immutable snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub workloads: Vec<Arc<Workload>>,
}
