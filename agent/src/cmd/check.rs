//! `lockmesh check`: what the running agent enforces for its workloads.
use anyhow::Context as _;

use super::admin_client;
use crate::{
    check::{WorkloadCheck, render},
    cli::{CheckArgs, CheckOutput},
};

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
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
