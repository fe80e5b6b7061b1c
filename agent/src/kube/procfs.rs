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
pub fn pod_processes(proc_root: &Path, uids: &[String]) -> HashMap<String, u32> {
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
pub fn netns_path(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string()).join("ns").join("net")
}

/// Remembers which process stands for each pod, and scans `/proc` again only when a pod is new
/// or its process is gone.
pub struct NetnsFinder {
    proc_root: PathBuf,
    pids: HashMap<String, u32>,
}

impl NetnsFinder {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self { proc_root: proc_root.into(), pids: HashMap::new() }
    }

    /// Network namespace paths of the pods (by UID) that have a process.
    pub fn find(&mut self, uids: &[String]) -> HashMap<String, PathBuf> {
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
mod tests {
    use super::*;

    const SYSTEMD: &str = "0::/kubepods.slice/kubepods-burstable.slice/\
        kubepods-burstable-pod6f1c2d3e_aaaa_4bbb_8ccc_123456789abc.slice/cri-containerd-0123.scope\n";
    const CGROUPFS: &str = "12:memory:/kubepods/besteffort/pod0a0b0c0d-1111-2222-3333-444455556666/abcdef\n\
        0::/kubepods/besteffort/pod0a0b0c0d-1111-2222-3333-444455556666/abcdef\n";
    const SYSTEMD_UID: &str = "6f1c2d3e-aaaa-4bbb-8ccc-123456789abc";
    const CGROUPFS_UID: &str = "0a0b0c0d-1111-2222-3333-444455556666";

    fn process(root: &Path, pid: &str, cgroup: &str) {
        let dir = root.join(pid);
        fs::create_dir_all(dir.join("ns")).ok();
        fs::write(dir.join("cgroup"), cgroup).ok();
    }

    fn fake_proc() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        process(root.path(), "1", "0::/init.scope\n");
        process(root.path(), "4711", SYSTEMD);
        process(root.path(), "4700", SYSTEMD); // the pause process: lowest PID
        process(root.path(), "812", CGROUPFS);
        process(root.path(), "900", "0::/system.slice/containerd.service\n");
        fs::create_dir_all(root.path().join("self")).ok();
        fs::write(root.path().join("uptime"), "1 1").ok();
        root
    }

    #[test]
    fn finds_pods_by_uid_with_either_cgroup_driver() {
        let root = fake_proc();
        let uids = vec![SYSTEMD_UID.to_string(), CGROUPFS_UID.to_string(), "no-such-pod".to_string()];
        let found = pod_processes(root.path(), &uids);
        assert_eq!(found.len(), 2);
        assert_eq!(found.get(SYSTEMD_UID), Some(&4700));
        assert_eq!(found.get(CGROUPFS_UID), Some(&812));
        assert_eq!(netns_path(root.path(), 4700), root.path().join("4700/ns/net"));
    }

    #[test]
    fn finder_caches_and_notices_a_gone_process() {
        let root = fake_proc();
        let mut finder = NetnsFinder::new(root.path());
        let uids = vec![SYSTEMD_UID.to_string()];
        assert_eq!(finder.find(&uids).get(SYSTEMD_UID), Some(&root.path().join("4700/ns/net")));
        // The pause process is replaced (a new sandbox): the next lookup finds the survivor.
        fs::remove_dir_all(root.path().join("4700")).ok();
        assert_eq!(finder.find(&uids).get(SYSTEMD_UID), Some(&root.path().join("4711/ns/net")));
        // PIDs get reused: a process that no longer names the pod does not count.
        process(root.path(), "4711", "0::/user.slice\n");
        assert!(finder.find(&uids).is_empty());
        assert!(finder.find(&[]).is_empty());
    }

    #[test]
    fn a_missing_proc_root_finds_nothing() {
        assert!(pod_processes(Path::new("/nonexistent/proc"), &[SYSTEMD_UID.to_string()]).is_empty());
    }
}
