//! `/config_dump`: what the agent believes, for debugging (like Envoy's and ztunnel's): the
//! inventory of workloads, the certificates it holds (never keys), and config errors.
use serde::Serialize;

use crate::{identity::CertificateStatus, inventory::Inventory};

#[derive(Debug, Serialize)]
pub struct ConfigDump {
    pub node: String,
    pub trust_domain: String,
    pub workloads: Vec<WorkloadDump>,
    /// Workload certificates held by this agent: identity, serial, expiry, renewal time.
    pub certificates: Vec<CertificateStatus>,
    pub config_errors: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct WorkloadDump {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub service_account: String,
    pub identity: String,
    pub addresses: Vec<std::net::Ipv4Addr>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Enrolled on this node (its pod's traffic is captured here).
    pub enrolled: bool,
}

pub fn dump(
    inventory: &Inventory,
    certificates: Vec<CertificateStatus>,
    config_errors: Vec<String>,
) -> ConfigDump {
    let enrolled: std::collections::HashSet<_> = inventory.enrolled().map(|w| w.key.clone()).collect();
    let mut workloads: Vec<WorkloadDump> = inventory
        .workloads()
        .map(|w| WorkloadDump {
            namespace: w.key.namespace.clone(),
            name: w.key.name.clone(),
            node: w.node.clone(),
            service_account: w.service_account.clone(),
            identity: w.identity(&inventory.trust_domain),
            addresses: w.addresses.clone(),
            labels: w.labels.clone(),
            enrolled: enrolled.contains(&w.key),
        })
        .collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ConfigDump {
        node: inventory.node.clone(),
        trust_domain: inventory.trust_domain.clone(),
        workloads,
        certificates,
        config_errors,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{ClusterState, ObjectKey, Workload};

    #[test]
    fn dump_lists_workloads_and_marks_the_enrolled() {
        let workload = |name: &str, node: &str, ip: [u8; 4]| {
            Arc::new(Workload {
                key: ObjectKey { namespace: "bookinfo".into(), name: name.into() },
                labels: Default::default(),
                node: node.into(),
                service_account: name.into(),
                addresses: vec![ip.into()],
                netns: None,
                probes: Vec::new(),
            })
        };
        let (pp, details) =
            (workload("productpage", "node1", [10, 0, 0, 1]), workload("details", "node2", [10, 0, 0, 2]));
        let state = ClusterState { workloads: vec![pp.clone(), details], ..Default::default() };
        let mesh = crate::policy::MeshParams::default();
        let inventory =
            Inventory::new("node1", "cluster.local", &mesh, std::sync::Arc::new(state), [(7, pp)]);
        let dump = dump(&inventory, vec![], vec!["bad".into()]);
        let names: Vec<(&str, bool)> = dump.workloads.iter().map(|w| (w.name.as_str(), w.enrolled)).collect();
        assert_eq!(names, [("details", false), ("productpage", true)]);
        assert_eq!(dump.workloads[1].identity, "spiffe://cluster.local/ns/bookinfo/sa/productpage");
        let json = serde_json::to_string(&dump).unwrap();
        assert!(json.contains("\"config_errors\":[\"bad\"]"), "{json}");
    }
}
