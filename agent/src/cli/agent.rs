//! `lockmesh agent`: its flags, and the options they make for the agent (`app`).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::bail;
use clap::Args;

use super::parse::{ProbeSnatAddress, parse_duration, parse_exemption, parse_map_entries, parse_probe_snat};
use crate::{
    app::{self, AgentOptions},
    cluster::{SourceOptions, kube::KubeOptions},
    desired::maps::StrictExemption,
    engine::{hbone::DEFAULT_MAX_STREAMS, limits::EngineLimits},
    identity::{IdentityOptions, remote::RemoteCaOptions},
    kernel::{self, DatapathOptions},
    policy::MeshParams,
    report::{
        audit::{AuditOptions, SyncPolicy},
        flows::FlowLimits,
    },
    sys::host,
};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This agent's node name; workloads whose `spec.node` equals it are enrolled.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,

    /// Directory of YAML files (multi-document): lockmesh `Workload`s and, later, Istio
    /// policies. Watched: changes apply live. A broken file keeps its last good version.
    #[arg(long, value_name = "DIR", conflicts_with = "kube")]
    #[arg(required_unless_present_any = ["cleanup", "kube"])]
    pub config: Option<PathBuf>,

    /// Read pods, namespaces, services and Istio policies from the Kubernetes API instead of
    /// --config. Pods of namespaces labelled istio.io/dataplane-mode=ambient or
    /// lockmesh.io/mesh=enabled are in the mesh.
    #[arg(long)]
    pub kube: bool,

    /// Kubeconfig for --kube [default: in-cluster service account, else $KUBECONFIG or
    /// ~/.kube/config].
    #[arg(long, value_name = "PATH", requires = "kube", conflicts_with = "config")]
    pub kubeconfig: Option<PathBuf>,

    /// The host's /proc, where --kube finds this node's pods' network namespaces (the agent
    /// needs the host's PID namespace).
    #[arg(long, value_name = "PATH", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// Address of the admin endpoint (/healthz, /readyz, /flows, /config_dump, /graph,
    /// /metrics). It shows who talks to whom, unauthenticated: keep it on loopback (the
    /// DaemonSet does; read it with `kubectl exec` or a port-forward).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// Address of the metrics endpoint: /metrics (Prometheus text) and nothing else, like
    /// ztunnel's 15020.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Address of the readiness endpoint for the kubelet: /healthz/ready (200 once programs,
    /// config and datapath are in place, else 503; the details are on the admin /readyz) and
    /// /healthz/live, like ztunnel's 15021.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,

    /// cgroup v2 directory to attach to [default: the cgroup v2 root: /sys/fs/cgroup or
    /// /sys/fs/cgroup/unified].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// bpffs directory for this node's pinned maps [default: /sys/fs/bpf/lockmesh/<node>].
    #[arg(long, value_name = "PATH")]
    pub bpffs_dir: Option<PathBuf>,

    /// Size of the kernel→agent event ring buffer in bytes (power of two). Events that do not
    /// fit are dropped by the kernel and counted (see /readyz).
    #[arg(long, default_value_t = 1 << 20)]
    pub ring_buffer_bytes: u32,

    /// Most pods this node can enrol (size of the kernel's enrolled-pods map). Pods beyond it
    /// are served by the engine but their connections are neither captured nor observed; the
    /// agent logs which, counts the refused writes and retries every second.
    #[arg(long, default_value_t = 4096)]
    pub max_enrolled: u32,

    /// Capacity of another eBPF map, `NAME=ENTRIES` (repeatable): CAPTURE, STRICT,
    /// STRICT_EXEMPT, POD_SOURCES, ORIG_DST, ORIG_DST_BY_PORT, FIN_WAIT2_RCV_NXT, FLOW_STARTS,
    /// POD_INITIATED, POD_IFACES (defaults and what each holds: README, "Bounds"). Maps of other
    /// sizes are pinned apart; the previous agent's stay in place until the new config is in.
    #[arg(long, value_name = "NAME=ENTRIES", value_parser = parse_map_entries)]
    pub bpf_map_entries: Vec<(String, u32)>,

    /// Open flows tracked at once; the oldest is evicted (and counted) beyond it.
    #[arg(long, default_value_t = 65_536)]
    pub max_open_flows: usize,

    /// Closed flows kept for `lockmesh flows`; the oldest is dropped (and counted) beyond it.
    #[arg(long, default_value_t = 10_000)]
    pub max_closed_flows: usize,

    /// Plug-in CA in Istio's `cacerts` layout (the files of Istio's `cacerts` Secret:
    /// ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem). Nodes that must trust each
    /// other share it. Without it, a self-signed root is created in --state-dir and reused.
    #[arg(long, value_name = "DIR", conflicts_with = "ca_url")]
    pub ca: Option<PathBuf>,

    /// Get workload certificates from the cluster's CA service (`lockmesh ca serve`) instead of
    /// holding a CA key: e.g. https://lockmesh-ca.lockmesh-system.svc:15012. Needs --ca-root and
    /// --ca-token. A pod is served once its certificate arrives (retried with backoff).
    #[arg(long, value_name = "URL", requires_all = ["ca_root", "ca_token"])]
    pub ca_url: Option<String>,

    /// The mesh's root certificate(s), PEM (root-cert.pem): trusted for the CA service's TLS
    /// and for peers.
    #[arg(long, value_name = "FILE", requires = "ca_url")]
    pub ca_root: Option<PathBuf>,

    /// The agent's projected ServiceAccount token for the CA service (audience lockmesh-ca);
    /// re-read for every request, as the kubelet rotates it.
    #[arg(long, value_name = "FILE", requires = "ca_url")]
    pub ca_token: Option<PathBuf>,

    /// Directory for the agent's own state (the self-signed root when no --ca is given).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lockmesh")]
    pub state_dir: PathBuf,

    /// Lifetime of workload certificates (e.g. `24h`, `30m`, `6s`); renewed at about half-life.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,

    /// Offer the post-quantum hybrid key exchange X25519MLKEM768 first (slower handshakes).
    #[arg(long)]
    pub post_quantum: bool,

    /// Istio's root (config) namespace: its PeerAuthentications and DestinationRules without
    /// selector apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,

    /// The cluster's DNS domain (Service hosts are `<name>.<namespace>.svc.<domain>`).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Let plaintext from this source reach STRICT ports of every pod: `IP` (any port) or
    /// `IP:PORT`. Repeatable. Kubelet probes need no flag: each pod's probe ports are exempt for
    /// its node only (Workload `spec.probes`, or the Pod's probes with --kube).
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_exemption)]
    pub strict_exempt: Vec<StrictExemption>,

    /// Kubelet probes: connections this node opens to a pod's probe port are SNATed to this
    /// link-local address (nftables table `ip lockmesh`), and only it is exempt from STRICT, so
    /// traffic the node merely forwards (NodePort, hostPort: DNAT + MASQUERADE) never is. Istio
    /// ambient uses the same address. `off`: exempt the node's own address instead (what the
    /// node forwards with that source then passes STRICT on probe ports too).
    #[arg(long, value_name = "IP|off", default_value = "169.254.7.127", value_parser = parse_probe_snat)]
    pub probe_snat: ProbeSnatAddress,

    /// HTTP/2 streams multiplexed on one HBONE connection before another is opened.
    #[arg(long, default_value_t = DEFAULT_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub hbone_max_streams: u32,

    /// Outbound HBONE connections pooled at once (all peers); beyond it the connection idle
    /// longest is closed, and with none idle a new tunnel is refused (counted in
    /// lockmesh_connections_limited_total{reason="hbone_pool"}).
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub hbone_max_connections: u32,

    /// Inbound mTLS handshakes (:15008) in progress at once, all pods and peers together;
    /// connections beyond it are reset before any TLS work (counted in
    /// lockmesh_connections_limited_total{reason="handshakes"}).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes: u32,

    /// Inbound mTLS handshakes in progress at once from one source address (a slowloris from one
    /// pod cannot take the engine's whole handshake budget).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes_per_source: u32,

    /// Time an inbound peer has to finish the mTLS handshake and the HTTP/2 preface.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// An inbound HBONE connection without streams for this long is closed (longer than the
    /// clients' own 60 s pool idle timeout, so that clients normally close first).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub hbone_idle_timeout: Duration,

    /// Inbound tunnel streams one peer identity (SPIFFE ID) may have open at once, over all its
    /// HBONE connections; more are answered 429 and recorded as denied flows. High by default:
    /// busy clients legitimately hold thousands of connections to one peer (a connection pool).
    #[arg(long, value_name = "N", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_peer: u32,

    /// On SIGTERM, how long open tunneled connections may finish before the agent exits.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Append every finished flow, reset and denial to this file as hash-chained JSON lines
    /// with signed checkpoints (key in --state-dir, public key in FILE.pub).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,

    /// Rotate the audit log before it grows past this many bytes.
    #[arg(long, default_value_t = 100 << 20)]
    pub audit_max_bytes: u64,

    /// Rotated audit-log files kept (FILE.1 … FILE.N, oldest deleted first). A deletion is
    /// logged as a warning and recorded in the log (a `discarded` line, which `audit verify`
    /// needs to accept a chain that no longer starts at seq 1).
    #[arg(long, default_value_t = 10)]
    pub audit_keep: usize,

    /// Durability: fsync after `every` record, or in a `batch` every 100 ms.
    #[arg(long, value_enum, default_value_t = SyncPolicy::Batch)]
    pub audit_sync: SyncPolicy,

    /// A signed checkpoint after this many records…
    #[arg(long, default_value_t = 1000)]
    pub audit_checkpoint_records: u64,

    /// …or this long after the last one (and at clean shutdown).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub audit_checkpoint_interval: Duration,

    /// Remove this node's pinned maps and links from the kernel, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// Runs the agent until SIGTERM, or removes what a killed one left (`--cleanup`).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.cleanup {
        kernel::remove_probe_snat()?;
        return kernel::remove_pins(&args.pin_dir());
    }
    app::run(args.options()?).await
}

