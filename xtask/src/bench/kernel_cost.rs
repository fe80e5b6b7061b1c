//! What lockmesh's eBPF programs cost per run, from the kernel's own accounting: with
//! `kernel.bpf_stats_enabled` on, each program's fdinfo carries `run_time_ns` and `run_cnt`.
//! The agents' `/readyz` names their programs by id. The STRICT guard runs once per packet into
//! an enrolled pod, the anti-spoofing (and egress) guard once per packet out of one; sock_ops
//! and the sock_addr hooks once per socket event.
use std::{collections::BTreeMap, path::Path};

use lockmesh_tests::Agent;
use serde_json::Value;

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Keeps `kernel.bpf_stats_enabled` on while it lives (the accounting costs a little on every
/// program run: the bench's lockmesh figures include it).
pub struct StatsEnabled {
    before: String,
}

impl StatsEnabled {
    pub fn on() -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(STATS)?.trim().to_string();
        std::fs::write(STATS, "1")?;
        Ok(Self { before })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS, &self.before);
    }
}

/// One program's runs and time, summed over the agents.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ProgramCost {
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }
}

/// The programs of `agents` (processes `pids`), by name.
pub fn collect(agents: &[Agent], pids: &[u32]) -> BTreeMap<String, ProgramCost> {
    let mut names = BTreeMap::new();
    for agent in agents {
        let Ok(ready) = agent.get("/readyz").and_then(|r| r.json::<Value>()) else { continue };
        for program in ready["programs"].as_array().into_iter().flatten() {
            if let (Some(name), Some(id)) = (program["name"].as_str(), program["id"].as_u64()) {
                names.insert(id, name.to_string());
            }
        }
    }
    let mut costs: BTreeMap<String, ProgramCost> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for pid in pids {
        let dir = Path::new("/proc").join(pid.to_string()).join("fdinfo");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().filter_map(Result::ok) {
            let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
            let field = |key: &str| {
                info.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok())
            };
            let (Some(id), Some(ns), Some(runs)) =
                (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
            else {
                continue;
            };
            // A program may be open more than once in a process: count it once.
            if !seen.insert(id) {
                continue;
            }
            let name = names.get(&id).cloned().unwrap_or_else(|| format!("program {id}"));
            let cost = costs.entry(name).or_default();
            cost.runs += runs;
            cost.run_time_ns += ns;
        }
    }
    costs
}
