//! Finds a pod's network namespace from its UID: the `ns/net` of a process whose cgroup path
//! names the pod (`…pod<uid>…` with the cgroupfs driver, `…pod<uid with _>.slice…` with systemd).
//! Works with any runtime (containerd, CRI-O) without asking it, given the host's `/proc` (the
//! agent runs with `hostPID`).
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

/// The lowest PID (the sandbox's pause process, normally) of each pod in `uids` found under
/// `proc_root`. Processes that vanish while scanning are skipped.
pub(super) fn pod_processes(proc_root: &Path, uids: &[String]) -> HashMap<String, u32> {
    let mut found: HashMap<String, u32> = HashMap::new();
    let Ok(entries) = fs::read_dir(proc_root) else { return found };
    let patterns: Vec<(&String, String)> = uids.iter().map(|uid| (uid, uid.replace('-', "_"))).collect();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cgroup) = fs::read_to_string(entry.path().join("cgroup")) else { continue };
        for (uid, underscored) in &patterns {
            if cgroup_names_pod(&cgroup, uid, underscored) {
                let lowest = found.entry((*uid).clone()).or_insert(pid);
                *lowest = (*lowest).min(pid);
            }
        }
    }
    found
}

fn cgroup_names_pod(cgroup: &str, uid: &str, underscored: &str) -> bool {
    !uid.is_empty() && (cgroup.contains(uid) || cgroup.contains(underscored))
}

/// `<proc_root>/<pid>/ns/net`.
pub(super) fn netns_path(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string()).join("ns").join("net")
}

/// Remembers which process stands for each pod, and scans `/proc` again only when a pod is new
/// or its process is gone.
pub(super) struct NetnsFinder {
    proc_root: PathBuf,
    pids: HashMap<String, u32>,
}

impl NetnsFinder {
    pub(super) fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self { proc_root: proc_root.into(), pids: HashMap::new() }
    }

    /// Network namespace paths of the pods (by UID) that have a process.
    pub(super) fn find(&mut self, uids: &[String]) -> HashMap<String, PathBuf> {
        let root = self.proc_root.clone();
        let still_there = |uid: &String, pid: &u32| {
            fs::read_to_string(root.join(pid.to_string()).join("cgroup"))
                .is_ok_and(|cgroup| cgroup_names_pod(&cgroup, uid, &uid.replace('-', "_")))
        };
        self.pids.retain(|uid, pid| uids.contains(uid) && still_there(uid, pid));
        let missing: Vec<String> = uids.iter().filter(|uid| !self.pids.contains_key(*uid)).cloned().collect();
        if !missing.is_empty() {
            self.pids.extend(pod_processes(&self.proc_root, &missing));
        }
        self.pids.iter().map(|(uid, pid)| (uid.clone(), netns_path(&self.proc_root, *pid))).collect()
    }
}

#[cfg(test)]
mod tests;
