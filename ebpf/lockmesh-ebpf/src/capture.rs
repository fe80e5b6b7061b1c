//! Outbound capture: `cgroup/connect4` on the cgroup v2 root steers an enrolled pod's TCP
//! `connect()` to a destination the agent marked in `CAPTURE` into the engine's listener inside
//! that pod (127.0.0.1:15001), remembering the original destination. Everything else is left
//! untouched, so traffic the mesh does not encrypt pays nothing. `getpeername4`/`getsockname4`
//! make the app see the real peer and its own pod address.
//!
//! `connect6` does the same for `AF_INET6` sockets connecting to IPv4-mapped addresses
//! (`::ffff:10.0.0.7`, what the JVM and dual-stack runtimes use), which `connect4` never sees.
//! A native IPv6 destination cannot be tunnelled (the engine is IPv4-only): an enrolled pod's
//! IPv6 connect is refused (`EPERM`, counted) rather than let out in clear; loopback and
//! link-local stay allowed.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use lockmesh_common::{CaptureKey, EnrolledPod, MAPPED_PREFIX_WORD, OrigDst, capture, counter, engine};

use crate::maps::{CAPTURE, ORIG_DST, count, enrolled};

const IPPROTO_TCP: u32 = 6;
/// 127.0.0.1 in network byte order.
const LOOPBACK: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// Reads a context field with a load of its own (see observer.rs for why).
macro_rules! addr_field {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: a field of the program's context, valid for the duration of the program.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.sock_addr).$($field)+)) }
    };
}

/// The context's IPv6 address (network-order words), each word loaded on its own.
#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> [u32; 4] {
    [
        addr_field!(ctx, user_ip6[0]),
        addr_field!(ctx, user_ip6[1]),
        addr_field!(ctx, user_ip6[2]),
        addr_field!(ctx, user_ip6[3]),
    ]
}

#[inline(always)]
fn port_of(user_port: u32) -> u16 {
    // user_port holds the network-order port in its low 16 bits.
    u16::from_be(user_port as u16)
}

#[inline(always)]
fn user_port_of(port: u16) -> u32 {
    port.to_be() as u32
}

#[cgroup_sock_addr(connect4)]
pub fn lockmesh_connect4(ctx: SockAddrContext) -> i32 {
    let dst_ip = addr_field!(ctx, user_ip4);
    if let Some(pod) = pod_connecting(&ctx)
        && steer(&ctx, pod, dst_ip)
    {
        // SAFETY: writable field of this context (the kernel validates the new address).
        unsafe { (*ctx.sock_addr).user_ip4 = LOOPBACK };
    }
    1 // always allow the connect; we only ever rewrite its destination
}

#[cgroup_sock_addr(connect6)]
pub fn lockmesh_connect6(ctx: SockAddrContext) -> i32 {
    let dst = user_ip6(&ctx);
    let Some(pod) = pod_connecting(&ctx) else {
        return 1;
    };
    if dst[0] == 0 && dst[1] == 0 && dst[2] == MAPPED_PREFIX_WORD {
        if steer(&ctx, pod, dst[3]) {
            // SAFETY: writable field of this context (the kernel validates the new address).
            unsafe { (*ctx.sock_addr).user_ip6[3] = LOOPBACK };
        }
        return 1;
    }
    // ::1, fe80::/10, and the unspecified address (connects to self) stay inside the pod's link.
    let first = u32::from_be(dst[0]);
    let loopback = dst[0] == 0 && dst[1] == 0 && dst[2] == 0 && u32::from_be(dst[3]) <= 1;
    if loopback || first >> 22 == 0x3fa {
        return 1;
    }
    count(counter::IPV6_REFUSED);
    0
}

/// The enrolled pod whose TCP socket (not one of the engine's) is connecting, if any.
#[inline(always)]
fn pod_connecting(ctx: &SockAddrContext) -> Option<EnrolledPod> {
    let protocol = addr_field!(ctx, protocol);
    let sk = addr_field!(ctx, __bindgen_anon_1.sk);
    if protocol != IPPROTO_TCP || sk.is_null() {
        return None;
    }
    // SAFETY: non-null socket pointer of this context.
    let mark = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sk).mark)) };
    // The engine's own sockets go where they are sent.
    if mark == engine::MARK_OUTBOUND || mark == engine::MARK_INBOUND {
        return None;
    }
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut c_void) };
    enrolled(netns)
}

