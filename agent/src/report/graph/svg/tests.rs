use super::*;
use crate::report::graph::tests::sample;

#[test]
fn edges_carry_locks_colours_and_counts() {
    let svg = to_svg(&Graph::from_records(&sample()), "node node1 <test>");
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
    assert!(svg.contains("node node1 &lt;test&gt;"), "captions are escaped");
    let mtls = r#"<g class="edge mtls" data-src="bookinfo/productpage" data-dst="bookinfo/details" data-port="8080" data-encryption="mtls" data-verdict="forwarded" data-connections="2" data-open="1""#;
    assert!(svg.contains(mtls), "{svg}");
    let reset = r#"<g class="edge failed" data-src="10.0.0.2" data-dst="bookinfo/details" data-port="8080" data-encryption="plaintext" data-verdict="reset" data-connections="1""#;
    assert!(svg.contains(reset), "{svg}");
    assert!(svg.contains(&format!(r#"data-colour="{FAILED}""#)));
    assert_eq!(svg.matches(r#"<g class="lock closed">"#).count(), 2 + 1, "two mTLS edges and the legend");
    assert_eq!(svg.matches(r#"<g class="lock open">"#).count(), 2 + 2, "plaintext and reset, and the legend");
    assert!(svg.contains(r#"<g class="namespace" data-namespace="bookinfo">"#));
    assert!(svg.contains(":8080 ×2 · 4.2 kB (1 open)"));
    assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count());
}

#[test]
fn clients_are_left_of_their_servers() {
    let graph = Graph::from_records(&sample());
    let layout = layout(&graph);
    let x = |id: &str| layout.nodes.iter().find(|(n, _)| n.id == id).map(|(_, r)| r.x).unwrap_or_default();
    assert!(x("bookinfo/productpage") < x("bookinfo/details"));
    assert!(layout.width >= x("10.0.0.2") + NODE_W);
}

#[test]
fn an_edge_bends_around_the_node_in_between() {
    let node =
        |name: &str| Node { id: format!("ns/{name}"), namespace: Some("ns".into()), name: name.into() };
    let edge = |src: &str, dst: &str| Edge {
        src: format!("ns/{src}"),
        dst: format!("ns/{dst}"),
        port: 80,
        encryption: Encryption::Mtls,
        verdict: crate::report::flows::Verdict::Forwarded,
        connections: 1,
        open: 0,
        bytes: 10,
    };
    let graph = Graph {
        nodes: vec![node("a"), node("b"), node("c")],
        edges: vec![edge("a", "b"), edge("b", "c"), edge("a", "c")],
    };
    let layout = layout(&graph);
    let rect = |id: &str| layout.nodes.iter().find(|(n, _)| n.id == id).map(|(_, r)| *r).unwrap();
    let (a, b, c) = (rect("ns/a"), rect("ns/b"), rect("ns/c"));
    assert!(a.y == b.y && b.y == c.y, "one row: a → c would cross b when drawn straight");
    let obstacles = Obstacles { nodes: vec![a, b, c], labels: Vec::new() };
    let straight = curve(false, a, c, 0.0, 0.0);
    let label = [0.0, 0.0, 0.0, 0.0];
    assert!(obstacles.hits(&straight, [a, c], label) > 0);
    let svg = to_svg(&graph, "");
    let path = svg.split(r#"data-src="ns/a" data-dst="ns/c""#).nth(1).unwrap();
    let d = path.split(r#"<path d="M"#).nth(1).unwrap().split('"').next().unwrap();
    let numbers: Vec<f64> = d.replace('C', " ").split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(numbers[3] < a.cy() - 30.0, "the control points rise above the row: {d}");
}

#[test]
fn an_empty_graph_says_so() {
    let svg = to_svg(&Graph::default(), "node1");
    assert!(svg.contains("no flows yet") && svg.ends_with("</svg>\n"));
}
