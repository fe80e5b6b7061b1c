use super::*;
use crate::report::flows::{fixtures::flow, record::Reporter};

/// productpage → details over mTLS twice (once reported by both ends), a denial, a
/// plaintext connection to an unknown address and a STRICT reset from it.
pub(crate) fn sample() -> Vec<FlowRecord> {
    let mut pp = flow(1);
    pp.src.workload = Some("productpage".into());
    let mut other_end = pp.clone();
    other_end.reporter = Reporter::Destination;
    let mut second = pp.clone();
    second.src.port = 40003;
    second.end = None;
    let mut plain = flow(2);
    plain.src.workload = Some("productpage".into());
    plain.encryption = Encryption::Plaintext;
    plain.src.port = 40001;
    plain.dst.workload = None;
    plain.dst.namespace = None;
    let mut denied = pp.clone();
    denied.src.port = 40002;
    denied.verdict = Verdict::Denied;
    let mut reset = flow(4);
    reset.encryption = Encryption::Plaintext;
    reset.src = plain.dst.clone();
    reset.src.port = 50000;
    reset.verdict = Verdict::Reset;
    reset.bytes_sent = 0;
    reset.bytes_received = 0;
    vec![pp, other_end, second, plain, denied, reset]
}

#[test]
fn edges_aggregate_per_port_encryption_and_verdict() {
    let graph = Graph::from_records(&sample());
    let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["10.0.0.2", "bookinfo/details", "bookinfo/productpage"]);
    let groups = graph.groups();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].0, Some("bookinfo"));
    assert_eq!(groups[1].0, None, "unknown addresses come last");
    let labels: Vec<(String, String, String)> =
        graph.edges.iter().map(|e| (e.src.clone(), e.dst.clone(), edge_label(e))).collect();
    assert_eq!(
        labels,
        [
            ("10.0.0.2".into(), "bookinfo/details".into(), "reset :8080 ×1".into()),
            ("bookinfo/productpage".into(), "10.0.0.2".into(), ":8080 ×1 · 2.1 kB".into()),
            ("bookinfo/productpage".into(), "bookinfo/details".into(), ":8080 ×2 · 4.2 kB (1 open)".into()),
            ("bookinfo/productpage".into(), "bookinfo/details".into(), "denied :8080 ×1".into()),
        ]
    );
}

#[test]
fn bytes_read_like_network_tools() {
    assert_eq!(human_bytes(999), "999 B");
    assert_eq!(human_bytes(1_250), "1.2 kB");
    assert_eq!(human_bytes(3_400_000), "3.4 MB");
}
