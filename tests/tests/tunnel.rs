//! Issue 3, end to end: in-mesh pods talk through the engines over HBONE (mTLS), proven from the
//! outside with a capture on the node-to-node wire; secure naming, untrusted CAs, bulk data,
//! half-close, pooling, agent restarts and certificate renewal.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::time::{Duration, Instant};

use common::*;
use lockmesh_tests::{
    Agent, Testbed,
    app::{MARKER, pattern_sha256},
    capture::Capture,
    testbed::WIRE_IF,
};
use serde_json::Value;

/// A CA dir (Istio's cacerts layout) shared by the agents of a testbed.
fn ca_dir(tb: &Testbed, name: &str) -> String {
    let dir = tb.work_dir.join(name);
    let binary = lockmesh_tests::workspace_binary("lockmesh").unwrap();
    let out = std::process::Command::new(binary).args(["ca", "init", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "lockmesh ca init: {}", String::from_utf8_lossy(&out.stderr));
    dir.to_string_lossy().into_owned()
}

fn agents(tb: &Testbed, ca: &str, extra: &[&str]) -> (Agent, Agent) {
    let config = tb.config_dir("config").unwrap();
    let mut args = vec!["--ca", ca];
    args.extend_from_slice(extra);
    (Agent::start(tb, "node1", &config, &args).unwrap(), Agent::start(tb, "node2", &config, &args).unwrap())
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/bookinfo/sa/{sa}")
}

#[test]
fn cross_node_traffic_is_mtls_on_the_wire_and_reported_by_both_nodes() {
    let tb = bookinfo();
    let ca = ca_dir(&tb, "ca");
    let (agent1, agent2) = agents(&tb, &ca, &[]);
    let details = tb.serve("details", 8080).unwrap();
    let capture =
        Capture::start(&tb.node("node1").netns_path(), WIRE_IF, "tcp", tb.work_dir.join("wire.pcap"))
            .unwrap();

    let result = tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap();
    let wire = capture.finish().unwrap();

    assert_eq!(result["status"], 200);
    assert!(result["body"].as_str().unwrap().contains(MARKER), "{result}");
    // The app sees the real peers on both sides.
    assert_eq!(result["peer"], addr(&tb, "details", 8080).to_string(), "client getpeername()");
    let (client_ip, _) = result["local"].as_str().unwrap().rsplit_once(':').unwrap();
    assert_eq!(client_ip, tb.pod("productpage").ip.to_string(), "client getsockname()");
    let seen = details.peers();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with(&format!("{}:", tb.pod("productpage").ip)), "server saw {seen:?}");

    // On the wire: only TLS on 15008, never the plaintext marker, never the app port.
    assert!(!wire.contains(MARKER.as_bytes()), "plaintext marker on the wire:\n{}", wire.summary);
    assert!(wire.packets_on_port(15008) > 0, "no HBONE traffic:\n{}", wire.summary);
    assert_eq!(wire.packets_on_port(8080), 0, "app port on the wire:\n{}", wire.summary);

    let (src, dst) = (tb.pod("productpage").ip.to_string(), tb.pod("details").ip.to_string());
    for (agent, reporter) in [(&agent1, "source"), (&agent2, "destination")] {
        let flows = agent.wait_for_flows(WAIT, |f| closed(f, reporter, &src, &dst, 8080) == 1).unwrap();
        let flow = find(&flows, reporter, &src, &dst, 8080)[0];
        assert_eq!(flow["encryption"], "mtls", "{flow}");
        assert_eq!(flow["verdict"], "forwarded", "{flow}");
        assert_eq!(flow["src"]["identity"], spiffe("productpage"), "{flow}");
        assert_eq!(flow["dst"]["identity"], spiffe("details"), "{flow}");
        assert_eq!(flow["tls"]["version"], "TLSv1.3", "{flow}");
        assert!(flow["tls"]["cipher"].as_str().unwrap().contains("AES"), "{flow}");
        assert!(flow["bytes_received"].as_u64().unwrap() > MARKER.len() as u64, "{flow}");
        assert!(flow["bytes_sent"].as_u64().unwrap() > 0, "{flow}");
    }
    // The kernel observer did not also report the tunneled connection as plaintext.
    for agent in [&agent1, &agent2] {
        let flows = agent.flows().unwrap();
        assert!(flows.iter().all(|f| f["encryption"] == "mtls"), "{flows:?}");
    }
}

