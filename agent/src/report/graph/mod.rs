//! The mesh picture: workloads and the connections between them, aggregated from flow records
//! (of a live agent or of audit-log files), rendered as Graphviz DOT or as a self-contained SVG.
//! `lockmesh graph` and the admin endpoint's `/graph` page draw with the same renderer.
mod dot;
mod svg;

use std::collections::{BTreeMap, BTreeSet, HashSet};

pub(crate) use dot::to_dot;
pub(crate) use svg::to_svg;

use crate::report::flows::{Encryption, Endpoint, FlowRecord, Verdict};

/// The page the admin endpoint serves at `/graph`: it fetches `/graph.svg` every few seconds.
pub(crate) const PAGE: &str = include_str!("page.html");

/// A workload (or, when the inventory did not know it, an address).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Node {
    /// `namespace/workload`, or the IP address.
    pub id: String,
    /// `None` for an address that is no known workload.
    pub namespace: Option<String>,
    /// What the picture writes in the box: the workload name, or the address.
    pub name: String,
}

/// All connections from one node to another port of another node with one encryption and one
/// verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Edge {
    pub src: String,
    pub dst: String,
    pub port: u16,
    pub encryption: Encryption,
    pub verdict: Verdict,
    /// Connections, open ones included.
    pub connections: u64,
    /// Of which still open.
    pub open: u64,
    /// Bytes both ways.
    pub bytes: u64,
}

impl Edge {
    /// Refused or failed connections (drawn in red).
    pub(crate) fn failed(&self) -> bool {
        self.verdict != Verdict::Forwarded
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

fn node(e: &Endpoint) -> Node {
    match (&e.namespace, &e.workload) {
        (Some(ns), Some(w)) => Node { id: format!("{ns}/{w}"), namespace: Some(ns.clone()), name: w.clone() },
        _ => Node { id: e.ip.to_string(), namespace: None, name: e.ip.to_string() },
    }
}

impl Graph {
    /// Aggregates records into edges. A connection reported by both of its ends (records of two
    /// nodes) counts once; an open flow counts as a connection.
    pub(crate) fn from_records(records: &[FlowRecord]) -> Self {
        let mut seen = HashSet::new();
        let mut nodes = BTreeSet::new();
        let mut edges: BTreeMap<(String, String, u16, bool, u8), Edge> = BTreeMap::new();
        for r in records {
            // Both ends of one connection have the same addresses; a refused attempt and its
            // retry from the same port do not.
            if !seen.insert((r.src.ip, r.src.port, r.dst.ip, r.dst.port, r.verdict == Verdict::Denied)) {
                continue;
            }
            let (src, dst) = (node(&r.src), node(&r.dst));
            let key = (
                src.id.clone(),
                dst.id.clone(),
                r.dst.port,
                r.encryption == Encryption::Mtls,
                verdict_order(r.verdict),
            );
            let edge = edges.entry(key).or_insert_with(|| Edge {
                src: src.id.clone(),
                dst: dst.id.clone(),
                port: r.dst.port,
                encryption: r.encryption,
                verdict: r.verdict,
                connections: 0,
                open: 0,
                bytes: 0,
            });
            edge.connections += 1;
            edge.open += u64::from(r.is_open());
            edge.bytes += r.bytes_sent + r.bytes_received;
            nodes.insert(src);
            nodes.insert(dst);
        }
        Self { nodes: nodes.into_iter().collect(), edges: edges.into_values().collect() }
    }

    /// Namespaces in order, with their nodes; addresses that are no workload come last (`None`).
    pub(crate) fn groups(&self) -> Vec<(Option<&str>, Vec<&Node>)> {
        let mut groups: BTreeMap<(bool, Option<&str>), Vec<&Node>> = BTreeMap::new();
        for n in &self.nodes {
            groups.entry((n.namespace.is_none(), n.namespace.as_deref())).or_default().push(n);
        }
        groups.into_iter().map(|((_, ns), nodes)| (ns, nodes)).collect()
    }
}

fn verdict_order(v: Verdict) -> u8 {
    match v {
        Verdict::Forwarded => 0,
        Verdict::Reset => 1,
        Verdict::Denied => 2,
        Verdict::Error => 3,
    }
}

/// The label of an edge: `:8080 ×2 · 1.2 kB`, with the verdict when it is not `forwarded`.
pub(crate) fn edge_label(edge: &Edge) -> String {
    let mut label = format!(":{} ×{}", edge.port, edge.connections);
    if edge.failed() {
        label = format!("{} {label}", edge.verdict);
    } else {
        label.push_str(&format!(" · {}", human_bytes(edge.bytes)));
    }
    if edge.open > 0 {
        label.push_str(&format!(" ({} open)", edge.open));
    }
    label
}

/// Decimal units, as network tools count bytes.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
pub(crate) mod tests;
