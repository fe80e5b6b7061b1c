//! Kubelet probes of a Pod → the ports STRICT must let through from the pod's node. The kubelet
//! probes from the node's network namespace in plaintext, so under STRICT its probes would be
//! reset and the pod restarted or never ready. Only the probed ports are exempt, and only for the
//! node's own address (`status.hostIP`, `status.hostIPs`): other sources and ports stay STRICT.
use std::{collections::BTreeSet, net::Ipv4Addr};

use k8s_openapi::{
    api::core::v1::{
        Container, ContainerPort, GRPCAction, HTTPGetAction, Pod, PodSpec, Probe, TCPSocketAction,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::cluster::model::ProbeExemption;

/// The pod's probe exemptions, and a message for each probe whose port cannot be resolved (a
/// named port its container does not declare, a number out of range).
pub(super) fn probe_exemptions(pod: &Pod) -> (Vec<ProbeExemption>, Vec<String>) {
    let mut problems = Vec::new();
    let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else { return (Vec::new(), problems) };
    let mut node_addresses: BTreeSet<Ipv4Addr> =
        status.host_ips.iter().flatten().filter_map(|h| h.ip.parse().ok()).collect();
    node_addresses.extend(status.host_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()));
    if node_addresses.is_empty() {
        return (Vec::new(), problems);
    }
    let mut ports = BTreeSet::new();
    for container in probed_containers(spec) {
        for (kind, probe) in container_probes(container) {
            match probe_port(container, probe) {
                Ok(Some(port)) => {
                    ports.insert(port);
                }
                Ok(None) => {}
                Err(message) => problems.push(format!("container {} {kind}: {message}", container.name)),
            }
        }
    }
    let exemptions = ports
        .into_iter()
        .flat_map(|port| node_addresses.iter().map(move |&from| ProbeExemption { port, from }))
        .collect();
    (exemptions, problems)
}

/// Containers the kubelet probes: the app containers and sidecars (init containers that keep
/// running; the API server rejects probes on other init containers).
fn probed_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers.iter().chain(spec.init_containers.iter().flatten())
}

fn container_probes(container: &Container) -> impl Iterator<Item = (&'static str, &Probe)> {
    [
        ("livenessProbe", container.liveness_probe.as_ref()),
        ("readinessProbe", container.readiness_probe.as_ref()),
        ("startupProbe", container.startup_probe.as_ref()),
    ]
    .into_iter()
    .filter_map(|(kind, probe)| probe.map(|p| (kind, p)))
}

/// The pod port a probe connects to; `None` for `exec` probes and probes of another host
/// (`host` set: the kubelet then does not connect to the pod's address).
fn probe_port(container: &Container, probe: &Probe) -> Result<Option<u16>, String> {
    if let Some(HTTPGetAction { host: None, port, .. }) = &probe.http_get {
        return resolve(container, port, "httpGet.port").map(Some);
    }
    if let Some(TCPSocketAction { host: None, port, .. }) = &probe.tcp_socket {
        return resolve(container, port, "tcpSocket.port").map(Some);
    }
    if let Some(GRPCAction { port, .. }) = &probe.grpc {
        return number(*port, "grpc.port").map(Some);
    }
    Ok(None)
}

/// A number, or a name looked up in the container's `ports` (as the kubelet does).
fn resolve(container: &Container, port: &IntOrString, field: &str) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => number(*n, field),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<i32>() {
                return number(n, field);
            }
            let declared =
                container.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name.as_str()));
            match declared {
                Some(ContainerPort { container_port, .. }) => number(*container_port, field),
                None => Err(format!("{field}: named port {name:?} is not in the container's ports")),
            }
        }
    }
}

fn number(port: i32, field: &str) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{field}: {port} is not a port number"))
}

/// Reduces the pod's containers to what [`probe_exemptions`] reads (names, ports, the probes'
/// targets), so that stored pods stay small.
pub(super) fn trim_containers(spec: &mut PodSpec) {
    spec.containers = spec.containers.iter().map(probe_view).collect();
    spec.init_containers = spec.init_containers.as_ref().map(|init| init.iter().map(probe_view).collect());
    spec.ephemeral_containers = None;
}

fn probe_view(container: &Container) -> Container {
    let target = |probe: &Option<Probe>| {
        probe.as_ref().map(|p| Probe {
            http_get: p.http_get.as_ref().map(|h| HTTPGetAction {
                host: h.host.clone(),
                port: h.port.clone(),
                ..Default::default()
            }),
            tcp_socket: p.tcp_socket.clone(),
            grpc: p.grpc.clone(),
            ..Default::default()
        })
    };
    Container {
        name: container.name.clone(),
        ports: container.ports.as_ref().map(|ports| {
            ports
                .iter()
                .map(|p| ContainerPort {
                    name: p.name.clone(),
                    container_port: p.container_port,
                    ..Default::default()
                })
                .collect()
        }),
        liveness_probe: target(&container.liveness_probe),
        readiness_probe: target(&container.readiness_probe),
        startup_probe: target(&container.startup_probe),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
