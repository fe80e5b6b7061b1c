//! `lockmesh graph`: workloads and the edges between them from the flows (of a live agent or of
//! audit-log files), as Graphviz DOT or SVG; edges carry a lock mark for mTLS.
use std::{
    collections::{BTreeMap, HashSet},
    io::Write as _,
};

use anyhow::{Context as _, bail};

use super::admin_client;
use crate::{
    cli::{GraphArgs, GraphFormat},
    flows::{Encryption, Endpoint, FlowRecord, Verdict},
};

pub async fn run(args: GraphArgs) -> anyhow::Result<()> {
    let records = admin_client::flow_records(args.admin, &args.file).await?;
    let dot = to_dot(&records);
    match args.format {
        GraphFormat::Dot => print!("{dot}"),
        GraphFormat::Svg => {
            let mut child = std::process::Command::new("dot")
                .arg("-Tsvg")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .context("running Graphviz `dot` for SVG (install graphviz, or use --format dot)")?;
            child.stdin.take().context("dot's stdin")?.write_all(dot.as_bytes())?;
            if !child.wait()?.success() {
                bail!("dot -Tsvg failed");
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Edge {
    flows: u64,
    denied: u64,
    bytes: u64,
}

fn name(e: &Endpoint) -> String {
    match (&e.namespace, &e.workload) {
        (Some(ns), Some(w)) => format!("{ns}/{w}"),
        _ => e.ip.to_string(),
    }
}

/// The graph in DOT: one node per workload (or address), one edge per (client, server, port,
/// encryption). A connection reported by both of its ends counts once.
pub fn to_dot(records: &[FlowRecord]) -> String {
    let mut seen = HashSet::new();
    let mut edges: BTreeMap<(String, String, u16, bool), Edge> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.is_open()) {
        if !seen.insert((r.src.ip, r.src.port, r.dst.ip, r.dst.port, r.verdict == Verdict::Denied)) {
            continue;
        }
        let mtls = r.encryption == Encryption::Mtls;
        let edge = edges.entry((name(&r.src), name(&r.dst), r.dst.port, mtls)).or_default();
        edge.flows += 1;
        edge.bytes += r.bytes_sent + r.bytes_received;
        if matches!(r.verdict, Verdict::Denied | Verdict::Reset) {
            edge.denied += 1;
        }
    }
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::from("digraph lockmesh {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    let nodes: std::collections::BTreeSet<&String> = edges.keys().flat_map(|(s, d, _, _)| [s, d]).collect();
    for node in nodes {
        out.push_str(&format!("  {};\n", quote(node)));
    }
    for ((src, dst, port, mtls), edge) in &edges {
        let (mark, color) = if *mtls { ("🔒 mTLS", "darkgreen") } else { ("🔓 plaintext", "red") };
        let mut label = format!("{mark} :{port} ×{}", edge.flows);
        if edge.denied > 0 {
            label.push_str(&format!(" (denied/reset ×{})", edge.denied));
        }
        let style = if edge.denied == edge.flows { "dashed" } else { "solid" };
        out.push_str(&format!(
            "  {} -> {} [label={}, color={color}, fontcolor={color}, style={style}];\n",
            quote(src),
            quote(dst),
            quote(&label)
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testutil::flow;

    #[test]
    fn edges_aggregate_with_lock_marks_and_count_a_connection_once() {
        let mtls = flow(1);
        let mut other_end = flow(1);
        other_end.reporter = crate::flows::Reporter::Destination;
        let mut plain = flow(2);
        plain.encryption = Encryption::Plaintext;
        plain.src.port = 40001;
        plain.dst.workload = None;
        let mut denied = flow(3);
        denied.src.port = 40002;
        denied.verdict = Verdict::Denied;
        let dot = to_dot(&[mtls, other_end, plain, denied]);
        assert!(dot.contains("\"bookinfo/details\" -> \"bookinfo/details\" [label=\"🔒 mTLS :8080 ×2 (denied/reset ×1)\", color=darkgreen"), "{dot}");
        assert!(
            dot.contains("\"bookinfo/details\" -> \"10.0.0.2\" [label=\"🔓 plaintext :8080 ×1\", color=red"),
            "{dot}"
        );
        assert!(dot.starts_with("digraph lockmesh {") && dot.ends_with("}\n"));
    }
}
