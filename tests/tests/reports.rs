//! Issue 5, end to end: the tamper-evident audit log (written by a real agent, verified by
//! `lockmesh audit verify`, tampered with four ways, continued across a `kill -9`), `/metrics`
//! with Istio's labels (parsed by a Prometheus text parser), and `lockmesh flows --file` filters.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::*;
use lockmesh_tests::{Agent, Testbed};
use serde_json::Value;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Flow records of the audit log, once they satisfy `done`.
fn wait_for_log(path: &Path, agent: &Agent, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let flows: Vec<Value> = lines(path).into_iter().filter_map(|l| l.get("flow").cloned()).collect();
        if done(&flows) {
            return flows;
        }
        assert!(
            Instant::now() < deadline,
            "audit log {}:\n{flows:#?}\nagent log:\n{}",
            path.display(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// node1 with an audit log; node2 believes details runs as `impostor`, so node1 denies it.
fn agents(tb: &Testbed, log: &Path) -> (Agent, Agent, Vec<String>) {
    let config1 = tb.config_dir("config1").unwrap();
    let config2 = tb.work_dir.join("config2");
    std::fs::create_dir_all(&config2).unwrap();
    std::fs::write(
        config2.join("workloads.yaml"),
        tb.workload_yaml().replace("serviceAccount: details", "serviceAccount: impostor"),
    )
    .unwrap();
    let args: Vec<String> = [
        "--audit-log",
        &log.to_string_lossy(),
        "--audit-sync",
        "every",
        "--audit-checkpoint-records",
        "3",
        "--audit-max-bytes",
        "1000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent1 = Agent::start(tb, "node1", &config1, &refs).unwrap();
    let agent2 = Agent::start(tb, "node2", &config2, &[]).unwrap();
    (agent1, agent2, args)
}

fn count(flows: &[Value], src: &str, dst: &str, encryption: &str, verdict: &str) -> usize {
    flows
        .iter()
        .filter(|f| {
            f["src"]["ip"] == src
                && f["dst"]["ip"] == dst
                && f["encryption"] == encryption
                && f["verdict"] == verdict
                && f["reporter"] == "source"
        })
        .count()
}

#[test]
fn audit_log_metrics_and_filters() {
    let tb = bookinfo();
    let log = tb.work_dir.join("audit").join("audit.log");
    let (mut agent1, agent2, args) = agents(&tb, &log);
    let _ratings = tb.serve("ratings", 8080).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let _outsider = tb.serve("outsider", 8080).unwrap();
    let ip = |pod: &str| tb.pod(pod).ip.to_string();
    let (pp, rt, dt, out) = (ip("productpage"), ip("ratings"), ip("details"), ip("outsider"));

    for _ in 0..2 {
        assert_eq!(tb.get("productpage", addr(&tb, "ratings", 8080), "/").unwrap()["status"], 200);
    }
    assert_eq!(tb.get("productpage", addr(&tb, "outsider", 8080), "/").unwrap()["status"], 200);
    let (code, _, err) = tb.curl("productpage", &[&format!("http://{dt}:8080/")]).unwrap();
    assert!(code == 56 || code == 52 || code == 7, "curl to details should be refused, got {code}: {err}");

    // Every finished flow and the denial are in the log.
    let flows = wait_for_log(&log, &agent1, |f| {
        count(f, &pp, &rt, "mtls", "forwarded") == 2
            && count(f, &pp, &out, "plaintext", "forwarded") == 1
            && count(f, &pp, &dt, "mtls", "denied") == 1
    });
    assert!(flows.iter().all(|f| !f["end"].is_null()), "only finished flows: {flows:#?}");
    let pub_key = std::fs::read_to_string(log.with_file_name("audit.log.pub")).unwrap();
    assert!(pub_key.starts_with("ed25519 "), "{pub_key}");
    let key_mode = std::fs::metadata(tb.work_dir.join("state-node1/audit-ed25519.pk8")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777, 0o600);

    let (ok, report) = verify(&[&log]);
    assert!(ok, "verify of the untouched log failed:\n{report}");
    assert!(report.contains("OK"), "{report}");
    println!("verify:\n{report}");

    tampering_is_detected(&tb, &log);
    metrics_have_istio_labels(&agent1, &agent2, &tb);

    config_dump_names_workloads_and_certificates(&agent1);

    // `lockmesh graph` from the log.
    let (ok, dot) = lockmesh(&["graph", "--file", &log.to_string_lossy()]);
    assert!(ok, "{dot}");
    assert!(
        dot.contains("\"bookinfo/productpage\" -> \"bookinfo/ratings\" [label=\"🔒 mTLS :8080 ×2 · "),
        "{dot}"
    );
    assert!(dot.contains(&format!("\"bookinfo/productpage\" -> \"{out}\" [label=\"🔓 plaintext")), "{dot}");

    // `lockmesh flows --file`, filtered.
    let (ok, text) =
        lockmesh(&["flows", "--file", &log.to_string_lossy(), "--encryption", "plaintext", "-o", "json"]);
    assert!(ok, "{text}");
    let listed: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!listed.is_empty() && listed.iter().all(|f| f["encryption"] == "plaintext"), "{text}");
    assert!(listed.iter().any(|f| f["dst"]["ip"] == out), "{text}");
    let (ok, text) = lockmesh(&[
        "flows",
        "--file",
        &log.to_string_lossy(),
        "--to-workload",
        "bookinfo/details",
        "--verdict",
        "denied",
        "-o",
        "compact",
    ]);
    assert!(ok, "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("🔒") && text.contains("denied") && text.contains("bookinfo/details"), "{text}");
    let (ok, text) = lockmesh(&["flows", "--file", &log.to_string_lossy(), "--last", "1", "-o", "json"]);
    assert!(ok && text.lines().count() == 1, "{text}");

    // kill -9, restart: the chain goes on, nothing lost or written twice.
    let before = lines(&log).len();
    agent1.process().signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    agent1.process().wait_timeout(Duration::from_secs(5)).unwrap();
    drop(agent1);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent1 = Agent::start(&tb, "node1", &tb.work_dir.join("config1"), &refs).unwrap();
    assert_eq!(tb.get("productpage", addr(&tb, "ratings", 8080), "/").unwrap()["status"], 200);
    wait_for_log(&log, &agent1, |f| count(f, &pp, &rt, "mtls", "forwarded") == 3);
    assert_eq!(agent1.terminate().unwrap(), Some(0));
    let all = lines(&log);
    assert!(all.len() > before, "nothing appended after the restart");
    assert!(all.last().unwrap().get("checkpoint").is_some(), "clean shutdown seals the log");
    let seqs: Vec<u64> = all.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seq continues across the restart");
    let ids: Vec<&str> = all.iter().filter_map(|l| l["flow"]["id"].as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a flow id appears twice: {ids:?}");
    let (ok, report) = verify(&[&log]);
    assert!(ok, "verify after kill -9 and restart failed:\n{report}");
    assert!(!report.contains("unsealed"), "{report}");

    // A torn last line (as a crash mid-write leaves): the agent keeps it as evidence, rotates,
    // and chains on from the last complete line; verify reports exactly that truncation.
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, br#"{"seq":99,"prev":"0123"#).unwrap();
    drop(file);
    let agent1 = Agent::start(&tb, "node1", &tb.work_dir.join("config1"), &refs).unwrap();
    assert_eq!(tb.get("productpage", addr(&tb, "ratings", 8080), "/").unwrap()["status"], 200);
    wait_for_log(&log, &agent1, |f| count(f, &pp, &rt, "mtls", "forwarded") == 1);
    assert_eq!(agent1.terminate().unwrap(), Some(0));
    let rotated = log.with_file_name("audit.log.1");
    let torn_lines = std::fs::read_to_string(&rotated).unwrap().lines().count();
    let (ok, report) = verify(&[&log, &rotated]);
    assert!(!ok, "{report}");
    let fails: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    let needle = format!("{}:{torn_lines}: truncated file", rotated.display());
    assert!(fails.len() == 1 && fails[0].contains(&needle), "expected only {needle:?}:\n{report}");
    let seqs: Vec<u64> = lines(&log).iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[0], all.len() as u64 + 1, "the new file continues the chain");
}

fn tampering_is_detected(tb: &Testbed, log: &Path) {
    let original: Vec<String> = std::fs::read_to_string(log).unwrap().lines().map(String::from).collect();
    // A flow line with a line after it.
    let i = (1..original.len() - 1).find(|&i| original[i].contains("\"flow\"")).unwrap();
    let tampered = |name: &str, lines: &[String], tail: &str| -> (PathBuf, String) {
        let path = tb.work_dir.join(format!("tampered-{name}.log"));
        std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>() + tail).unwrap();
        let (ok, report) = verify(&[&path]);
        assert!(!ok, "{name}: verify passed:\n{report}");
        (path, report)
    };
    let expect = |(path, report): (PathBuf, String), line: usize, what: &str| {
        let needle = format!("{}:{line}: {what}", path.display());
        assert!(report.contains(&needle), "expected {needle:?} in:\n{report}");
    };
    let mut edited = original.clone();
    edited[i] = edited[i].replacen("\"node\":\"node1\"", "\"node\":\"node9\"", 1);
    assert_ne!(edited[i], original[i]);
    expect(tampered("edit", &edited, ""), i + 1, "edited record");
    let mut removed = original.clone();
    removed.remove(i);
    expect(tampered("remove", &removed, ""), i + 1, "removed record");
    let mut swapped = original.clone();
    swapped.swap(i, i + 1);
    expect(tampered("swap", &swapped, ""), i + 1, "reordered record");
    let half = &original[i][..original[i].len() / 2];
    expect(tampered("truncate", &original[..i], half), i + 1, "truncated file");
}

fn metrics_have_istio_labels(agent1: &Agent, agent2: &Agent, tb: &Testbed) {
    const ISTIO_LABELS: [&str; 15] = [
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_service",
        "destination_service_name",
        "destination_service_namespace",
        "connection_security_policy",
        "request_protocol",
        "response_flags",
    ];
    let scrape = |agent: &Agent| {
        let response = agent.get_metrics("/metrics").unwrap();
        assert_eq!(response.status, 200);
        let text = response.text();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    };
    let scrape1 = scrape(agent1);
    let series = |scrape: &prometheus_parse::Scrape, name: &str, reporter: &str, dst: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get("reporter") == Some(reporter))
            .filter(|s| s.labels.get("destination_workload") == Some(dst))
            .map(|s| (s.labels.clone(), s.value.clone()))
            .collect::<Vec<_>>()
    };
    let mtls = series(&scrape1, "istio_tcp_connections_opened_total", "source", "ratings");
    assert_eq!(mtls.len(), 1, "{mtls:?}");
    let (labels, value) = &mtls[0];
    let mut names: Vec<&str> = labels.keys().map(String::as_str).collect();
    names.sort();
    let mut expected = ISTIO_LABELS.to_vec();
    expected.sort();
    assert_eq!(names, expected, "Istio's label set");
    assert_eq!(labels.get("connection_security_policy"), Some("mutual_tls"));
    assert_eq!(labels.get("source_workload"), Some("productpage"));
    assert_eq!(labels.get("source_workload_namespace"), Some("bookinfo"));
    assert_eq!(labels.get("source_principal"), Some("spiffe://cluster.local/ns/bookinfo/sa/productpage"));
    assert_eq!(labels.get("destination_principal"), Some("spiffe://cluster.local/ns/bookinfo/sa/ratings"));
    assert_eq!(labels.get("request_protocol"), Some("tcp"));
    assert!(matches!(value, prometheus_parse::Value::Counter(v) if *v == 2.0), "{value:?}");
    let plain = series(&scrape1, "istio_tcp_connections_closed_total", "source", "unknown");
    assert!(
        plain.iter().any(|(l, _)| l.get("connection_security_policy") == Some("none")),
        "plaintext edge to the outsider: {plain:?}"
    );
    let received = series(&scrape1, "istio_tcp_received_bytes_total", "source", "ratings");
    assert!(matches!(received[0].1, prometheus_parse::Value::Counter(v) if v > 0.0), "{received:?}");
    let resets: Vec<_> = scrape1.samples.iter().filter(|s| s.metric == "lockmesh_resets_total").collect();
    assert!(resets.iter().any(|s| s.labels.get("destination_workload") == Some("details")), "{resets:?}");
    let failures: Vec<_> =
        scrape1.samples.iter().filter(|s| s.metric == "lockmesh_handshake_failures_total").collect();
    assert!(failures.iter().any(|s| s.labels.get("reason") == Some("wrong_identity")), "{failures:?}");
    for name in ["lockmesh_flows_tracked", "lockmesh_kernel_events_dropped_total"] {
        assert!(scrape1.samples.iter().any(|s| s.metric == name), "{name} missing");
    }
    let expiry: Vec<_> = scrape1
        .samples
        .iter()
        .filter(|s| s.metric == "lockmesh_certificate_expiry_timestamp_seconds")
        .collect();
    assert!(
        expiry
            .iter()
            .any(|s| s.labels.get("identity") == Some("spiffe://cluster.local/ns/bookinfo/sa/productpage")),
        "{expiry:?}"
    );
    // The other end reports the same edge as destination.
    let scrape2 = scrape(agent2);
    let dest = series(&scrape2, "istio_tcp_connections_opened_total", "destination", "ratings");
    assert!(
        dest.iter().any(|(l, _)| l.get("connection_security_policy") == Some("mutual_tls")
            && l.get("source_principal") == Some("spiffe://cluster.local/ns/bookinfo/sa/productpage")),
        "{dest:?}"
    );
    let _ = tb;
}

/// `/config_dump`: inventory and certificates, never keys.
fn config_dump_names_workloads_and_certificates(agent1: &Agent) {
    let dump = agent1.get("/config_dump").unwrap();
    assert_eq!(dump.status, 200);
    assert!(!dump.text().contains("PRIVATE KEY"), "{}", dump.text());
    let dump: Value = dump.json().unwrap();
    let workloads = dump["workloads"].as_array().unwrap();
    assert!(workloads.iter().any(|w| w["name"] == "productpage" && w["enrolled"] == true), "{dump}");
    assert!(workloads.iter().any(|w| w["name"] == "ratings" && w["enrolled"] == false), "{dump}");
    let certs = dump["certificates"].as_array().unwrap();
    assert!(
        certs.iter().any(|c| c["identity"] == "spiffe://cluster.local/ns/bookinfo/sa/productpage"),
        "{dump}"
    );
}
