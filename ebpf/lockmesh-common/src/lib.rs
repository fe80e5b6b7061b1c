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
    pub const CAPTURE: &str = "CAPTURE";
    pub const ORIG_DST: &str = "ORIG_DST";
    pub const ORIG_DST_BY_PORT: &str = "ORIG_DST_BY_PORT";
    pub const STRICT: &str = "STRICT";
    pub const STRICT_EXEMPT: &str = "STRICT_EXEMPT";
    pub const POD_SOURCES: &str = "POD_SOURCES";
    pub const FLOW_STARTS: &str = "FLOW_STARTS";
    pub const POD_INITIATED: &str = "POD_INITIATED";
    pub const POD_IFACES: &str = "POD_IFACES";
    /// Every map, all pinned per node by the agent.
    pub const ALL: &[&str] = &[
        ENROLLED,
        FLOW_EVENTS,
        COUNTERS,
        FIN_WAIT2_RCV_NXT,
        CAPTURE,
        ORIG_DST,
        ORIG_DST_BY_PORT,
        STRICT,
        STRICT_EXEMPT,
        POD_SOURCES,
        FLOW_STARTS,
        POD_INITIATED,
        POD_IFACES,
    ];
}

/// The tunnel engine's well-known ports and socket marks (the same as Istio ambient's ztunnel).
pub mod engine {
    /// Captured outbound connections arrive here, on 127.0.0.1 inside the pod.
    pub const OUTBOUND_PORT: u16 = 15001;
    /// HBONE (HTTP/2 CONNECT over mTLS) from other engines arrives here, on the pod's address.
    pub const HBONE_PORT: u16 = 15008;
    /// Mark of the engine's own outbound sockets; the capture hook lets them through.
    pub const MARK_OUTBOUND: u32 = 0x539;
    /// Mark of the engine's transparent inbound legs (engine → app inside the pod); routed back
    /// to the engine by a policy rule in the pod.
    pub const MARK_INBOUND: u32 = 0x111;
    /// Routing table of that policy rule.
    pub const INBOUND_ROUTE_TABLE: u32 = 133;
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const SOCK_OPS: &str = "lockmesh_sockops";
    pub const CONNECT4: &str = "lockmesh_connect4";
    pub const GETPEERNAME4: &str = "lockmesh_getpeername4";
    pub const GETSOCKNAME4: &str = "lockmesh_getsockname4";
    pub const CONNECT6: &str = "lockmesh_connect6";
    pub const GETPEERNAME6: &str = "lockmesh_getpeername6";
    pub const GETSOCKNAME6: &str = "lockmesh_getsockname6";
    pub const STRICT: &str = "lockmesh_strict";
    pub const ANTISPOOF: &str = "lockmesh_antispoof";
}

/// Value of the `ENROLLED` map, keyed by the network-namespace cookie of an enrolled pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrolledPod {
    /// The pod's IPv4 address, network byte order.
    pub ip4: u32,
    /// The pod's outbound policy class (its Kubernetes namespace, numbered by the agent):
    /// `CAPTURE` decisions are per class because DestinationRules are looked up per client
    /// namespace.
    pub class: u32,
}

/// Key of the `CAPTURE` map: may a pod of `class` connecting to `ip4:port` be steered into the
/// engine? `port` 0 matches any port of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CaptureKey {
    pub class: u32,
    /// Destination, network byte order.
    pub ip4: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of the `CAPTURE` map.
pub mod capture {
    /// Steer into the engine (which tunnels it over mTLS).
    pub const TUNNEL: u32 = 1;
    /// Leave it alone (overrides a port-0 `TUNNEL` for one port).
    pub const DIRECT: u32 = 2;
}

/// Key of the `STRICT` map: a pod address and a port it serves (`port` 0: every port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StrictKey {
    /// The pod's address, network byte order.
    pub ip4: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of the `STRICT` map.
pub mod strict {
    /// Plaintext from outside the pod is refused: a SYN is answered with a RST, any other
    /// segment of a connection the pod did not open resets both ends.
    pub const RESET: u32 = 1;
    /// Plaintext allowed on this port although the pod's default (port 0) is `RESET`.
    pub const ALLOW: u32 = 2;
    /// On port 0 only: the pod's default is plaintext but some of its ports are `RESET`, so
    /// what cannot be checked per port (IP fragments, unparsable headers) is refused.
    pub const SOME: u32 = 3;
}

/// Why the STRICT guard refused a packet (`FlowEvent::reason` of a `RESET` event).
pub mod refusal {
    /// A plaintext SYN: answered with a RST.
    pub const SYN: u32 = 1;
    /// A segment of a connection whose SYN never passed the guard (one opened before the port
    /// became STRICT, or completed with a replayed SYN cookie): both ends reset.
    pub const SEGMENT: u32 = 2;
    /// An IP fragment of TCP to a pod with STRICT ports: its ports cannot be checked; dropped.
    pub const FRAGMENT: u32 = 3;
    /// A TCP/IP header that cannot be fully parsed (truncated, IPv6 extension headers): dropped.
    pub const UNPARSED: u32 = 4;
    /// A plaintext SYN an enrolled pod sent, uncaptured, to a destination its policy tunnels
    /// (an app that set the engine's socket mark, a raw socket): answered with a RST inside the
    /// pod. `local` is the pod (the client here), `remote` the destination.
    pub const UNCAPTURED: u32 = 5;
}

