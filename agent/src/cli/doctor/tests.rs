use super::*;

fn options(dir: &Path) -> DoctorOptions {
    DoctorOptions {
        cgroup: Some(dir.join("no-cgroup")),
        bpffs_dir: dir.join("bpf/lockmesh"),
        source: DoctorSource::Dir(dir.to_path_buf()),
        proc_root: dir.join("proc"),
        netns_dir: dir.join("netns"),
        ca: None,
        state_dir: dir.join("state"),
        osrelease: dir.join("osrelease"),
        proc_status: dir.join("status"),
        btf: dir.join("vmlinux"),
    }
}

#[test]
fn missing_things_are_named_with_hints() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("status"), "CapEff:\t0000000000003000\n").unwrap();
    fs::write(dir.path().join("osrelease"), "6.1.0-13-amd64\n").unwrap();
    let report = check(&options(dir.path()));
    assert!(!report.ok);
    let get = |name: &str| report.findings.iter().find(|f| f.name == name).unwrap();
    assert!(!get("kernel").ok && get("kernel").detail.contains("6.1.0-13-amd64 (needs ≥ 6.6)"));
    assert!(!get("BTF").ok && get("BTF").detail.contains("vmlinux missing"));
    assert!(!get("bpffs").ok, "a tempdir is not bpffs");
    assert!(!get("cgroup v2").ok && get("cgroup v2").detail.contains("no-cgroup"));
    assert_eq!(get("capabilities").detail, "missing CAP_SYS_ADMIN CAP_PERFMON CAP_BPF");
    assert!(!get("pod network namespaces").ok && !get("pod network namespaces").required);
    assert!(get("config source").ok, "the tempdir is readable");
    assert!(get("CA").ok && get("CA").detail.contains("will be created"), "{:?}", get("CA"));
    let text = render(&report);
    assert!(text.contains("✗ cgroup v2") && text.contains("hint: cgroup v2 mounted"), "{text}");
    assert!(text.contains("✓ config source") && text.ends_with("something the agent needs is missing\n"));
}

#[test]
fn a_broken_plugin_ca_is_reported_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    fs::create_dir_all(&ca_dir).unwrap();
    fs::write(ca_dir.join(ca::CA_CERT), "not a certificate").unwrap();
    let finding = certificate_authority(Some(ca_dir.as_path()), dir.path());
    assert!(!finding.ok && finding.detail.contains("ca-key.pem"), "{finding:?}");
    let good = dir.path().join("good");
    ca::init(&good, "cluster.local").unwrap();
    assert!(certificate_authority(Some(good.as_path()), dir.path()).ok);
}
