//! Issue 8, anti-spoofing: an enrolled pod that sends with another pod's address (or any address
//! not its own) is dropped at its interface and counted; the guard is pinned (it keeps dropping
//! while no agent runs), adopted by the next agent, and removed on unenrolment.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use common::*;
use lockmesh_tests::{Agent, Testbed, capture::Capture, netns};
use serde_json::Value;

/// curl from `pod` to the outsider's server, with `source` as the local address when given.
fn curl_from(tb: &Testbed, pod: &str, source: Option<Ipv4Addr>) -> i32 {
    let url = format!("http://{}:8080/", tb.pod("outsider").ip);
    let mut args = vec!["--connect-timeout".to_string(), "1".to_string()];
    if let Some(source) = source {
        args.extend(["--interface".to_string(), source.to_string()]);
    }
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tb.curl(pod, &args).unwrap().0
}

/// Captures what reaches the outsider pod's eth0 (the far side) while `traffic` runs.
fn at_the_outsider(tb: &Testbed, name: &str, traffic: impl FnOnce()) -> String {
    let outsider = tb.pod("outsider");
    let capture =
        Capture::start(&outsider.netns_path(), "eth0", "tcp port 8080", tb.work_dir.join(name)).unwrap();
    traffic();
    capture.finish().unwrap().summary
}

/// Packets in a tcpdump summary sent from `ip`.
fn sent_from(summary: &str, ip: Ipv4Addr) -> usize {
    let prefix = format!("{ip}.");
    summary
        .lines()
        .filter(|l| l.split_whitespace().nth(2).is_some_and(|src| src.starts_with(&prefix)))
        .count()
}

fn spoof_drops(agent: &Agent) -> u64 {
    let ready: Value = agent.get("/readyz").unwrap().json().unwrap();
    ready["kernel"]["spoof_drops"].as_u64().expect("spoof_drops in /readyz")
}

/// Waits for the kernel counters the agent reads once a second to reach `at_least`.
fn wait_spoof_drops(agent: &Agent, at_least: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let drops = spoof_drops(agent);
        if drops >= at_least {
            return drops;
        }
        assert!(Instant::now() < deadline, "spoof_drops stayed at {drops} (< {at_least})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pod_forging_another_pods_address_is_dropped_counted_and_stays_dropped_without_agent() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let server = tb.serve("outsider", 8080).unwrap();
    let own = tb.pod("productpage").ip;
    let victim = tb.pod("ratings").ip;
    let random = Ipv4Addr::new(10, 99, 7, 7);
    let productpage_ns = tb.pod("productpage").netns_path();
    for forged in [victim, random] {
        netns::run_cmd(&productpage_ns, "ip", &["addr", "add", &format!("{forged}/32"), "dev", "eth0"])
            .unwrap();
    }

    // Control: with no agent, forged SYNs do reach the far side (so the capture would see them).
    let summary = at_the_outsider(&tb, "control.pcap", || {
        for forged in [victim, random] {
            assert_ne!(curl_from(&tb, "productpage", Some(forged)), 0, "no reply can come back");
        }
    });
    assert!(sent_from(&summary, victim) > 0 && sent_from(&summary, random) > 0, "{summary}");

    let agent = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let accepted = server.accepted();
    let forged_attempts = |tb: &Testbed, name: &str| {
        at_the_outsider(tb, name, || {
            for forged in [victim, random] {
                assert_ne!(curl_from(tb, "productpage", Some(forged)), 0);
            }
            // The genuine address works (after an ARP round: ARP is not filtered).
            netns::run_cmd(&productpage_ns, "ip", &["neigh", "flush", "all"]).unwrap();
            assert_eq!(curl_from(tb, "productpage", None), 0, "the pod's own address must work");
        })
    };
    let summary = forged_attempts(&tb, "guarded.pcap");
    assert_eq!(sent_from(&summary, victim), 0, "a forged packet crossed:\n{summary}");
    assert_eq!(sent_from(&summary, random), 0, "a forged packet crossed:\n{summary}");
    assert!(sent_from(&summary, own) > 0, "the genuine request is in the capture:\n{summary}");
    assert_eq!(server.accepted(), accepted + 1, "only the genuine connection reached the server");
    // At least the first SYN of each forged connection (curl gives up before a retransmit).
    let drops = wait_spoof_drops(&agent, 2);
    let metrics = agent.get_metrics("/metrics").unwrap().text();
    let line = metrics.lines().find(|l| l.starts_with("lockmesh_spoofed_packets_dropped_total ")).unwrap();
    assert!(line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() >= 2, "{line}");
    println!("spoofed packets dropped: {drops}");

    // The agent crashes: the pinned guard keeps dropping (fail closed).
    agent.kill().unwrap();
    let summary = forged_attempts(&tb, "no-agent.pcap");
    assert_eq!(sent_from(&summary, victim) + sent_from(&summary, random), 0, "{summary}");
    assert!(sent_from(&summary, own) > 0, "{summary}");

    // A new agent adopts guard and counters: the drops made while no agent ran are counted.
    let agent = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let after_restart = wait_spoof_drops(&agent, drops + 2);
    let summary = forged_attempts(&tb, "readopted.pcap");
    assert_eq!(sent_from(&summary, victim) + sent_from(&summary, random), 0, "{summary}");
    wait_spoof_drops(&agent, after_restart + 2);
    let links = std::fs::read_dir(agent.pin_dir.join("links")).unwrap();
    let guards =
        links.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("antispoof-"));
    assert_eq!(guards.count(), 1, "one anti-spoofing link: the previous agent's was released");

    // Unenrolment removes the guard: the pod is no longer the mesh's to police.
    let without = remove_workload(&tb.workload_yaml(), "productpage");
    std::fs::write(config.join("workloads.yaml"), without).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let summary = at_the_outsider(&tb, "unenrolled.pcap", || {
            curl_from(&tb, "productpage", Some(random));
        });
        if sent_from(&summary, random) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the guard stayed after unenrolment:\n{}", agent.log());
    }
}

/// The workloads YAML without the document of `name`.
fn remove_workload(yaml: &str, name: &str) -> String {
    yaml.split("---\n")
        .filter(|doc| !doc.contains(&format!("name: {name},")) && !doc.contains(&format!("name: {name}\n")))
        .collect::<Vec<_>>()
        .join("---\n")
}
