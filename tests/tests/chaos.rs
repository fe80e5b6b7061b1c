//! Issue 8's chaos suite: the agent crashes, is upgraded and reconfigured under load; certificates
//! rotate under load; thousands of tunneled connections come and go. Each test asserts what must
//! hold (no plaintext past STRICT, no failed request, no leak) and reports its figures.
//!
//! Not part of `cargo test` (`test = false` in Cargo.toml): `cargo xtask chaos` runs it, in a short
//! form by default (CI) and with `--full` at the sizes of the issue; it collects each test's row
//! (`LOCKMESH_CHAOS_REPORT`, one JSON object per line) into a summary table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::*;
use lockmesh_tests::{Agent, Testbed, apps::LoadRecord, netns, process::ChildGuard};
use serde_json::{Value, json};

/// The sizes with `LOCKMESH_CHAOS=full`, a quick form otherwise.
fn full() -> bool {
    std::env::var("LOCKMESH_CHAOS").is_ok_and(|v| v == "full")
}

/// Prints a result row and appends it to the report file `cargo xtask chaos` reads.
fn report(row: Value) {
    println!("chaos result: {row}");
    if let Ok(path) = std::env::var("LOCKMESH_CHAOS_REPORT") {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(file, "{row}").unwrap();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn ready(agent: &Agent) -> Value {
    agent.get("/readyz").unwrap().json().unwrap()
}

/// Writes the namespace policy and waits until `agent` has applied it (kernel maps included);
/// returns when that was seen.
fn switch_policy(config: &Path, agent: &Agent, mode: &str) -> u64 {
    let before = ready(agent)["configs_applied"].as_u64().unwrap();
    apply(config, "peer-authentication.yaml", &namespace_policy(mode));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(agent)["configs_applied"].as_u64().unwrap() <= before {
        assert!(Instant::now() < deadline, "{mode} not applied after 10 s:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    now_ms()
}

/// Time intervals in ms since the epoch.
#[derive(Default)]
struct Intervals(Vec<(u64, u64)>);

impl Intervals {
    fn contains(&self, t: u64) -> bool {
        self.0.iter().any(|(from, to)| (*from..*to).contains(&t))
    }
}

/// The longest run of failed requests in `[from, to)`: from its first failure to the next success
/// (or `to`), in ms; and how many failed.
fn outage(records: &[LoadRecord], from: u64, to: u64) -> (u64, usize) {
    let mut longest = 0;
    let mut failed = 0;
    let mut since = None;
    for r in records.iter().filter(|r| (from..to).contains(&r.t)) {
        if r.ok {
            if let Some(start) = since.take() {
                longest = longest.max(r.t - start);
            }
        } else {
            failed += 1;
            since.get_or_insert(r.t);
        }
    }
    if let Some(start) = since {
        longest = longest.max(to - start);
    }
    (longest, failed)
}

/// The first successful request started at or after `t`, in ms after `t`.
fn first_success_after(records: &[LoadRecord], t: u64) -> Option<u64> {
    records.iter().filter(|r| r.t >= t && r.ok).map(|r| r.t - t).min()
}

#[test]
fn strict_never_leaks_through_crashes_upgrades_and_policy_flips() {
    let flips = if full() { 100 } else { 10 };
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    let _agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let mut agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let target = addr(&tb, "details", 8080);

    // While the config on disk says STRICT and, after a switch, the agent said it applied it.
    let mut strict = Intervals::default();
    let mut strict_since = now_ms();
    let hammer = tb.load_client("outsider", target, 1).unwrap();
    let mesh = tb.load_client("productpage", target, 5).unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // A crash: the datapath stays pinned; a new agent adopts it.
    let killed = now_ms();
    agent2.kill().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let restarted = now_ms();
    agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let restart_ready = now_ms() - restarted;
    std::thread::sleep(Duration::from_secs(1));

    // An upgrade: SIGTERM (drain), then the new binary.
    let next = tb.work_dir.join("lockmesh-next");
    std::fs::copy(lockmesh_tests::workspace_binary("lockmesh").unwrap(), &next).unwrap();
    let upgrading = now_ms();
    assert_eq!(agent2.terminate().unwrap(), Some(0));
    let upgraded = now_ms();
    agent2 = Agent::start_binary(&tb, "node2", &config, &[], &next).unwrap();
    let upgrade_ready = now_ms() - upgraded;
    std::thread::sleep(Duration::from_secs(1));

    // Policy flips under load.
    let flipping = now_ms();
    let mut permissive_ms = 0;
    for _ in 0..flips {
        strict.0.push((strict_since, now_ms()));
        let permissive_from = switch_policy(&config, &agent2, "PERMISSIVE");
        std::thread::sleep(Duration::from_millis(150));
        let permissive_to = now_ms();
        permissive_ms += permissive_to - permissive_from;
        strict_since = switch_policy(&config, &agent2, "STRICT");
        std::thread::sleep(Duration::from_millis(150));
    }
    let flipped = now_ms();
    std::thread::sleep(Duration::from_millis(500));
    strict.0.push((strict_since, now_ms()));
    let mesh = mesh.stop().unwrap();
    let hammer = hammer.stop().unwrap();

    let leaks: Vec<&LoadRecord> = hammer.iter().filter(|r| r.ok && strict.contains(r.t)).collect();
    let plaintext_under_strict = hammer.iter().filter(|r| strict.contains(r.t)).count();
    let accepted_permissive = hammer.iter().filter(|r| r.ok && !strict.contains(r.t)).count();
    let (crash_window, crash_failed) = outage(&mesh, killed, upgrading);
    let crash_takeover = first_success_after(&mesh, restarted);
    let (upgrade_window, upgrade_failed) = outage(&mesh, upgrading, flipping);
    let upgrade_takeover = first_success_after(&mesh, upgraded);
    let (_, flip_failed) = outage(&mesh, flipping, flipped);
    report(json!({
        "test": "leak",
        "flips": flips,
        "plaintext_attempts_under_strict": plaintext_under_strict,
        "plaintext_accepted_under_strict": leaks.len(),
        "plaintext_accepted_while_permissive": accepted_permissive,
        "in_mesh_requests": mesh.len(),
        "kill9_failed_requests": crash_failed,
        "kill9_outage_ms": crash_window,
        "kill9_new_agent_ready_ms": restart_ready,
        "kill9_first_success_after_start_ms": crash_takeover,
        "upgrade_failed_requests": upgrade_failed,
        "upgrade_outage_ms": upgrade_window,
        "upgrade_new_agent_ready_ms": upgrade_ready,
        "upgrade_first_success_after_start_ms": upgrade_takeover,
        "flip_failed_requests": flip_failed,
    }));
    assert!(leaks.is_empty(), "plaintext reached the STRICT pod: {:?}", &leaks[..leaks.len().min(5)]);
    assert!(plaintext_under_strict > 1000, "the hammer hardly ran: {plaintext_under_strict}");
    // The hammer can tell: while PERMISSIVE its plaintext got through.
    assert!(
        accepted_permissive > flips,
        "{accepted_permissive} plaintext requests accepted in {permissive_ms} ms of PERMISSIVE"
    );
    assert_eq!(flip_failed, 0, "in-mesh requests failed while the policy flipped");
    for (what, takeover) in [("crash", crash_takeover), ("upgrade", upgrade_takeover)] {
        let takeover = takeover.unwrap_or_else(|| panic!("no in-mesh success after the {what}"));
        assert!(takeover < 1000, "new connections failed for {takeover} ms after the {what}'s agent started");
    }
}

#[test]
fn certificates_rotate_under_load_without_a_failed_request() {
    let (ttl, run) = if full() { ("30s", Duration::from_secs(180)) } else { ("8s", Duration::from_secs(20)) };
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    let agent1 = Agent::start(&tb, "node1", &config, &["--cert-ttl", ttl]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &["--cert-ttl", ttl]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let serials = |agent: &Agent| -> Vec<String> {
        ready(agent)["engine"]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["serial"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    let mesh = tb.load_client("productpage", addr(&tb, "details", 8080), 2).unwrap();
    let started = Instant::now();
    while started.elapsed() < run {
        seen.extend(serials(&agent1));
        seen.extend(serials(&agent2));
        std::thread::sleep(Duration::from_millis(500));
    }
    let records = mesh.stop().unwrap();
    let failed: Vec<&LoadRecord> = records.iter().filter(|r| !r.ok).collect();
    report(json!({
        "test": "rotation",
        "cert_ttl": ttl,
        "seconds": run.as_secs(),
        "certificates_seen": seen.len(),
        "requests": records.len(),
        "failed_requests": failed.len(),
    }));
    assert!(failed.is_empty(), "{} requests failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    // Each agent holds two workloads' certificates; each must have been renewed at least twice.
    assert!(seen.len() >= 4 * 3, "too few renewals to prove anything: {seen:?}");
    assert!(records.len() > 1000, "the load hardly ran: {}", records.len());
}

struct ProcessUse {
    rss_kib: u64,
    fds: usize,
}

fn process_use(agent: &mut Agent) -> ProcessUse {
    let pid = agent.process().pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    ProcessUse { rss_kib, fds }
}

/// Opens `count` connections from `pod` to `to` (one request each) and keeps them open.
fn hold(tb: &Testbed, pod: &str, to: SocketAddr, count: u64) -> ChildGuard {
    let binary = lockmesh_tests::workspace_binary("lockmesh-testapp").unwrap();
    let mut command = netns::command_in(&tb.pod(pod).netns_path(), binary).unwrap();
    command.args(["hold", "--connect", &to.to_string(), "--count", &count.to_string()]);
    command.args(["--seconds", "3600", "--parallel", "16"]);
    let mut hold = ChildGuard::spawn("hold", command, tb.work_dir.join("hold.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(line) = hold.log().lines().find(|l| l.contains("\"holding\"")) {
            let result: Value = serde_json::from_str(line).unwrap();
            assert_eq!(result["ok"].as_u64(), Some(count), "{result}");
            return hold;
        }
        assert!(hold.is_running() && Instant::now() < deadline, "hold failed: {}", hold.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn open_flows(agent: &Agent) -> u64 {
    ready(agent)["flows"]["open"].as_u64().unwrap()
}

#[test]
fn thousands_of_tunneled_connections_come_and_go_without_leaks() {
    // Each node's agent holds a socket per connection: 15 000 stays under this VM's hard limit
    // of 20 000 open files, which cannot be raised here (no CAP_SYS_RESOURCE).
    let count: u64 = if full() { 15_000 } else { 5_000 };
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    // Idle HBONE connections close after 3 s, so the pool's growth under load also returns; the
    // recent-flows history (bounded, kept by design) is full after the first burst.
    // One client pod to one server pod: all its streams are one peer's, so the per-peer cap
    // (16 384 by default) is raised.
    let args =
        ["--hbone-idle-timeout", "3s", "--max-closed-flows", "1000", "--max-streams-per-peer", "65536"];
    let mut agents = [
        Agent::start(&tb, "node1", &config, &args).unwrap(),
        Agent::start(&tb, "node2", &config, &args).unwrap(),
    ];
    // Enough ephemeral ports for the client, an async server (a thread per connection would
    // exceed pid_max).
    netns::sysctl(&tb.pod("productpage").netns_path(), "net/ipv4/ip_local_port_range", "1024 65535").unwrap();
    let _details = tb.hold_server("details", 8080).unwrap();
    let target = addr(&tb, "details", 8080);
    // A first burst of the same size warms up what a node keeps by design (the recent-flows
    // history, allocator arenas, table capacity); a second burst must then leave nothing more.
    assert_eq!(tb.get("productpage", target, "/").unwrap()["status"], 200);
    // Nothing else runs in this testbed: once settled, no flow is open (the request above may
    // still be closing for a moment).
    let settled = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let open: Vec<u64> = agents.iter().map(open_flows).collect();
            if open.iter().all(|n| *n == 0) {
                return open;
            }
            assert!(Instant::now() < deadline, "{what}: flows still open {open:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let flows_before = settled("before the bursts");
    drop(hold(&tb, "productpage", target, count));
    settled("after the warm-up burst");
    std::thread::sleep(Duration::from_secs(5));
    let before: Vec<ProcessUse> = agents.iter_mut().map(process_use).collect();

    let mut held = hold(&tb, "productpage", target, count);
    std::thread::sleep(Duration::from_secs(1));
    let during: Vec<ProcessUse> = agents.iter_mut().map(process_use).collect();
    let flows_during: Vec<u64> = agents.iter().map(open_flows).collect();
    held.stop();

    // Everything the connections held is given back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let after: Vec<ProcessUse> = agents.iter_mut().map(process_use).collect();
        let flows: Vec<u64> = agents.iter().map(open_flows).collect();
        let fds_back = after.iter().zip(&before).all(|(a, b)| a.fds <= b.fds);
        if (fds_back && flows == flows_before) || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let flows_after: Vec<u64> = agents.iter().map(open_flows).collect();
    let mut row = json!({"test": "load", "connections": count});
    for (i, node) in ["node1", "node2"].iter().enumerate() {
        row[node] = json!({
            "rss_kib_before": before[i].rss_kib,
            "rss_kib_held": during[i].rss_kib,
            "rss_kib_after": after[i].rss_kib,
            "kib_per_connection": (during[i].rss_kib.saturating_sub(before[i].rss_kib)) as f64 / count as f64,
            "fds_before": before[i].fds,
            "fds_held": during[i].fds,
            "fds_after": after[i].fds,
            "open_flows_held": flows_during[i],
            "open_flows_after": flows_after[i],
        });
    }
    report(row.clone());
    for (i, node) in ["node1", "node2"].iter().enumerate() {
        assert!(flows_during[i] >= count, "{node} saw {} open flows, not {count}", flows_during[i]);
        assert!(during[i].fds as u64 >= count, "{node}: the connections held no sockets? {row}");
        assert!(after[i].fds <= before[i].fds, "{node} leaked file descriptors: {row}");
        assert_eq!(flows_after[i], flows_before[i], "{node} kept flows open: {row}");
        // Memory comes back to where the first burst left it, up to allocator noise (a quarter
        // of what the connections took, plus 4 MiB): repeated bursts do not accumulate.
        let grown = during[i].rss_kib.saturating_sub(before[i].rss_kib);
        let kept = after[i].rss_kib.saturating_sub(before[i].rss_kib);
        assert!(kept <= grown / 4 + 4096, "{node} kept {kept} KiB of {grown} KiB: {row}");
    }
}

/// Flow lines of an audit log.
fn audit_flows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?.get("flow").cloned())
        .collect()
}

fn verify_audit(path: &Path) {
    let (ok, report) = verify(&[path]);
    assert!(ok, "audit verify {}:\n{report}", path.display());
}

#[test]
fn the_audit_log_keeps_every_connection_exactly_once_across_kill_9() {
    let kills = if full() { 6 } else { 2 };
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    // Plaintext: the kernel observes both ends, and the traffic does not depend on the agents.
    apply(&config, "peer-authentication.yaml", &namespace_policy("DISABLE"));
    let log = |node: &str| tb.work_dir.join(format!("audit-{node}")).join("audit.log");
    let start = |node: &str| {
        let path = log(node).to_string_lossy().into_owned();
        Agent::start(&tb, node, &config, &["--audit-log", &path]).unwrap()
    };
    let nodes = ["node1", "node2"];
    let mut agents = vec![start(nodes[0]), start(nodes[1])];
    let _details = tb.serve("details", 8080).unwrap();
    let churn = tb.load_client("productpage", addr(&tb, "details", 8080), 0).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    for round in 0..kills {
        // Each node's agent in turn, mid-churn; the kernel keeps reporting into the pinned ring
        // while it is down.
        let i = round % 2;
        agents.remove(i).kill().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        agents.insert(i, start(nodes[i]));
        std::thread::sleep(Duration::from_millis(700));
    }
    let requests = churn.stop().unwrap();
    // The last closes reach the logs, then a clean stop seals them.
    std::thread::sleep(Duration::from_secs(1));
    // Closes whose open went to the killed agent, made whole by the last agents.
    let recovered: u64 = agents.iter().map(|a| ready(a)["flows"]["recovered_closes"].as_u64().unwrap()).sum();
    for agent in agents {
        assert_eq!(agent.terminate().unwrap(), Some(0));
    }

    let failed = requests.iter().filter(|r| !r.ok).count();
    let mut row = json!({
        "test": "audit",
        "kill9": kills,
        "connections": requests.len(),
        "failed": failed,
        "closes_recovered_by_the_last_agents": recovered,
    });
    let client = tb.pod("productpage").ip.to_string();
    for (node, reporter) in [("node1", "source"), ("node2", "destination")] {
        verify_audit(&log(node));
        let flows = audit_flows(&log(node));
        let mut logged: std::collections::HashMap<u64, usize> = Default::default();
        for f in flows.iter().filter(|f| f["reporter"] == reporter && f["src"]["ip"] == client.as_str()) {
            *logged.entry(f["src"]["port"].as_u64().unwrap()).or_default() += 1;
        }
        let mut made: std::collections::HashMap<u64, usize> = Default::default();
        for r in requests.iter().filter(|r| r.ok) {
            *made.entry(u64::from(r.port)).or_default() += 1;
        }
        let missing: Vec<u64> =
            made.iter().filter(|(p, n)| logged.get(p).copied().unwrap_or(0) < **n).map(|(p, _)| *p).collect();
        let twice: Vec<u64> =
            logged.iter().filter(|(p, n)| made.get(p).copied().unwrap_or(0) < **n).map(|(p, _)| *p).collect();
        row[node] = json!({
            "records": logged.values().sum::<usize>(),
            "missing": missing.len(),
            "duplicated_or_unknown": twice.len(),
        });
        assert!(
            missing.is_empty(),
            "{node}: {} connections missing from the audit log, e.g. ports {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(
            twice.is_empty(),
            "{node}: {} ports logged more often than connected: {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
    }
    report(row);
    assert_eq!(failed, 0, "plaintext requests failed while agents were killed");
    assert!(requests.len() > 500, "the churn hardly ran: {}", requests.len());
}
