//! Shared by the end-to-end tests.
#![allow(dead_code)] // each test binary uses a different part
#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixtures

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use lockmesh_tests::{Agent, NodeSpec, PodSpec, Testbed, TestbedSpec};
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(10);

/// Two nodes, bookinfo-like: productpage + an out-of-mesh pod on node1, details + ratings on node2.
pub fn bookinfo() -> Testbed {
    Testbed::up(&TestbedSpec {
        nodes: vec![
            NodeSpec::new(
                "node1",
                vec![
                    PodSpec::new("productpage", "bookinfo"),
                    PodSpec::new("outsider", "default").out_of_mesh(),
                ],
            ),
            NodeSpec::new(
                "node2",
                vec![PodSpec::new("details", "bookinfo"), PodSpec::new("ratings", "bookinfo")],
            ),
        ],
    })
    .expect("testbed up (needs root, iproute2)")
}

pub fn addr(testbed: &Testbed, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::new(testbed.pod(pod).ip.into(), port)
}

/// Flows from `src` ip to `dst` ip:port as seen by `reporter`.
pub fn find<'a>(flows: &'a [Value], reporter: &str, src: &str, dst: &str, dst_port: u16) -> Vec<&'a Value> {
    flows
        .iter()
        .filter(|f| {
            f["reporter"] == reporter
                && f["src"]["ip"] == src
                && f["dst"]["ip"] == dst
                && f["dst"]["port"] == dst_port
        })
        .collect()
}

pub fn closed(flows: &[Value], reporter: &str, src: &str, dst: &str, dst_port: u16) -> usize {
    find(flows, reporter, src, dst, dst_port).iter().filter(|f| !f["end"].is_null()).count()
}

/// Writes `yaml` as `name` in the config dir at once (rename), as `kubectl apply` would.
pub fn apply(config: &Path, name: &str, yaml: &str) {
    let tmp = config.parent().unwrap().join(format!(".{name}.tmp"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, config.join(name)).unwrap();
}

/// bookinfo's namespace-wide PeerAuthentication in `mode`.
pub fn namespace_policy(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: bookinfo\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

/// Runs the lockmesh CLI; returns whether it succeeded and its stdout + stderr.
pub fn lockmesh(args: &[&str]) -> (bool, String) {
    let binary = lockmesh_tests::workspace_binary("lockmesh").unwrap();
    let out = Command::new(binary).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `lockmesh audit verify FILES…`.
pub fn verify(files: &[&Path]) -> (bool, String) {
    let mut args = vec!["audit".to_string(), "verify".to_string()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    lockmesh(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The value of the series `NAME{labels}` (written exactly as the agent does) on its /metrics.
pub fn metric(agent: &Agent, series: &str) -> Option<u64> {
    let text = agent.get_metrics("/metrics").unwrap().text();
    let prefix = format!("{series} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap())
}

/// Pooled HBONE connections the agent holds (`/readyz`).
pub fn hbone_connections(agent: &Agent) -> u64 {
    let ready: Value = agent.get("/readyz").unwrap().json().unwrap();
    ready["engine"]["hbone_connections"].as_u64().unwrap()
}

/// Polls until `done` (each try makes real traffic); returns how long it took.
pub fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// curl from `node`'s own network namespace (what its kubelet does), from the node's address;
/// returns curl's exit code.
pub fn curl_from_node(tb: &Testbed, node: &str, url: &str) -> i32 {
    let node = tb.node(node);
    let output = lockmesh_tests::netns::command_in(&node.netns_path(), "curl")
        .unwrap()
        .args(["-sS", "--max-time", "5", "--interface", &node.wire_ip.to_string(), url])
        .output()
        .unwrap();
    output.status.code().unwrap_or(-1)
}
