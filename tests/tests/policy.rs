//! Issue 4, end to end: the OpenShift Service Mesh walkthrough on the two-node testbed, driven by
//! unchanged Istio YAML in the agents' config dir: PERMISSIVE → DISABLE → STRICT, port-level
//! modes, Service cluster IPs, live switches and what they do to open connections.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::time::{Duration, Instant};

use common::*;
use lockmesh_tests::{Agent, Testbed, app::MARKER, capture::Capture, testbed::WIRE_IF};
use serde_json::Value;

const DETAILS_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: details, namespace: bookinfo}
spec:
  selector: {app: details}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
";

const DETAILS_ISTIO_MUTUAL: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: bookinfo}
spec:
  host: details
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
";

const DETAILS_STRICT_BUT_9000: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: details, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: STRICT}
  portLevelMtls:
    9000: {mode: PERMISSIVE}
";

/// curl from `pod`; returns (exit code, how long it took).
fn curl(tb: &Testbed, pod: &str, url: &str) -> (i32, Duration) {
    let started = Instant::now();
    let (code, _, _) = tb.curl(pod, &[url]).unwrap();
    (code, started.elapsed())
}

fn wire_capture(tb: &Testbed, name: &str) -> Capture {
    Capture::start(&tb.node("node2").netns_path(), WIRE_IF, "tcp", tb.work_dir.join(name)).unwrap()
}

#[test]
fn walkthrough_permissive_disable_strict() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "details-service.yaml", DETAILS_SERVICE);
    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let details = tb.serve("details", 8080).unwrap();
    let url = format!("http://{}:8080/", tb.pod("details").ip);
    let (pp, dt, outsider) = (
        tb.pod("productpage").ip.to_string(),
        tb.pod("details").ip.to_string(),
        tb.pod("outsider").ip.to_string(),
    );

    // PERMISSIVE (Istio's default): in-mesh encrypted, out-of-mesh plaintext still served.
    let wire = wire_capture(&tb, "permissive.pcap");
    let result = tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap();
    assert_eq!(result["status"], 200);
    let wire = wire.finish().unwrap();
    assert!(!wire.contains(MARKER.as_bytes()) && wire.packets_on_port(15008) > 0, "{}", wire.summary);
    let (code, _) = curl(&tb, "outsider", &url);
    assert_eq!(code, 0, "PERMISSIVE must serve plaintext clients");
    let flows = agent2.wait_for_flows(WAIT, |f| closed(f, "destination", &outsider, &dt, 8080) == 1).unwrap();
    let flow = find(&flows, "destination", &outsider, &dt, 8080)[0];
    assert_eq!((flow["encryption"].as_str(), flow["mode"].as_str()), (Some("plaintext"), Some("PERMISSIVE")));

    // DISABLE: the in-mesh request crosses the wire in plaintext.
    apply(&config, "peer-authentication.yaml", &namespace_policy("DISABLE"));
    let switch = until("DISABLE applied", || {
        agent1.flows().unwrap().iter().any(|f| {
            f["reporter"] == "source"
                && f["dst"]["ip"] == dt
                && f["encryption"] == "plaintext"
                && !f["end"].is_null()
        }) || {
            let _ = tb.get("productpage", addr(&tb, "details", 8080), "/");
            false
        }
    });
    println!("PERMISSIVE → DISABLE applied within {switch:?}");
    let wire = wire_capture(&tb, "disable.pcap");
    assert_eq!(tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap()["status"], 200);
    let wire = wire.finish().unwrap();
    assert!(wire.contains(MARKER.as_bytes()), "DISABLE: plaintext expected on the wire:\n{}", wire.summary);

    // STRICT with DR ISTIO_MUTUAL: in-mesh served and encrypted (also through the cluster IP);
    // the outsider is reset at once and the app never sees it.
    apply(&config, "details-dr.yaml", DETAILS_ISTIO_MUTUAL);
    let written = Instant::now();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    until("STRICT enforced", || curl(&tb, "outsider", &url).0 != 0);
    let switch = written.elapsed();
    println!("DISABLE → STRICT enforced in the kernel within {switch:?}");
    assert!(switch <= Duration::from_secs(1), "policy switch took {switch:?}");

    let accepted_before = details.accepted();
    let (code, took) = curl(&tb, "outsider", &url);
    assert!(code == 7 || code == 56, "outsider under STRICT: curl exit {code}");
    assert!(took < Duration::from_millis(500), "the reset must be immediate, took {took:?}");
    assert_eq!(details.accepted(), accepted_before, "the app saw the plaintext client");

    let wire = wire_capture(&tb, "strict.pcap");
    let direct = tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap();
    let service = tb.get("productpage", "10.96.0.10:80".parse().unwrap(), "/").unwrap();
    let wire = wire.finish().unwrap();
    assert_eq!((direct["status"].as_u64(), service["status"].as_u64()), (Some(200), Some(200)));
    assert!(!wire.contains(MARKER.as_bytes()), "STRICT: plaintext on the wire:\n{}", wire.summary);

    // Reported: the reset (destination), and the mTLS flows with the policies that applied.
    let flows = agent2
        .wait_for_flows(WAIT, |f| {
            find(f, "destination", &outsider, &dt, 8080).iter().any(|x| x["verdict"] == "reset")
        })
        .unwrap();
    let reset = find(&flows, "destination", &outsider, &dt, 8080)
        .into_iter()
        .find(|x| x["verdict"] == "reset")
        .unwrap();
    assert_eq!(reset["mode"], "STRICT", "{reset}");
    assert_eq!(reset["policy"]["peer_authentication"], "bookinfo/default", "{reset}");
    let flows = agent1
        .wait_for_flows(WAIT, |f| {
            find(f, "source", &pp, &dt, 8080)
                .iter()
                .filter(|x| x["encryption"] == "mtls" && !x["end"].is_null())
                .count()
                >= 2
        })
        .unwrap();
    let last: &Value = find(&flows, "source", &pp, &dt, 8080).into_iter().last().unwrap();
    assert_eq!(last["policy"]["destination_rule"], "bookinfo/details", "{last}");
    assert_eq!(last["mode"], "STRICT", "{last}");

    // `lockmesh check` explains it, as `istioctl x describe pod` would.
    let server = agent2.cli(&["check", "bookinfo/details"]).unwrap();
    assert!(server.contains("STRICT") && server.contains("PeerAuthentication bookinfo/default"), "{server}");
    let client = agent1.cli(&["check", "bookinfo/productpage"]).unwrap();
    assert!(client.contains("details.bookinfo.svc.cluster.local:80"), "{client}");
    assert!(client.contains("DestinationRule bookinfo/details sets ISTIO_MUTUAL"), "{client}");
    assert!(agent1.cli(&["check", "bookinfo/nope"]).is_err(), "an unknown workload is an error");
}

