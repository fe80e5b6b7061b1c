//! Bounds: an agent whose kernel maps are deliberately too small (three pods for two ENROLLED
//! entries, three STRICT entries for one) keeps running, says which map is full and what is
//! left out, counts every refused write, and its entry gauges follow live connections and return
//! to their baseline once they close. `/flows?follow` streams are capped: one more gets 503, is
//! counted, and closed followers make room again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::*;
use lockmesh_tests::{Agent, NodeSpec, PodSpec, Testbed, TestbedSpec};
use serde_json::Value;

/// Connections held open through the tunnel while the gauges are read.
const HELD: u64 = 12;
/// Captured connects refused while the agent is down.
const REFUSED: u64 = 20;
/// Long enough for the kernel-written maps' count (every 10 s) to see them.
const HOLD_SECONDS: u64 = 25;
/// The agent counts the kernel-written maps every 10 s.
const COUNTED: Duration = Duration::from_secs(25);

const STRICT_BOOKINFO: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: bookinfo}\nspec: {mtls: {mode: STRICT}}\n";

fn map_metric(agent: &Agent, name: &str, map: &str) -> u64 {
    metric(agent, &format!("{name}{{map=\"{map}\"}}"))
        .unwrap_or_else(|| panic!("{name}{{map=\"{map}\"}} missing from /metrics"))
}

fn table_entries(agent: &Agent, table: &str) -> u64 {
    metric(agent, &format!("lockmesh_table_entries{{table=\"{table}\"}}"))
        .unwrap_or_else(|| panic!("lockmesh_table_entries{{table=\"{table}\"}} missing"))
}

