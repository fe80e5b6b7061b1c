//! The in-pod hop between an app and the engine (the app's connection to 127.0.0.1:15001, the
//! engine's transparent leg to the app) carries every byte twice through loopback TCP. Both ends
//! are sockets of the same pod on this host, so the kernel can hand the bytes from one socket's
//! `sendmsg` straight to the other's receive queue: `sock_ops` puts both ends in a sockhash,
//! `sk_msg` redirects (Merbridge and Cilium do the same). Bytes on the node-to-node wire are
//! unaffected: the engine still reads them in plaintext and sends them out over mTLS.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_NOEXIST, sk_action},
    helpers::generated::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::{SkMsgContext, SockOpsContext},
};
use lockmesh_common::{HopKey, counter, engine, role};

use crate::maps::{HOP_SOCKETS, HOPS_VIA_TCP, count};

const LOCALHOST: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// Whether an established socket of an enrolled pod is one end of an app↔engine hop.
#[inline(always)]
pub fn is_hop(socket_role: u32, key: &HopKey, mark: u32) -> bool {
    let app_to_engine = socket_role == role::CLIENT
        && key.remote_ip4 == LOCALHOST
        && key.remote_port == engine::OUTBOUND_PORT;
    let engine_from_app =
        socket_role == role::SERVER && key.local_ip4 == LOCALHOST && key.local_port == engine::OUTBOUND_PORT;
    // The engine's transparent leg carries the mark; the app's accepted end inherits it from the
    // SYN (`tcp_fwmark_accept`).
    app_to_engine || engine_from_app || mark == engine::MARK_INBOUND
}

/// Adds an established hop socket to `HOP_SOCKETS`.
#[inline(always)]
pub fn add_hop_socket(ctx: &SockOpsContext, key: &HopKey) {
    let mut key = *key;
    // A socket that earlier had this 4-tuple may have left a mark; this one starts clean.
    let _ = HOPS_VIA_TCP.remove(&key);
    // SAFETY: the context pointer is valid for the duration of the program.
    let ops = unsafe { &mut *ctx.ops };
    if HOP_SOCKETS.update(&mut key, ops, BPF_NOEXIST as u64).is_ok() {
        count(counter::HOP_SHORTCUTS);
    } else {
        count(counter::HOP_SHORTCUT_FAILURES);
    }
}

/// Reads a field of the message context with a load of its own (see `observer::ctx_field`).
macro_rules! msg_field {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: a field of the program's context, valid for the duration of the program.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.msg).$($field)+)) }
    };
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Runs on every `sendmsg` of a socket in `HOP_SOCKETS`: delivers the bytes into the receive
/// queue of the socket at the other end of the hop, or lets them take loopback TCP.
#[sk_msg]
pub fn lockmesh_hop_shortcut(ctx: SkMsgContext) -> u32 {
    let pass = sk_action::SK_PASS;
    let Some(own) = hop_key(&ctx) else { return pass };
    // SAFETY: the value is a plain byte copied out at once.
    if unsafe { HOPS_VIA_TCP.get(&own) }.is_some() {
        return pass;
    }
    let mut peer = own.peer();
    if HOP_SOCKETS.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == sk_action::SK_PASS as i64 {
        return pass;
    }
    // The peer is not in the map (yet): its socket may still be on its way to ESTABLISHED. These
    // bytes take TCP, and so must every later byte of this socket, or it would overtake them.
    let _ = HOPS_VIA_TCP.insert(&own, &1, 0);
    pass
}

/// The message's socket as a [`HopKey`] (IPv4, or IPv4-mapped IPv6 for apps listening on `::`).
/// Every field is loaded before any branch (see `observer::ipv4_endpoints`).
#[inline(always)]
fn hop_key(ctx: &SkMsgContext) -> Option<HopKey> {
    let family = msg_field!(ctx, family);
    let (local4, remote4) = (msg_field!(ctx, local_ip4), msg_field!(ctx, remote_ip4));
    let local6 = [
        msg_field!(ctx, local_ip6[0]),
        msg_field!(ctx, local_ip6[1]),
        msg_field!(ctx, local_ip6[2]),
        msg_field!(ctx, local_ip6[3]),
    ];
    let remote6 = [
        msg_field!(ctx, remote_ip6[0]),
        msg_field!(ctx, remote_ip6[1]),
        msg_field!(ctx, remote_ip6[2]),
        msg_field!(ctx, remote_ip6[3]),
    ];
    let local_port = msg_field!(ctx, local_port) as u16;
    // As in sock_ops: the network-order port in the upper 16 bits.
    let remote_port = u32::from_be(msg_field!(ctx, remote_port)) as u16;
    let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let (local_ip4, remote_ip4) = if family == AF_INET {
        (local4, remote4)
    } else if family == AF_INET6 && local6[..3] == [0, 0, mapped] && remote6[..3] == [0, 0, mapped] {
        (local6[3], remote6[3])
    } else {
        return None;
    };
    // SAFETY: the context pointer is valid for this helper.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.msg as *mut c_void) };
    Some(HopKey { netns_cookie, local_ip4, remote_ip4, local_port, remote_port, _pad: 0 })
}
