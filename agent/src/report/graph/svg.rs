//! The graph as a self-contained SVG (no fonts, scripts or images from elsewhere): namespaces as
//! boxes of workloads laid out left to right along the connections, edges with a closed
//! (mTLS) or open (plaintext) lock, connection counts and bytes; refused connections in red.
//! Elements carry `class` and `data-*` attributes naming what they show, for scripts and tests.
use std::{collections::HashMap, fmt::Write as _};

use super::{Edge, Graph, Node, edge_label};
use crate::report::flows::Encryption;

const NODE_W: f64 = 176.0;
const NODE_H: f64 = 36.0;
const ROW_GAP: f64 = 22.0;
/// Room between columns for edge labels.
const COL_GAP: f64 = 230.0;
const PAD: f64 = 16.0;
/// Room above and below the nodes of a namespace for edges bent around other nodes.
const BEND_ROOM: f64 = 56.0;
/// Vertical offsets of an edge's control points tried, in order, until it passes no node and no
/// label placed before it.
const BENDS: [f64; 5] = [0.0, -60.0, 60.0, -110.0, 110.0];
const TITLE_H: f64 = 24.0;
const MARGIN: f64 = 20.0;
const HEADER_H: f64 = 34.0;
const LEGEND_H: f64 = 40.0;
/// Average advance of an 11 px DejaVu Sans glyph, to size label boxes.
const CHAR_W: f64 = 6.8;

const MTLS: &str = "#1b7f3b";
const PLAINTEXT: &str = "#b45309";
const FAILED: &str = "#c62828";

#[derive(Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
}

impl Rect {
    fn left(self) -> f64 {
        self.x
    }
    fn right(self) -> f64 {
        self.x + NODE_W
    }
    fn cy(self) -> f64 {
        self.y + NODE_H / 2.0
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn colour(edge: &Edge) -> &'static str {
    match (edge.failed(), edge.encryption) {
        (true, _) => FAILED,
        (false, Encryption::Mtls) => MTLS,
        (false, Encryption::Plaintext) => PLAINTEXT,
    }
}

fn class(edge: &Edge) -> &'static str {
    match (edge.failed(), edge.encryption) {
        (true, _) => "failed",
        (false, Encryption::Mtls) => "mtls",
        (false, Encryption::Plaintext) => "plaintext",
    }
}