/// Key of the `STRICT_EXEMPT` map: plaintext from `src_ip4` to `port` of the pod `dst_ip4` is let
/// through although STRICT. A pod's probe ports are exempt for its node's address only
/// (`dst_ip4` = the pod); `--strict-exempt` sources have `dst_ip4` 0 (every pod), and `port` 0
/// there means every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExemptKey {
    /// Network byte order.
    pub src_ip4: u32,
    /// Network byte order; 0: any pod.
    pub dst_ip4: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of the `POD_SOURCES` map: `ip4` is an address the pod behind host-side interface
/// `ifindex` may send from. IPv4 packets the pod sends from any other address are dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceKey {
    /// Index of the pod's veth on the node side (where the anti-spoofing program runs).
    pub ifindex: u32,
    /// Network byte order.
    pub ip4: u32,
}

/// Key of `POD_INITIATED`: a TCP connection an enrolled pod opened (or the engine opened from
/// inside it), by its pod-side and peer-side address and port. IPv4 addresses are stored
/// IPv4-mapped (`::ffff:a.b.c.d`), as an `AF_INET6` socket shows them; words in network byte
/// order. The STRICT guard lets this connection's replies through.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey {
    pub pod_ip: [u32; 4],
    pub peer_ip: [u32; 4],
    pub pod_port: u16,
    pub peer_port: u16,
}

/// Third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`) as it lies in memory.
pub const MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl ConnKey {
    /// An IPv4 address (network byte order) as the IPv4-mapped words the key holds.
    #[inline(always)]
    pub const fn mapped(ip4: u32) -> [u32; 4] {
        [0, 0, MAPPED_PREFIX_WORD, ip4]
    }
}

/// Value of `POD_IFACES`: the pod behind a host-side interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodIface {
    /// The pod's IPv4 address, network byte order.
    pub ip4: u32,
    /// Its policy class (see [`EnrolledPod::class`]).
    pub class: u32,
}

/// A captured connection's original destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network byte order.
    pub ip4: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of `ORIG_DST_BY_PORT`: the engine finds a captured connection's original destination by
/// the pod's namespace and the app socket's local port (what `accept()` shows as the peer port).
/// The namespace is part of the key because every pod uses 127.0.0.1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortKey {
    pub netns_cookie: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Kinds of [`FlowEvent`].
pub mod event_kind {
    /// A TCP connection of an enrolled pod reached ESTABLISHED.
    pub const OPEN: u32 = 1;
    /// A TCP connection of an enrolled pod closed; byte counters are final.
    pub const CLOSE: u32 = 2;
    /// The STRICT guard refused plaintext to a pod (no socket: the cookies are 0, `local` is
    /// the pod, `remote` the client, `reason` says what was refused and how).
    pub const RESET: u32 = 3;
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
    /// On RESET: why (see [`refusal`]).
    pub reason: u32,
    /// Payload bytes this socket sent and the peer acknowledged (final on CLOSE; the FIN, which
    /// the kernel counts as a byte, is not included).
    pub bytes_sent: u64,
    /// Payload bytes this socket received (final on CLOSE; without the FIN).
    pub bytes_received: u64,
    /// On CLOSE: when the connection was established (`bpf_ktime_get_ns`), with its `role`, so
    /// that a close whose open went to a previous agent still makes a whole record (0: unknown).
    pub start_ns: u64,
    /// On RESET of IPv6: the client's IPv6 address (network byte order words; zero for IPv4,
    /// `remote_ip4` holds it then). `local_ip4` is the pod's IPv4 address either way.
    pub remote_ip6: [u32; 4],
}

/// When a tracked connection was established and from which side (value of `FLOW_STARTS`, by
/// socket cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStart {
    pub ts_ns: u64,
    pub role: u32,
    pub _pad: u32,
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events the kernel could not put into `FLOW_EVENTS` because it was full.
    pub const RINGBUF_DROPS: u32 = 0;
    /// Connections of enrolled pods the observer started tracking.
    pub const FLOWS_OPENED: u32 = 1;
    /// Connections of enrolled pods the observer saw close.
    pub const FLOWS_CLOSED: u32 = 2;
    /// Connections steered into the engine.
    pub const CAPTURED: u32 = 3;
    /// Plaintext SYNs and segments to STRICT ports answered with a RST.
    pub const STRICT_RESETS: u32 = 4;
    /// Packets an enrolled pod sent from an IPv4 address not its own (or VLAN-tagged), dropped.
    pub const SPOOF_DROPS: u32 = 5;
    /// Packets to STRICT pods dropped because they could not be checked (fragments, unparsable
    /// headers).
    pub const STRICT_DROPS: u32 = 6;
    /// IPv6 connects of enrolled pods refused (the engine does not tunnel IPv6 yet).
    pub const IPV6_REFUSED: u32 = 7;
    /// Plaintext SYNs enrolled pods sent uncaptured to destinations their policy tunnels, reset.
    pub const UNCAPTURED_RESETS: u32 = 8;
    /// Number of counters (the array's size).
    pub const COUNT: u32 = 9;
}

/// TCP state numbers from include/net/tcp_states.h.
pub mod tcp_state {
    pub const SYN_SENT: u32 = 2;
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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStart {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CaptureKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StrictKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExemptKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PodIface {}
}
