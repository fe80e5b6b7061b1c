//! The graph as Graphviz DOT: one cluster per namespace, edges labelled with a lock mark.
use super::{Graph, edge_label};
use crate::report::flows::Encryption;

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub(crate) fn to_dot(graph: &Graph) -> String {
    let mut out = String::from("digraph lockmesh {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for (namespace, nodes) in graph.groups() {
        let (cluster, title) = match namespace {
            Some(ns) => (format!("cluster_ns_{ns}"), format!("namespace {ns}")),
            None => ("cluster_addresses".to_string(), "unknown addresses".to_string()),
        };
        out.push_str(&format!("  subgraph {} {{\n    label={};\n", quote(&cluster), quote(&title)));
        for node in nodes {
            out.push_str(&format!("    {} [label={}];\n", quote(&node.id), quote(&node.name)));
        }
        out.push_str("  }\n");
    }
    for edge in &graph.edges {
        let mark = match edge.encryption {
            Encryption::Mtls => "🔒 mTLS",
            Encryption::Plaintext => "🔓 plaintext",
        };
        let color = match (edge.failed(), edge.encryption) {
            (true, _) => "red",
            (false, Encryption::Mtls) => "darkgreen",
            (false, Encryption::Plaintext) => "darkorange3",
        };
        let style = if edge.failed() { "dashed" } else { "solid" };
        out.push_str(&format!(
            "  {} -> {} [label={}, color={color}, fontcolor={color}, style={style}];\n",
            quote(&edge.src),
            quote(&edge.dst),
            quote(&format!("{mark} {}", edge_label(edge)))
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests;
