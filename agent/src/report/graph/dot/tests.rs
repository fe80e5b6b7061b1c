use super::*;
use crate::report::graph::tests::sample;

#[test]
fn clusters_per_namespace_and_lock_marks() {
    let dot = to_dot(&Graph::from_records(&sample()));
    assert!(dot.starts_with("digraph lockmesh {") && dot.ends_with("}\n"), "{dot}");
    assert!(dot.contains("subgraph \"cluster_ns_bookinfo\" {\n    label=\"namespace bookinfo\";"), "{dot}");
    assert!(dot.contains("    \"bookinfo/productpage\" [label=\"productpage\"];"), "{dot}");
    assert!(
        dot.contains(
            "\"bookinfo/productpage\" -> \"bookinfo/details\" [label=\"🔒 mTLS :8080 ×2 · 4.2 kB (1 open)\", color=darkgreen"
        ),
        "{dot}"
    );
    assert!(
        dot.contains(
            "\"10.0.0.2\" -> \"bookinfo/details\" [label=\"🔓 plaintext reset :8080 ×1\", color=red"
        ),
        "{dot}"
    );
}
