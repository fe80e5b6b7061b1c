//! Attacks 4 and 5: IPv6 and IPv4-mapped sockets. A family is never a bypass:
//! - an `AF_INET6` socket connecting to `::ffff:<pod>` (the JVM's default) is captured and
//!   tunnelled like an IPv4 one;
//! - an enrolled pod's IPv6 connects are refused (the engine does not tunnel IPv6), never sent
//!   in clear;
//! - IPv6 plaintext to a STRICT port is reset like IPv4.
use std::time::{Duration, Instant};

use lockmesh_tests::{Agent, Testbed, app::MARKER, capture::Capture, netns, testbed::WIRE_IF};

use super::{common::*, kernel_counter, refusal_record, until_strict};

/// Gives `pod` the IPv6 address `ip` and a route through its node, as a dual-stack CNI would.
fn add_ipv6(tb: &Testbed, pod: &str, ip: &str) {
    let pod = tb.pod(pod);
    let pod_ns = pod.netns_path();
    let node_ns = tb.node(&pod.node).netns_path();
    netns::run_cmd(&pod_ns, "ip", &["-6", "addr", "add", &format!("{ip}/128"), "dev", "eth0", "nodad"])
        .unwrap();
    netns::run_cmd(&pod_ns, "ip", &["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"])
        .unwrap();
    netns::run_cmd(&node_ns, "ip", &["-6", "addr", "add", "fe80::1/64", "dev", &pod.host_if, "nodad"])
        .unwrap();
    netns::run_cmd(&node_ns, "ip", &["-6", "route", "add", &format!("{ip}/128"), "dev", &pod.host_if])
        .unwrap();
    netns::sysctl(&node_ns, "net/ipv6/conf/all/forwarding", "1").unwrap();
}

fn curl(tb: &Testbed, pod: &str, url: &str) -> (i32, String, Duration) {
    let started = Instant::now();
    let (code, out, err) = tb.curl(pod, &["--connect-timeout", "2", "-w", "%{remote_ip}", url]).unwrap();
    (code, out + &err, started.elapsed())
}

#[test]
fn ipv4_mapped_connects_are_tunnelled_and_ipv6_is_never_a_bypass() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    add_ipv6(&tb, "productpage", "fd00:77::2");
    add_ipv6(&tb, "outsider", "fd00:77::3");
    let productpage = tb.serve_dual_stack("productpage", 9080).unwrap();
    let _outsider = tb.serve_dual_stack("outsider", 8080).unwrap();
    let _details = tb.serve("details", 9080).unwrap();
    let mapped_details = format!("http://[::ffff:{}]:9080/", tb.pod("details").ip);

    // Without lockmesh, IPv6 flows both ways between the pods.
    assert_eq!(curl(&tb, "outsider", "http://[fd00:77::2]:9080/").0, 0, "control: outsider → productpage");
    assert_eq!(curl(&tb, "productpage", "http://[fd00:77::3]:8080/").0, 0, "control: productpage → outsider");

    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    until_strict(&tb, "details", 9080);
    until_strict(&tb, "productpage", 9080);

    // IPv4-mapped: captured and tunnelled. Against a STRICT server plaintext would be reset, so
    // a served request is a tunnelled one; the wire shows no plaintext, and the app sees the
    // address it dialled.
    let wire =
        Capture::start(&tb.node("node2").netns_path(), WIRE_IF, "tcp", tb.work_dir.join("mapped.pcap"))
            .unwrap();
    let (code, out, _) = curl(&tb, "productpage", &mapped_details);
    let wire = wire.finish().unwrap();
    assert_eq!(code, 0, "IPv4-mapped request from an enrolled pod: {out}");
    assert!(out.contains(MARKER), "{out}");
    assert!(out.ends_with(&format!("::ffff:{}", tb.pod("details").ip)), "getpeername shows the peer: {out}");
    assert!(!wire.contains(MARKER.as_bytes()) && wire.packets_on_port(15008) > 0, "{}", wire.summary);
    let (code, _, _) = curl(&tb, "outsider", &mapped_details);
    assert_ne!(code, 0, "the out-of-mesh pod's IPv4-mapped plaintext is reset like IPv4");

    // IPv6 plaintext to a STRICT port: reset at once, the app never sees it, recorded.
    let accepted = productpage.accepted();
    let (code, out, took) = curl(&tb, "outsider", "http://[fd00:77::2]:9080/");
    assert_eq!(code, 7, "IPv6 plaintext to STRICT: {out}");
    assert!(took < Duration::from_millis(500), "the reset must be immediate, took {took:?}");
    assert_eq!(productpage.accepted(), accepted, "the app saw IPv6 plaintext under STRICT");
    let record = refusal_record(&agent1, "IPv6 client [fd00:77::3]");
    assert_eq!(record["verdict"], "reset", "{record}");
    assert_eq!(record["dst"]["port"], 9080, "{record}");

    // An enrolled pod's IPv6 connect is refused before any packet leaves (and counted).
    let refused = kernel_counter(&agent1, "ipv6_refused");
    let capture =
        Capture::start(&tb.pod("outsider").netns_path(), "eth0", "ip6 and tcp", tb.work_dir.join("v6.pcap"))
            .unwrap();
    let (code, out, took) = curl(&tb, "productpage", "http://[fd00:77::3]:8080/");
    let capture = capture.finish().unwrap();
    assert_eq!(code, 7, "IPv6 from an enrolled pod must be refused: {out}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(capture.summary.trim().is_empty(), "an IPv6 packet left the pod:\n{}", capture.summary);
    super::until("IPv6 refusals counted", || kernel_counter(&agent1, "ipv6_refused") > refused);
    // Loopback stays allowed.
    assert_eq!(curl(&tb, "productpage", "http://[::1]:9080/").0, 0, "IPv6 loopback inside the pod");
}
