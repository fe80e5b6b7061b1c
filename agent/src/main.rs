use std::path::Path;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use lockmesh::{
    agent::{self, AgentOptions},
    audit::AuditOptions,
    ca_service::{self, CaServiceOptions},
    cli::{AgentArgs, AuditCommand, CaCommand, CaServeArgs, Cli, Command, DoctorArgs, LogFormat},
    cmd,
    doctor::{self, DoctorOptions, DoctorSource},
    flows::FlowLimits,
    host,
    identity::{self, IdentityOptions, remote::RemoteCaOptions},
    kernel::{self, DatapathOptions},
    kube::KubeOptions,
    policy::MeshParams,
    proxy::limits::EngineLimits,
    source::SourceOptions,
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
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
        Command::Agent(args) => run_agent(*args).await,
        Command::Flows(args) => cmd::flows::run(*args).await,
        Command::Check(args) => cmd::check::run(args).await,
        Command::Graph(args) => cmd::graph::run(args).await,
        Command::Doctor(args) => run_doctor(args),
        Command::Audit(AuditCommand::Verify { files, pubkey }) => cmd::audit::verify(&files, pubkey),
        Command::Ca(CaCommand::Init { dir, trust_domain }) => {
            identity::ca::init(&dir, &trust_domain)?;
            println!("CA created in {} (Istio cacerts layout); pass it to agents with --ca", dir.display());
            Ok(())
        }
        Command::Ca(CaCommand::Serve(args)) => run_ca_service(*args).await,
    }
}

async fn run_ca_service(args: CaServeArgs) -> anyhow::Result<()> {
    let client = lockmesh::kube::client(args.kubeconfig.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let options = CaServiceOptions {
        trust_domain: args.trust_domain,
        ca_dir: args.ca,
        state_dir: args.state_dir,
        max_cert_ttl: args.max_cert_ttl,
        serving_names: args.serving_name,
        audience: args.audience,
        agent_user: args.agent_user,
    };
    ca_service::serve(listener, &options, client).await
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let pin_dir =
        args.bpffs_dir.clone().unwrap_or_else(|| Path::new("/sys/fs/bpf/lockmesh").join(&args.node));
    if args.cleanup {
        return kernel::remove_pins(&pin_dir);
    }
    let source = match args.config {
        Some(dir) if !dir.is_dir() => bail!("--config {}: not a directory", dir.display()),
        Some(dir) => SourceOptions::Dir(dir),
        None if args.kube => SourceOptions::Kube(KubeOptions {
            kubeconfig: args.kubeconfig,
            node: args.node.clone(),
            proc_root: args.proc_root,
        }),
        None => bail!("--config DIR or --kube is required"),
    };
    let cgroup = match args.cgroup {
        Some(path) => path,
        None => host::cgroup2_root()?,
    };
    let remote_ca = match (args.ca_url, args.ca_root, args.ca_token) {
        (Some(url), Some(root), Some(token)) => Some(RemoteCaOptions { url, root, token }),
        (None, None, None) => None,
        _ => bail!("--ca-url, --ca-root and --ca-token go together"),
    };
    let audit = args.audit_log.map(|path| AuditOptions {
        path,
        max_bytes: args.audit_max_bytes,
        keep: args.audit_keep,
        sync: args.audit_sync,
        checkpoint_records: args.audit_checkpoint_records.max(1),
        checkpoint_interval: args.audit_checkpoint_interval,
        node: args.node.clone(),
    });
    agent::run(AgentOptions {
        audit,
        node: args.node,
        source,
        admin: args.admin,
        identity: IdentityOptions {
            trust_domain: args.trust_domain.clone(),
            ca_dir: args.ca,
            remote_ca,
            state_dir: args.state_dir,
            cert_ttl: args.cert_ttl,
            post_quantum: args.post_quantum,
        },
        trust_domain: args.trust_domain,
        drain: args.drain,
        hbone_max_streams: args.hbone_max_streams,
        hbone_max_connections: args.hbone_max_connections as usize,
        engine_limits: EngineLimits {
            max_handshakes: args.max_handshakes as usize,
            max_handshakes_per_source: args.max_handshakes_per_source as usize,
            handshake_timeout: args.handshake_timeout,
            idle_timeout: args.hbone_idle_timeout,
            max_streams_per_peer: args.max_streams_per_peer as usize,
        },
        mesh: MeshParams { root_namespace: args.root_namespace, domain: args.cluster_domain },
        strict_exemptions: args.strict_exempt,
        datapath: DatapathOptions {
            cgroup,
            pin_dir,
            ring_buffer_bytes: args.ring_buffer_bytes,
            max_enrolled: args.max_enrolled,
            map_entries: args.bpf_map_entries.into_iter().collect(),
        },
        flow_limits: FlowLimits { max_open: args.max_open_flows, max_closed: args.max_closed_flows },
    })
    .await
}

fn run_doctor(args: DoctorArgs) -> anyhow::Result<()> {
    let source = match (args.config, args.kube) {
        (Some(dir), _) => DoctorSource::Dir(dir),
        (None, true) => DoctorSource::Kube(args.kubeconfig),
        (None, false) => DoctorSource::Unspecified,
    };
    let report = doctor::run(&DoctorOptions {
        cgroup: args.cgroup,
        bpffs_dir: args.bpffs_dir,
        source,
        proc_root: args.proc_root,
        netns_dir: args.netns_dir,
        ca: args.ca,
        state_dir: args.state_dir,
        osrelease: "/proc/sys/kernel/osrelease".into(),
        proc_status: "/proc/self/status".into(),
        btf: "/sys/kernel/btf/vmlinux".into(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", doctor::render(&report));
    }
    if !report.ok {
        let missing: Vec<&str> =
            report.findings.iter().filter(|f| f.required && !f.ok).map(|f| f.name).collect();
        bail!("missing: {}", missing.join(", "));
    }
    Ok(())
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
