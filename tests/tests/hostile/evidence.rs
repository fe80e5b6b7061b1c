//! Evidence flushing (issue 15, item 9): an out-of-mesh pod floods a STRICT port with plaintext
//! SYNs. Each is reset in the kernel and counted; the audit log counts them per source,
//! destination, port and second, so it grows by a few lines, not one line per SYN, and the
//! counts it holds add up to the kernel's counter.
use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use lockmesh_tests::{Agent, netns};
use serde_json::Value;

use crate::common::*;

/// How long the outsider floods.
const FLOOD: Duration = Duration::from_secs(3);

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The kernel refusals the audit log counts (those of groups `from` passes, all by default), and
/// its lines of them.
fn counted_from(path: &Path, from: Option<&str>) -> (u64, usize) {
    let lines = audit_lines(path);
    let groups: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l.get("resets"))
        .filter(|g| from.is_none_or(|ip| g["src"] == ip))
        .collect();
    (groups.iter().map(|g| g["count"].as_u64().unwrap()).sum(), groups.len())
}

fn counted(path: &Path) -> (u64, usize) {
    counted_from(path, None)
}

fn kernel_counter(agent: &Agent, name: &str) -> u64 {
    let ready: Value = agent.get("/readyz").unwrap().json().unwrap();
    ready["kernel"][name].as_u64().unwrap_or(0)
}

/// Everything the kernel's STRICT guard refused and reported: resets (SYNs, segments) and drops
/// (fragments, headers it cannot parse, e.g. a new pod's IPv6 MLD reports).
fn kernel_refusals(agent: &Agent) -> (u64, u64) {
    (kernel_counter(agent, "strict_resets"), kernel_counter(agent, "strict_drops"))
}

/// Connects to `to` from inside `ns` as fast as it can for `FLOOD`; returns the connects that
/// were refused (each one a SYN answered with a RST).
fn flood(ns: &Path, to: SocketAddr) -> u64 {
    netns::run_in(ns, move || {
        let started = Instant::now();
        let mut refused = 0;
        while started.elapsed() < FLOOD {
            match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                Err(e) => panic!("flood: {e}"),
                Ok(_) => panic!("plaintext connected to a STRICT port"),
            }
        }
        refused
    })
    .unwrap()
}

