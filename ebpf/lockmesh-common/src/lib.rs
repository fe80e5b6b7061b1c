//! Types and constants shared by lockmesh's kernel programs and its agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side reads and writes it in maps and
//! ring buffers, the agent (feature `user`) reads and writes the same bytes through aya.
//! Addresses are IPv4 in network byte order (as the kernel hands them out); ports are in host
//! byte order unless a field says otherwise.
#![no_std]

/// Names of the maps in the eBPF object, used by the agent to find and pin them.
pub mod maps {
    pub const ENROLLED: &str = "ENROLLED";
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const FIN_WAIT2_RCV_NXT: &str = "FIN_WAIT2_RCV_NXT";
    /// Every map, all pinned per node by the agent.
    pub const ALL: &[&str] = &[ENROLLED, FLOW_EVENTS, COUNTERS, FIN_WAIT2_RCV_NXT];
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const SOCK_OPS: &str = "lockmesh_sockops";
}

/// Value of the `ENROLLED` map, keyed by the network-namespace cookie of an enrolled pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrolledPod {
    /// The pod's IPv4 address, network byte order.
    pub ip4: u32,
    /// Reserved for flags; zero today.
    pub flags: u32,
}

/// Kinds of [`FlowEvent`].
pub mod event_kind {
    /// A TCP connection of an enrolled pod reached ESTABLISHED.
    pub const OPEN: u32 = 1;
    /// A TCP connection of an enrolled pod closed; byte counters are final.
    pub const CLOSE: u32 = 2;
}

/// Which end of the connection the enrolled pod is.
pub mod role {
    /// The pod called `connect()`.
    pub const CLIENT: u32 = 1;
    /// The pod accepted the connection.
    pub const SERVER: u32 = 2;
}

/// One record in the `FLOW_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub kind: u32,
    pub role: u32,
    /// `bpf_get_socket_cookie`: unique per socket for the life of the kernel.
    pub sock_cookie: u64,
    pub netns_cookie: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the event happened.
    pub ts_ns: u64,
    pub local_ip4: u32,
    pub remote_ip4: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u32,
    /// Payload bytes this socket sent and the peer acknowledged (final on CLOSE; the FIN, which
    /// the kernel counts as a byte, is not included).
    pub bytes_sent: u64,
    /// Payload bytes this socket received (final on CLOSE; without the FIN).
    pub bytes_received: u64,
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events the kernel could not put into `FLOW_EVENTS` because it was full.
    pub const RINGBUF_DROPS: u32 = 0;
    /// Connections of enrolled pods the observer started tracking.
    pub const FLOWS_OPENED: u32 = 1;
    /// Connections of enrolled pods the observer saw close.
    pub const FLOWS_CLOSED: u32 = 2;
    /// Number of counters (the array's size).
    pub const COUNT: u32 = 3;
}

/// TCP state numbers from include/net/tcp_states.h.
pub mod tcp_state {
    pub const FIN_WAIT2: u32 = 5;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const CLOSING: u32 = 11;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with no padding holes the kernel could leave undefined
    // (padding is explicit), valid for any bit pattern.
    unsafe impl aya::Pod for super::EnrolledPod {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowEvent {}
}
