//! The cluster model every source (the local config dir, Kubernetes) feeds: workloads, services and
//! the Istio policies lockmesh honours (PeerAuthentication, DestinationRule). Sources produce a [`ClusterState`]; the agent derives what the
//! kernel and the engine should do from it, never from the sources directly.
use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

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
    /// Ports the kubelet probes, and from where: plaintext from there to there passes STRICT.
    pub probes: Vec<ProbeExemption>,
}

/// A port of a workload that its node's kubelet probes in plaintext (liveness, readiness or
/// startup probe: `httpGet`, `tcpSocket`, `grpc`), and the node address the probes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProbeExemption {
    pub port: u16,
    pub from: Ipv4Addr,
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

/// Everything the sources know, as one immutable snapshot. Each list is sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
}

/// A Kubernetes `Service` (`v1`): what selects which workloads, on which ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub key: ObjectKey,
    pub labels: BTreeMap<String, String>,
    /// `spec.selector`; empty selects nothing (a service without selector has manual endpoints).
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    pub cluster_ip: Option<ClusterIp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// `targetPort`, defaulted to `port` when absent (as Kubernetes does).
    pub target_port: TargetPort,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TargetPort {
    Number(u16),
    /// A container port name; the model has no container port names (see `policy::target_port`).
    Name(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ClusterIp {
    /// `clusterIP: None`, a headless service.
    Headless,
    Address(Ipv4Addr),
}

/// Istio's `PeerAuthentication.spec.mtls.mode` (and port-level modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerMtlsMode {
    /// Inherit from the parent scope (absent `mtls` or `mode` means this too).
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// Istio's `PeerAuthentication` (`security.istio.io/v1`, `v1beta1`): which connections a workload
/// accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub key: ObjectKey,
    /// `metadata.creationTimestamp`; when several policies compete, the oldest wins.
    pub creation_timestamp: Option<time::OffsetDateTime>,
    /// `spec.selector.matchLabels`; empty means no selector (mesh- or namespace-wide).
    pub selector: BTreeMap<String, String>,
    pub mode: PeerMtlsMode,
    /// `spec.portLevelMtls`, keyed by workload (container) port; honoured only with a selector.
    pub port_level_mtls: BTreeMap<u16, PeerMtlsMode>,
}

impl PeerAuthentication {
    pub fn has_selector(&self) -> bool {
        !self.selector.is_empty()
    }
}

/// `ClientTLSSettings.mode` of a DestinationRule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Also what a `tls` block without `mode` means (the proto's zero value).
    #[default]
    Disable,
    /// TLS origination to a non-mesh server: not mesh mTLS.
    Simple,
    /// mTLS with user-supplied certificates: not mesh mTLS.
    Mutual,
    IstioMutual,
}

/// Istio's `DestinationRule` (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`), reduced to what
/// decides whether a client uses mesh mTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRule {
    pub key: ObjectKey,
    pub creation_timestamp: Option<time::OffsetDateTime>,
    /// `spec.host` as written (short names are resolved against the rule's namespace on use).
    pub host: String,
    /// `spec.exportTo`: `.`, `*`, `~` or namespace names; empty means everywhere.
    pub export_to: Vec<String>,
    /// `spec.workloadSelector.matchLabels`; lockmesh does not honour selector rules (they apply
    /// only to some client workloads) and ignores a rule that has one.
    pub workload_selector: BTreeMap<String, String>,
    /// `spec.trafficPolicy`, when present (even without `tls`: that matters when rules merge).
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficPolicy {
    /// `tls.mode`; `None` when `tls` is absent (auto mTLS).
    pub tls: Option<TlsMode>,
    /// `portLevelSettings` by service port: each replaces the whole top-level policy for its port.
    pub port_level: BTreeMap<u16, Option<TlsMode>>,
}

/// The order in which Istio lets competing policies win: oldest `creationTimestamp` first, ties
/// (timestamps have second precision) broken by `name.namespace`. A missing timestamp is Go's zero
/// time in Istio, so it counts as the oldest.
pub fn creation_order(
    a: (Option<time::OffsetDateTime>, &ObjectKey),
    b: (Option<time::OffsetDateTime>, &ObjectKey),
) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then_with(|| {
        let name = |k: &ObjectKey| format!("{}.{}", k.name, k.namespace);
        name(a.1).cmp(&name(b.1))
    })
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "DISABLE",
            Self::Simple => "SIMPLE",
            Self::Mutual => "MUTUAL",
            Self::IstioMutual => "ISTIO_MUTUAL",
        })
    }
}

impl fmt::Display for PeerMtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unset => "UNSET",
            Self::Disable => "DISABLE",
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
        })
    }
}
