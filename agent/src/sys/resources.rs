//! The agent's process resources: enough file descriptors for a busy node, and memory given back
//! after a burst of connections ends (glibc keeps freed heap in its per-thread arenas; without a
//! trim, an agent that once held 10 000 connections keeps their memory for good, which reads as
//! a leak on the node).

/// Trims the heap when the number of open flows fell far enough below its peak since the last
/// trim: cheap when nothing happened, and never during a burst.
#[derive(Debug, Default)]
pub(crate) struct Trimmer {
    peak: usize,
}

/// Open flows that must have ended since the peak before a trim is worth its cost (it walks
/// every arena).
const ENDED_BEFORE_TRIM: usize = 1024;

impl Trimmer {
    /// Called periodically with the number of open flows; trims when worth it. Returns whether
    /// it trimmed.
    pub(crate) fn observe(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        if self.peak - open < ENDED_BEFORE_TRIM {
            return false;
        }
        self.peak = open;
        trim();
        true
    }
}

/// File descriptors the agent allows itself: every tunneled connection holds one socket on each
/// node, so the usual 1024 (or a container runtime's 20 000) would cap a node's connections far
/// below what its memory allows. Raised to the kernel's ceiling (`fs.nr_open`), at most 2^20.
pub(crate) fn raise_fd_limit() {
    const WANTED: u64 = 1 << 20;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(WANTED)
        .min(WANTED);
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls with valid structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) != 0 {
            return;
        }
        let raised = libc::rlimit { rlim_cur: ceiling, rlim_max: ceiling.max(current.rlim_max) };
        // Without CAP_SYS_RESOURCE the hard limit cannot move: take what it allows.
        let fallback = libc::rlimit { rlim_cur: current.rlim_max, rlim_max: current.rlim_max };
        let limit = if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            raised.rlim_cur
        } else if libc::setrlimit(libc::RLIMIT_NOFILE, &fallback) == 0 {
            fallback.rlim_cur
        } else {
            current.rlim_cur
        };
        tracing::info!(limit, "open files limit");
    }
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only returns free pages to the kernel.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "heap trimmed after connections ended");
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}

#[cfg(test)]
mod tests;
