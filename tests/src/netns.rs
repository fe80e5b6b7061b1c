//! Entering network namespaces from tests: run a closure inside one (on a scratch thread), or
//! start a process inside one. Unlike `ip netns exec`, nothing remounts /sys, so bpffs and the
//! cgroup mounts stay visible (see ../shared/kernel-notes.md).
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

/// Path of a named namespace as `ip netns` creates it.
pub fn path_of(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Runs `f` on a new thread inside the namespace; sockets it creates stay in that namespace.
pub fn run_in<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let file = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    let ns_name = ns.display().to_string();
    std::thread::spawn(move || -> anyhow::Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {ns_name}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread inside {} panicked", ns.display()))?
}

/// A `Command` that will run inside the namespace.
pub fn command_in(ns: &Path, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
    let file = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    let mut command = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe calls happen (setns); the fd is
    // kept open by the closure, which owns the File.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}

/// Runs a command inside the namespace to completion; fails with its stderr if it fails.
pub fn run_cmd(ns: &Path, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = command_in(ns, program)?
        .args(args)
        .output()
        .with_context(|| format!("running {program} in {}", ns.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{program} {} in {} failed ({}): {}",
            args.join(" "),
            ns.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Writes a sysctl of the namespace (e.g. `net/ipv4/ip_forward`).
pub fn sysctl(ns: &Path, key: &str, value: &str) -> anyhow::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    let value = value.to_string();
    let shown = path.display().to_string();
    run_in(ns, move || std::fs::write(&path, value))?
        .with_context(|| format!("writing {shown} in {}", ns.display()))
}
