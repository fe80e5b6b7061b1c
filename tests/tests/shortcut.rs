//! Issue 7: the in-pod app↔engine hops take the kernel's socket-to-socket shortcut (sockhash +
//! sk_msg) instead of loopback TCP, without ever mixing up two pods' sockets — every pod has the
//! same loopback 4-tuples — and without losing or reordering a byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use common::*;
use lockmesh_tests::{
    Agent, Testbed,
    testbed::{NodeSpec, PodSpec, TestbedSpec},
};
use serde_json::Value;

fn hop_shortcuts(agent: &Agent) -> u64 {
    let ready: Value = agent.get("/readyz").unwrap().json().unwrap();
    ready["kernel"]["hop_shortcuts"].as_u64().unwrap_or_else(|| panic!("no hop counter in {ready}"))
}

#[test]
fn two_pods_with_the_same_loopback_four_tuple_each_get_only_their_own_bytes() {
    let tb = Testbed::up(&TestbedSpec {
        nodes: vec![
            NodeSpec::new("node1", vec![PodSpec::new("alpha", "shop"), PodSpec::new("beta", "shop")]),
            NodeSpec::new("node2", vec![PodSpec::new("sink", "shop")]),
        ],
    })
    .unwrap();
    let config = tb.config_dir("config").unwrap();
    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _echo = tb.echo("sink", 9000).unwrap();
    let before = (hop_shortcuts(&agent1), hop_shortcuts(&agent2));

    // Both apps connect from local port 40000: inside each pod the captured connection is
    // 127.0.0.1:40000 → 127.0.0.1:15001, the same 4-tuple in two namespaces. Different sizes and
    // byte patterns, at the same time: a crossed socket shows as a wrong length or hash.
    let sink = addr(&tb, "sink", 9000).to_string();
    let results: Vec<Value> = std::thread::scope(|s| {
        let runs = [("alpha", 3 << 20, 1), ("beta", 5 << 20, 2)].map(|(pod, bytes, salt)| {
            let (tb, sink) = (&tb, &sink);
            s.spawn(move || {
                let (bytes, salt) = (format!("{bytes}"), format!("{salt}"));
                let args =
                    ["send", "--connect", sink, "--bytes", &bytes, "--from-port", "40000", "--salt", &salt];
                (bytes, tb.client(pod, &args).unwrap())
            })
        });
        runs.map(|run| {
            let (bytes, result) = run.join().unwrap();
            assert_eq!(result["sent"].to_string(), bytes, "{result}");
            result
        })
        .into()
    });
    for result in &results {
        assert_eq!(result["received"], result["sent"], "echo length: {result}");
        assert_eq!(result["received_sha256"], result["sent_sha256"], "echo content: {result}");
    }
    assert_ne!(results[0]["sent_sha256"], results[1]["sent_sha256"]);

    // The shortcut was taken: both ends of the app→engine hop of each connection on node1, both
    // ends of the engine→app hop on node2.
    // (The agent reads the kernel counters once a second.)
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let after = (hop_shortcuts(&agent1), hop_shortcuts(&agent2));
        if after.0 >= before.0 + 4 && after.1 >= before.1 + 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hop sockets (node1, node2): {before:?} → {after:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // And the engine's reports still count every byte, on both nodes.
    let sink_ip = tb.pod("sink").ip.to_string();
    for (pod, bytes) in [("alpha", 3u64 << 20), ("beta", 5 << 20)] {
        let src = tb.pod(pod).ip.to_string();
        for (agent, reporter) in [(&agent1, "source"), (&agent2, "destination")] {
            let flows =
                agent.wait_for_flows(WAIT, |f| closed(f, reporter, &src, &sink_ip, 9000) == 1).unwrap();
            let flow = find(&flows, reporter, &src, &sink_ip, 9000)[0];
            assert_eq!(flow["encryption"], "mtls", "{flow}");
            assert_eq!(flow["bytes_sent"], bytes, "{reporter} {flow}");
            assert_eq!(flow["bytes_received"], bytes, "{reporter} {flow}");
        }
    }
}