impl AgentArgs {
    /// The agent's options, from the flags (checking what clap cannot).
    fn options(self) -> anyhow::Result<AgentOptions> {
        Ok(AgentOptions {
            source: self.source()?,
            datapath: self.datapath()?,
            identity: self.identity()?,
            audit: self.audit(),
            engine_limits: self.engine_limits(),
            flow_limits: FlowLimits { max_open: self.max_open_flows, max_closed: self.max_closed_flows },
            mesh: MeshParams { root_namespace: self.root_namespace, domain: self.cluster_domain },
            node: self.node,
            admin: self.admin,
            metrics_addr: self.metrics_addr,
            readiness_addr: self.readiness_addr,
            trust_domain: self.trust_domain,
            drain: self.drain,
            hbone_max_streams: self.hbone_max_streams,
            hbone_max_connections: self.hbone_max_connections as usize,
            strict_exemptions: self.strict_exempt,
            probe_snat: self.probe_snat.0,
        })
    }

    /// `--bpffs-dir`, or `/sys/fs/bpf/lockmesh/<node>`.
    fn pin_dir(&self) -> PathBuf {
        self.bpffs_dir.clone().unwrap_or_else(|| Path::new("/sys/fs/bpf/lockmesh").join(&self.node))
    }

    fn source(&self) -> anyhow::Result<SourceOptions> {
        Ok(match &self.config {
            Some(dir) if !dir.is_dir() => bail!("--config {}: not a directory", dir.display()),
            Some(dir) => SourceOptions::Dir(dir.clone()),
            None if self.kube => SourceOptions::Kube(KubeOptions {
                kubeconfig: self.kubeconfig.clone(),
                node: self.node.clone(),
                proc_root: self.proc_root.clone(),
            }),
            None => bail!("--config DIR or --kube is required"),
        })
    }

