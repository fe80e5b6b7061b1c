//! Kubernetes objects → the model: which pods are mesh workloads, and Services and Istio policies
//! through the very conversions the config dir uses (objects serialized back to JSON first).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KubeService};
use kube::api::DynamicObject;
use serde::Serialize;

use super::probes::probe_exemptions;
use crate::cluster::{
    convert::{self, FieldError, Warning},
    model::{ClusterState, ObjectKey, Workload},
    source::Problem,
};

/// Namespace labels that put a namespace's pods in the mesh (Istio ambient's, and lockmesh's own).
pub const ENROLLED_NAMESPACE: &[(&str, &str)] =
    &[("istio.io/dataplane-mode", "ambient"), ("lockmesh.io/mesh", "enabled")];
/// Pod labels that keep a pod of an enrolled namespace out of the mesh.
pub const OPTED_OUT_POD: &[(&str, &str)] =
    &[("istio.io/dataplane-mode", "none"), ("lockmesh.io/mesh", "disabled")];

/// Everything the watches hold at one moment.
#[derive(Default)]
pub struct Objects {
    pub pods: Vec<Arc<Pod>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub services: Vec<Arc<KubeService>>,
    pub peer_authentications: Vec<Arc<DynamicObject>>,
    pub destination_rules: Vec<Arc<DynamicObject>>,
}

fn has_label(labels: Option<&BTreeMap<String, String>>, wanted: &[(&str, &str)]) -> bool {
    labels.is_some_and(|labels| wanted.iter().any(|(k, v)| labels.get(*k).is_some_and(|l| l == v)))
}

pub fn namespace_enrolled(namespace: &Namespace) -> bool {
    has_label(namespace.metadata.labels.as_ref(), ENROLLED_NAMESPACE)
}

/// The workload a pod is, if it is one: its namespace is enrolled, it did not opt out, it does
/// not share the node's network, it is not finished and it has an IPv4 address. Returns the pod's
/// UID too (to find its network namespace; `netns` is left empty), and the problems with its
/// probes (a probe whose port cannot be resolved gets no exemption).
pub fn pod_workload(
    pod: &Pod,
    enrolled_namespaces: &BTreeSet<String>,
) -> Option<(String, Workload, Vec<String>)> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.as_ref()?;
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if !enrolled_namespaces.contains(namespace)
        || has_label(meta.labels.as_ref(), OPTED_OUT_POD)
        || spec.host_network == Some(true)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut addresses: Vec<Ipv4Addr> =
        listed.chain(status.pod_ip.as_deref()).filter_map(|ip| ip.parse().ok()).collect();
    dedup_keep_order(&mut addresses);
    if addresses.is_empty() {
        return None;
    }
    let (probes, probe_problems) = probe_exemptions(pod);
    let workload = Workload {
        key: ObjectKey::new(namespace.clone(), meta.name.clone()?),
        labels: meta.labels.clone().unwrap_or_default(),
        node: spec.node_name.clone().filter(|n| !n.is_empty())?,
        service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".to_string()),
        addresses,
        netns: None,
        probes,
    };
    Some((meta.uid.clone().unwrap_or_default(), workload, probe_problems))
}

fn dedup_keep_order(addresses: &mut Vec<Ipv4Addr>) {
    let mut seen = BTreeSet::new();
    addresses.retain(|ip| seen.insert(*ip));
}

