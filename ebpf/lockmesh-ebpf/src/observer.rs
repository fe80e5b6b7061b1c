//! Flow observer: one `sock_ops` program on the cgroup v2 root reports every TCP connection of an
//! enrolled pod when it is established and when it closes, with final byte counts. It acts per
//! connection (connect, established and state change callbacks), never per packet.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use lockmesh_common::{
    ConnKey, FlowEvent, FlowStart, MAPPED_PREFIX_WORD, PortKey, counter, engine, event_kind, role, tcp_state,
};

use crate::maps::{
    FIN_WAIT2_RCV_NXT, FLOW_EVENTS, FLOW_STARTS, ORIG_DST, ORIG_DST_BY_PORT, POD_INITIATED, count, enrolled,
};

/// Reads a context field with a load of its own: clang would otherwise merge loads of
/// neighbouring fields into a computed-offset access the verifier rejects ("dereference of
/// modified ctx ptr").
macro_rules! ctx_field {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: a field of the program's context, valid for the duration of the program.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.ops).$($field)+)) }
    };
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn lockmesh_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx_field!(ctx, op);
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx, role::CLIENT),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_established(&ctx, role::SERVER),
        BPF_SOCK_OPS_STATE_CB => {
            let old = ctx_field!(ctx, __bindgen_anon_1.args[0]);
            let new = ctx_field!(ctx, __bindgen_anon_1.args[1]);
            if new == tcp_state::FIN_WAIT2 {
                on_fin_wait2(&ctx);
            } else if new == tcp_state::CLOSE {
                on_close(&ctx, old);
            }
        }
        _ => {}
    }
    1
}

/// The socket's addresses as sock_ops has them.
struct Addresses {
    family: u32,
    local4: u32,
    remote4: u32,
    local6: [u32; 4],
    remote6: [u32; 4],
}

/// Every field is loaded unconditionally, before any branch: loads of different fields in
/// different branches get merged into one load from a computed offset, which the verifier
/// rejects.
#[inline(always)]
fn addresses(ctx: &SockOpsContext) -> Addresses {
    let family = ctx_field!(ctx, family);
    let (local4, remote4) = (ctx_field!(ctx, local_ip4), ctx_field!(ctx, remote_ip4));
    let local6 = [
        ctx_field!(ctx, local_ip6[0]),
        ctx_field!(ctx, local_ip6[1]),
        ctx_field!(ctx, local_ip6[2]),
        ctx_field!(ctx, local_ip6[3]),
    ];
    let remote6 = [
        ctx_field!(ctx, remote_ip6[0]),
        ctx_field!(ctx, remote_ip6[1]),
        ctx_field!(ctx, remote_ip6[2]),
        ctx_field!(ctx, remote_ip6[3]),
    ];
    Addresses { family, local4, remote4, local6, remote6 }
}

/// The connection's IPv4 addresses, also for IPv4-mapped IPv6 sockets (listeners on `::`).
#[inline(always)]
fn ipv4_endpoints(a: &Addresses) -> Option<(u32, u32)> {
    if a.family == AF_INET {
        return Some((a.local4, a.remote4));
    }
    let mapped = [0, 0, MAPPED_PREFIX_WORD];
    if a.family == AF_INET6 && a.local6[..3] == mapped && a.remote6[..3] == mapped {
        return Some((a.local6[3], a.remote6[3]));
    }
    None
}

#[inline(always)]
fn is_loopback(ip4_be: u32) -> bool {
    // 127.0.0.0/8: the first octet is the lowest byte of the network-order word.
    ip4_be & 0xff == 127
}

#[inline(always)]
fn event(ctx: &SockOpsContext, kind: u32, role: u32, local: u32, remote: u32) -> FlowEvent {
    let ptr = ctx.ops as *mut c_void;
    FlowEvent {
        kind,
        role,
        // SAFETY: the context pointer is valid for the helper calls of this program type.
        sock_cookie: unsafe { bpf_get_socket_cookie(ptr) },
        netns_cookie: unsafe { bpf_get_netns_cookie(ptr) },
        ts_ns: unsafe { bpf_ktime_get_ns() },
        local_ip4: local,
        remote_ip4: remote,
        local_port: ctx_field!(ctx, local_port) as u16,
        // remote_port holds the network-order port in its upper 16 bits.
        remote_port: u32::from_be(ctx_field!(ctx, remote_port)) as u16,
        reason: 0,
        bytes_sent: 0,
        bytes_received: 0,
        start_ns: 0,
        remote_ip6: [0; 4],
    }
}