/// Polls until `done` holds for the value of `read`; fails with the last value.
fn wait_for(what: &str, timeout: Duration, read: impl Fn() -> u64, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let value = read();
        if done(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: still {value} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn full_kernel_maps_are_counted_and_logged_and_gauges_return_to_baseline() {
    let tb = Testbed::up(&TestbedSpec {
        nodes: vec![
            NodeSpec::new(
                "node1",
                vec![
                    PodSpec::new("productpage", "bookinfo"),
                    PodSpec::new("reviews", "bookinfo"),
                    PodSpec::new("ratings", "bookinfo"),
                ],
            ),
            NodeSpec::new("node2", vec![PodSpec::new("details", "bookinfo")]),
        ],
    })
    .expect("testbed up (needs root, iproute2)");
    let config = tb.config_dir("config").unwrap();
    std::fs::write(config.join("pa.yaml"), STRICT_BOOKINFO).unwrap();
    let agent1 =
        Agent::start(&tb, "node1", &config, &["--max-enrolled", "2", "--bpf-map-entries", "STRICT=1"])
            .expect("an agent with full maps still gets ready");
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let details = addr(&tb, "details", 8080);

    // Capacities as asked, filled to the brim, the rest refused and counted.
    assert_eq!(map_metric(&agent1, "lockmesh_bpf_map_capacity", "ENROLLED"), 2);
    assert_eq!(map_metric(&agent1, "lockmesh_bpf_map_capacity", "STRICT"), 1);
    assert_eq!(map_metric(&agent1, "lockmesh_bpf_map_entries", "ENROLLED"), 2);
    assert_eq!(map_metric(&agent1, "lockmesh_bpf_map_entries", "STRICT"), 1);
    assert_eq!(map_metric(&agent1, "lockmesh_bpf_map_capacity", "CAPTURE"), 65_536, "a default size");
    let failed = map_metric(&agent1, "lockmesh_bpf_map_update_failures_total", "ENROLLED");
    assert!(failed >= 1, "{failed}");
    assert!(map_metric(&agent1, "lockmesh_bpf_map_update_failures_total", "STRICT") >= 2);
    assert_eq!(map_metric(&agent1, "lockmesh_bpf_map_update_failures_total", "CAPTURE"), 0);

    // /readyz names what is left out; the log names the map, the pod and the flag.
    let ready: Value = agent1.get("/readyz").unwrap().json().unwrap();
    assert_eq!(ready["ready"], true, "{ready:#}");
    let enrolled_error =
        ready["kernel_map_errors"]["ENROLLED"].as_str().expect("ENROLLED error in /readyz").to_string();
    assert!(enrolled_error.contains("kernel map ENROLLED is full (2 of 2 entries)"), "{enrolled_error}");
    assert!(enrolled_error.contains("raise --max-enrolled"), "{enrolled_error}");
    let strict_error = ready["kernel_map_errors"]["STRICT"].as_str().expect("STRICT error in /readyz");
    assert!(
        strict_error.contains("STRICT is not enforced")
            && strict_error.contains("--bpf-map-entries STRICT=N")
    );
    assert_eq!(ready["kernel_maps"]["ENROLLED"]["capacity"], 2, "{ready:#}");
    println!("/readyz kernel_map_errors:\n  {enrolled_error}\n  {strict_error}");
    let left_out: Vec<&str> = ["productpage", "reviews", "ratings"]
        .into_iter()
        .filter(|p| enrolled_error.contains(&format!("bookinfo/{p}")))
        .collect();
    assert_eq!(left_out.len(), 1, "exactly one pod does not fit: {enrolled_error}");
    let left_out = left_out[0];
    let enrolled = ["productpage", "reviews", "ratings"].into_iter().find(|p| *p != left_out).unwrap();
    let log = agent1.log();
    assert!(
        log.contains("kernel map ENROLLED is full") && log.contains(&format!("bookinfo/{left_out}")),
        "{log}"
    );
    assert!(log.contains("kernel map STRICT is full"), "{log}");

    // It keeps running and retrying: every second's refused write is counted.
    std::thread::sleep(Duration::from_secs(3));
    let later = map_metric(&agent1, "lockmesh_bpf_map_update_failures_total", "ENROLLED");
    assert!(later >= failed + 2, "retried every second: {failed} then {later}");
    assert_eq!(agent1.get("/healthz").unwrap().status, 200);

    // What the log says is what happens: the left-out pod's connections are not captured (so
    // STRICT details resets its plaintext), an enrolled pod's go through the tunnel.
    let (code, _, stderr) = tb.curl(left_out, &[&format!("http://{details}/")]).unwrap();
    assert_eq!(code, 7, "plaintext from the pod outside ENROLLED must be reset by STRICT details: {stderr}");
    assert_eq!(tb.get(enrolled, details, "/").unwrap()["status"], 200);

    let baseline_orig = gauges_follow_held_connections(&tb, &agent1, enrolled, details);

    // Connects that never establish forget their original destination too: with the agent
    // down, captured connects are refused (no engine listens); none may stay in ORIG_DST, where
    // a burst of them would make the LRU evict live connections' entries.
    agent1.kill().unwrap();
    for _ in 0..REFUSED {
        let (code, _, stderr) =
            tb.curl(enrolled, &["--max-time", "5", &format!("http://{details}/")]).unwrap();
        assert_eq!(code, 7, "a captured connect with no engine is refused: {stderr}");
    }
    let agent1 =
        Agent::start(&tb, "node1", &config, &["--max-enrolled", "2", "--bpf-map-entries", "STRICT=1"])
            .unwrap();
    // A count made after the restart (one at start, then every 10 s).
    std::thread::sleep(Duration::from_secs(11));
    let after = map_metric(&agent1, "lockmesh_bpf_map_entries", "ORIG_DST");
    println!("{REFUSED} refused captured connects: ORIG_DST {baseline_orig} → {after}");
    assert_eq!(after, baseline_orig, "refused connects left their original destinations in ORIG_DST");
}

/// The entry gauges follow live connections: HELD connections held open from `pod` through the
/// tunnel to `details`, then back to the baseline once they are closed. Returns the baseline of
/// `ORIG_DST` entries.
fn gauges_follow_held_connections(tb: &Testbed, agent1: &Agent, pod: &str, details: SocketAddr) -> u64 {
    // Gauges follow live connections: HELD connections held open through the tunnel…
    let baseline_orig = map_metric(agent1, "lockmesh_bpf_map_entries", "ORIG_DST");
    let baseline_open = table_entries(agent1, "flows_open");
    let holder = std::thread::scope(|scope| {
        let (count, seconds, connect) = (HELD.to_string(), HOLD_SECONDS.to_string(), details.to_string());
        let handle = scope.spawn(move || {
            tb.client(pod, &["hold", "--connect", &connect, "--count", &count, "--seconds", &seconds])
                .unwrap()
        });
        let orig = wait_for(
            "ORIG_DST entries while connections are held",
            COUNTED,
            || map_metric(agent1, "lockmesh_bpf_map_entries", "ORIG_DST"),
            |n| n >= baseline_orig + HELD,
        );
        let open = wait_for(
            "open flows while connections are held",
            WAIT,
            || table_entries(agent1, "flows_open"),
            |n| n >= baseline_open + HELD,
        );
        println!("held {HELD}: ORIG_DST {baseline_orig} → {orig}, open flows {baseline_open} → {open}");
        handle.join().unwrap()
    });
    assert_eq!((holder["ok"].as_u64(), holder["failed"].as_u64()), (Some(HELD), Some(0)), "{holder}");
    // …and back to the baseline once they are closed.
    wait_for(
        "ORIG_DST entries after the connections closed",
        COUNTED,
        || map_metric(agent1, "lockmesh_bpf_map_entries", "ORIG_DST"),
        |n| n == baseline_orig,
    );
    wait_for(
        "open flows after the connections closed",
        WAIT,
        || table_entries(agent1, "flows_open"),
        |n| n == baseline_open,
    );
    assert_eq!(
        map_metric(agent1, "lockmesh_bpf_map_entries", "ORIG_DST_BY_PORT"),
        0,
        "the engine took each entry"
    );
    assert_eq!(metric(agent1, "lockmesh_captured_without_destination_total"), Some(0));
    let flows = agent1.flows().unwrap();
    let tunneled = flows
        .iter()
        .filter(|f| f["encryption"] == "mtls" && f["dst"]["port"] == 8080 && !f["end"].is_null())
        .count();
    assert!(tunneled as u64 > HELD, "{tunneled} closed mTLS flows");
    baseline_orig
}

/// Opens `/flows?follow` (updates only) and returns the status and the stream, held open.
fn follow(agent: &Agent) -> (u16, std::net::TcpStream) {
    use std::io::{Read as _, Write as _};
    let mut stream = agent.connect_admin().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /flows?follow=true&snapshot=false HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "head cut short: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, stream)
}

#[test]
fn flows_followers_are_capped_refused_with_503_counted_and_released() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let details = addr(&tb, "details", 8080);
    let capacity = metric(&agent1, "lockmesh_table_capacity{table=\"flow_followers\"}").unwrap();

    let followers: Vec<_> = (0..capacity)
        .map(|n| {
            let (status, stream) = follow(&agent1);
            assert_eq!(status, 200, "follower {n} of {capacity}");
            stream
        })
        .collect();
    assert_eq!(metric(&agent1, "lockmesh_table_entries{table=\"flow_followers\"}"), Some(capacity));
    let (status, _) = follow(&agent1);
    assert_eq!(status, 503, "one follower more than the capacity");
    assert_eq!(metric(&agent1, "lockmesh_table_overflows_total{table=\"flow_followers\"}"), Some(1));

    // The followers go away; the agent notices when it next writes to them (a flow update), and
    // a new follower fits again.
    drop(followers);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(tb.get("productpage", details, "/").unwrap()["status"], 200);
        if metric(&agent1, "lockmesh_table_entries{table=\"flow_followers\"}") == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "closed followers were never released");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(follow(&agent1).0, 200);
}
