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