    fn datapath(&self) -> anyhow::Result<DatapathOptions> {
        let cgroup = match &self.cgroup {
            Some(path) => path.clone(),
            None => host::cgroup2_root()?,
        };
        Ok(DatapathOptions {
            cgroup,
            pin_dir: self.pin_dir(),
            ring_buffer_bytes: self.ring_buffer_bytes,
            max_enrolled: self.max_enrolled,
            map_entries: self.bpf_map_entries.iter().cloned().collect(),
        })
    }

    fn identity(&self) -> anyhow::Result<IdentityOptions> {
        let remote_ca = match (&self.ca_url, &self.ca_root, &self.ca_token) {
            (Some(url), Some(root), Some(token)) => {
                Some(RemoteCaOptions { url: url.clone(), root: root.clone(), token: token.clone() })
            }
            (None, None, None) => None,
            _ => bail!("--ca-url, --ca-root and --ca-token go together"),
        };
        Ok(IdentityOptions {
            trust_domain: self.trust_domain.clone(),
            ca_dir: self.ca.clone(),
            remote_ca,
            state_dir: self.state_dir.clone(),
            cert_ttl: self.cert_ttl,
            post_quantum: self.post_quantum,
        })
    }

    fn audit(&self) -> Option<AuditOptions> {
        self.audit_log.as_ref().map(|path| AuditOptions {
            path: path.clone(),
            max_bytes: self.audit_max_bytes,
            keep: self.audit_keep,
            sync: self.audit_sync,
            checkpoint_records: self.audit_checkpoint_records.max(1),
            checkpoint_interval: self.audit_checkpoint_interval,
            node: self.node.clone(),
        })
    }

    fn engine_limits(&self) -> EngineLimits {
        EngineLimits {
            max_handshakes: self.max_handshakes as usize,
            max_handshakes_per_source: self.max_handshakes_per_source as usize,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.hbone_idle_timeout,
            max_streams_per_peer: self.max_streams_per_peer as usize,
        }
    }
}

#[cfg(test)]
mod tests;
