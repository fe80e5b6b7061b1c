//! What `lockmesh check` shows (like `istioctl x describe pod`): per enrolled workload, the mTLS
//! mode it enforces on each port and the PeerAuthentication that decided it, how it reaches each
//! Service (DestinationRule, TLS mode), and its certificate.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    cluster::model::{ProbeExemption, Workload},
    desired::inventory::Inventory,
    identity::CertificateStatus,
    policy::{self, Destination},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadCheck {
    /// `namespace/name`.
    pub workload: String,
    pub identity: String,
    pub addresses: Vec<std::net::Ipv4Addr>,
    pub certificate: Option<CertificateCheck>,
    /// The mode every port not listed in `ports` gets.
    pub mtls: ModeCheck,
    /// Ports whose mode a port-level policy sets.
    pub ports: BTreeMap<u16, ModeCheck>,
    /// Ports the kubelet probes: plaintext from that node address passes STRICT (to this pod).
    #[serde(default)]
    pub probes: Vec<ProbeExemption>,
    pub outbound: Vec<OutboundCheck>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertificateCheck {
    pub serial: String,
    pub not_after: String,
    pub renew_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModeCheck {
    pub mode: String,
    /// The PeerAuthentication (`namespace/name`), or `null` for Istio's default.
    pub peer_authentication: Option<String>,
    pub explanation: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboundCheck {
    /// `host:port`.
    pub service: String,
    pub mtls: bool,
    pub destination_rule: Option<String>,
    pub tls_mode: Option<String>,
    pub reason: String,
}

/// Reports for the enrolled workloads (all of them, or the one named `namespace/name`).
pub fn check(
    inventory: &Inventory,
    certificates: &[CertificateStatus],
    only: Option<&str>,
) -> Vec<WorkloadCheck> {
    let mut workloads: Vec<_> =
        inventory.enrolled().filter(|w| only.is_none_or(|key| w.key.to_string() == key)).collect();
    workloads.sort_by(|a, b| a.key.cmp(&b.key));
    workloads.into_iter().map(|w| workload_check(inventory, certificates, w)).collect()
}

fn workload_check(
    inventory: &Inventory,
    certificates: &[CertificateStatus],
    workload: &Workload,
) -> WorkloadCheck {
    let (state, mesh) = (&inventory.state, &inventory.mesh);
    let identity = workload.identity(&inventory.trust_domain);
    let certificate = certificates.iter().find(|c| c.identity == identity).map(|c| CertificateCheck {
        serial: c.serial.clone(),
        not_after: rfc3339(c.not_after),
        renew_at: rfc3339(c.renew_at),
    });
    let modes = policy::workload_mtls(state, mesh, workload);
    let mode = |resolved: &policy::Resolved| ModeCheck {
        mode: resolved.mode.to_string(),
        peer_authentication: resolved.decided_by.as_ref().map(ToString::to_string),
        explanation: resolved.describe(),
    };
    let mut outbound = Vec::new();
    for service in &state.services {
        let endpoints = policy::endpoints(state, service);
        for port in &service.ports {
            let host = format!("{}:{}", policy::service_fqdn(service, &mesh.domain), port.port);
            let Some(endpoint) = endpoints.first() else {
                outbound.push(OutboundCheck {
                    service: host,
                    mtls: false,
                    destination_rule: None,
                    tls_mode: None,
                    reason: "no endpoints".into(),
                });
                continue;
            };
            let dest = Destination::Service { service, port: port.port, endpoint };
            let decision = policy::outbound_tls(state, mesh, &workload.key.namespace, &dest, true);
            outbound.push(OutboundCheck {
                service: host,
                mtls: decision.mtls,
                destination_rule: decision.destination_rule().map(ToString::to_string),
                tls_mode: decision.tls_mode.map(|m| m.to_string()),
                reason: decision.reason,
            });
        }
    }
    WorkloadCheck {
        workload: workload.key.to_string(),
        identity,
        addresses: workload.addresses.clone(),
        certificate,
        mtls: mode(&modes.default),
        ports: modes.ports.iter().map(|(port, resolved)| (*port, mode(resolved))).collect(),
        probes: workload.probes.clone(),
        outbound,
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The human form, one block per workload.
pub fn render(checks: &[WorkloadCheck]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for check in checks {
        let _ = writeln!(out, "Workload:    {}  ({})", check.workload, join(&check.addresses));
        let _ = writeln!(out, "Identity:    {}", check.identity);
        match &check.certificate {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "Certificate: serial {}, expires {}, renews {}",
                    c.serial, c.not_after, c.renew_at
                );
            }
            None => {
                let _ = writeln!(out, "Certificate: none issued yet");
            }
        }
        let _ = writeln!(out, "Inbound mTLS:");
        let _ = writeln!(out, "  all ports   {:<10} {}", check.mtls.mode, check.mtls.explanation);
        for (port, mode) in &check.ports {
            let _ = writeln!(out, "  port {port:<6} {:<10} {}", mode.mode, mode.explanation);
        }
        if check.mtls.mode == "STRICT" || check.ports.values().any(|m| m.mode == "STRICT") {
            let _ = writeln!(
                out,
                "  (STRICT: plaintext connections are reset in the kernel, per connection; port 15008, probe exemptions and --strict-exempt sources pass)"
            );
        }
        if !check.probes.is_empty() {
            let _ = writeln!(out, "Probe exemptions (the kubelet's probes pass STRICT):");
            for probe in &check.probes {
                let _ =
                    writeln!(out, "  port {:<6} plaintext from {} (kubelet probe)", probe.port, probe.from);
            }
        }
        if !check.outbound.is_empty() {
            let _ = writeln!(out, "Outbound:");
            for o in &check.outbound {
                let lock = if o.mtls { "mTLS     " } else { "plaintext" };
                let _ = writeln!(out, "  {:<50} {lock} {}", o.service, o.reason);
            }
        }
        out.push('\n');
    }
    out
}

fn join(addresses: &[std::net::Ipv4Addr]) -> String {
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