#[inline(always)]
fn emit(ev: &FlowEvent) {
    if FLOW_EVENTS.output::<FlowEvent>(ev, 0).is_err() {
        count(counter::RINGBUF_DROPS);
    }
}

fn on_established(ctx: &SockOpsContext, role: u32) {
    let ptr = ctx.ops as *mut c_void;
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ptr) };
    if enrolled(netns).is_none() {
        return;
    }
    let local_port = ctx_field!(ctx, local_port) as u16;
    if role == role::CLIENT {
        // A connection the capture hook steered to the engine: hand its original destination
        // to the engine, keyed by what accept() will show it (this namespace, this port). This
        // runs before the client's ACK leaves, so before the engine can accept.
        // SAFETY: valid context pointer for this helper.
        let cookie = unsafe { bpf_get_socket_cookie(ptr) };
        // SAFETY: the value is plain data copied out at once.
        if let Some(orig) = unsafe { ORIG_DST.get(&cookie) } {
            let key = PortKey { netns_cookie: netns, port: local_port, _pad: [0; 6] };
            // The engine reports this flow, with its encryption (its close callbacks were asked
            // for at connect: `on_connect`).
            let _ = ORIG_DST_BY_PORT.insert(&key, orig, 0);
            return;
        }
    }
    let Some((local, remote)) = ipv4_endpoints(&addresses(ctx)) else {
        return;
    };
    // In-pod loopback traffic is not pod-to-pod traffic.
    if is_loopback(local) || is_loopback(remote) {
        return;
    }
    // The engine's own sockets (its outbound legs, its transparent legs to the app and the
    // app's side of those, its HBONE listener's connections) are reported by the engine.
    if role == role::SERVER && local_port == engine::HBONE_PORT {
        return;
    }
    let mark = socket_mark(ctx);
    if mark == engine::MARK_OUTBOUND || mark == engine::MARK_INBOUND {
        return;
    }
    // Ask for state callbacks on this socket so its close is reported.
    let _ = ctx.set_cb_flags((ctx_field!(ctx, bpf_sock_ops_cb_flags) | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    count(counter::FLOWS_OPENED);
    let open = event(ctx, event_kind::OPEN, role, local, remote);
    let start = FlowStart { ts_ns: open.ts_ns, role, _pad: 0 };
    let _ = FLOW_STARTS.insert(&open.sock_cookie, &start, 0);
    emit(&open);
}

/// A connect about to send its SYN (the source address and port are chosen by now).
///
/// In an enrolled pod, remember the connection as the pod's own (`POD_INITIATED`) so that the
/// STRICT guard lets its replies in, and ask for its state callbacks so it is forgotten at
/// close. If the capture hook steered it (it has an original destination), its close is also
/// wanted to forget that destination (`on_close`); a connect that never establishes (refused
/// while no engine runs, timed out) must forget it too. So ORIG_DST holds live sockets only,
/// and a burst of failed connects cannot make its LRU evict the entry of a long-lived connection.
fn on_connect(ctx: &SockOpsContext) {
    let ptr = ctx.ops as *mut c_void;
    // SAFETY: valid context pointer for these helpers.
    let cookie = unsafe { bpf_get_socket_cookie(ptr) };
    // SAFETY: only tests presence.
    let captured = unsafe { ORIG_DST.get(&cookie) }.is_some();
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ptr) };
    let pod_initiated = match conn_key(ctx, &addresses(ctx)) {
        Some(key) if !captured && enrolled(netns).is_some() => POD_INITIATED.insert(&key, &1, 0).is_ok(),
        _ => false,
    };
    if captured || pod_initiated {
        let _ =
            ctx.set_cb_flags((ctx_field!(ctx, bpf_sock_ops_cb_flags) | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// The connection as `POD_INITIATED` keys it, from this (pod-side) socket; `None` for loopback
/// (never crosses the pod's interface) and other families. Fields are loaded before any
/// branch, as in `addresses`.
#[inline(always)]
fn conn_key(ctx: &SockOpsContext, a: &Addresses) -> Option<ConnKey> {
    let pod_port = ctx_field!(ctx, local_port) as u16;
    // remote_port holds the network-order port in its upper 16 bits.
    let peer_port = u32::from_be(ctx_field!(ctx, remote_port)) as u16;
    let (pod_ip, peer_ip) = if a.family == AF_INET {
        (ConnKey::mapped(a.local4), ConnKey::mapped(a.remote4))
    } else if a.family == AF_INET6 {
        (a.local6, a.remote6)
    } else {
        return None;
    };
    // 127.0.0.0/8 (also IPv4-mapped) and ::1.
    let loopback = |ip: &[u32; 4]| {
        (ip[0] == 0 && ip[1] == 0 && ip[2] == MAPPED_PREFIX_WORD && is_loopback(ip[3]))
            || (ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == u32::from_ne_bytes([0, 0, 0, 1]))
    };
    if loopback(&pod_ip) || loopback(&peer_ip) {
        return None;
    }
    Some(ConnKey { pod_ip, peer_ip, pod_port, peer_port })
}

/// `SO_MARK` of the socket (0 when the context has no full socket).
#[inline(always)]
fn socket_mark(ctx: &SockOpsContext) -> u32 {
    let sk = ctx_field!(ctx, __bindgen_anon_2.sk);
    if sk.is_null() {
        return 0;
    }
    // SAFETY: the verifier-checked socket pointer of this context, non-null.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sk).mark)) }
}

fn on_fin_wait2(ctx: &SockOpsContext) {
    // SAFETY: valid context pointer for these helpers.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut c_void) };
    if enrolled(netns).is_none() {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    // SAFETY: only tests presence. Captured connections are not reported by the kernel.
    if unsafe { ORIG_DST.get(&cookie) }.is_some() {
        return;
    }
    let _ = FIN_WAIT2_RCV_NXT.insert(&cookie, &ctx_field!(ctx, rcv_nxt), 0);
}

/// Whether our FIN was acknowledged and the peer's FIN received, judged from the state the
/// socket closes from: the kernel counts each FIN as one byte of `bytes_acked`/`bytes_received`.
#[inline(always)]
fn fins(ctx: &SockOpsContext, old: u32, cookie: u64) -> (u64, u64) {
    let fin_acked = old == tcp_state::FIN_WAIT2 || old == tcp_state::LAST_ACK || old == tcp_state::CLOSING;
    let mut fin_received =
        old == tcp_state::CLOSE_WAIT || old == tcp_state::LAST_ACK || old == tcp_state::CLOSING;
    if old == tcp_state::FIN_WAIT2 {
        // Closing from FIN_WAIT2: the peer's FIN arrived iff rcv_nxt moved since we got there
        // (an orphaned socket closes at once, before any FIN).
        // SAFETY: the value is a plain u32 copied out.
        if let Some(at_entry) = unsafe { FIN_WAIT2_RCV_NXT.get(&cookie) } {
            fin_received = *at_entry != ctx_field!(ctx, rcv_nxt);
        }
        let _ = FIN_WAIT2_RCV_NXT.remove(&cookie);
    }
    (fin_acked as u64, fin_received as u64)
}

fn on_close(ctx: &SockOpsContext, old: u32) {
    // SAFETY: valid context pointer for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    let addresses = addresses(ctx);
    if let Some(key) = conn_key(ctx, &addresses) {
        let _ = POD_INITIATED.remove(&key);
    }
    // A captured connection (the app's end): forget its original destination, report nothing
    // (the engine does). Even if its pod was unenrolled meanwhile.
    // SAFETY: only tests presence; nothing is read through the pointer.
    if unsafe { ORIG_DST.get(&cookie) }.is_some() {
        let _ = ORIG_DST.remove(&cookie);
        let _ = FIN_WAIT2_RCV_NXT.remove(&cookie);
        return;
    }
    // A connect that never got established, or one of the engine's own sockets (their state
    // callbacks were asked for by `on_connect`): nothing was reported open, nothing to close.
    if old == tcp_state::SYN_SENT {
        return;
    }
    let mark = socket_mark(ctx);
    if mark == engine::MARK_OUTBOUND || mark == engine::MARK_INBOUND {
        return;
    }
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut c_void) };
    if enrolled(netns).is_none() {
        return;
    }
    let Some((local, remote)) = ipv4_endpoints(&addresses) else {
        return;
    };
    let mut ev = event(ctx, event_kind::CLOSE, 0, local, remote);
    let (fin_acked, fin_received) = fins(ctx, old, ev.sock_cookie);
    // SAFETY: plain data copied out at once.
    if let Some(start) = unsafe { FLOW_STARTS.get(&ev.sock_cookie) }.copied() {
        ev.start_ns = start.ts_ns;
        ev.role = start.role;
        let _ = FLOW_STARTS.remove(&ev.sock_cookie);
    }
    ev.bytes_sent = ctx_field!(ctx, bytes_acked).saturating_sub(fin_acked);
    ev.bytes_received = ctx_field!(ctx, bytes_received).saturating_sub(fin_received);
    count(counter::FLOWS_CLOSED);
    emit(&ev);
}
