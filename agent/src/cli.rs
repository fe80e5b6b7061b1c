//! Command line: `lockmesh agent` runs the node agent; the other commands talk to a running
//! agent's admin endpoint.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::desired::StrictExemption;

const EXAMPLES: &str = "\
Examples:
  # Run the agent of node1 on a local config dir (Workload YAML, later Istio policies):
  lockmesh agent --node node1 --config /etc/lockmesh

  # Which mTLS mode each port of bookinfo/details enforces, and why:
  lockmesh check bookinfo/details

  # Show the flows the agent saw, then follow new ones as JSON lines:
  lockmesh flows
  lockmesh flows -o json --follow
  lockmesh flows --to-workload bookinfo/details --encryption plaintext --since 5m -o compact

  # Audit log: hash-chained, signed; check it, or read flows from it:
  lockmesh agent --node node1 --config /etc/lockmesh --audit-log /var/log/lockmesh/audit.log
  lockmesh audit verify /var/log/lockmesh/audit.log*
  lockmesh flows --file /var/log/lockmesh/audit.log --verdict denied -o json

  # Create a CA in Istio's cacerts layout, shared by the agents of all nodes:
  lockmesh ca init --dir /etc/lockmesh/ca
  lockmesh agent --node node1 --config /etc/lockmesh --ca /etc/lockmesh/ca

  # In a cluster (see deploy/): pods, Services and Istio policies from the API server:
  lockmesh agent --kube --node node1 --proc-root /host/proc --admin 0.0.0.0:15000

  # The cluster's CA service, and agents asking it (no CA key on the nodes):
  lockmesh ca serve --ca /etc/lockmesh/ca
  lockmesh agent --kube --node node1 --ca-url https://lockmesh-ca.lockmesh-system.svc:15012 \
    --ca-root /etc/lockmesh/root/root-cert.pem --ca-token /var/run/secrets/lockmesh/token
  # Does this node (or the agent's pod) have what the agent needs?
  lockmesh doctor --kube --proc-root /host/proc

  # Remove everything a crashed agent of node1 left in the kernel:
  lockmesh agent --node node1 --cleanup";

#[derive(Debug, Parser)]
#[command(
    name = "lockmesh",
    version,
    about = "Sidecar-less mTLS for Kubernetes pods: eBPF steering, a per-node tunnel engine, per-flow encryption reports",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter, tracing's EnvFilter syntax (e.g. `info`, `lockmesh=debug`).
    #[arg(long, global = true, env = "LOCKMESH_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: load the eBPF programs, enrol this node's workloads, report flows.
    Agent(Box<AgentArgs>),
    /// Show the flows a running agent reports (connections of enrolled pods), or an audit log
    /// holds; filtered like `hubble observe`.
    Flows(Box<FlowsArgs>),
    /// Draw workloads and their connections (🔒 mTLS / 🔓 plaintext) from a running agent's flows
    /// or audit-log files, as Graphviz DOT or SVG (live in a browser: the admin endpoint's /graph).
    Graph(GraphArgs),
    /// Check the audit log written with `lockmesh agent --audit-log`.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show what the agent enforces for its workloads, like `istioctl x describe pod`: the mTLS
    /// mode per port and the PeerAuthentication behind it, the DestinationRule and TLS mode used
    /// towards each Service, the certificate.
    Check(CheckArgs),
    /// Manage the certificate authority that signs workload identities.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Check that this node (or the agent's pod) has what the agent needs: kernel ≥ 6.6 with
    /// BTF, bpffs, cgroup v2, capabilities, pod network namespaces, the config source, the CA.
    /// One ✓/✗ line each with a hint; exits non-zero when something required is missing. Give
    /// it the options you give the agent.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The agent's config dir, checked for readability.
    #[arg(long, value_name = "DIR", conflicts_with = "kube")]
    pub config: Option<PathBuf>,

    /// Check for Kubernetes mode: credentials (in-cluster or kubeconfig) and the host's /proc.
    #[arg(long)]
    pub kube: bool,

    #[arg(long, value_name = "PATH", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,

    /// The host's /proc (--kube finds pods' network namespaces there).
    #[arg(long, value_name = "PATH", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// Where named network namespaces are pinned (Workload `spec.netns` paths).
    #[arg(long, value_name = "PATH", default_value = "/var/run/netns")]
    pub netns_dir: PathBuf,

    /// cgroup v2 directory the agent attaches to [default: found as the agent finds it].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// bpffs directory for pinned maps (the agent's --bpffs-dir, without the node).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf/lockmesh")]
    pub bpffs_dir: PathBuf,

    /// Plug-in CA directory (Istio cacerts layout), loaded as the agent loads it.
    #[arg(long, value_name = "DIR")]
    pub ca: Option<PathBuf>,

    /// The agent's state dir (holds the self-signed root when there is no --ca).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lockmesh")]
    pub state_dir: PathBuf,

    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// One workload, `namespace/name` (default: every workload enrolled on the node).
    pub workload: Option<String>,

    /// The agent's admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = CheckOutput::Text)]
    pub output: CheckOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA in Istio's `cacerts` layout (root-cert.pem, ca-cert.pem, ca-key.pem,
    /// cert-chain.pem): a root and an intermediate that signs workload certificates. Give the
    /// directory to every agent with `--ca`. Refuses to overwrite an existing CA.
    Init {
        /// Directory to create the CA in (files are written 0600).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Trust domain named in the CA's subject.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Run the cluster's CA service (deploy/base/ca.yaml): agents (`lockmesh agent --ca-url`)
    /// POST a CSR to /v1/sign over HTTPS with their projected ServiceAccount token; it signs
    /// only identities of pods scheduled on the caller's node (TokenReview, then the node's
    /// pods), so that agents never hold the CA key.
    Serve(Box<CaServeArgs>),
}

