//! Facts about the host the agent runs on, read the way the agent needs them: the cgroup v2
//! root, the kernel release, the process's effective capabilities.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
/// Where the cgroup v2 hierarchy is mounted: unified hosts, then hybrid (v1 + v2) ones.
pub(crate) const CGROUP2_CANDIDATES: &[&str] = &["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

pub(crate) fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
}

/// The cgroup v2 root: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones.
pub(crate) fn cgroup2_root() -> anyhow::Result<PathBuf> {
    CGROUP2_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|candidate| is_cgroup2(candidate))
        .ok_or_else(|| {
            anyhow::anyhow!("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified; pass --cgroup")
        })
        .context("finding the cgroup v2 root")
}

/// `major.minor` of a kernel release string (`uname -r`), e.g. `6.18.0-1-cloud-amd64` → (6, 18).
pub(crate) fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor_digits: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor_digits.parse().ok()?))
}

/// Capabilities the agent uses, with their numbers (include/uapi/linux/capability.h).
pub(crate) const AGENT_CAPABILITIES: &[(&str, u32)] = &[
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];

/// The effective capability set (`CapEff:` of /proc/<pid>/status) as a bit mask.
pub(crate) fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Names of the agent's capabilities missing from `mask`.
pub(crate) fn missing_capabilities(mask: u64) -> Vec<&'static str> {
    AGENT_CAPABILITIES.iter().filter(|(_, bit)| mask & (1 << bit) == 0).map(|(name, _)| *name).collect()
}

#[cfg(test)]
mod tests;
