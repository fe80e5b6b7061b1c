//! Command line: `lockmesh agent` runs the node agent; the other commands talk to a running
//! agent's admin endpoint.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # Run the agent of node1 on a local config dir (Workload YAML, later Istio policies):
  lockmesh agent --node node1 --config /etc/lockmesh

  # Show the flows the agent saw, then follow new ones as JSON lines:
  lockmesh flows
  lockmesh flows -o json --follow

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
    Agent(AgentArgs),
    /// Show the flows a running agent reports (connections of enrolled pods).
    Flows(FlowsArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This agent's node name; workloads whose `spec.node` equals it are enrolled.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,

    /// Directory of YAML files (multi-document): lockmesh `Workload`s and, later, Istio
    /// policies. Watched: changes apply live. A broken file keeps its last good version.
    #[arg(long, value_name = "DIR", required_unless_present = "cleanup")]
    pub config: Option<PathBuf>,

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

    /// Most pods this node can enrol (size of the kernel's enrolled-pods map).
    #[arg(long, default_value_t = 4096)]
    pub max_enrolled: u32,

    /// Open flows tracked at once; the oldest is evicted (and counted) beyond it.
    #[arg(long, default_value_t = 65_536)]
    pub max_open_flows: usize,

    /// Closed flows kept for `lockmesh flows`; the oldest is dropped (and counted) beyond it.
    #[arg(long, default_value_t = 10_000)]
    pub max_closed_flows: usize,

    /// Remove this node's pinned maps and links from the kernel, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// The agent's admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// Output format: an aligned table, or one JSON object per line.
    #[arg(short, long, value_enum, default_value_t = FlowsOutput::Table)]
    pub output: FlowsOutput,

    /// Keep running and print flows as they open and close.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlowsOutput {
    Table,
    Json,
}
