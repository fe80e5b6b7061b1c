//! Outbound capture: `cgroup/connect4` on the cgroup v2 root steers an enrolled pod's TCP
//! `connect()` to a destination the agent marked in `CAPTURE` into the engine's listener inside
//! that pod (127.0.0.1:15001), remembering the original destination. Everything else is left
//! untouched, so traffic the mesh does not encrypt pays nothing. `getpeername4`/`getsockname4`
//! make the app see the real peer and its own pod address.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use lockmesh_common::{CaptureKey, OrigDst, capture, counter, engine};

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
    steer(&ctx);
    1 // always allow the connect; we only ever rewrite its destination
}

#[inline(always)]
fn steer(ctx: &SockAddrContext) {
    let protocol = addr_field!(ctx, protocol);
    let dst_ip = addr_field!(ctx, user_ip4);
    let dst_port = port_of(addr_field!(ctx, user_port));
    let sk = addr_field!(ctx, __bindgen_anon_1.sk);
    if protocol != IPPROTO_TCP || sk.is_null() {
        return;
    }
    // SAFETY: non-null socket pointer of this context.
    let mark = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sk).mark)) };
    // The engine's own sockets go where they are sent.
    if mark == engine::MARK_OUTBOUND || mark == engine::MARK_INBOUND {
        return;
    }
    let ptr = ctx.sock_addr as *mut c_void;
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ptr) };
    let Some(pod) = enrolled(netns) else {
        return;
    };
    if dst_ip == pod.ip4 || dst_ip & 0xff == 127 {
        return; // the pod talking to itself
    }
    let exact = CaptureKey { class: pod.class, ip4: dst_ip, port: dst_port, _pad: 0 };
    let any_port = CaptureKey { class: pod.class, ip4: dst_ip, port: 0, _pad: 0 };
    // SAFETY: values are plain u32s copied out at once.
    let action = unsafe { CAPTURE.get(&exact).or_else(|| CAPTURE.get(&any_port)).copied() };
    if action != Some(capture::TUNNEL) {
        return;
    }
    // SAFETY: valid context pointer for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ptr) };
    let orig = OrigDst { ip4: dst_ip, port: dst_port, _pad: 0 };
    if ORIG_DST.insert(&cookie, &orig, 0).is_err() {
        return; // cannot remember where it was going: leave it alone rather than break it
    }
    // SAFETY: writable fields of this context (the kernel validates the new address).
    unsafe {
        (*ctx.sock_addr).user_ip4 = LOOPBACK;
        (*ctx.sock_addr).user_port = user_port_of(engine::OUTBOUND_PORT);
    }
    count(counter::CAPTURED);
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
