//! Attack 2: SYN-cookie replay. The cookie secret is global, not per network namespace: the
//! attacker mints a cookie for (its address → the victim's address and port) against a listener
//! of its own that wears the victim's address, then replays it as a bare ACK + request to the
//! real victim while the victim issues cookies. No SYN ever crosses the guard, so the guard
//! checks every segment of a connection the pod did not open.
use std::{
    net::{SocketAddrV4, TcpListener},
    time::Duration,
};

use lockmesh_tests::{
    Agent, Testbed, netns,
    raw::{ACK, PSH, RST, RawTcp, SYN, Segment},
};

use super::{common::*, refusal_record, until_strict};

const VICTIM_PORT: u16 = 9080;

/// Mints a cookie in the outsider's namespace and replays it to details; returns the page bytes
/// the attacker got back and whether it was reset.
fn replay(tb: &Testbed, from_port: u16) -> (Vec<u8>, bool) {
    let outsider = tb.pod("outsider");
    let ns = outsider.netns_path();
    let victim = SocketAddrV4::new(tb.pod("details").ip, VICTIM_PORT);
    let me = SocketAddrV4::new(outsider.ip, from_port);
    let raw = RawTcp::open(&ns).unwrap();

    // The look-alike listener: the victim's address on the attacker's loopback, cookies always.
    let alias = format!("{}/32", victim.ip());
    netns::run_cmd(&ns, "ip", &["addr", "add", &alias, "dev", "lo"]).unwrap();
    let listener = netns::run_in(&ns, move || TcpListener::bind(victim)).unwrap().unwrap();
    let isn = 7_000_000u32;
    raw.send(&Segment { src: me, dst: victim, seq: isn, ack: 0, flags: SYN, payload: vec![] }.packet(1))
        .unwrap();
    let synack =
        raw.receive(Duration::from_millis(500), |s| s.src == victim && s.dst == me && s.flags & SYN != 0);
    drop(listener);
    netns::run_cmd(&ns, "ip", &["addr", "del", &alias, "dev", "lo"]).unwrap();
    let cookie = synack.first().unwrap_or_else(|| panic!("no SYN-ACK from the look-alike listener")).seq;

    // The attacker's own kernel must not reset what the victim sends back (it has no socket
    // for it): its RSTs are dropped on the way out, as a raw-socket attacker would.
    netns::run_cmd(&ns, "nft", &["add", "table", "ip", "attacker"]).unwrap();
    let hook = "{ type filter hook output priority 0; }";
    netns::run_cmd(&ns, "nft", &["add", "chain", "ip", "attacker", "out", hook]).unwrap();
    netns::run_cmd(&ns, "nft", &["add", "rule", "ip", "attacker", "out", "tcp", "flags", "rst", "drop"])
        .unwrap();

    // The replay to the real victim: the ACK that completes the handshake, then a request.
    let ack = Segment {
        src: me,
        dst: victim,
        seq: isn + 1,
        ack: cookie.wrapping_add(1),
        flags: ACK,
        payload: vec![],
    };
    raw.send(&ack.packet(2)).unwrap();
    let request = b"GET / HTTP/1.0\r\n\r\n".to_vec();
    raw.send(&Segment { flags: PSH | ACK, payload: request, ..ack }.packet(3)).unwrap();
    let answers = raw.receive(Duration::from_millis(1500), |s| s.src == victim && s.dst == me);
    netns::run_cmd(&ns, "nft", &["delete", "table", "ip", "attacker"]).unwrap();
    let page = answers.iter().flat_map(|s| s.payload.clone()).collect();
    (page, answers.iter().any(|s| s.flags & RST != 0))
}

#[test]
fn a_replayed_syn_cookie_gets_no_connection_to_a_strict_pod() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    let details = tb.serve("details", VICTIM_PORT).unwrap();
    for pod in ["details", "outsider"] {
        netns::sysctl(&tb.pod(pod).netns_path(), "net/ipv4/tcp_syncookies", "2").unwrap();
    }
    let url = format!("http://{}:{VICTIM_PORT}/", tb.pod("details").ip);

    // Without lockmesh: the victim issues cookies (one plain request makes it), and the replay
    // gets a connection to the app.
    assert_eq!(tb.curl("outsider", &[&url]).unwrap().0, 0);
    let accepted = details.accepted();
    let (page, _) = replay(&tb, 42_001);
    assert_eq!(details.accepted(), accepted + 1, "control: the app accepted the replayed connection");
    // The app answers (the first bytes of its response: the attacker does not ACK, so the rest
    // waits) although no SYN of the attacker's ever reached it.
    assert!(
        page.starts_with(b"HTTP/1.1"),
        "control: the replayed cookie got no answer from the app: {:?}",
        String::from_utf8_lossy(&page)
    );

    let _agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    until_strict(&tb, "details", VICTIM_PORT);
    // The victim issues cookies now too: in-mesh traffic reaches its listener through the
    // engine, inside the pod.
    assert_eq!(tb.get("productpage", addr(&tb, "details", VICTIM_PORT), "/").unwrap()["status"], 200);
    let accepted_in_mesh = details.accepted();
    assert!(accepted_in_mesh > accepted);
    let (page, reset) = replay(&tb, 42_011);
    assert!(
        page.is_empty(),
        "the replayed cookie got data under STRICT: {:?}",
        String::from_utf8_lossy(&page)
    );
    assert!(reset, "the attacker's segments were answered with a RST");
    assert_eq!(details.accepted(), accepted_in_mesh, "the app accepted the replayed connection");
    let record = refusal_record(&agent2, "replayed SYN cookie");
    assert_eq!(record["verdict"], "reset", "{record}");
    assert_eq!(record["src"]["ip"], tb.pod("outsider").ip.to_string(), "{record}");
    assert_eq!(record["dst"]["port"], VICTIM_PORT, "{record}");
}