#[test]
fn a_reset_flood_is_counted_not_written_line_by_line() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "strict.yaml", &namespace_policy("STRICT"));
    let log = tb.work_dir.join("audit").join("audit.log");
    let log_arg = log.to_string_lossy().into_owned();
    let agent2 = Agent::start(&tb, "node2", &config, &["--audit-log", &log_arg]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let before = kernel_refusals(&agent2);
    let outsider = tb.pod("outsider").ip.to_string();

    let started = Instant::now();
    let refused = flood(&tb.pod("outsider").netns_path(), addr(&tb, "details", 8080));
    let rate = refused as f64 / started.elapsed().as_secs_f64();
    println!("outsider: {refused} plaintext SYNs refused in {:?} ({rate:.0}/s)", started.elapsed());
    assert!(refused > 1000, "not a flood: {refused}");

    // The kernel's counters (read by the agent every second) and the audit log's counts agree
    // once the last second is over: the flood's resets, and everything the guard refused.
    let deadline = Instant::now() + WAIT;
    let (resets, kernel, flood_counted, audit) = loop {
        let (resets, drops) = kernel_refusals(&agent2);
        let (resets, kernel) = (resets - before.0, resets + drops - before.0 - before.1);
        let (flood_counted, audit) = (counted_from(&log, Some(&outsider)).0, counted(&log).0);
        if (resets >= refused && flood_counted == resets && audit == kernel) || Instant::now() > deadline {
            break (resets, kernel, flood_counted, audit);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ring_drops = kernel_counter(&agent2, "ring_buffer_drops");
    assert!(resets >= refused, "kernel counted {resets} resets, the outsider saw {refused}");
    assert_eq!(
        flood_counted, resets,
        "audit log counts {flood_counted} resets of the flood, the kernel {resets}"
    );
    assert_eq!(
        audit, kernel,
        "audit log counts {audit} refusals, the kernel {kernel} (ring drops {ring_drops})"
    );
    // Metrics still count every refusal, one by one.
    let metrics = agent2.get_metrics("/metrics").unwrap().text();
    let metric_total: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("lockmesh_resets_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert_eq!(metric_total, kernel, "lockmesh_resets_total (resets and denials)");

    assert_eq!(agent2.terminate().unwrap(), Some(0));
    let lines = audit_lines(&log);
    let (total, reset_lines) = counted(&log);
    let bytes = std::fs::metadata(&log).unwrap().len();
    for g in lines.iter().filter_map(|l| l.get("resets")) {
        println!(
            "  resets {} -> {}:{} x{} ({})",
            g["src"], g["dst"], g["port"], g["count"], g["sample"]["verdict"]
        );
    }
    println!(
        "audit log: {} lines ({reset_lines} of resets) and {bytes} bytes for {total} resets \
         ({:.1} bytes per reset; one line per reset was ~915 bytes)",
        lines.len(),
        bytes as f64 / total as f64
    );
    // One source, one destination and port: a line per second of flood (+ the partial ones).
    let seconds = FLOOD.as_secs() as usize + 2;
    let flood_lines = counted_from(&log, Some(&outsider)).1;
    assert!(flood_lines <= seconds, "{flood_lines} reset lines for a {FLOOD:?} flood");
    assert!(lines.len() * 100 < total as usize, "{} lines for {total} resets", lines.len());
    for group in lines.iter().filter_map(|l| l.get("resets")).filter(|g| g["src"] == outsider.as_str()) {
        assert_eq!(group["src"], outsider.as_str());
        assert_eq!(group["port"], 8080);
        assert_eq!(group["sample"]["verdict"], "reset");
        assert_eq!(group["sample"]["mode"], "STRICT");
    }
    let (ok, out) = verify(&[&log]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("resets:      {total} in {reset_lines} line(s)")), "{out}");

    // The same log without its first line: history missing, unless a slice is checked on purpose.
    let cut = tb.work_dir.join("audit-cut.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&cut, text.split_once('\n').unwrap().1).unwrap();
    let (ok, out) = verify(&[&cut]);
    assert!(!ok && out.contains("history missing: the chain starts at seq 2"), "{out}");
    let (ok, out) = lockmesh(&["audit", "verify", "--partial", cut.to_str().unwrap()]);
    assert!(ok && out.contains("WARN"), "{out}");
}

#[test]
fn rotation_that_deletes_evidence_says_so() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "strict.yaml", &namespace_policy("STRICT"));
    let log = tb.work_dir.join("audit").join("audit.log");
    let log_arg = log.to_string_lossy().into_owned();
    // Every line gets a file of its own; one rotated file kept.
    let args = ["--audit-log", &log_arg, "--audit-max-bytes", "1000", "--audit-keep", "1"];
    let agent2 = Agent::start(&tb, "node2", &config, &args).unwrap();
    let refused = flood(&tb.pod("outsider").netns_path(), addr(&tb, "details", 8080));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent2.terminate().unwrap(), Some(0));
    let agent_log = std::fs::read_to_string(tb.work_dir.join("agent-node2.log")).unwrap();
    assert!(agent_log.contains("audit log rotation deleted the oldest files"), "{agent_log}");

    let files: Vec<std::path::PathBuf> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with(".pub"))
        .collect();
    assert_eq!(files.len(), 2, "the active file and one rotated file: {files:?}");
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (ok, out) = verify(&refs);
    println!("{refused} resets; verify of what rotation left:\n{out}");
    assert!(ok, "{out}");
    assert!(out.contains("discarded:   seq ") && out.contains("deleted by rotation"), "{out}");
    // Without the newest file (which holds the `discarded` line), nothing vouches for the gap.
    let oldest: Vec<&Path> = refs.iter().copied().filter(|p| *p != log.as_path()).collect();
    let (ok, out) = verify(&oldest);
    assert!(!ok && out.contains("history missing"), "{out}");
}
