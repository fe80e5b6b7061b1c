//! `lockmesh ca`: create the CA (`init`), or run the cluster's CA service (`serve`).
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::parse::parse_duration;
use crate::{
    ca_service::{self, CaServiceOptions},
    cluster::kube,
    identity,
};

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

pub async fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, trust_domain } => {
            identity::ca::init(&dir, &trust_domain)?;
            println!("CA created in {} (Istio cacerts layout); pass it to agents with --ca", dir.display());
            Ok(())
        }
        CaCommand::Serve(args) => serve(*args).await,
    }
}

async fn serve(args: CaServeArgs) -> anyhow::Result<()> {
    let client = kube::client(args.kubeconfig.as_deref()).await?;
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