/// Rank of each node: the longest chain of connections leading to it (bounded, so cycles end).
fn ranks(graph: &Graph, index: &HashMap<&str, usize>) -> Vec<usize> {
    let mut rank = vec![0; graph.nodes.len()];
    for _ in 0..graph.nodes.len() {
        let mut changed = false;
        for e in graph.edges.iter().filter(|e| e.src != e.dst) {
            let (s, d) = (index[e.src.as_str()], index[e.dst.as_str()]);
            if rank[d] < rank[s] + 1 && rank[s] + 1 < graph.nodes.len() {
                rank[d] = rank[s] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    rank
}

struct Layout<'a> {
    /// Namespace boxes: title, x, y, width, height.
    groups: Vec<(Option<&'a str>, f64, f64, f64, f64)>,
    nodes: Vec<(&'a Node, Rect)>,
    width: f64,
    height: f64,
}

fn layout(graph: &Graph) -> Layout<'_> {
    let index: HashMap<&str, usize> =
        graph.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let rank = ranks(graph, &index);
    let mut groups = graph.groups();
    groups.sort_by_key(|(_, nodes)| nodes.iter().map(|n| rank[index[n.id.as_str()]]).min());
    let mut out = Layout { groups: Vec::new(), nodes: Vec::new(), width: 0.0, height: 0.0 };
    let mut x = MARGIN;
    let top = MARGIN + HEADER_H;
    let mut bottom = top;
    for (namespace, nodes) in groups {
        // Columns inside the box: one per rank present, each sorted by name.
        let mut columns: Vec<(usize, Vec<&Node>)> = Vec::new();
        for node in nodes {
            let r = rank[index[node.id.as_str()]];
            match columns.iter_mut().find(|(rank, _)| *rank == r) {
                Some((_, column)) => column.push(node),
                None => columns.push((r, vec![node])),
            }
        }
        columns.sort_by_key(|(r, _)| *r);
        let rows = columns.iter().map(|(_, c)| c.len()).max().unwrap_or(1) as f64;
        let cols = columns.len() as f64;
        let width = cols * NODE_W + (cols - 1.0) * COL_GAP + 2.0 * PAD;
        let height = TITLE_H + rows * NODE_H + (rows - 1.0) * ROW_GAP + 2.0 * (PAD + BEND_ROOM);
        for (c, (_, column)) in columns.iter().enumerate() {
            let shift = (rows - column.len() as f64) * (NODE_H + ROW_GAP) / 2.0;
            for (row, node) in column.iter().enumerate() {
                let rect = Rect {
                    x: x + PAD + c as f64 * (NODE_W + COL_GAP),
                    y: top + TITLE_H + PAD + BEND_ROOM + shift + row as f64 * (NODE_H + ROW_GAP),
                };
                out.nodes.push((node, rect));
            }
        }
        out.groups.push((namespace, x, top, width, height));
        x += width + COL_GAP;
        bottom = bottom.max(top + height);
    }
    out.width = (x - COL_GAP + MARGIN).max(560.0);
    out.height = bottom + MARGIN + LEGEND_H;
    out
}

/// The lock icon (14 px high) with its top-left corner at (x, y): a closed shackle for mTLS, an
/// open one for plaintext.
fn lock(out: &mut String, x: f64, y: f64, encryption: Encryption, colour: &str) {
    let (class, shackle) = match encryption {
        Encryption::Mtls => {
            ("closed", format!("M{} {} V{} a3 3 0 0 1 6 0 V{}", x + 2.0, y + 7.0, y + 4.0, y + 7.0))
        }
        Encryption::Plaintext => {
            ("open", format!("M{} {} V{} a3 3 0 0 1 6 0 V{}", x + 2.0, y + 7.0, y + 2.0, y + 3.5))
        }
    };
    let _ = write!(
        out,
        r#"<g class="lock {class}"><path d="{shackle}" fill="none" stroke="{colour}" stroke-width="1.6"/><rect x="{x}" y="{}" width="10" height="7" rx="1.5" fill="{colour}"/></g>"#,
        y + 7.0
    );
}

type Point = (f64, f64);

/// A label box: x, y, width, height.
type Area = [f64; 4];

fn overlaps(a: Area, b: Area) -> bool {
    a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3]
}

fn node_area(r: Rect, margin: f64) -> Area {
    [r.x - margin, r.y - margin, NODE_W + 2.0 * margin, NODE_H + 2.0 * margin]
}

/// The cubic Bézier from `s` to `d`; `off` shifts the ends (parallel edges), `bend` the control
/// points (to pass around nodes in between).
fn curve(same_node: bool, s: Rect, d: Rect, off: f64, bend: f64) -> [Point; 4] {
    if same_node {
        let (x, y) = (s.right(), s.cy() + off);
        [(x, y - 6.0), (x + 70.0, y - 34.0), (x + 70.0, y + 34.0), (x, y + 6.0)]
    } else if d.left() >= s.right() {
        let (a, b) = ((s.right(), s.cy() + off), (d.left(), d.cy() + off));
        let k = ((b.0 - a.0) / 2.0).max(40.0);
        [a, (a.0 + k, a.1 + bend), (b.0 - k, b.1 + bend), b]
    } else if d.right() <= s.left() {
        let (a, b) = ((s.left(), s.cy() + off), (d.right(), d.cy() + off));
        let k = ((a.0 - b.0) / 2.0).max(40.0);
        [a, (a.0 - k, a.1 + bend), (b.0 + k, b.1 + bend), b]
    } else {
        // Same column: bulge out to the right, into the gap.
        let (a, b) = ((s.right(), s.cy() + off), (d.right(), d.cy() + off));
        let k = 90.0 + bend.abs();
        [a, (a.0 + k, a.1), (b.0 + k, b.1), b]
    }
}

fn point_at(c: &[Point; 4], t: f64) -> Point {
    let u = 1.0 - t;
    let (a, b, cc, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
    (a * c[0].0 + b * c[1].0 + cc * c[2].0 + d * c[3].0, a * c[0].1 + b * c[1].1 + cc * c[2].1 + d * c[3].1)
}

/// What the edges must avoid: every node box, and the labels already placed.
struct Obstacles {
    nodes: Vec<Rect>,
    labels: Vec<Area>,
}

impl Obstacles {
    /// How many nodes (other than its ends) and labels a curve and its label run into.
    fn hits(&self, c: &[Point; 4], ends: [Rect; 2], label: Area) -> usize {
        let is_end = |r: &Rect| ends.iter().any(|e| e.x == r.x && e.y == r.y);
        let others: Vec<Area> =
            self.nodes.iter().filter(|r| !is_end(r)).map(|r| node_area(*r, 6.0)).collect();
        let curve_hits = (1..20)
            .map(|i| point_at(c, f64::from(i) / 20.0))
            .filter(|p| others.iter().any(|a| overlaps(*a, [p.0, p.1, 0.1, 0.1])))
            .count();
        let label_hits = others.iter().filter(|a| overlaps(**a, label)).count()
            + self.labels.iter().filter(|a| overlaps(**a, label)).count();
        curve_hits + label_hits
    }
}

/// One edge: a curve from `src` to `dst` with its label, bent around nodes and earlier labels;
/// `slot` spreads parallel edges apart.
fn edge(out: &mut String, e: &Edge, s: Rect, d: Rect, slot: f64, obstacles: &mut Obstacles) {
    let label = edge_label(e);
    let box_w = 22.0 + label.chars().count() as f64 * CHAR_W;
    let label_at = |c: &[Point; 4]| {
        let (mx, my) = point_at(c, 0.5);
        [mx - box_w / 2.0, my + slot * 14.0 - 10.0, box_w, 20.0]
    };
    let (_, [p0, p1, p2, p3], area) = BENDS
        .iter()
        .enumerate()
        .map(|(order, bend)| {
            let c = curve(e.src == e.dst, s, d, slot * 12.0, *bend);
            let area = label_at(&c);
            ((obstacles.hits(&c, [s, d], area), order), c, area)
        })
        .min_by_key(|(cost, _, _)| *cost)
        .unwrap_or_else(|| {
            let c = curve(e.src == e.dst, s, d, slot * 12.0, 0.0);
            ((0, 0), c, label_at(&c))
        });
    obstacles.labels.push(area);
    let colour = colour(e);
    let dash = if e.failed() { r#" stroke-dasharray="6 4""# } else { "" };
    let width = 1.4 + ((e.connections as f64).log10() * 1.2).min(2.6);
    let title = format!(
        "{} → {} port {}: {} {} connection(s), {}{}",
        e.src,
        e.dst,
        e.port,
        e.connections,
        e.encryption,
        e.verdict,
        if e.failed() { String::new() } else { format!(", {} bytes", e.bytes) }
    );
    let _ = write!(
        out,
        r#"<g class="edge {}" data-src="{}" data-dst="{}" data-port="{}" data-encryption="{}" data-verdict="{}" data-connections="{}" data-open="{}" data-bytes="{}" data-colour="{colour}"><title>{}</title>"#,
        class(e),
        escape(&e.src),
        escape(&e.dst),
        e.port,
        e.encryption,
        e.verdict,
        e.connections,
        e.open,
        e.bytes,
        escape(&title)
    );
    let _ = write!(
        out,
        r#"<path d="M{:.1} {:.1} C{:.1} {:.1} {:.1} {:.1} {:.1} {:.1}" fill="none" stroke="{colour}" stroke-width="{width:.1}"{dash} marker-end="url(#lm-arrow-{})"/>"#,
        p0.0,
        p0.1,
        p1.0,
        p1.1,
        p2.0,
        p2.1,
        p3.0,
        p3.1,
        class(e)
    );
    let (bx, by) = (area[0], area[1]);
    let _ = write!(
        out,
        r##"<rect x="{bx:.1}" y="{by:.1}" width="{box_w:.1}" height="20" rx="4" fill="#ffffff" stroke="{colour}" stroke-width="1"/>"##
    );
    lock(out, bx + 5.0, by + 3.0, e.encryption, colour);
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{colour}">{}</text></g>"#,
        bx + 19.0,
        by + 14.0,
        escape(&label)
    );
}

fn legend(out: &mut String, y: f64) {
    let mut x = MARGIN;
    let _ = write!(out, r#"<g class="legend">"#);
    for (encryption, colour, text) in [
        (Encryption::Mtls, MTLS, "mTLS (proven identities)"),
        (Encryption::Plaintext, PLAINTEXT, "plaintext"),
        (Encryption::Plaintext, FAILED, "reset / denied / failed"),
    ] {
        lock(out, x, y, encryption, colour);
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" font-size="12" fill="{colour}">{text}</text>"#,
            x + 16.0,
            y + 12.0
        );
        x += 40.0 + text.len() as f64 * 7.0;
    }
    out.push_str("</g>");
}

/// Renders the graph; `caption` goes at the top (where it was drawn from, when).
pub(crate) fn to_svg(graph: &Graph, caption: &str) -> String {
    let layout = layout(graph);
    let (w, h) = (layout.width, layout.height);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="lockmesh-graph" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    out.push_str("<defs>");
    for (class, colour) in [("mtls", MTLS), ("plaintext", PLAINTEXT), ("failed", FAILED)] {
        let _ = write!(
            out,
            r#"<marker id="lm-arrow-{class}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" markerUnits="userSpaceOnUse" orient="auto"><path d="M0 0 L10 5 L0 10 z" fill="{colour}"/></marker>"#
        );
    }
    out.push_str("</defs>");
    let _ = write!(out, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = write!(
        out,
        r##"<text class="caption" x="{MARGIN}" y="{}" font-size="14" font-weight="bold" fill="#263238">{}</text>"##,
        MARGIN + 14.0,
        escape(caption)
    );
    for (namespace, x, y, width, height) in &layout.groups {
        let title = match namespace {
            Some(ns) => format!("namespace {ns}"),
            None => "unknown addresses".to_string(),
        };
        let _ = write!(
            out,
            r##"<g class="namespace" data-namespace="{}"><rect x="{x}" y="{y}" width="{width}" height="{height}" rx="10" fill="#eef3f7" stroke="#90a4ae" stroke-dasharray="4 3"/><text x="{}" y="{}" font-size="12" fill="#455a64">{}</text></g>"##,
            escape(namespace.unwrap_or("")),
            x + 10.0,
            y + 17.0,
            escape(&title)
        );
    }
    let position: HashMap<&str, Rect> = layout.nodes.iter().map(|(n, r)| (n.id.as_str(), *r)).collect();
    let mut obstacles =
        Obstacles { nodes: layout.nodes.iter().map(|(_, r)| *r).collect(), labels: Vec::new() };
    let mut parallel: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
    for e in &graph.edges {
        parallel.entry((e.src.as_str(), e.dst.as_str())).or_default().1 += 1;
    }
    for e in &graph.edges {
        let (Some(s), Some(d)) = (position.get(e.src.as_str()), position.get(e.dst.as_str())) else {
            continue;
        };
        let (seen, total) = parallel.entry((e.src.as_str(), e.dst.as_str())).or_default();
        let slot = *seen as f64 - (*total as f64 - 1.0) / 2.0;
        *seen += 1;
        edge(&mut out, e, *s, *d, slot, &mut obstacles);
    }
    for (node, r) in &layout.nodes {
        let name: String = if node.name.chars().count() > 22 {
            node.name.chars().take(21).chain(['…']).collect()
        } else {
            node.name.clone()
        };
        let _ = write!(
            out,
            r##"<g class="node" data-id="{}"><title>{}</title><rect x="{}" y="{}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="#ffffff" stroke="#546e7a" stroke-width="1.2"/><text x="{}" y="{}" font-size="13" font-weight="bold" text-anchor="middle" fill="#263238">{}</text></g>"##,
            escape(&node.id),
            escape(&node.id),
            r.x,
            r.y,
            r.x + NODE_W / 2.0,
            r.cy() + 4.5,
            escape(&name)
        );
    }
    if graph.nodes.is_empty() {
        let _ = write!(
            out,
            r##"<text class="empty" x="{}" y="{}" font-size="13" fill="#607d8b" text-anchor="middle">no flows yet</text>"##,
            w / 2.0,
            MARGIN + HEADER_H + 30.0
        );
    }
    legend(&mut out, h - LEGEND_H + 8.0);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests;
