//! `/config_dump`: what the agent believes, for debugging (like Envoy's and ztunnel's): the
//! inventory of workloads, the certificates it holds (never keys), and config errors.
use serde::Serialize;

use crate::{desired::inventory::Inventory, identity::CertificateStatus};

#[derive(Debug, Serialize)]
pub(crate) struct ConfigDump {
    pub node: String,
    pub trust_domain: String,
    pub workloads: Vec<WorkloadDump>,
    /// Workload certificates held by this agent: identity, serial, expiry, renewal time.
    pub certificates: Vec<CertificateStatus>,
    pub config_errors: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct WorkloadDump {
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

pub(crate) fn dump(
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
mod tests;
