//! `cargo xtask setup`: installs every prerequisite, idempotently, from the package registries.
use std::{path::Path, process::Command};

use anyhow::bail;

use crate::{sh, step};

/// Debian packages: LLVM 22 for bpf-linker; tools the tests and the bench drive.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "tcpdump",
    "curl",
    "ethtool",
    // The hostile tests' attacker drops its own kernel's RSTs (nft), as a raw-socket attacker would.
    "nftables",
    // The /graph page's test drives a real headless browser through WebDriver.
    "chromium",
    "chromium-driver",
    // cargo xtask bench: load generators and the userspace mTLS tunnels lockmesh is compared with.
    "iperf3",
    "stunnel4",
    "haproxy",
    "openssl",
    // cargo xtask manifests: kubectl (kustomize) and kubernetes-validate live in a venv.
    "python3-venv",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo xtask fuzz` drives it (with the nightly toolchain).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run() -> anyhow::Result<()> {
    crate::require_root("setup (apt, mounting bpffs)")?;
    apt()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    bpffs()?;
    manifest_tools()?;
    eprintln!("setup complete");
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step::note("Debian packages: all present");
        return Ok(());
    }
    step::run(&format!("installing Debian packages: {}", missing.join(" ")), || {
        sh(Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    })
}

fn has_rust_src() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("rust-src")))
}

fn rust_src() -> anyhow::Result<()> {
    if has_rust_src() {
        step::note("nightly rust-src: present");
        return Ok(());
    }
    step::run("adding rust-src to the nightly toolchain", || {
        sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
    })
}

/// What `program args…` prints, if it runs and succeeds (a tool's `--version`).
fn tool_version(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn bpf_linker_version() -> Option<String> {
    tool_version("bpf-linker", &["--version"])
}

fn cargo_fuzz_version() -> Option<String> {
    tool_version("cargo", &["fuzz", "--version"])
}

/// Installs a tool at exactly `version` with `install`, unless `installed` (its `--version`) already is it.
fn cargo_install_pinned(
    name: &str,
    installed: Option<String>,
    version: &str,
    install: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(found) = installed
        && found.contains(version)
    {
        step::note(&format!("{name}: {found}"));
        return Ok(());
    }
    step::run(&format!("building {name} {version} (about a minute)"), install)
}

fn bpf_linker() -> anyhow::Result<()> {
    cargo_install_pinned("bpf-linker", bpf_linker_version(), BPF_LINKER_VERSION, || {
        let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
        sh(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features"])
            .args(["--features", "llvm-22", "--force"])
            .env("PATH", path))
    })
}

fn cargo_fuzz() -> anyhow::Result<()> {
    cargo_install_pinned("cargo-fuzz", cargo_fuzz_version(), CARGO_FUZZ_VERSION, || {
        sh(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "--force",
        ]))
    })
}

fn bpffs() -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if is_bpffs(root) {
        step::note("bpffs: mounted at /sys/fs/bpf");
        return Ok(());
    }
    step::run("mounting bpffs at /sys/fs/bpf", || {
        std::fs::create_dir_all(root).ok();
        sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
    })
}

/// The venv of `cargo xtask manifests` (kubectl, kubernetes-validate), pinned by
/// deploy/schemas/requirements.txt; redone only when that file changes.
fn manifest_tools() -> anyhow::Result<()> {
    let venv = crate::manifests::venv();
    let requirements = crate::manifests::requirements();
    let wanted = std::fs::read_to_string(&requirements)?;
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        step::note(&format!("manifest tools: {}", venv.display()));
        return Ok(());
    }
    step::run("installing the manifest tools (kubectl, kubernetes-validate) into a venv", || {
        sh(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
        sh(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements))?;
        std::fs::write(&stamp, &wanted)?;
        Ok(())
    })
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// What `cargo build` of the agent needs; a clear message instead of a deep build failure.
pub fn check_build_prerequisites() -> anyhow::Result<()> {
    if std::env::var("AYA_BUILD_SKIP").is_ok() {
        return Ok(());
    }
    if bpf_linker_version().is_none() {
        bail!("bpf-linker is missing: run `cargo xtask setup` first");
    }
    if !has_rust_src() {
        bail!("the nightly toolchain lacks rust-src: run `cargo xtask setup` first");
    }
    Ok(())
}

/// What `cargo xtask fuzz` needs: cargo-fuzz and the nightly toolchain's rustc.
pub fn check_fuzz_prerequisites() -> anyhow::Result<()> {
    if cargo_fuzz_version().is_none() {
        bail!("cargo-fuzz is missing: run `cargo xtask setup` first");
    }
    let nightly = Command::new("rustc").args(["+nightly", "--version"]).output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        bail!("the nightly toolchain is missing: run `cargo xtask setup` first");
    }
    Ok(())
}

/// Tools the end-to-end tests drive.
pub fn check_test_prerequisites() -> anyhow::Result<()> {
    for tool in ["ip", "tcpdump", "curl", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("{tool} is missing: run `cargo xtask setup` first");
        }
    }
    if !is_bpffs(Path::new("/sys/fs/bpf")) {
        bail!("bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup` first");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image builds with what setup installs here: the same eBPF toolchain.
    #[test]
    fn containerfile_matches_setup() {
        let root = crate::workspace_root();
        let containerfile = std::fs::read_to_string(root.join("Containerfile")).unwrap();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let rust_version = manifest
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = "))
            .map(|v| v.trim_matches('"'))
            .unwrap();
        assert!(containerfile.contains(&format!("rust:{rust_version}-bookworm")), "stable {rust_version}");
        assert!(containerfile.contains(&format!("bpf-linker --version {BPF_LINKER_VERSION}")));
        assert!(containerfile.contains("--component rust-src"));
        for package in APT_PACKAGES.iter().take_while(|p| !p.starts_with("iproute2")) {
            assert!(containerfile.contains(package), "{package} missing from the Containerfile");
        }
    }
}