#[test]
fn same_node_goes_through_the_engine_and_out_of_mesh_goes_direct() {
    let tb = bookinfo();
    let ca = ca_dir(&tb, "ca");
    let (agent1, agent2) = agents(&tb, &ca, &[]);
    let _details = tb.serve("details", 8080).unwrap();
    let outsider = tb.serve("outsider", 8080).unwrap();

    // ratings → details, both on node2.
    let result = tb.get("ratings", addr(&tb, "details", 8080), "/bytes/5000").unwrap();
    assert_eq!((result["status"].as_u64(), result["bytes"].as_u64()), (Some(200), Some(5000)));
    let (ratings, details) = (tb.pod("ratings").ip.to_string(), tb.pod("details").ip.to_string());
    let flows = agent2
        .wait_for_flows(WAIT, |f| {
            closed(f, "source", &ratings, &details, 8080) == 1
                && closed(f, "destination", &ratings, &details, 8080) == 1
        })
        .unwrap();
    assert!(find(&flows, "source", &ratings, &details, 8080).iter().all(|f| f["encryption"] == "mtls"));

    // productpage → outsider (not in the mesh): straight out, plaintext, not captured.
    let captured_before = captured(&agent1);
    let result = tb.get("productpage", addr(&tb, "outsider", 8080), "/").unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(
        outsider.peers(),
        vec![result["local"].as_str().unwrap().to_string()],
        "exact client port: not proxied"
    );
    let (pp, out) = (tb.pod("productpage").ip.to_string(), tb.pod("outsider").ip.to_string());
    let flows = agent1.wait_for_flows(WAIT, |f| closed(f, "source", &pp, &out, 8080) == 1).unwrap();
    assert_eq!(find(&flows, "source", &pp, &out, 8080)[0]["encryption"], "plaintext");
    assert_eq!(captured(&agent1), captured_before, "the kernel redirected an out-of-mesh connection");
}

fn captured(agent: &Agent) -> u64 {
    std::thread::sleep(Duration::from_millis(1100)); // counters are read once a second
    let ready: Value = agent.get("/readyz").unwrap().json().unwrap();
    ready["kernel"]["captured"].as_u64().unwrap()
}

#[test]
fn secure_naming_mismatch_and_untrusted_ca_are_denied() {
    let tb = bookinfo();
    let ca = ca_dir(&tb, "ca");
    let other_ca = ca_dir(&tb, "other-ca");
    // node2 believes details runs as "impostor"; node1's inventory says "details".
    let config1 = tb.config_dir("config1").unwrap();
    let config2 = tb.work_dir.join("config2");
    std::fs::create_dir_all(&config2).unwrap();
    std::fs::write(
        config2.join("workloads.yaml"),
        tb.workload_yaml().replace("serviceAccount: details", "serviceAccount: impostor"),
    )
    .unwrap();
    let agent1 = Agent::start(&tb, "node1", &config1, &["--ca", &ca]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config2, &["--ca", &ca]).unwrap();
    let details = tb.serve("details", 8080).unwrap();
    let (pp, dt) = (tb.pod("productpage").ip.to_string(), tb.pod("details").ip.to_string());

    let (code, _, err) = tb.curl("productpage", &[&format!("http://{dt}:8080/")]).unwrap();
    assert!(code == 56 || code == 52 || code == 7, "curl should fail with a reset, got {code}: {err}");
    let flows = agent1
        .wait_for_flows(WAIT, |f| find(f, "source", &pp, &dt, 8080).iter().any(|x| x["verdict"] == "denied"))
        .unwrap();
    let denied = find(&flows, "source", &pp, &dt, 8080)[0];
    let reason = denied["reason"].as_str().unwrap();
    assert!(reason.contains("impostor") || reason.contains("identity"), "{reason}");
    assert_eq!(details.accepted(), 0, "the app must not have been reached");
    drop(agent2);

    // node2 with a CA node1 does not trust.
    let agent2 = Agent::start(&tb, "node2", &config1, &["--ca", &other_ca]).unwrap();
    let (code, _, err) = tb.curl("productpage", &[&format!("http://{dt}:8080/")]).unwrap();
    assert!(code == 56 || code == 52 || code == 7, "curl should fail, got {code}: {err}");
    let flows = agent1
        .wait_for_flows(WAIT, |f| {
            find(f, "source", &pp, &dt, 8080).iter().filter(|x| x["verdict"] == "denied").count() == 2
        })
        .unwrap();
    let reasons: Vec<&str> =
        find(&flows, "source", &pp, &dt, 8080).iter().filter_map(|f| f["reason"].as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("trust") || r.contains("issuer") || r.contains("UnknownIssuer")),
        "{reasons:?}"
    );
    assert_eq!(details.accepted(), 0);
    // The server side saw the failed handshake too.
    agent2
        .wait_for_flows(WAIT, |f| {
            f.iter().any(|x| x["verdict"] == "denied" && x["reporter"] == "destination")
        })
        .unwrap();
}

