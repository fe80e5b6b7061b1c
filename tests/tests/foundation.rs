//! Issue 2, end to end on the testbed with real agents: the kernel observer reports pod flows,
//! the inventory applies live, bad YAML is rejected while the agent keeps serving, two agents
//! share the machine, SIGTERM leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::time::{Duration, Instant};

use common::*;
use lockmesh_tests::Agent;
use serde_json::Value;

#[test]
fn flows_between_pods_on_two_nodes_are_reported_by_both_agents() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let details = tb.serve("details", 8080).unwrap();

    let result = tb.get("productpage", addr(&tb, "details", 8080), "/bytes/100000").unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(result["bytes"], 100_000);
    let (src_ip, src_port) = result["local"].as_str().unwrap().rsplit_once(':').unwrap();
    let src_port: u16 = src_port.parse().unwrap();
    let dst_ip = tb.pod("details").ip.to_string();
    assert_eq!(
        details.peers(),
        vec![result["local"].as_str().unwrap().to_string()],
        "the app saw the client directly"
    );

    // What went over the wire, exactly: the client's request and the server's response.
    let request = format!("GET /bytes/100000 HTTP/1.1\r\nHost: {dst_ip}:8080\r\nConnection: close\r\n\r\n")
        .len() as u64;
    let response =
        "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n".len() as u64 + 100_000;

    for (agent, reporter, node) in [(&agent1, "source", "node1"), (&agent2, "destination", "node2")] {
        let flows = agent.wait_for_flows(WAIT, |f| closed(f, reporter, src_ip, &dst_ip, 8080) == 1).unwrap();
        let flow = find(&flows, reporter, src_ip, &dst_ip, 8080)[0];
        assert_eq!(flow["node"], node);
        assert_eq!(flow["schema"], "lockmesh.flow/v1");
        assert_eq!(flow["src"]["port"], src_port, "ports are JSON numbers");
        assert_eq!(flow["src"]["namespace"], "bookinfo");
        assert_eq!(flow["src"]["workload"], "productpage");
        assert_eq!(flow["dst"]["workload"], "details");
        // Both pods are in the mesh: the engines tunnel the connection (mTLS) and count the
        // app's bytes exactly, on both sides.
        assert_eq!(flow["encryption"], "mtls");
        assert_eq!(flow["verdict"], "forwarded");
        assert_eq!(flow["bytes_sent"], request, "{flow}");
        assert_eq!(flow["bytes_received"], response, "{flow}");
        assert!(flow["start"].as_str().unwrap().ends_with('Z'));
        assert_eq!(flow["src"]["identity"], "spiffe://cluster.local/ns/bookinfo/sa/productpage");
        assert_eq!(flow["dst"]["identity"], "spiffe://cluster.local/ns/bookinfo/sa/details");
    }

    // The CLI shows the same flows as JSON lines and as a table.
    let json = agent1.cli(&["flows", "-o", "json"]).unwrap();
    let lines: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!find(&lines, "source", src_ip, &dst_ip, 8080).is_empty(), "{json}");
    let table = agent1.cli(&["flows"]).unwrap();
    assert!(table.starts_with("START"), "{table}");
    assert!(table.contains("bookinfo/productpage") && table.contains("bookinfo/details"), "{table}");
}

#[test]
fn open_flows_show_as_open_then_closed() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let dst_ip = tb.pod("details").ip.to_string();
    let src_ip = tb.pod("productpage").ip.to_string();

    // Hold two keep-alive connections open for 2 s.
    let hold = {
        let binary = lockmesh_tests::workspace_binary("lockmesh-testapp").unwrap();
        let mut cmd = lockmesh_tests::netns::command_in(&tb.pod("productpage").netns_path(), binary).unwrap();
        cmd.args(["hold", "--connect", &format!("{dst_ip}:8080"), "--count", "2", "--seconds", "2"]);
        lockmesh_tests::process::ChildGuard::spawn("hold", cmd, tb.work_dir.join("hold.log")).unwrap()
    };
    let open =
        |f: &[Value]| find(f, "source", &src_ip, &dst_ip, 8080).iter().filter(|x| x["end"].is_null()).count();
    let flows = agent1.wait_for_flows(WAIT, |f| open(f) == 2).unwrap();
    assert!(find(&flows, "source", &src_ip, &dst_ip, 8080).iter().all(|f| f["duration_ms"].is_null()));
    agent1
        .wait_for_flows(WAIT, |f| closed(f, "source", &src_ip, &dst_ip, 8080) == 2 && open(f) == 0)
        .unwrap();
    drop(hold);
}