#[derive(Debug, Args)]
pub struct CaServeArgs {
    /// Address to listen on (HTTPS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,

    /// Plug-in CA in Istio's `cacerts` layout (e.g. the mounted `cacerts` Secret). Without it, a
    /// self-signed root is created in --state-dir and reused (agents then need its
    /// root-cert.pem).
    #[arg(long, value_name = "DIR")]
    pub ca: Option<PathBuf>,

    /// Directory for the self-signed root when no --ca is given.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lockmesh")]
    pub state_dir: PathBuf,

    /// SPIFFE trust domain: only identities in it are signed.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,

    /// Longest lifetime of a workload certificate; longer requests get this.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub max_cert_ttl: Duration,

    /// DNS name or IP address of the service's own certificate (what agents put in --ca-url).
    /// Repeatable.
    #[arg(
        long,
        value_name = "NAME",
        default_values = ["lockmesh-ca.lockmesh-system.svc", "lockmesh-ca.lockmesh-system.svc.cluster.local"]
    )]
    pub serving_name: Vec<String>,

    /// Audience the agents' projected tokens must be issued for (checked by TokenReview).
    #[arg(long, default_value = "lockmesh-ca")]
    pub audience: String,

    /// The only user allowed to ask for certificates: the agents' service account.
    #[arg(long, value_name = "USER", default_value = "system:serviceaccount:lockmesh-system:lockmesh-agent")]
    pub agent_user: String,

    /// Kubeconfig [default: in-cluster service account, else $KUBECONFIG or ~/.kube/config].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every hash link and checkpoint signature of audit-log files (the active file and
    /// its rotations, in any order, e.g. `audit.log*`); names the file, line and what broke
    /// (edited, removed, reordered record, truncated file, bad signature); exits non-zero then.
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The published public key [default: FILE.pub next to the log, if present].
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
    },
}

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

    /// Address of the admin endpoint (/healthz, /readyz, /flows).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

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
    /// STRICT_EXEMPT, POD_SOURCES, ORIG_DST, ORIG_DST_BY_PORT, FIN_WAIT2_RCV_NXT (defaults and
    /// what each holds: README, "Bounds"). Maps of other sizes are pinned apart.
    #[arg(long, value_name = "NAME=ENTRIES", value_parser = crate::kernel::parse_map_entries)]
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

    /// HTTP/2 streams multiplexed on one HBONE connection before another is opened.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
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

    /// Rotated audit-log files kept (FILE.1 … FILE.N, oldest deleted first).
    #[arg(long, default_value_t = 10)]
    pub audit_keep: usize,

    /// Durability: fsync after `every` record, or in a `batch` every 100 ms.
    #[arg(long, value_enum, default_value_t = crate::audit::SyncPolicy::Batch)]
    pub audit_sync: crate::audit::SyncPolicy,

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

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// The agent's admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// Read audit-log files (`lockmesh agent --audit-log`) instead of asking a running agent.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "follow")]
    pub file: Vec<PathBuf>,

    /// Output: an aligned table, one JSON object per line, or one short line per flow.
    #[arg(short, long, value_enum, default_value_t = FlowsOutput::Table)]
    pub output: FlowsOutput,

    /// Keep running and print flows as they open and close.
    #[arg(short, long)]
    pub follow: bool,

    /// Only the last N matching flows (then, with --follow, new ones).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,

    /// Either end in this namespace (repeatable: any of them).
    #[arg(long, value_name = "NS")]
    pub namespace: Vec<String>,

    /// Either end is this workload (`name` or `namespace/name`).
    #[arg(long, value_name = "WORKLOAD")]
    pub workload: Vec<String>,

    /// The client is this workload.
    #[arg(long, value_name = "WORKLOAD")]
    pub from_workload: Vec<String>,

    /// The server is this workload.
    #[arg(long, value_name = "WORKLOAD")]
    pub to_workload: Vec<String>,

    /// The client's address is in this IPv4 address or CIDR.
    #[arg(long, value_name = "CIDR", value_parser = crate::cmd::flow_filter::parse_cidr)]
    pub from_ip: Vec<crate::cmd::flow_filter::Cidr>,

    /// The server's address is in this IPv4 address or CIDR.
    #[arg(long, value_name = "CIDR", value_parser = crate::cmd::flow_filter::parse_cidr)]
    pub to_ip: Vec<crate::cmd::flow_filter::Cidr>,

    /// Either end has this SPIFFE identity (full URI, or a part such as `sa/details`).
    #[arg(long, value_name = "ID")]
    pub identity: Vec<String>,

    /// forwarded, reset, denied or error.
    #[arg(long, value_parser = crate::cmd::flow_filter::parse_verdict)]
    pub verdict: Vec<crate::flows::Verdict>,

    /// mtls or plaintext.
    #[arg(long, value_parser = crate::cmd::flow_filter::parse_encryption)]
    pub encryption: Option<crate::flows::Encryption>,

    /// Either end's port.
    #[arg(long)]
    pub port: Vec<u16>,

    /// Flows active at or after this time: RFC 3339 or a time ago (`5m`, `2h`).
    #[arg(long, value_name = "TIME", value_parser = crate::cmd::flow_filter::parse_time_now)]
    pub since: Option<time::OffsetDateTime>,

    /// Flows started at or before this time: RFC 3339 or a time ago.
    #[arg(long, value_name = "TIME", value_parser = crate::cmd::flow_filter::parse_time_now)]
    pub until: Option<time::OffsetDateTime>,
}

