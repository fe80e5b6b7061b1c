//! Anti-spoofing: at TC ingress of an enrolled pod's host-side veth (every packet the pod
//! sends), an IPv4 packet whose source address is not one of the pod's own is dropped and
//! counted, so a pod cannot pass as another one (address-based exemptions and policies, replies
//! routed to the victim). ARP and IPv6 pass untouched: the mesh is IPv4-only, and the node
//! routes each pod address to its own veth, so a forged ARP answer only reaches the forger's
//! link. VLAN-tagged frames are dropped too: they could carry a forged IPv4 packet inside.
//!
//! Egress: a plaintext SYN leaving the pod for a destination its policy tunnels (`CAPTURE` says
//! `TUNNEL` for its class) was not captured — an app that set the engine's socket mark, a raw
//! socket — and would cross the wire in clear: it is answered with a RST inside the pod and
//! reported. The engine's own legs go to peers' port 15008, or to destinations that are not
//! tunnelled.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use lockmesh_common::{CaptureKey, SourceKey, capture, counter, engine, refusal};

use crate::{
    maps::{CAPTURE, POD_IFACES, POD_SOURCES, count},
    strict::{report, reset_syn4},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_TYPE_OFF: usize = 12;
const IP_SRC_OFF: usize = 14 + 12;

#[classifier]
pub fn lockmesh_antispoof(ctx: TcContext) -> i32 {
    match ctx.load::<u16>(ETH_TYPE_OFF).map(u16::from_be) {
        Ok(ETH_P_IP) => {}
        Ok(ETH_P_8021Q | ETH_P_8021AD) => {
            count(counter::SPOOF_DROPS);
            return TC_ACT_SHOT;
        }
        _ => return TC_ACT_OK,
    }
    // A truncated IPv4 header has no trustworthy source either.
    let Ok(ip4) = ctx.load::<u32>(IP_SRC_OFF) else {
        count(counter::SPOOF_DROPS);
        return TC_ACT_SHOT;
    };
    // SAFETY: the context's skb pointer, valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain value, only tested for presence.
    if unsafe { POD_SOURCES.get(&SourceKey { ifindex, ip4 }) }.is_none() {
        count(counter::SPOOF_DROPS);
        return TC_ACT_SHOT;
    }
    uncaptured(&ctx, ifindex).unwrap_or(TC_ACT_OK)
}

const IPPROTO_TCP: u8 = 6;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A plaintext SYN to a destination the pod's policy tunnels: reset inside the pod.
#[inline(always)]
fn uncaptured(ctx: &TcContext, ifindex: u32) -> Result<i32, i64> {
    let version_ihl: u8 = ctx.load(14)?;
    let protocol: u8 = ctx.load(14 + 9)?;
    if protocol != IPPROTO_TCP || version_ihl != 0x45 {
        return Ok(TC_ACT_OK);
    }
    let flags: u8 = ctx.load(14 + 20 + 13)?;
    let dst_port = u16::from_be(ctx.load::<u16>(14 + 20 + 2)?);
    if flags & SYN == 0 || flags & ACK != 0 || dst_port == engine::HBONE_PORT {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: plain data copied out at once.
    let Some(pod) = (unsafe { POD_IFACES.get(&ifindex).copied() }) else {
        return Ok(TC_ACT_OK);
    };
    let dst_ip: u32 = ctx.load(14 + 16)?;
    let exact = CaptureKey { class: pod.class, ip4: dst_ip, port: dst_port, _pad: 0 };
    let any_port = CaptureKey { class: pod.class, ip4: dst_ip, port: 0, _pad: 0 };
    // SAFETY: plain u32s copied out at once.
    let action = unsafe { CAPTURE.get(&exact).or_else(|| CAPTURE.get(&any_port)).copied() };
    if action != Some(capture::TUNNEL) {
        return Ok(TC_ACT_OK);
    }
    let src_port = u16::from_be(ctx.load::<u16>(14 + 20)?);
    report(pod.ip4, src_port, dst_ip, dst_port, [0; 4], refusal::UNCAPTURED);
    count(counter::UNCAPTURED_RESETS);
    Ok(reset_syn4(ctx, 0))
}
