//! Services: host names, selection, endpoints and ports, as Kubernetes defines them.
use std::{net::Ipv4Addr, sync::Arc};

use crate::cluster::model::{ClusterIp, ClusterState, Protocol, Service, ServicePort, TargetPort, Workload};

/// `name.namespace.svc.<domain>`.
pub fn service_fqdn(service: &Service, domain: &str) -> String {
    format!("{}.{}.svc.{domain}", service.key.name, service.key.namespace)
}

/// The Service whose cluster IP is `ip`.
pub fn service_by_cluster_ip(state: &ClusterState, ip: Ipv4Addr) -> Option<&Arc<Service>> {
    state.services.iter().find(|s| s.cluster_ip == Some(ClusterIp::Address(ip)))
}

/// Whether the Service selects the workload: same namespace, and a non-empty selector all of whose
/// labels the workload has (a Service without selector has no automatic endpoints).
pub fn selects(service: &Service, workload: &Workload) -> bool {
    service.key.namespace == workload.key.namespace
        && !service.selector.is_empty()
        && service.selector.iter().all(|(k, v)| workload.labels.get(k) == Some(v))
}

/// The workloads the Service selects.
pub fn endpoints<'a>(state: &'a ClusterState, service: &Service) -> Vec<&'a Arc<Workload>> {
    state.workloads.iter().filter(|w| selects(service, w)).collect()
}

/// The workload port a service port sends to: the numeric `targetPort` (which defaults to the
/// port). A named `targetPort` would name a container port, and the model has no container port
/// names: it falls back to the service port (the common convention of equal numbers).
pub fn target_port(service_port: &ServicePort, _workload: &Workload) -> u16 {
    match &service_port.target_port {
        TargetPort::Number(port) => *port,
        TargetPort::Name(_) => service_port.port,
    }
}

/// Every (Service, TCP service port) that selects the workload and sends to its port `port`, in
/// key order.
fn services_for_workload_port<'a>(
    state: &'a ClusterState,
    workload: &Workload,
    port: u16,
) -> Vec<(&'a Arc<Service>, &'a ServicePort)> {
    state
        .services
        .iter()
        .filter(|s| selects(s, workload))
        .flat_map(|s| {
            s.ports
                .iter()
                .filter(|p| p.protocol == Protocol::Tcp && target_port(p, workload) == port)
                .map(move |p| (s, p))
        })
        .collect()
}

/// The Service (and service port) to report as the destination service of a connection to the
/// workload's port `port`: the first by `namespace/name`, then port order, when several match.
pub fn service_for_workload_port<'a>(
    state: &'a ClusterState,
    workload: &Workload,
    port: u16,
) -> Option<(&'a Arc<Service>, &'a ServicePort)> {
    services_for_workload_port(state, workload, port).into_iter().min_by(|a, b| a.0.key.cmp(&b.0.key))
}

#[cfg(test)]
mod tests;