/// The cluster state of `objects`. `find_netns` gets the UIDs of this node's workloads once and
/// returns the network namespace paths it found. Also returns whether a local workload has none
/// yet (worth another look soon).
pub fn cluster_state(
    objects: &Objects,
    node: &str,
    root_namespace: &str,
    find_netns: impl FnOnce(&[String]) -> HashMap<String, PathBuf>,
) -> (ClusterState, Vec<Problem>, bool) {
    let mut problems = Vec::new();
    let enrolled: BTreeSet<String> = objects
        .namespaces
        .iter()
        .filter(|ns| namespace_enrolled(ns))
        .filter_map(|ns| ns.metadata.name.clone())
        .collect();
    let mut workloads: BTreeMap<ObjectKey, (String, Workload)> = BTreeMap::new();
    for (uid, workload, probe_problems) in objects.pods.iter().filter_map(|pod| pod_workload(pod, &enrolled))
    {
        // Only this node's agent enforces a pod's STRICT: the others keep quiet about its probes.
        let local_problems = if workload.node == node { probe_problems } else { Vec::new() };
        problems.extend(local_problems.into_iter().map(|message| Problem {
            warning: true,
            message: format!("Pod {}: {message}; that probe is not exempt from STRICT", workload.key),
        }));
        workloads.insert(workload.key.clone(), (uid, workload));
    }
    let local: Vec<String> =
        workloads.values().filter(|(_, w)| w.node == node).map(|(uid, _)| uid.clone()).collect();
    let netns = if local.is_empty() { HashMap::new() } else { find_netns(&local) };
    let mut missing_netns = false;
    let mut owners: BTreeMap<Ipv4Addr, ObjectKey> = BTreeMap::new();
    let mut kept = Vec::new();
    for (uid, mut workload) in workloads.into_values() {
        if workload.node == node {
            workload.netns = netns.get(&uid).cloned();
            missing_netns |= workload.netns.is_none();
        }
        if let Some((ip, owner)) = workload.addresses.iter().find_map(|ip| owners.get(ip).map(|o| (ip, o))) {
            let message =
                format!("Pod {}: address {ip} already belongs to Pod {owner}; left out", workload.key);
            problems.push(Problem { warning: false, message });
            continue;
        }
        owners.extend(workload.addresses.iter().map(|ip| (*ip, workload.key.clone())));
        kept.push(Arc::new(workload));
    }

    let state = ClusterState {
        workloads: kept,
        services: convert_all("Service", &objects.services, &mut problems, |v| {
            convert::service(v).map(|s| (s, Vec::new()))
        }),
        peer_authentications: convert_all(
            "PeerAuthentication",
            &objects.peer_authentications,
            &mut problems,
            |v| convert::peer_authentication(v, root_namespace),
        ),
        destination_rules: convert_all("DestinationRule", &objects.destination_rules, &mut problems, |v| {
            convert::destination_rule(v)
        }),
    };
    (state, problems, missing_netns)
}

/// Converts each object (as its JSON form) with the config dir's conversion, sorted by key;
/// objects that fail are left out and reported.
fn convert_all<K: Serialize, T: HasKey>(
    kind: &str,
    objects: &[Arc<K>],
    problems: &mut Vec<Problem>,
    convert: impl Fn(serde_json::Value) -> Result<(T, Vec<Warning>), FieldError>,
) -> Vec<Arc<T>> {
    let mut out: BTreeMap<ObjectKey, Arc<T>> = BTreeMap::new();
    for object in objects {
        let value = match serde_json::to_value(object.as_ref()) {
            Ok(value) => value,
            Err(e) => {
                problems.push(Problem { warning: false, message: format!("{kind}: {e}") });
                continue;
            }
        };
        let name = object_name(&value);
        match convert(value) {
            Ok((converted, warnings)) => {
                problems.extend(warnings.into_iter().map(|Warning { field, message }| Problem {
                    warning: true,
                    message: format!("{kind} {name}: {}{message}", field_prefix(field.as_deref())),
                }));
                out.insert(converted.key().clone(), Arc::new(converted));
            }
            Err(FieldError { field, message }) => problems.push(Problem {
                warning: false,
                message: format!("{kind} {name}: {}{message}; left out", field_prefix(Some(&field))),
            }),
        }
    }
    out.into_values().collect()
}

fn field_prefix(field: Option<&str>) -> String {
    match field {
        Some(field) if field != "." => format!("{field}: "),
        _ => String::new(),
    }
}

fn object_name(value: &serde_json::Value) -> String {
    let get = |field: &str| value.pointer(&format!("/metadata/{field}")).and_then(|v| v.as_str());
    format!("{}/{}", get("namespace").unwrap_or("-"), get("name").unwrap_or("-"))
}

trait HasKey {
    fn key(&self) -> &ObjectKey;
}

impl HasKey for crate::cluster::model::Service {
    fn key(&self) -> &ObjectKey {
        &self.key
    }
}

impl HasKey for crate::cluster::model::PeerAuthentication {
    fn key(&self) -> &ObjectKey {
        &self.key
    }
}

impl HasKey for crate::cluster::model::DestinationRule {
    fn key(&self) -> &ObjectKey {
        &self.key
    }
}

#[cfg(test)]
mod tests;
