//! In-kernel STRICT: at TC egress of an enrolled pod's host-side veth (every packet heading into
//! the pod), plaintext TCP to a port the agent marked STRICT is refused, per connection: no
//! connection the pod did not open itself can carry a segment into the pod unless its SYN
//! passed this check.
//! - A SYN is rewritten into the RST|ACK a closed port would answer and sent back, so the client
//!   fails at once and the app never sees it.
//! - Any other segment of a connection the pod did not open (`POD_INITIATED`) — one opened
//!   before the port became STRICT, or one completed with a SYN cookie minted elsewhere (the
//!   cookie secret is global, not per namespace) — resets both ends: a RST goes into the pod
//!   (its socket, if any, closes) and one back to the client.
//! - What cannot be checked fails closed: IP fragments of TCP and unparsable headers to a pod
//!   with STRICT ports are dropped.
//! - IPv6 is held to the same policy: the pod is found by its interface (`POD_IFACES`), its
//!   STRICT ports apply to IPv6 as they do to IPv4, and the engine does not tunnel IPv6, so no
//!   IPv6 plaintext reaches a STRICT port.
//!
//! The tunnel port (15008) always passes, as do exempted IPv4 sources (a pod's kubelet probes
//! from its node, `--strict-exempt`); traffic inside the pod (loopback) never crosses the veth.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_clone_redirect, bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail},
    macros::classifier,
    programs::TcContext,
};
use lockmesh_common::{
    ConnKey, ExemptKey, FlowEvent, StrictKey, counter, engine, event_kind, refusal, strict,
};

use crate::maps::{FLOW_EVENTS, POD_IFACES, POD_INITIATED, STRICT, STRICT_EXEMPT, count};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_NONE: u8 = 59;
const IP_HLEN: usize = 20;
const IP6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const TCP_OFF: usize = ETH_HLEN + IP_HLEN;
const TCP6_OFF: usize = ETH_HLEN + IP6_HLEN;
/// IPv4 "more fragments" flag and fragment offset bits.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const BPF_F_INGRESS: u64 = 1;

#[classifier]
pub fn lockmesh_strict(ctx: TcContext) -> i32 {
    // A packet whose headers end before they say they do is not a packet we can let in.
    check(&ctx).unwrap_or_else(|_| {
        count(counter::STRICT_DROPS);
        TC_ACT_SHOT
    })
}

#[inline(always)]
fn check(ctx: &TcContext) -> Result<i32, i64> {
    match u16::from_be(ctx.load::<u16>(12)?) {
        ETH_P_IP => check4(ctx),
        ETH_P_IPV6 => check6(ctx),
        _ => Ok(TC_ACT_OK),
    }
}

/// The parts of a TCP segment the checks need, addresses as `POD_INITIATED` keys them.
struct Segment {
    client_ip: [u32; 4],
    pod_ip: [u32; 4],
    client_port: u16,
    pod_port: u16,
    flags: u8,
    seq: u32,
    ack_seq: u32,
}

impl Segment {
    /// One load of the fixed TCP header (every packet into an enrolled pod comes here).
    #[inline(always)]
    fn read(ctx: &TcContext, tcp: usize, client_ip: [u32; 4], pod_ip: [u32; 4]) -> Result<Self, i64> {
        let h: [u8; TCP_HLEN] = ctx.load(tcp)?;
        if h[12] >> 4 < 5 {
            return Err(0);
        }
        Ok(Self {
            client_ip,
            pod_ip,
            client_port: u16::from_be_bytes([h[0], h[1]]),
            pod_port: u16::from_be_bytes([h[2], h[3]]),
            flags: h[13],
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ack_seq: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        })
    }

    /// A reply on a connection the pod opened.
    #[inline(always)]
    fn pod_initiated(&self) -> bool {
        let key = ConnKey {
            pod_ip: self.pod_ip,
            peer_ip: self.client_ip,
            pod_port: self.pod_port,
            peer_port: self.client_port,
        };
        // SAFETY: only tests presence.
        unsafe { POD_INITIATED.get(&key) }.is_some()
    }
}

