//! `cargo xtask bench [--quick] [--out DIR]`: lockmesh's data path against plaintext and two
//! userspace mutual-TLS tunnels (stunnel4, HAProxy), on one two-node testbed, variants
//! interleaved round-robin, medians of the repetitions; a markdown table, an SVG chart and a
//! JSON file under `bench/results/`.
mod kernel_cost;
mod measures;
pub mod report;
mod variants;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lockmesh_tests::{Agent, Testbed, process::ChildGuard};

use crate::step;
use measures::wait_listening;
use variants::{Service, Tunnel, TunnelCerts, Variant};

#[derive(clap::Args)]
pub struct Args {
    /// About a minute: shorter runs, two repetitions, 1 000 idle connections.
    #[arg(long)]
    quick: bool,
    /// Where to write `<date>-<host>.{md,svg,json}` (default: bench/results).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Durations and counts of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Profile {
    pub name: &'static str,
    pub repetitions: u32,
    pub iperf_seconds: u32,
    pub pingpong_millis: u64,
    pub connrate_millis: u64,
    pub idle_connections: u64,
    pub flood_millis: u64,
}

impl Profile {
    fn quick() -> Self {
        Self {
            name: "quick",
            repetitions: 2,
            iperf_seconds: 1,
            pingpong_millis: 1000,
            connrate_millis: 500,
            idle_connections: 1000,
            flood_millis: 500,
        }
    }

