//! In-kernel STRICT: at TC egress of an enrolled pod's host-side veth (every packet heading into
//! the pod), a plaintext TCP SYN to a port the agent marked STRICT is rewritten into a RST|ACK
//! and sent back where it came from, so the client fails at once and the app never sees it.
//! The tunnel port (15008) always passes, as do exempted sources (a pod's kubelet probes from its
//! node, `--strict-exempt`); traffic inside the pod (loopback) never crosses the veth.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail},
    macros::classifier,
    programs::TcContext,
};
use lockmesh_common::{ExemptKey, FlowEvent, StrictKey, counter, engine, event_kind, strict};

use crate::maps::{FLOW_EVENTS, STRICT, STRICT_EXEMPT, count};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const TCP_OFF: usize = ETH_HLEN + IP_HLEN;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const BPF_F_INGRESS: u64 = 1;

#[classifier]
pub fn lockmesh_strict(ctx: TcContext) -> i32 {
    check(&ctx).unwrap_or(TC_ACT_OK)
}

#[inline(always)]
fn check(ctx: &TcContext) -> Result<i32, i64> {
    if u16::from_be(ctx.load::<u16>(12)?) != ETH_P_IP {
        return Ok(TC_ACT_OK);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    let protocol: u8 = ctx.load(ETH_HLEN + 9)?;
    if protocol != IPPROTO_TCP || version_ihl >> 4 != 4 {
        return Ok(TC_ACT_OK);
    }
    // Later fragments carry no TCP header.
    if u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?) & 0x1fff != 0 {
        return Ok(TC_ACT_OK);
    }
    let src_ip: u32 = ctx.load(ETH_HLEN + 12)?;
    let dst_ip: u32 = ctx.load(ETH_HLEN + 16)?;
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    let tcp = ETH_HLEN + header_len;
    let flags: u8 = ctx.load(tcp + 13)?;
    if flags & SYN == 0 || flags & ACK != 0 {
        return Ok(TC_ACT_OK);
    }
    let src_port = u16::from_be(ctx.load::<u16>(tcp)?);
    let dst_port = u16::from_be(ctx.load::<u16>(tcp + 2)?);
    if dst_port == engine::HBONE_PORT || !is_strict(dst_ip, dst_port) || is_exempt(src_ip, dst_ip, dst_port) {
        return Ok(TC_ACT_OK);
    }
    report(dst_ip, dst_port, src_ip, src_port);
    count(counter::STRICT_RESETS);
    if header_len != IP_HLEN {
        // IP options: do not bother answering, but never let it through.
        return Ok(TC_ACT_SHOT);
    }
    let seq: u32 = u32::from_be(ctx.load::<u32>(tcp + 4)?);
    reset(ctx, src_ip, dst_ip, src_port, dst_port, seq)
}

#[inline(always)]
fn is_strict(ip4: u32, port: u16) -> bool {
    let exact = StrictKey { ip4, port, _pad: 0 };
    let any = StrictKey { ip4, port: 0, _pad: 0 };
    // SAFETY: plain u32 values copied out at once.
    let mode = unsafe { STRICT.get(&exact).or_else(|| STRICT.get(&any)).copied() };
    mode == Some(strict::RESET)
}

/// Exempt: this source to this pod and port (a probe), or this source to any pod on this port or
/// on every port (`--strict-exempt`).
#[inline(always)]
fn is_exempt(src_ip4: u32, dst_ip4: u32, port: u16) -> bool {
    let probe = ExemptKey { src_ip4, dst_ip4, port, _pad: 0 };
    let any_pod = ExemptKey { src_ip4, dst_ip4: 0, port, _pad: 0 };
    let any_port = ExemptKey { src_ip4, dst_ip4: 0, port: 0, _pad: 0 };
    // SAFETY: plain values, only tested for presence.
    unsafe {
        STRICT_EXEMPT.get(&probe).is_some()
            || STRICT_EXEMPT.get(&any_pod).is_some()
            || STRICT_EXEMPT.get(&any_port).is_some()
    }
}

#[inline(always)]
fn report(pod_ip: u32, pod_port: u16, client_ip: u32, client_port: u16) {
    let event = FlowEvent {
        kind: event_kind::RESET,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        local_ip4: pod_ip,
        remote_ip4: client_ip,
        local_port: pod_port,
        remote_port: client_port,
        ..Default::default()
    };
    if FLOW_EVENTS.output::<FlowEvent>(&event, 0).is_err() {
        count(counter::RINGBUF_DROPS);
    }
}

/// Turns the SYN into the RST|ACK the kernel would send for a closed port, and sends it back
/// through the veth it was about to leave. Checksums are computed from scratch: SYNs crossing
/// veths are CHECKSUM_PARTIAL, so their checksum fields are not final.
#[inline(always)]
fn reset(
    ctx: &TcContext,
    src_ip: u32,
    dst_ip: u32,
    src_port: u16,
    dst_port: u16,
    seq: u32,
) -> Result<i32, i64> {
    let macs: [u8; 12] = ctx.load(0)?;
    // SAFETY: the context's skb pointer, valid for the program's run.
    let shrunk = unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (TCP_OFF + TCP_HLEN) as u32, 0) };
    if shrunk != 0 {
        return Ok(TC_ACT_SHOT);
    }
    let mut eth = [0u8; ETH_HLEN];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..12].copy_from_slice(&macs[..6]);
    eth[12..].copy_from_slice(&ETH_P_IP.to_be_bytes());

    let mut ip = [0u8; IP_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP_HLEN + TCP_HLEN) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    // Addresses are already in network byte order in memory: copy their bytes as they are.
    ip[12..16].copy_from_slice(&dst_ip.to_ne_bytes());
    ip[16..20].copy_from_slice(&src_ip.to_ne_bytes());
    let ip_sum = fold(sum_words(&ip, 0));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    let mut tcp = [0u8; TCP_HLEN];
    tcp[0..2].copy_from_slice(&dst_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&src_port.to_be_bytes());
    tcp[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = RST | ACK;
    let mut pseudo = sum_words(&ip[12..20], 0);
    pseudo += IPPROTO_TCP as u32 + TCP_HLEN as u32;
    let tcp_sum = fold(sum_words(&tcp, pseudo));
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());

    ctx.store(0, &eth, 0)?;
    ctx.store(ETH_HLEN, &ip, 0)?;
    ctx.store(TCP_OFF, &tcp, 0)?;
    // SAFETY: the context's skb pointer; ifindex of the veth the program runs on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; TC_ACT_REDIRECT on success.
    Ok(unsafe { bpf_redirect(ifindex, BPF_F_INGRESS) } as i32)
}

#[inline(always)]
fn sum_words(bytes: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