#[inline(always)]
fn check4(ctx: &TcContext) -> Result<i32, i64> {
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    let protocol: u8 = ctx.load(ETH_HLEN + 9)?;
    if protocol != IPPROTO_TCP {
        return Ok(TC_ACT_OK);
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < IP_HLEN {
        return Err(0);
    }
    let src_ip: u32 = ctx.load(ETH_HLEN + 12)?;
    let dst_ip: u32 = ctx.load(ETH_HLEN + 16)?;
    // A fragment's TCP header is incomplete or absent, and the pod reassembles what it gets:
    // refused whole for a pod with STRICT ports (TCP sets DF, so real traffic never fragments).
    if u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?) & (IP_MF | IP_OFFSET) != 0 {
        if !has_strict_ports(dst_ip) {
            return Ok(TC_ACT_OK);
        }
        report(dst_ip, 0, src_ip, 0, [0; 4], refusal::FRAGMENT);
        count(counter::STRICT_DROPS);
        return Ok(TC_ACT_SHOT);
    }
    let tcp = ETH_HLEN + header_len;
    let segment = match Segment::read(ctx, tcp, ConnKey::mapped(src_ip), ConnKey::mapped(dst_ip)) {
        Ok(segment) => segment,
        Err(e) if has_strict_ports(dst_ip) => {
            report(dst_ip, 0, src_ip, 0, [0; 4], refusal::UNPARSED);
            return Err(e);
        }
        Err(_) => return Ok(TC_ACT_OK),
    };
    if segment.pod_port == engine::HBONE_PORT
        || segment.flags & RST != 0
        || !is_strict(dst_ip, segment.pod_port)
        || is_exempt(src_ip, dst_ip, segment.pod_port)
    {
        return Ok(TC_ACT_OK);
    }
    let is_syn = segment.flags & SYN != 0 && segment.flags & ACK == 0;
    if !is_syn && segment.pod_initiated() {
        return Ok(TC_ACT_OK);
    }
    let reason = if is_syn { refusal::SYN } else { refusal::SEGMENT };
    report(dst_ip, segment.pod_port, src_ip, segment.client_port, [0; 4], reason);
    count(counter::STRICT_RESETS);
    if header_len != IP_HLEN {
        // IP options: do not bother answering, but never let it through.
        return Ok(TC_ACT_SHOT);
    }
    if is_syn {
        return Ok(reset_syn4(ctx, BPF_F_INGRESS));
    }
    // SAFETY: the context's skb pointer, valid for the program's run.
    let shrunk = unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (TCP_OFF + TCP_HLEN) as u32, 0) };
    if shrunk != 0 {
        return Ok(TC_ACT_SHOT);
    }
    let macs: [u8; 12] = ctx.load(0)?;
    // Into the pod first: a RST at the segment's own sequence number closes the pod's socket of
    // a live connection (a listener ignores it).
    let into_pod = Rst { seq: segment.seq, ack: 0, flags: RST };
    write_rst4(ctx, &macs, false, &into_pod, src_ip, dst_ip, &segment)?;
    // SAFETY: the context's skb pointer; the clone leaves by this veth, into the pod.
    unsafe {
        let ifindex = (*ctx.skb.skb).ifindex;
        bpf_clone_redirect(ctx.skb.skb as *mut _, ifindex, 0);
    }
    // Then back to the client, at the sequence number it expects next.
    if segment.flags & ACK == 0 {
        return Ok(TC_ACT_SHOT);
    }
    let back = Rst { seq: segment.ack_seq, ack: 0, flags: RST };
    write_rst4(ctx, &macs, true, &back, dst_ip, src_ip, &segment)?;
    Ok(back_to_sender(ctx))
}