#[test]
fn port_level_modes_and_open_connections_across_a_switch() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    // Namespace PERMISSIVE; details STRICT except its port 9000.
    apply(
        &config,
        "policy.yaml",
        &format!("{}---\n{DETAILS_STRICT_BUT_9000}", namespace_policy("PERMISSIVE")),
    );
    let _agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let _echo = tb.serve("details", 9000).unwrap();
    let _ratings = tb.serve("ratings", 8080).unwrap();
    let dt = tb.pod("details").ip;

    assert!(matches!(curl(&tb, "outsider", &format!("http://{dt}:8080/")).0, 7 | 56), "8080 is STRICT");
    assert_eq!(curl(&tb, "outsider", &format!("http://{dt}:9000/")).0, 0, "9000 is PERMISSIVE");
    let ratings = tb.pod("ratings").ip;
    assert_eq!(curl(&tb, "outsider", &format!("http://{ratings}:8080/")).0, 0, "ratings is PERMISSIVE");

    // An in-mesh connection open across PERMISSIVE → STRICT keeps working.
    let to = addr(&tb, "ratings", 8080).to_string();
    let long = std::thread::scope(|scope| {
        let long = scope.spawn(|| {
            tb.client("productpage", &["get", "--connect", &to, "--count", "3", "--interval-ms", "700"])
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        apply(
            &config,
            "policy.yaml",
            &format!("{}---\n{DETAILS_STRICT_BUT_9000}", namespace_policy("STRICT")),
        );
        long.join().unwrap()
    });
    assert_eq!(long["status"], 200, "{long}");
    until("ratings STRICT", || curl(&tb, "outsider", &format!("http://{ratings}:8080/")).0 != 0);
}

#[test]
fn strict_holds_while_the_agent_is_down_and_a_new_agent_takes_over() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    let _agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let details = tb.serve("details", 8080).unwrap();
    let url = format!("http://{}:8080/", tb.pod("details").ip);
    assert!(matches!(curl(&tb, "outsider", &url).0, 7 | 56));
    assert_eq!(tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap()["status"], 200);
    let accepted = details.accepted();

    // The agent crashes: STRICT keeps resetting in the kernel; in-mesh connections fail fast
    // (nothing leaks out in plaintext, nothing hangs).
    agent2.kill().unwrap();
    for _ in 0..5 {
        let (code, took) = curl(&tb, "outsider", &url);
        assert!(matches!(code, 7 | 56), "plaintext reached a STRICT pod while the agent was down: {code}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
    let started = Instant::now();
    let result = tb.get("productpage", addr(&tb, "details", 8080), "/");
    assert!(result.is_err(), "no engine on node2: the tunnel cannot be served");
    assert!(started.elapsed() < Duration::from_secs(2), "failed slowly: {:?}", started.elapsed());
    assert_eq!(details.accepted(), accepted, "the app was reached while its node had no agent");

    // A new agent adopts the pinned datapath; new connections work within a second.
    let restarted = Instant::now();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    until("in-mesh traffic after the restart", || {
        tb.get("productpage", addr(&tb, "details", 8080), "/").is_ok_and(|r| r["status"] == 200)
    });
    let recovery = restarted.elapsed();
    println!("in-mesh traffic works again {recovery:?} after the new agent started");
    assert!(recovery < Duration::from_secs(2), "{recovery:?}");
    assert!(matches!(curl(&tb, "outsider", &url).0, 7 | 56));
    // The kernel counted every reset, those while no agent ran included (pinned counters).
    std::thread::sleep(Duration::from_millis(1100));
    let ready: Value = agent2.get("/readyz").unwrap().json().unwrap();
    assert!(ready["kernel"]["strict_resets"].as_u64().unwrap_or(0) >= 6, "{ready}");
}

/// curl from the node's own address (as the kubelet probes); returns curl's exit code.
#[test]
fn kubelet_probes_pass_strict_from_their_node_to_their_port_only() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let (details, node2) = (tb.pod("details").ip, tb.node("node2").wire_ip);
    // details declares a probe on 8081 from node2 (what --kube derives from the Pod's probes).
    let workloads = std::fs::read_to_string(config.join("workloads.yaml")).unwrap();
    let probed = workloads.replace(
        &format!("addresses: [{details}],"),
        &format!("addresses: [{details}], probes: [{{port: 8081, from: {node2}}}],"),
    );
    assert_ne!(probed, workloads, "details' Workload not found");
    apply(&config, "workloads.yaml", &probed);
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    // The flag exempts a source for every pod (dst 0 in the map): still honoured next to probes.
    let outsider = tb.pod("outsider").ip;
    let flag = format!("{outsider}:9000");
    let agent2 = Agent::start(&tb, "node2", &config, &["--strict-exempt", &flag]).unwrap();
    let (_app, probe, _echo) = (
        tb.serve("details", 8080).unwrap(),
        tb.serve("details", 8081).unwrap(),
        tb.serve("details", 9000).unwrap(),
    );
    let url = |port: u16| format!("http://{details}:{port}/");

    assert_eq!(curl_from_node(&tb, "node2", &url(8081)), 0, "the node's probe of 8081 must pass STRICT");
    let peers = probe.peers();
    // The node's own connections to a probe port leave it SNATed to the probe address.
    assert!(
        peers.len() == 1 && peers[0].starts_with("169.254.7.127:"),
        "the probe reached the app from the probe SNAT address: {peers:?}"
    );
    assert!(
        matches!(curl_from_node(&tb, "node2", &url(8080)), 7 | 56),
        "the node to a port it does not probe must be reset"
    );
    assert!(
        matches!(curl(&tb, "outsider", &url(8081)).0, 7 | 56),
        "another pod to the probe port must be reset"
    );
    assert_eq!(probe.accepted(), 1, "the app saw a plaintext client other than its probe");
    assert!(
        matches!(curl_from_node(&tb, "node1", &url(8081)), 7 | 56),
        "another node to the probe port must be reset"
    );
    assert_eq!(curl(&tb, "outsider", &url(9000)).0, 0, "--strict-exempt IP:PORT still passes");

    let check = agent2.cli(&["check", "bookinfo/details"]).unwrap();
    assert!(check.contains(&format!("port 8081   plaintext from {node2} (kubelet probe)")), "{check}");
    // Dropping the probe from the Workload closes the port again, live.
    apply(&config, "workloads.yaml", &workloads);
    until("probe exemption removed", || curl_from_node(&tb, "node2", &url(8081)) != 0);
}
