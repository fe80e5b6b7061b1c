//! One measurement each: run the load generator in the variant's client pod against its server
//! pod, parse what it prints, account the CPU of the variant's processes.
use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lockmesh_tests::{Testbed, netns, process::ChildGuard};
use serde_json::Value;

use super::variants::{Service, Variant};

/// Waits until something listens on TCP `port` inside the namespace.
pub fn wait_listening(ns: &Path, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let needle = format!(":{port:04X} ");
    loop {
        let tables = netns::run_in(ns, || {
            // thread-self: /proc/self/net would be the namespace of the main thread.
            ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        // Columns: sl local_address rem_address st …; st 0A is LISTEN.
        let listening = tables.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
        });
        if listening {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} in {}", ns.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (man 5 proc).
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

/// CPU seconds of the children this process has waited for.
fn reaped_children_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: nix::libc::rusage = std::mem::zeroed();
        if nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: nix::libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// VmRSS in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs a load generator in a pod to completion (killed after `timeout`); its stdout.
fn run_in_pod(
    tb: &Testbed,
    pod: &str,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<String> {
    let ns = tb.pod(pod).netns_path();
    let mut child = netns::command_in(&ns, program)?
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} in {pod}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        None => bail!("{program} in {pod} still running after {timeout:?}, killed: {}", tail(&stderr)),
        Some(status) if !status.success() => bail!(
            "{program} {} in {pod} failed ({status}): {}{}",
            args.join(" "),
            tail(&stdout),
            tail(&stderr)
        ),
        Some(_) => Ok(stdout),
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub struct Bulk {
    pub gbit_per_s: f64,
    pub cpu_s_per_gb: f64,
}

/// iperf3 from the client pod, `streams` parallel streams for `seconds`. `pids`: the variant's
/// long-running processes (iperf3 server, agents or tunnels) whose CPU counts.
pub fn iperf(
    tb: &Testbed,
    variant: Variant,
    streams: u32,
    seconds: u32,
    pids: &[u32],
) -> anyhow::Result<Bulk> {
    let target = variant.target(tb, Service::Iperf);
    let args: Vec<String> = [
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
        "-t",
        &seconds.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
        "--connect-timeout",
        "5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() + reaped_children_cpu();
    let timeout = Duration::from_secs(u64::from(seconds) + 30);
    let out = run_in_pod(tb, &variant.client_pod(), "iperf3", &args, timeout)?;
    let cpu_after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() + reaped_children_cpu();
    let json: Value = serde_json::from_str(&out).with_context(|| format!("iperf3 output: {}", tail(&out)))?;
    if let Some(error) = json["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let received = &json["end"]["sum_received"];
    let bps = received["bits_per_second"].as_f64().context("iperf3: no end.sum_received")?;
    let bytes = received["bytes"].as_f64().unwrap_or(0.0);
    if bytes <= 0.0 {
        bail!("iperf3 moved no data");
    }
    Ok(Bulk { gbit_per_s: bps / 1e9, cpu_s_per_gb: (cpu_after - cpu_before) / (bytes / 1e9) })
}

pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// Round trips of `size` bytes on one established connection (test app `pingpong` against the
/// streaming echo).
pub fn pingpong(
    tb: &Testbed,
    testapp: &Path,
    variant: Variant,
    size: u32,
    millis: u64,
) -> anyhow::Result<Latency> {
    let target = variant.target(tb, Service::Stream);
    let args: Vec<String> = [
        "pingpong",
        "--connect",
        &target.to_string(),
        "--bytes",
        &size.to_string(),
        "--millis",
        &millis.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let timeout = Duration::from_millis(millis) + Duration::from_secs(30);
    let out = run_in_pod(tb, &variant.client_pod(), &testapp.to_string_lossy(), &args, timeout)?;
    let json: Value = serde_json::from_str(out.trim()).with_context(|| format!("pingpong output: {out}"))?;
    let get = |k: &str| json[k].as_f64().with_context(|| format!("pingpong: no {k} in {json}"));
    Ok(Latency { p50_us: get("p50_us")?, p99_us: get("p99_us")?, p999_us: get("p999_us")? })
}

pub struct ConnRate {
    pub per_sec: f64,
    pub refused_per_sec: f64,
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
}

/// New connections per second: connect, 1 KiB request, echo, close; `concurrency` in flight.
pub fn connrate(
    tb: &Testbed,
    testapp: &Path,
    client_pod: &str,
    target: std::net::SocketAddr,
    concurrency: u32,
    millis: u64,
) -> anyhow::Result<ConnRate> {
    let args: Vec<String> = [
        "connrate",
        "--connect",
        &target.to_string(),
        "--concurrency",
        &concurrency.to_string(),
        "--millis",
        &millis.to_string(),
        "--bytes",
        "1024",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let timeout = Duration::from_millis(millis) + Duration::from_secs(30);
    let out = run_in_pod(tb, client_pod, &testapp.to_string_lossy(), &args, timeout)?;
    let json: Value = serde_json::from_str(out.trim()).with_context(|| format!("connrate output: {out}"))?;
    Ok(ConnRate {
        per_sec: json["per_sec"].as_f64().unwrap_or(0.0),
        refused_per_sec: json["refused_per_sec"].as_f64().unwrap_or(0.0),
        ok: json["ok"].as_u64().unwrap_or(0),
        refused: json["refused"].as_u64().unwrap_or(0),
        errors: json["errors"].as_u64().unwrap_or(0),
    })
}

pub struct IdleMemory {
    pub rss_idle_mib: f64,
    pub rss_held_mib: f64,
    pub connections: u64,
    pub kib_per_conn: f64,
}

/// RSS of `pids` idle, then while the client pod holds `count` idle connections (one request
/// each, then silence) through the variant.
pub fn idle_memory(
    tb: &Testbed,
    testapp: &Path,
    variant: Variant,
    pids: &[u32],
    count: u64,
) -> anyhow::Result<IdleMemory> {
    let rss = || pids.iter().map(|p| rss_kib(*p)).sum::<u64>();
    let idle = rss();
    let target = variant.target(tb, Service::Http);
    let mut command = netns::command_in(&tb.pod(&variant.client_pod()).netns_path(), testapp)?;
    command.args([
        "hold",
        "--connect",
        &target.to_string(),
        "--count",
        &count.to_string(),
        "--parallel",
        "32",
    ]);
    let log = tb.work_dir.join(format!("hold-{}.log", variant.key()));
    let mut hold = ChildGuard::spawn(&format!("hold {}", variant.key()), command, log)?;
    let deadline = Instant::now() + Duration::from_secs(60 + count / 50);
    let result: Value = loop {
        if let Some(line) = hold.log().lines().find(|l| l.contains("\"holding\"")) {
            break serde_json::from_str(line)?;
        }
        if !hold.is_running() || Instant::now() > deadline {
            bail!("hold through {} did not finish: {}", variant.label(), tail(&hold.log()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ok = result["ok"].as_u64().unwrap_or(0);
    if ok == 0 {
        bail!("no idle connection through {} worked: {result}", variant.label());
    }
    // Let the engines settle (buffers released after the first request).
    std::thread::sleep(Duration::from_millis(500));
    let held = rss();
    hold.stop();
    Ok(IdleMemory {
        rss_idle_mib: idle as f64 / 1024.0,
        rss_held_mib: held as f64 / 1024.0,
        connections: ok,
        kib_per_conn: held.saturating_sub(idle) as f64 / ok as f64,
    })
}

/// One transaction through the variant; errors unless the echo matches.
pub fn check_path(
    tb: &Testbed,
    testapp: &Path,
    client_pod: &str,
    target: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let out = run_in_pod(
        tb,
        client_pod,
        &testapp.to_string_lossy(),
        &["send".into(), "--connect".into(), target.to_string(), "--bytes".into(), "65536".into()],
        Duration::from_secs(30),
    )?;
    let json: Value = serde_json::from_str(out.trim()).with_context(|| format!("send output: {out}"))?;
    if json["sent"] != json["received"] || json["sent_sha256"] != json["received_sha256"] {
        bail!("echo through the path differs: {json}");
    }
    Ok(())
}

/// Is `program` on PATH?
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}
