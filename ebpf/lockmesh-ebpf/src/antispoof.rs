//! Anti-spoofing: at TC ingress of an enrolled pod's host-side veth (every packet the pod
//! sends), an IPv4 packet whose source address is not one of the pod's own is dropped and
//! counted, so a pod cannot pass as another one (address-based exemptions and policies, replies
//! routed to the victim). ARP and IPv6 pass untouched: the mesh is IPv4-only, and the node
//! routes each pod address to its own veth, so a forged ARP answer only reaches the forger's
//! link. VLAN-tagged frames are dropped too: they could carry a forged IPv4 packet inside.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use lockmesh_common::{SourceKey, counter};

use crate::maps::{POD_SOURCES, count};

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
    if unsafe { POD_SOURCES.get(&SourceKey { ifindex, ip4 }) }.is_some() {
        return TC_ACT_OK;
    }
    count(counter::SPOOF_DROPS);
    TC_ACT_SHOT
}