impl FlowsArgs {
    pub fn filter(&self) -> crate::cmd::flow_filter::FlowFilter {
        crate::cmd::flow_filter::FlowFilter {
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            from_workload: self.from_workload.clone(),
            to_workload: self.to_workload.clone(),
            from_ip: self.from_ip.clone(),
            to_ip: self.to_ip.clone(),
            identity: self.identity.clone(),
            verdict: self.verdict.clone(),
            encryption: self.encryption,
            port: self.port.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The agent's admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// Read audit-log files instead of asking a running agent.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub file: Vec<PathBuf>,

    /// `dot` (Graphviz source, namespaces as clusters) or `svg` (a self-contained picture, the
    /// same the admin endpoint shows at /graph).
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Svg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlowsOutput {
    Table,
    Json,
    Compact,
}

/// `10.0.0.1` or `10.0.0.1:8080`.
pub fn parse_exemption(text: &str) -> Result<StrictExemption, String> {
    if let Ok(addr) = text.parse::<std::net::SocketAddrV4>() {
        return Ok(StrictExemption { source: *addr.ip(), port: addr.port() });
    }
    text.parse()
        .map(|source| StrictExemption { source, port: 0 })
        .map_err(|_| format!("{text:?}: expected IP or IP:PORT"))
}

/// `250ms`, `6s`, `30m`, `24h` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 30s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("6s"), Ok(Duration::from_secs(6)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }
}
