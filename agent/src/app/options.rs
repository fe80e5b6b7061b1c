//! What the agent is told at start (the `lockmesh agent` flags, grouped by the stage they set).
use std::{net::SocketAddr, time::Duration};

use crate::{
    cluster::SourceOptions,
    desired::maps::StrictExemption,
    engine::limits::EngineLimits,
    identity::IdentityOptions,
    kernel::DatapathOptions,
    policy::MeshParams,
    report::{audit::AuditOptions, flows::FlowLimits},
};

#[derive(Clone, Debug)]
pub(crate) struct AgentOptions {
    pub node: String,
    /// Where workloads, services and policies come from.
    pub source: SourceOptions,
    pub admin: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub trust_domain: String,
    pub datapath: DatapathOptions,
    pub flow_limits: FlowLimits,
    pub identity: IdentityOptions,
    /// How long open tunneled connections may finish after SIGTERM.
    pub drain: Duration,
    /// HTTP/2 streams per HBONE connection.
    pub hbone_max_streams: u32,
    /// Pooled outbound HBONE connections at most.
    pub hbone_max_connections: usize,
    /// Bounds on inbound handshakes, idle HBONE connections and streams per peer.
    pub engine_limits: EngineLimits,
    /// Istio's root namespace and the cluster domain.
    pub mesh: MeshParams,
    /// Sources allowed to reach STRICT ports in plaintext (health probes).
    pub strict_exemptions: Vec<StrictExemption>,
    /// The kubelet probes' SNAT address (`None`: probes exempt from the node's address).
    pub probe_snat: Option<std::net::Ipv4Addr>,
    /// The audit log, if any (its key lives in the identity state dir).
    pub audit: Option<AuditOptions>,
}