#[inline(always)]
fn check6(ctx: &TcContext) -> Result<i32, i64> {
    // SAFETY: the context's skb pointer, valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain u32 copied out at once.
    let Some(pod_ip4) = (unsafe { POD_IFACES.get(&ifindex).map(|pod| pod.ip4) }) else {
        return Ok(TC_ACT_OK); // not a guarded pod (yet): nothing is STRICT on it
    };
    let src: [u32; 4] = ctx.load(ETH_HLEN + 8)?;
    let dst: [u32; 4] = ctx.load(ETH_HLEN + 24)?;
    let mut next_header: u8 = ctx.load(ETH_HLEN + 6)?;
    let mut tcp = TCP6_OFF;
    // Hop-by-hop options come first when present (MLD reports carry one): walked once.
    if next_header == IPPROTO_HOPOPTS {
        next_header = ctx.load(tcp)?;
        let units: u8 = ctx.load(tcp + 1)?;
        tcp += (units as usize + 1) * 8;
    }
    if next_header != IPPROTO_TCP {
        // Neighbour discovery, ICMPv6 and UDP pass; another extension header might hide TCP (a
        // fragment, a routing header): refused for a pod with STRICT ports.
        if matches!(next_header, IPPROTO_ICMPV6 | IPPROTO_UDP | IPPROTO_NONE) || !has_strict_ports(pod_ip4) {
            return Ok(TC_ACT_OK);
        }
        report(pod_ip4, 0, 0, 0, src, refusal::UNPARSED);
        return Err(0);
    }
    let segment = Segment::read(ctx, tcp, src, dst)?;
    if segment.pod_port == engine::HBONE_PORT
        || segment.flags & RST != 0
        || !is_strict(pod_ip4, segment.pod_port)
    {
        return Ok(TC_ACT_OK);
    }
    let is_syn = segment.flags & SYN != 0 && segment.flags & ACK == 0;
    if !is_syn && segment.pod_initiated() {
        return Ok(TC_ACT_OK);
    }
    let reason = if is_syn { refusal::SYN } else { refusal::SEGMENT };
    report(pod_ip4, segment.pod_port, 0, segment.client_port, src, reason);
    count(counter::STRICT_RESETS);
    if !is_syn || tcp != TCP6_OFF {
        // No IPv6 connection to a STRICT port was ever let in: nothing in the pod to close. (A
        // SYN behind options is not answered, only dropped.)
        return Ok(TC_ACT_SHOT);
    }
    // SAFETY: the context's skb pointer, valid for the program's run.
    let shrunk = unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (TCP6_OFF + TCP_HLEN) as u32, 0) };
    if shrunk != 0 {
        return Ok(TC_ACT_SHOT);
    }
    let macs: [u8; 12] = ctx.load(0)?;
    ctx.store(0, &swapped_eth(&macs, ETH_P_IPV6), 0)?;
    let mut ip = [0u8; IP6_HLEN];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(TCP_HLEN as u16).to_be_bytes());
    ip[6] = IPPROTO_TCP;
    ip[7] = 64;
    let (mut src_bytes, mut dst_bytes) = ([0u8; 16], [0u8; 16]);
    let mut i = 0;
    while i < 4 {
        // Words hold network-order bytes in memory: copy them as they are.
        src_bytes[i * 4..i * 4 + 4].copy_from_slice(&dst[i].to_ne_bytes());
        dst_bytes[i * 4..i * 4 + 4].copy_from_slice(&src[i].to_ne_bytes());
        i += 1;
    }
    ip[8..24].copy_from_slice(&src_bytes);
    ip[24..40].copy_from_slice(&dst_bytes);
    let pseudo = sum_words(&ip[8..40], IPPROTO_TCP as u32 + TCP_HLEN as u32);
    let tcp = tcp_header(
        &segment,
        &Rst { seq: 0, ack: segment.seq.wrapping_add(1), flags: RST | ACK },
        true,
        pseudo,
    );
    ctx.store(ETH_HLEN, &ip, 0)?;
    ctx.store(TCP6_OFF, &tcp, 0)?;
    Ok(back_to_sender(ctx))
}

