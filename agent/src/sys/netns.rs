//! Network namespaces: a handle per namespace, and running a short piece of code (creating a
//! socket, attaching a program) inside one. A socket keeps the namespace it was created in, so
//! the rest of the agent uses it from any thread afterwards.
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

/// `SO_NETNS_COOKIE` (include/uapi/asm-generic/socket.h); not yet in libc.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
    cookie: u64,
}

/// The namespace the agent started in; threads return to it after [`NetNs::enter`].
fn home() -> anyhow::Result<&'static File> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(file) = HOME.get() {
        return Ok(file);
    }
    let file = File::open("/proc/self/ns/net").context("opening the agent's own network namespace")?;
    Ok(HOME.get_or_init(|| file))
}

impl NetNs {
    /// Opens a namespace by path (`/var/run/netns/<name>` or `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file =
            File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
        let mut ns = Self { path: path.to_path_buf(), file, cookie: 0 };
        ns.cookie = ns
            .enter(netns_cookie_here)
            .with_context(|| format!("entering network namespace {}", path.display()))?
            .with_context(|| format!("reading the cookie of network namespace {}", path.display()))?;
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's cookie for this namespace: what eBPF programs see from `bpf_get_netns_cookie`.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `f` on the calling thread inside this namespace, then moves the thread back.
    ///
    /// `f` must not block on other work (no `.await`): it should create sockets, attach programs
    /// or talk netlink, and return.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        let home = home()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {}", self.path.display()))?;
        let _back = Return(home);
        Ok(f())
    }
}

/// Moves the thread back to the agent's namespace, also on unwinding.
struct Return(&'static File);

impl Drop for Return {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread left in a pod's namespace would open the agent's sockets there.
            tracing::error!(error = %e, "cannot return to the agent's network namespace; aborting");
            std::process::abort();
        }
    }
}

/// The cookie of the namespace the calling thread is in.
pub(crate) fn netns_cookie_here() -> anyhow::Result<u64> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let fd =
        socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).context("socket()")?;
    socket_netns_cookie(&fd)
}

/// The cookie of the namespace a socket belongs to.
pub(crate) fn socket_netns_cookie(socket: &impl AsRawFd) -> anyhow::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, and a u64-sized output buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}
