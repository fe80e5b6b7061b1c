//! `lockmesh graph`: workloads and the edges between them from the flows (of a live agent or of
//! audit-log files), as Graphviz DOT or as SVG (drawn by lockmesh itself, the picture the admin
//! endpoint's `/graph` page shows).
use super::admin_client;
use crate::{
    cli::{GraphArgs, GraphFormat},
    graph::{Graph, to_dot, to_svg},
};

pub async fn run(args: GraphArgs) -> anyhow::Result<()> {
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