#[test]
fn inventory_changes_apply_live_and_bad_yaml_keeps_the_last_good_state() {
    let tb = bookinfo();
    // Start with an empty inventory.
    let config = tb.work_dir.join("live");
    std::fs::create_dir_all(&config).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let details = tb.pod("details").ip.to_string();
    let productpage = tb.pod("productpage").ip.to_string();
    let request = |tb: &lockmesh_tests::Testbed| {
        assert_eq!(tb.get("productpage", addr(tb, "details", 8080), "/").unwrap()["status"], 200);
    };

    // Not enrolled: no flow is reported.
    request(&tb);
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent2.flows().unwrap().is_empty());

    // Enrol by writing the YAML: applies without a restart.
    let written = Instant::now();
    std::fs::write(config.join("workloads.yaml"), tb.workload_yaml()).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        request(&tb);
        if closed(&agent2.flows().unwrap(), "destination", &productpage, &details, 8080) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "enrolment did not apply:\n{}", agent2.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("live enrolment took {:?}", written.elapsed());
    assert!(agent2.log().contains("enrolled"), "enrolment is logged");

    // A bad field: named in the error; the agent keeps serving with the last good state.
    let bad = tb.workload_yaml().replace(&format!("addresses: [{details}]"), "addresses: [10.77.2.999]");
    std::fs::write(config.join("workloads.yaml"), bad).unwrap();
    let deadline = Instant::now() + WAIT;
    let errors = loop {
        let ready: Value = agent2.get("/readyz").unwrap().json().unwrap();
        let errors = ready["config_errors"].as_array().cloned().unwrap_or_default();
        if !errors.is_empty() {
            break errors;
        }
        assert!(Instant::now() < deadline, "bad YAML not reported");
        std::thread::sleep(Duration::from_millis(50));
    };
    let error = errors[0].as_str().unwrap();
    assert!(
        error.contains("workloads.yaml")
            && error.contains("spec.addresses[0]")
            && error.contains("Workload bookinfo/details"),
        "{error}"
    );
    assert_eq!(agent2.get("/readyz").unwrap().status, 200, "still ready");
    let before = closed(&agent2.flows().unwrap(), "destination", &productpage, &details, 8080);
    request(&tb);
    agent2
        .wait_for_flows(WAIT, |f| closed(f, "destination", &productpage, &details, 8080) == before + 1)
        .unwrap();

    // Broken YAML syntax: same.
    std::fs::write(config.join("workloads.yaml"), "kind: [unclosed\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    request(&tb);
    agent2
        .wait_for_flows(WAIT, |f| closed(f, "destination", &productpage, &details, 8080) == before + 2)
        .unwrap();

    // Removing the workload unenrols it live.
    std::fs::write(config.join("workloads.yaml"), "").unwrap();
    let deadline = Instant::now() + WAIT;
    while !agent2.log().contains("unenrolled") {
        assert!(Instant::now() < deadline, "unenrolment did not apply:\n{}", agent2.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let count = agent2.flows().unwrap().len();
    request(&tb);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent2.flows().unwrap().len(), count, "no new flows after unenrolment");
}

#[test]
fn two_agents_share_the_machine_sigterm_keeps_the_datapath_and_cleanup_removes_it() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let ids = |agent: &Agent| -> Vec<u32> {
        let ready: Value = agent.get("/readyz").unwrap().json().unwrap();
        ready["programs"].as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap() as u32).collect()
    };
    let (ids1, ids2) = (ids(&agent1), ids(&agent2));
    assert!(
        !ids1.is_empty() && ids1.iter().all(|id| !ids2.contains(id)),
        "each agent loads its own programs"
    );
    let (pins1, pins2) = (agent1.pin_dir.clone(), agent2.pin_dir.clone());
    let has_maps = |pins: &std::path::Path| {
        std::fs::read_dir(pins).unwrap().filter_map(Result::ok).any(|e| e.path().join("ENROLLED").exists())
    };
    assert!(has_maps(&pins1) && has_maps(&pins2));

    // Each agent reports only its own node's pods.
    let _details = tb.serve("details", 8080).unwrap();
    let _ratings = tb.serve("ratings", 8080).unwrap();
    tb.get("ratings", addr(&tb, "details", 8080), "/").unwrap();
    let (ratings, details) = (tb.pod("ratings").ip.to_string(), tb.pod("details").ip.to_string());
    let flows2 = agent2
        .wait_for_flows(WAIT, |f| {
            closed(f, "source", &ratings, &details, 8080) == 1
                && closed(f, "destination", &ratings, &details, 8080) == 1
        })
        .unwrap();
    assert!(flows2.iter().all(|f| f["node"] == "node2"));
    assert!(agent1.flows().unwrap().is_empty(), "node1's agent saw node2's traffic");

    // SIGTERM: clean exit, but the datapath stays (fail closed) until `--cleanup`, which
    // removes node1's programs and pins and nothing of node2's.
    let loaded =
        || -> Vec<u32> { aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect() };
    let mut cleanup = agent1.cleanup_command();
    assert_eq!(agent1.terminate().unwrap(), Some(0));
    assert!(ids1.iter().any(|id| loaded().contains(id)), "node1's datapath must outlive the agent");
    assert!(has_maps(&pins1), "node1's pins must stay for the next agent");
    let out = cleanup.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The kernel frees programs once their last link is gone (after an RCU grace period).
    let deadline = Instant::now() + Duration::from_secs(5);
    while ids1.iter().any(|id| loaded().contains(id)) {
        assert!(Instant::now() < deadline, "node1's programs still loaded after --cleanup");
        std::thread::sleep(Duration::from_millis(50));
    }
    let now = loaded();
    assert!(ids2.iter().all(|id| now.contains(id)), "node2's programs must stay");
    assert!(!pins1.exists(), "pins of node1 left behind");
    assert_eq!(agent2.get("/readyz").unwrap().status, 200);
}
