//! `lockmesh check`: what the running agent enforces for its workloads.
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::admin_client;
use crate::report::check::{WorkloadCheck, render};

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

pub(super) async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let path = match &args.workload {
        Some(workload) => format!("/check?workload={}", workload.replace('/', "%2F")),
        None => "/check".to_string(),
    };
    let body = admin_client::get_bytes(args.admin, &path).await?;
    let checks: Vec<WorkloadCheck> =
        serde_json::from_slice(&body).context("reading the agent's /check answer")?;
    match args.output {
        CheckOutput::Text if checks.is_empty() => println!("no workloads enrolled on this node"),
        CheckOutput::Text => print!("{}", render(&checks)),
        CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
    }
    Ok(())
}
