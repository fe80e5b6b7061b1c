//! The one place that creates the engine's sockets: listeners and connections inside a pod's
//! network namespace, marked so the capture hook lets them through, or transparent (bound to
//! the client's address). The engine asks for what it needs and never touches setns or marks.
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::Context as _;
use lockmesh_common::engine;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::sys::netns::NetNs;

/// Creates sockets inside one pod's network namespace.
#[derive(Clone, Debug)]
pub struct PodSockets {
    netns: Arc<NetNs>,
}

const LISTEN_BACKLOG: i32 = 4096;

impl PodSockets {
    pub fn new(netns: Arc<NetNs>) -> Self {
        Self { netns }
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    fn socket(&self, addr: &SocketAddr) -> std::io::Result<Socket> {
        let domain = Domain::for_address(*addr);
        self.netns
            .enter(|| Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP)))
            .map_err(std::io::Error::other)?
    }

    /// A listener on `addr` inside the pod.
    pub fn listen(&self, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let socket = self.socket(&addr).context("creating a listener socket in the pod")?;
        socket.set_reuse_address(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("binding {addr} in {}", self.netns.path().display()))?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(TcpListener::from_std(socket.into())?)
    }

    /// A connection from the pod (with the pod's own address) to `dst`, marked as the engine's
    /// own so it is not captured again.
    pub async fn connect_outbound(&self, dst: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = self.socket(&dst)?;
        socket.set_mark(engine::MARK_OUTBOUND)?;
        socket.set_tcp_nodelay(true)?;
        connect(socket, dst).await
    }

    /// A connection to the app at `dst` inside the pod that appears to come from `client`
    /// (transparent): the app sees the real client address. Replies are routed back to the
    /// engine by the pod's fwmark rule (see `podnet`).
    ///
    /// The client's own port is kept when it is free here, so the app, the source's flow and
    /// the destination's flow all name the same connection; else the kernel picks one.
    pub async fn connect_transparent(
        &self,
        client: SocketAddr,
        dst: SocketAddr,
    ) -> std::io::Result<TcpStream> {
        let transparent = |port: u16| -> std::io::Result<Socket> {
            let socket = self.socket(&dst)?;
            socket.set_mark(engine::MARK_INBOUND)?;
            socket.set_ip_transparent_v4(true)?;
            socket.set_freebind_v4(true)?;
            socket.set_tcp_nodelay(true)?;
            socket.bind(&SocketAddr::new(client.ip(), port).into())?;
            Ok(socket)
        };
        let socket = match transparent(client.port()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => transparent(0)?,
            other => other?,
        };
        connect(socket, dst).await
    }
}

async fn connect(socket: Socket, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(dst).await
}

/// The kernel's cookie of a socket: unique for the life of the kernel, the same id the eBPF
/// programs see.
pub fn socket_cookie(socket: &impl std::os::fd::AsRawFd) -> u64 {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and a u64-sized output buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 { cookie } else { 0 }
}

/// Closes a connection with a RST instead of a FIN (the app then sees "connection reset").
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

/// The IPv4 part of a socket address (the engine is IPv4-only today; mapped addresses unwrap).
pub fn ipv4(addr: SocketAddr) -> Ipv4Addr {
    match addr {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}