#[test]
fn a_gibibyte_arrives_intact_half_close_works_and_200_connections_share_one_tunnel() {
    let tb = bookinfo();
    let ca = ca_dir(&tb, "ca");
    let (agent1, _agent2) = agents(&tb, &ca, &["--hbone-max-streams", "250"]);
    let _details = tb.serve("details", 8080).unwrap();
    let _echo = tb.echo("details", 9000).unwrap();

    const GIB: u64 = 1 << 30;
    let started = Instant::now();
    let result = tb.get("productpage", addr(&tb, "details", 8080), &format!("/bytes/{GIB}")).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(result["bytes"].as_u64(), Some(GIB));
    assert_eq!(result["sha256"].as_str().unwrap(), pattern_sha256(GIB), "1 GiB corrupted in the tunnel");
    println!("1 GiB through the tunnel in {elapsed:?} ({:.2} Gbit/s)", 8.0 / elapsed.as_secs_f64());

    let echoed = tb
        .client(
            "productpage",
            &["send", "--connect", &addr(&tb, "details", 9000).to_string(), "--bytes", "3000000"],
        )
        .unwrap();
    assert_eq!(echoed["received"], 3_000_000, "{echoed}");
    assert_eq!(echoed["sent_sha256"], echoed["received_sha256"], "half-close echo differs");

    let held = tb.client(
        "productpage",
        &["hold", "--connect", &addr(&tb, "details", 8080).to_string(), "--count", "200", "--seconds", "0"],
    );
    let held = held.unwrap();
    assert_eq!((held["ok"].as_u64(), held["failed"].as_u64()), (Some(200), Some(0)), "{held}");
    let ready: Value = agent1.get("/readyz").unwrap().json().unwrap();
    assert_eq!(
        ready["engine"]["hbone_connections"], 1,
        "200 streams should share one pooled connection: {ready}"
    );
}

#[test]
fn agent_restart_recovers_quickly_and_renewal_keeps_connections() {
    let tb = bookinfo();
    let ca = ca_dir(&tb, "ca");
    let config = tb.config_dir("config").unwrap();
    // 6 s certificates: renewed about every 3 s.
    let args = ["--ca", ca.as_str(), "--cert-ttl", "6s"];
    let agent1 = Agent::start(&tb, "node1", &config, &args).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &args).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let to = addr(&tb, "details", 8080);

    // A connection that lives across two renewals (requests at 0, 4 and 8 s) keeps working.
    let long = tb
        .client(
            "productpage",
            &["get", "--connect", &to.to_string(), "--count", "3", "--interval-ms", "4000"],
        )
        .unwrap();
    assert_eq!(long["status"], 200, "{long}");
    let (pp, dt) = (tb.pod("productpage").ip.to_string(), tb.pod("details").ip.to_string());
    let flows = agent2.wait_for_flows(WAIT, |f| closed(f, "destination", &pp, &dt, 8080) == 1).unwrap();
    let first_serial = find(&flows, "destination", &pp, &dt, 8080)[0]["tls"]["peer_serial"].clone();
    // The connection outlived its certificate: node2 has renewed details' certificate since.
    let ready: Value = agent2.get("/readyz").unwrap().json().unwrap();
    let now_serial = ready["engine"]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["identity"] == spiffe("details"))
        .map(|c| c["serial"].clone())
        .unwrap();
    assert!(first_serial.is_string(), "{flows:?}");
    assert_ne!(first_serial, now_serial, "details' certificate was not renewed during the 8 s connection");

    // Restart node1's agent: new connections work again within 2 s.
    assert_eq!(agent1.terminate().unwrap(), Some(0));
    let restarted = Instant::now();
    let agent1 = Agent::start(&tb, "node1", &config, &args).unwrap();
    let deadline = restarted + Duration::from_secs(10);
    loop {
        if tb.get("productpage", to, "/").is_ok_and(|r| r["status"] == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no connection after restart:\n{}", agent1.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let recovery = restarted.elapsed();
    println!("new connections work {recovery:?} after the restart began");
    assert!(recovery < Duration::from_secs(2), "recovery took {recovery:?}");
    let flows = agent1.wait_for_flows(WAIT, |f| closed(f, "source", &pp, &dt, 8080) >= 1).unwrap();
    assert!(find(&flows, "source", &pp, &dt, 8080).iter().all(|f| f["encryption"] == "mtls"));
}