/// Any port of this pod STRICT (its port-0 entry is `RESET` or `SOME`).
#[inline(always)]
fn has_strict_ports(ip4: u32) -> bool {
    let any = StrictKey { ip4, port: 0, _pad: 0 };
    // SAFETY: plain u32 copied out at once.
    let mode = unsafe { STRICT.get(&any).copied() };
    mode == Some(strict::RESET) || mode == Some(strict::SOME)
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
pub(crate) fn report(
    pod_ip: u32,
    pod_port: u16,
    client_ip: u32,
    client_port: u16,
    client_ip6: [u32; 4],
    reason: u32,
) {
    let event = FlowEvent {
        kind: event_kind::RESET,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        local_ip4: pod_ip,
        remote_ip4: client_ip,
        local_port: pod_port,
        remote_port: client_port,
        reason,
        remote_ip6: client_ip6,
        ..Default::default()
    };
    if FLOW_EVENTS.output::<FlowEvent>(&event, 0).is_err() {
        count(counter::RINGBUF_DROPS);
    }
}

/// The RST to write: its sequence and acknowledgment numbers and flags.
struct Rst {
    seq: u32,
    ack: u32,
    flags: u8,
}

/// Writes an IPv4 RST over the (already shrunk) packet, from `src_ip` to `dst_ip`; `back` swaps
/// the MACs and ports (a reply to the segment's sender). Checksums are computed from scratch:
/// segments crossing veths are CHECKSUM_PARTIAL, so their checksum fields are not final.
#[inline(always)]
fn write_rst4(
    ctx: &TcContext,
    macs: &[u8; 12],
    back: bool,
    rst: &Rst,
    src_ip: u32,
    dst_ip: u32,
    segment: &Segment,
) -> Result<(), i64> {
    if back {
        ctx.store(0, &swapped_eth(macs, ETH_P_IP), 0)?;
    }
    let mut ip = [0u8; IP_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP_HLEN + TCP_HLEN) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    // Addresses are already in network byte order in memory: copy their bytes as they are.
    ip[12..16].copy_from_slice(&src_ip.to_ne_bytes());
    ip[16..20].copy_from_slice(&dst_ip.to_ne_bytes());
    let ip_sum = fold(sum_words(&ip, 0));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let pseudo = sum_words(&ip[12..20], IPPROTO_TCP as u32 + TCP_HLEN as u32);
    let tcp = tcp_header(segment, rst, back, pseudo);
    ctx.store(ETH_HLEN, &ip, 0)?;
    ctx.store(TCP_OFF, &tcp, 0)
}

#[inline(always)]
fn swapped_eth(macs: &[u8; 12], ether_type: u16) -> [u8; ETH_HLEN] {
    let mut eth = [0u8; ETH_HLEN];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..12].copy_from_slice(&macs[..6]);
    eth[12..].copy_from_slice(&ether_type.to_be_bytes());
    eth
}

/// A bare TCP header carrying `rst`, checksummed over `pseudo` (the pseudo-header's sum).
#[inline(always)]
fn tcp_header(segment: &Segment, rst: &Rst, back: bool, pseudo: u32) -> [u8; TCP_HLEN] {
    let (src_port, dst_port) =
        if back { (segment.pod_port, segment.client_port) } else { (segment.client_port, segment.pod_port) };
    let mut tcp = [0u8; TCP_HLEN];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&rst.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&rst.ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = rst.flags;
    let sum = fold(sum_words(&tcp, pseudo));
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

/// Answers the IPv4 SYN in `ctx` (a 20-byte IP header) with the RST|ACK a closed port would
/// send, redirected by the veth the program runs on with `redirect_flags` (`BPF_F_INGRESS` from
/// TC egress, 0 from TC ingress: back towards the sender either way). A packet that cannot be
/// rewritten is dropped.
#[inline(always)]
pub(crate) fn reset_syn4(ctx: &TcContext, redirect_flags: u64) -> i32 {
    let rewritten = || -> Result<(), i64> {
        let src_ip: u32 = ctx.load(ETH_HLEN + 12)?;
        let dst_ip: u32 = ctx.load(ETH_HLEN + 16)?;
        let segment = Segment::read(ctx, TCP_OFF, ConnKey::mapped(src_ip), ConnKey::mapped(dst_ip))?;
        let macs: [u8; 12] = ctx.load(0)?;
        // SAFETY: the context's skb pointer, valid for the program's run.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (TCP_OFF + TCP_HLEN) as u32, 0) } != 0 {
            return Err(0);
        }
        let back = Rst { seq: 0, ack: segment.seq.wrapping_add(1), flags: RST | ACK };
        write_rst4(ctx, &macs, true, &back, dst_ip, src_ip, &segment)
    };
    if rewritten().is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the context's skb pointer; ifindex of the veth the program runs on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; TC_ACT_REDIRECT on success.
    unsafe { bpf_redirect(ifindex, redirect_flags) as i32 }
}

/// Sends the rewritten packet back through the veth it was about to leave, towards its sender.
#[inline(always)]
fn back_to_sender(ctx: &TcContext) -> i32 {
    // SAFETY: the context's skb pointer; ifindex of the veth the program runs on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; TC_ACT_REDIRECT on success.
    unsafe { bpf_redirect(ifindex, BPF_F_INGRESS) as i32 }
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
