//! `lockmesh doctor` on this machine, for real: as root on a 6.6+ kernel with BTF, bpffs and
//! cgroup v2 (what `cargo xtask setup` provides), every check passes; a bogus path is named in
//! its ✗ line and the exit status says so.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::{path::PathBuf, process::Command};

use lockmesh_tests::workspace_binary;
use serde_json::Value;

fn doctor(args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("lockmesh").unwrap()).arg("doctor").args(args).output().unwrap()
}

/// A scratch directory, removed on drop (also when the test panics).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("lockmesh-doctor-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_check_passes_as_root_here() {
    assert!(nix::unistd::Uid::effective().is_root(), "the doctor test needs root (run it as CI does)");
    let dir = ScratchDir::new();
    let ca = dir.path().join("ca");
    let init = Command::new(workspace_binary("lockmesh").unwrap())
        .args(["ca", "init", "--dir"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();

    let output = doctor(&[
        "--kube",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    let names: Vec<&str> = findings.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "kernel",
            "BTF",
            "bpffs",
            "cgroup v2",
            "capabilities",
            "pod network namespaces",
            "config source",
            "CA"
        ]
    );
    for finding in findings {
        assert_eq!(finding["ok"], true, "{finding}");
    }
    assert_eq!(report["ok"], true);
    assert!(output.status.success());

    // The text form: one ✓ line per finding, naming what it found.
    let output = doctor(&["--config", dir.path().to_str().unwrap(), "--ca", ca.to_str().unwrap()]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{text}");
    let required: Vec<&str> = text.lines().filter(|l| !l.contains("(optional)")).collect();
    assert!(required.iter().take(8).all(|l| l.starts_with('✓') || l.starts_with("✗ pod network")), "{text}");
    assert!(text.contains("✓ capabilities") && text.contains("CAP_BPF"), "{text}");
    assert!(
        text.contains(&format!("✓ config source           --config {} readable", dir.path().display())),
        "{text}"
    );
}

#[test]
fn a_bogus_cgroup_is_named_and_fails() {
    let bogus = format!("/nonexistent-lockmesh-doctor-{}", std::process::id());
    let output = doctor(&["--cgroup", &bogus]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!output.status.success(), "{text}");
    let line = text.lines().find(|l| l.starts_with("✗ cgroup v2")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&bogus) && line.contains("hint:"), "{line}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("missing: cgroup v2"), "{stderr}");
}
