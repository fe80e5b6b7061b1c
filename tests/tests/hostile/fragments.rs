//! Attack 1: a SYN split so that its first IP fragment holds only 8 bytes of TCP header. The
//! guard cannot read its flags; the pod would reassemble a real SYN. Fragments of TCP to a pod
//! with STRICT ports are dropped, whole.
use std::{net::SocketAddrV4, time::Duration};

use lockmesh_tests::{
    Agent, Testbed,
    raw::{ACK, RST, RawTcp, SYN, Segment},
};

use super::{common::*, kernel_counter, refusal_record, until_strict};

/// Sends `outsider → pod:port` SYNs from `port` (split into fragments or whole) and returns the
/// segments the pod answered with.
fn syn(tb: &Testbed, pod: &str, port: u16, from_port: u16, fragmented: bool) -> Vec<Segment> {
    let raw = RawTcp::open(&tb.pod("outsider").netns_path()).unwrap();
    let src = SocketAddrV4::new(tb.pod("outsider").ip, from_port);
    let dst = SocketAddrV4::new(tb.pod(pod).ip, port);
    let syn = Segment { src, dst, seq: 1_000_000, ack: 0, flags: SYN, payload: vec![] };
    let packets = if fragmented { syn.fragments(from_port, 8) } else { vec![syn.packet(from_port)] };
    for packet in &packets {
        raw.send(packet).unwrap();
    }
    raw.receive(Duration::from_millis(1500), |s| s.src == dst && s.dst == src)
}

#[test]
fn a_fragmented_syn_never_reaches_a_strict_app_on_either_node() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    // productpage shares node1 with the attacker; details is on node2.
    let _apps = [tb.serve("productpage", 9080).unwrap(), tb.serve("details", 9080).unwrap()];

    // Without lockmesh the split SYN is reassembled by the pod and answered: the attack works
    // on this kernel, and the raw listener sees the answer.
    for (pod, port) in [("productpage", 41_001), ("details", 41_002)] {
        let answers = syn(&tb, pod, 9080, port, true);
        assert!(
            answers.iter().any(|s| s.flags & (SYN | ACK) == SYN | ACK),
            "control: {pod} did not answer the fragmented SYN: {answers:?}"
        );
    }

    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    until_strict(&tb, "productpage", 9080);
    until_strict(&tb, "details", 9080);
    for (pod, port, agent) in [("productpage", 41_011, &agent1), ("details", 41_012, &agent2)] {
        let drops = kernel_counter(agent, "strict_drops");
        let answers = syn(&tb, pod, 9080, port, true);
        assert!(answers.is_empty(), "{pod} answered a fragmented SYN under STRICT: {answers:?}");
        // A whole SYN from the same raw socket is answered by the guard's RST: the listener
        // works, so the silence above is the drop.
        let answers = syn(&tb, pod, 9080, port + 100, false);
        assert!(answers.iter().any(|s| s.flags & RST != 0), "{pod}: no RST for a whole SYN: {answers:?}");
        super::until("the drops counted", || kernel_counter(agent, "strict_drops") >= drops + 2);
        let record = refusal_record(agent, "IP fragment");
        assert_eq!(record["verdict"], "denied", "{record}");
        assert_eq!(record["src"]["ip"], tb.pod("outsider").ip.to_string(), "{record}");
        assert_eq!(record["mode"], "STRICT", "{record}");
    }
    let metrics = agent2.get_metrics("/metrics").unwrap().text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lockmesh_strict_packets_dropped_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