    fn full() -> Self {
        Self {
            name: "full",
            repetitions: 5,
            iperf_seconds: 4,
            pingpong_millis: 3000,
            connrate_millis: 2000,
            idle_connections: 10_000,
            flood_millis: 2000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
}

const fn metric(key: &'static str, label: &'static str, unit: &'static str, better: Better) -> Metric {
    Metric { key, label, unit, better }
}

/// Everything measured per variant and repetition, in table order.
pub const METRICS: &[Metric] = &[
    metric("throughput_1", "throughput, 1 stream", "Gbit/s", Better::Higher),
    metric("throughput_8", "throughput, 8 streams", "Gbit/s", Better::Higher),
    metric("cpu_per_gb_1", "CPU per GB, 1 stream", "s/GB", Better::Lower),
    metric("cpu_per_gb_8", "CPU per GB, 8 streams", "s/GB", Better::Lower),
    metric("rtt_1b_p50", "RTT 1 B p50", "µs", Better::Lower),
    metric("rtt_1b_p99", "RTT 1 B p99", "µs", Better::Lower),
    metric("rtt_1b_p999", "RTT 1 B p99.9", "µs", Better::Lower),
    metric("rtt_1k_p50", "RTT 1 KiB p50", "µs", Better::Lower),
    metric("rtt_1k_p99", "RTT 1 KiB p99", "µs", Better::Lower),
    metric("rtt_1k_p999", "RTT 1 KiB p99.9", "µs", Better::Lower),
    metric("conn_rate_1", "new connections, concurrency 1", "conn/s", Better::Higher),
    metric("conn_rate_64", "new connections, concurrency 64", "conn/s", Better::Higher),
    metric("rss_idle", "data-path RSS, idle", "MiB", Better::Lower),
    metric("rss_held", "data-path RSS, idle connections held", "MiB", Better::Lower),
    metric("rss_per_conn", "RSS per idle connection", "KiB", Better::Lower),
];

/// Samples per metric and variant.
#[derive(Default)]
pub struct Results {
    pub samples: BTreeMap<&'static str, BTreeMap<Variant, Vec<f64>>>,
    pub idle_connections: BTreeMap<Variant, u64>,
    /// Plaintext connection attempts reset per second by the STRICT destination.
    pub strict_resets_per_sec: Option<f64>,
    pub strict_note: String,
    /// lockmesh's eBPF programs: runs and time over the whole bench (both agents).
    pub program_costs: BTreeMap<String, kernel_cost::ProgramCost>,
    pub failures: Vec<String>,
}

impl Results {
    fn push(&mut self, key: &'static str, variant: Variant, value: f64) {
        self.samples.entry(key).or_default().entry(variant).or_default().push(value);
    }

    pub fn median(&self, key: &str, variant: Variant) -> Option<f64> {
        let mut values = self.samples.get(key)?.get(&variant)?.clone();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM end the run at the next step, through the normal error path, so that every
/// process and namespace is removed.
fn catch_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Connections need file descriptors: raise the soft limit to the hard one (children inherit).
fn raise_nofile() -> u64 {
    use nix::libc::{RLIMIT_NOFILE, getrlimit, rlimit, setrlimit};
    let mut limit = rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let raised = rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if setrlimit(RLIMIT_NOFILE, &raised) != 0 {
            return limit.rlim_cur;
        }
    }
    limit.rlim_max
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::require_root("the bench (network namespaces, eBPF)")?;
    for tool in ["iperf3", "stunnel4", "haproxy", "openssl", "ip"] {
        if !measures::have(tool) {
            bail!("{tool} is missing: run `cargo xtask setup` first");
        }
    }
    catch_signals();
    let profile = if args.quick { Profile::quick() } else { Profile::full() };
    let started = Instant::now();
    let nofile = raise_nofile();
    let binaries = crate::build(true)?;
    let facts = report::Machine::collect(&crate::workspace_root());
    eprintln!(
        "bench ({}): {}, {} cores, kernel {}, commit {}, load average {}",
        profile.name, facts.cpu_model, facts.cores, facts.kernel, facts.commit, facts.loadavg
    );

    // Declared in this order so that they drop in reverse: tunnels, servers, agents, testbed.
    let mut tb = step::run("bringing up the testbed (node1: clients, node2: servers)", || {
        Testbed::up(&variants::testbed_spec())
    })?;
    tb.app_binary = Some(binaries.testapp.clone());
    variants::tune_namespaces(&tb)?;
    let config = tb.config_dir("config")?;
    std::fs::write(config.join("strict.yaml"), variants::strict_policy_yaml())?;

    let mut agents = step::run("starting the lockmesh agents", || {
        let args = ["--log", "warn"];
        Ok::<_, anyhow::Error>(vec![
            Agent::start_binary(&tb, "node1", &config, &args, &binaries.lockmesh)?,
            Agent::start_binary(&tb, "node2", &config, &args, &binaries.lockmesh)?,
        ])
    })?;
    let agent_pids: Vec<u32> = agents.iter_mut().filter_map(|a| a.process().pid()).collect();

    let servers =
        step::run("starting iperf3 and the test app servers in the server pods", || start_servers(&tb))?;
    let tunnels = step::run("starting stunnel4 and HAProxy on both nodes (TLS 1.3, mutual)", || {
        let certs = TunnelCerts::create(&tb.work_dir.join("tunnel-certs"))?;
        // Sized for the idle-connection test: HAProxy's tables grow with maxconn.
        let max_conns = tunnel_max_conns(nofile).min(profile.idle_connections + 2048);
        Ok::<_, anyhow::Error>(vec![
            Tunnel::start(&tb, Variant::Stunnel, &certs, max_conns)?,
            Tunnel::start(&tb, Variant::Haproxy, &certs, max_conns)?,
        ])
    })?;
    let bench = Bench { tb: &tb, servers: &servers, agents: &agents, agent_pids, tunnels: &tunnels };

    step::run("checking every path end to end (64 KiB echo; lockmesh paths are mTLS)", || {
        bench.check_paths(&binaries.testapp)
    })?;

    let mut results = Results::default();
    let stats = kernel_cost::StatsEnabled::on().context("enabling kernel.bpf_stats_enabled")?;
    step::run("idle memory: data-path RSS idle and with idle connections held", || {
        bench.idle_memory(&binaries.testapp, &profile, nofile, &mut results)
    })?;
    step::run(
        &format!("measuring: {} repetitions, variants interleaved round-robin", profile.repetitions),
        || bench.rounds(&binaries.testapp, &profile, &mut results),
    )?;
    step::run("STRICT: plaintext connection flood against the STRICT pod", || {
        bench.strict_flood(&binaries.testapp, &profile, &mut results)
    })?;
    results.program_costs = kernel_cost::collect(&agents, &bench.agent_pids);
    drop(stats);

    let out_dir = args.out.unwrap_or_else(|| crate::workspace_root().join("bench").join("results"));
    let written = report::write(&out_dir, &facts, &profile, &results, started.elapsed())?;
    drop(tunnels);
    drop(servers);
    drop(agents);
    step::run("tearing down", || tb.down())?;
    println!("{}", std::fs::read_to_string(&written[0]).unwrap_or_default());
    for path in &written {
        eprintln!("wrote {}", path.display());
    }
    if !results.failures.is_empty() {
        eprintln!("{} runs failed; they are listed in the report", results.failures.len());
    }
    // A run that failed now and then still reports; a measure that never worked fails the bench.
    let never: Vec<String> = METRICS
        .iter()
        .flat_map(|m| Variant::ALL.iter().map(move |v| (m, *v)))
        .filter(|(m, v)| {
            !m.key.starts_with("rss") || matches!(v, Variant::Lockmesh | Variant::Stunnel | Variant::Haproxy)
        })
        .filter(|(m, v)| results.median(m.key, *v).is_none())
        .map(|(m, v)| format!("{} / {}", m.label, v.label()))
        .collect();
    if !never.is_empty() {
        bail!("no successful run of: {}", never.join(", "));
    }
    Ok(())
}

/// HAProxy and stunnel hold two sockets per tunneled connection, in one process per node.
fn tunnel_max_conns(nofile: u64) -> u64 {
    (nofile.saturating_sub(256) / 2).max(100)
}

fn start_servers(tb: &Testbed) -> anyhow::Result<Vec<Server>> {
    let mut servers = Vec::new();
    for variant in Variant::ALL {
        let pod = tb.pod(&variant.server_pod());
        let ns = pod.netns_path();
        let log = |what: &str| tb.work_dir.join(format!("{what}-{}.log", pod.name));
        let mut iperf = lockmesh_tests::netns::command_in(&ns, "iperf3")?;
        // A client that died mid-test must not leave the server busy for long.
        iperf.args(["-s", "-p", &Service::Iperf.port().to_string(), "--rcv-timeout", "5000"]);
        let iperf = ChildGuard::spawn(&format!("iperf3 -s in {}", pod.name), iperf, log("iperf3"))?;
        let stream = tb.stream_echo(&pod.name, Service::Stream.port())?;
        let echo = tb.echo(&pod.name, Service::Echo.port())?;
        let http = tb.serve(&pod.name, Service::Http.port())?;
        wait_listening(&ns, Service::Iperf.port())?;
        servers.push(Server { variant, iperf, _stream: stream, _echo: echo, _http: http });
    }
    Ok(servers)
}

struct Server {
    variant: Variant,
    iperf: ChildGuard,
    _stream: lockmesh_tests::apps::App,
    _echo: lockmesh_tests::apps::App,
    _http: lockmesh_tests::apps::App,
}

struct Bench<'a> {
    tb: &'a Testbed,
    servers: &'a [Server],
    agents: &'a [Agent],
    agent_pids: Vec<u32>,
    tunnels: &'a [Tunnel],
}

impl Bench<'_> {
    /// The variant's long-running data-path processes: agents or tunnel ends.
    fn data_path_pids(&self, variant: Variant) -> Vec<u32> {
        match variant {
            Variant::Plaintext => Vec::new(),
            Variant::Lockmesh | Variant::Strict => self.agent_pids.clone(),
            _ => self.tunnels.iter().filter(|t| t.variant == variant).flat_map(Tunnel::pids).collect(),
        }
    }

    /// What counts for CPU per GB: the data path and the iperf3 server (the client is added
    /// when it is reaped).
    fn cpu_pids(&self, variant: Variant) -> Vec<u32> {
        let mut pids = self.data_path_pids(variant);
        pids.extend(self.servers.iter().filter(|s| s.variant == variant).filter_map(|s| s.iperf.pid()));
        pids
    }

    fn check_paths(&self, testapp: &std::path::Path) -> anyhow::Result<()> {
        for variant in Variant::ALL {
            let target = variant.target(self.tb, Service::Echo);
            // Three tries: under heavy load stunnel4 sometimes drops the tail of an echo that
            // follows a half-close.
            let mut attempt = 1;
            while let Err(e) = measures::check_path(self.tb, testapp, &variant.client_pod(), target) {
                if attempt == 3 {
                    return Err(e.context(format!("{} path", variant.label())));
                }
                step::note(&format!("{}: attempt {attempt} failed: {e:#}", variant.label()));
                attempt += 1;
            }
            if variant.is_mesh() {
                let server = self.tb.pod(&variant.server_pod()).ip.to_string();
                self.agents[0]
                    .wait_for_flows(Duration::from_secs(5), |flows| {
                        flows.iter().any(|f| f["dst"]["ip"] == server.as_str() && f["encryption"] == "mtls")
                    })
                    .with_context(|| format!("{}: no mTLS flow on node1", variant.label()))?;
            }
            step::note(&format!("{}: ok", variant.label()));
        }
        Ok(())
    }

    fn idle_memory(
        &self,
        testapp: &std::path::Path,
        profile: &Profile,
        nofile: u64,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        for variant in [Variant::Lockmesh, Variant::Stunnel, Variant::Haproxy] {
            check_interrupted()?;
            let mut count = profile.idle_connections;
            if !variant.is_mesh() {
                // Two sockets per connection in one process: stay inside RLIMIT_NOFILE.
                count = count.min(tunnel_max_conns(nofile).saturating_sub(64));
            }
            let pids = self.data_path_pids(variant);
            match measures::idle_memory(self.tb, testapp, variant, &pids, count) {
                Ok(m) => {
                    step::note(&format!(
                        "{:<16} idle {:.1} MiB, {} connections {:.1} MiB ({:.1} KiB each)",
                        variant.label(),
                        m.rss_idle_mib,
                        m.connections,
                        m.rss_held_mib,
                        m.kib_per_conn
                    ));
                    results.push("rss_idle", variant, m.rss_idle_mib);
                    results.push("rss_held", variant, m.rss_held_mib);
                    results.push("rss_per_conn", variant, m.kib_per_conn);
                    results.idle_connections.insert(variant, m.connections);
                }
                Err(e) => fail(results, &format!("idle memory, {}", variant.label()), e),
            }
        }
        Ok(())
    }

    fn rounds(
        &self,
        testapp: &std::path::Path,
        profile: &Profile,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        let reps = profile.repetitions;
        for rep in 0..reps {
            // Rotate the order so that no variant always runs first (or right after another).
            let mut order = Variant::ALL.to_vec();
            let shift = rep as usize % order.len();
            order.rotate_left(shift);
            for job in ["iperf3 1", "iperf3 8", "pingpong 1", "pingpong 1024", "connrate 1", "connrate 64"] {
                for &variant in &order {
                    check_interrupted()?;
                    let what = format!("[{}/{reps}] {job:<13} {:<16}", rep + 1, variant.label());
                    match self.one(testapp, profile, job, variant, results) {
                        Ok(summary) => step::note(&format!("{what} {summary}")),
                        Err(e) => fail(results, &what, e),
                    }
                }
            }
        }
        Ok(())
    }

    /// One job for one variant; a one-line summary.
    fn one(
        &self,
        testapp: &std::path::Path,
        profile: &Profile,
        job: &str,
        variant: Variant,
        results: &mut Results,
    ) -> anyhow::Result<String> {
        let (tool, n) = job.split_once(' ').context("job")?;
        let n: u32 = n.parse()?;
        match tool {
            "iperf3" => {
                let bulk =
                    measures::iperf(self.tb, variant, n, profile.iperf_seconds, &self.cpu_pids(variant))?;
                let suffix = if n == 1 { "1" } else { "8" };
                results.push(if n == 1 { "throughput_1" } else { "throughput_8" }, variant, bulk.gbit_per_s);
                results.push(
                    if n == 1 { "cpu_per_gb_1" } else { "cpu_per_gb_8" },
                    variant,
                    bulk.cpu_s_per_gb,
                );
                Ok(format!("{:.2} Gbit/s, {:.2} CPU s/GB ({suffix})", bulk.gbit_per_s, bulk.cpu_s_per_gb))
            }
            "pingpong" => {
                let lat = measures::pingpong(self.tb, testapp, variant, n, profile.pingpong_millis)?;
                let keys = if n == 1 {
                    ["rtt_1b_p50", "rtt_1b_p99", "rtt_1b_p999"]
                } else {
                    ["rtt_1k_p50", "rtt_1k_p99", "rtt_1k_p999"]
                };
                for (key, value) in keys.iter().zip([lat.p50_us, lat.p99_us, lat.p999_us]) {
                    results.push(key, variant, value);
                }
                Ok(format!("RTT p50 {:.1} µs, p99 {:.1}, p99.9 {:.1}", lat.p50_us, lat.p99_us, lat.p999_us))
            }
            _ => {
                let target = variant.target(self.tb, Service::Echo);
                let rate = measures::connrate(
                    self.tb,
                    testapp,
                    &variant.client_pod(),
                    target,
                    n,
                    profile.connrate_millis,
                )?;
                if rate.ok == 0 {
                    bail!("no connection completed ({} refused, {} errors)", rate.refused, rate.errors);
                }
                results.push(if n == 1 { "conn_rate_1" } else { "conn_rate_64" }, variant, rate.per_sec);
                Ok(format!("{:.0} conn/s ({} errors)", rate.per_sec, rate.errors + rate.refused))
            }
        }
    }

    /// Plaintext connections from an out-of-mesh pod to the STRICT pod: if the destination
    /// refuses them in the kernel (RST), how many per second.
    fn strict_flood(
        &self,
        testapp: &std::path::Path,
        profile: &Profile,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        check_interrupted()?;
        let from = Variant::Plaintext.client_pod();
        let target = std::net::SocketAddr::new(
            self.tb.pod(&Variant::Strict.server_pod()).ip.into(),
            Service::Echo.port(),
        );
        if measures::check_path(self.tb, testapp, &from, target).is_ok() {
            results.strict_note =
                "n/a: the STRICT destination accepted a plaintext connection (no in-kernel STRICT in this build)"
                    .into();
            step::note(&results.strict_note);
            return Ok(());
        }
        let rate = match measures::connrate(self.tb, testapp, &from, target, 64, profile.flood_millis) {
            Ok(rate) => rate,
            Err(e) => {
                results.strict_note = format!("n/a: the flood failed: {e:#}");
                fail(results, "STRICT flood", e);
                return Ok(());
            }
        };
        if rate.ok > 0 {
            results.strict_note = format!("n/a: {} plaintext connections got through", rate.ok);
        } else if rate.refused == 0 {
            results.strict_note = format!(
                "n/a: plaintext connections were not reset ({} timed out or failed otherwise)",
                rate.errors
            );
        } else {
            results.strict_resets_per_sec = Some(rate.refused_per_sec);
            results.strict_note = format!(
                "{:.0} plaintext connections reset per second (64 concurrent connectors, {} other errors)",
                rate.refused_per_sec, rate.errors
            );
        }
        step::note(&results.strict_note);
        Ok(())
    }
}

fn fail(results: &mut Results, what: &str, error: anyhow::Error) {
    let line = format!("{what}: {error:#}");
    eprintln!("    FAILED {line}");
    results.failures.push(line);
}