/// Whether `pod`'s connect to `dst_ip` (IPv4, network order) goes to the engine: if so, its
/// original destination is remembered and the port rewritten; the caller rewrites the address
/// (to 127.0.0.1, or its IPv4-mapped form).
#[inline(always)]
fn steer(ctx: &SockAddrContext, pod: EnrolledPod, dst_ip: u32) -> bool {
    let dst_port = port_of(addr_field!(ctx, user_port));
    let ptr = ctx.sock_addr as *mut c_void;
    if dst_ip == pod.ip4 || dst_ip & 0xff == 127 {
        return false; // the pod talking to itself
    }
    let exact = CaptureKey { class: pod.class, ip4: dst_ip, port: dst_port, _pad: 0 };
    let any_port = CaptureKey { class: pod.class, ip4: dst_ip, port: 0, _pad: 0 };
    // SAFETY: values are plain u32s copied out at once.
    let action = unsafe { CAPTURE.get(&exact).or_else(|| CAPTURE.get(&any_port)).copied() };
    if action != Some(capture::TUNNEL) {
        return false;
    }
    // SAFETY: valid context pointer for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ptr) };
    let orig = OrigDst { ip4: dst_ip, port: dst_port, _pad: 0 };
    if ORIG_DST.insert(&cookie, &orig, 0).is_err() {
        return false; // cannot remember where it was going: leave it alone rather than break it
    }
    // SAFETY: writable field of this context (the kernel validates the new port).
    unsafe { (*ctx.sock_addr).user_port = user_port_of(engine::OUTBOUND_PORT) };
    count(counter::CAPTURED);
    true
}

/// The app's `getpeername()` shows the original destination, not the engine.
#[cgroup_sock_addr(getpeername4)]
pub fn lockmesh_getpeername4(ctx: SockAddrContext) -> i32 {
    let ip = addr_field!(ctx, user_ip4);
    let port = port_of(addr_field!(ctx, user_port));
    if ip != LOOPBACK || port != engine::OUTBOUND_PORT {
        return 1;
    }
    // SAFETY: valid context pointer for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: plain data copied out at once.
    if let Some(orig) = unsafe { ORIG_DST.get(&cookie).copied() } {
        // SAFETY: writable fields of this context.
        unsafe {
            (*ctx.sock_addr).user_ip4 = orig.ip4;
            (*ctx.sock_addr).user_port = user_port_of(orig.port);
        }
    }
    1
}

/// The app's `getsockname()` shows its pod address, not 127.0.0.1.
#[cgroup_sock_addr(getsockname4)]
pub fn lockmesh_getsockname4(ctx: SockAddrContext) -> i32 {
    let ip = addr_field!(ctx, user_ip4);
    if ip != LOOPBACK {
        return 1;
    }
    let ptr = ctx.sock_addr as *mut c_void;
    // SAFETY: valid context pointer for these helpers.
    let cookie = unsafe { bpf_get_socket_cookie(ptr) };
    // SAFETY: plain data copied out at once.
    if unsafe { ORIG_DST.get(&cookie) }.is_none() {
        return 1;
    }
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ptr) };
    if let Some(pod) = enrolled(netns) {
        // SAFETY: writable field of this context.
        unsafe { (*ctx.sock_addr).user_ip4 = pod.ip4 };
    }
    1
}

/// `getpeername4` for an `AF_INET6` socket the capture steered to `::ffff:127.0.0.1`.
#[cgroup_sock_addr(getpeername6)]
pub fn lockmesh_getpeername6(ctx: SockAddrContext) -> i32 {
    let ip = user_ip6(&ctx);
    let port = port_of(addr_field!(ctx, user_port));
    if ip != [0, 0, MAPPED_PREFIX_WORD, LOOPBACK] || port != engine::OUTBOUND_PORT {
        return 1;
    }
    // SAFETY: valid context pointer for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: plain data copied out at once.
    if let Some(orig) = unsafe { ORIG_DST.get(&cookie).copied() } {
        // SAFETY: writable fields of this context.
        unsafe {
            (*ctx.sock_addr).user_ip6[3] = orig.ip4;
            (*ctx.sock_addr).user_port = user_port_of(orig.port);
        }
    }
    1
}

/// `getsockname4` for an `AF_INET6` socket the capture steered to `::ffff:127.0.0.1`.
#[cgroup_sock_addr(getsockname6)]
pub fn lockmesh_getsockname6(ctx: SockAddrContext) -> i32 {
    let ip = user_ip6(&ctx);
    if ip != [0, 0, MAPPED_PREFIX_WORD, LOOPBACK] {
        return 1;
    }
    let ptr = ctx.sock_addr as *mut c_void;
    // SAFETY: valid context pointer for these helpers.
    let cookie = unsafe { bpf_get_socket_cookie(ptr) };
    // SAFETY: plain data copied out at once.
    if unsafe { ORIG_DST.get(&cookie) }.is_none() {
        return 1;
    }
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ptr) };
    if let Some(pod) = enrolled(netns) {
        // SAFETY: writable field of this context.
        unsafe { (*ctx.sock_addr).user_ip6[3] = pod.ip4 };
    }
    1
}
