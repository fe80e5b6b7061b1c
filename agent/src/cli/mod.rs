//! The `lockmesh` command line: `lockmesh agent` runs the node agent (`app`); the other commands
//! talk to a running agent's admin endpoint, read what it wrote, check the node, or manage the CA.
//! One file per command: its flags, and what it does with them.
mod admin_client;
pub mod agent;
mod audit;
pub mod ca;
mod check;
mod doctor;
mod flows;
mod graph;
mod parse;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use self::{
    agent::AgentArgs, audit::AuditCommand, ca::CaCommand, check::CheckArgs, doctor::DoctorArgs,
    flows::FlowsArgs, graph::GraphArgs,
};

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
  lockmesh agent --kube --node node1 --proc-root /host/proc \
    --metrics-addr 0.0.0.0:15020 --readiness-addr 0.0.0.0:15021

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

/// The `lockmesh` binary: parses the command line, logs to stderr, runs the command.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Broken pipes (`lockmesh flows | head`) are not errors.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Agent(args) => agent::run(*args).await,
        Command::Flows(args) => flows::run(*args).await,
        Command::Check(args) => check::run(args).await,
        Command::Graph(args) => graph::run(args).await,
        Command::Doctor(args) => doctor::run(args),
        Command::Audit(command) => audit::run(command),
        Command::Ca(command) => ca::run(command).await,
    }
}

fn init_tracing(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: bad --log filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
