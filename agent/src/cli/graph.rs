//! `lockmesh graph`: workloads and the edges between them from the flows (of a live agent or of
//! audit-log files), as Graphviz DOT or as SVG (drawn by lockmesh itself, the picture the admin
//! endpoint's `/graph` page shows).
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, ValueEnum};

use super::admin_client;
use crate::report::graph::{Graph, to_dot, to_svg};

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

pub(super) async fn run(args: GraphArgs) -> anyhow::Result<()> {
    let records = admin_client::flow_records(args.admin, &args.file).await?;
    let graph = Graph::from_records(&records);
    match args.format {
        GraphFormat::Dot => print!("{}", to_dot(&graph)),
        GraphFormat::Svg => {
            let source = if args.file.is_empty() {
                format!("agent {}", args.admin)
            } else {
                args.file.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
            };
            let caption = format!("lockmesh · {} flows from {source}", records.len());
            print!("{}", to_svg(&graph, &caption));
        }
    }
    Ok(())
}
