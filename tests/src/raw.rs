//! Hand-made TCP/IPv4 packets for the hostile tests: what an attacker with a raw socket inside a
//! pod can send (split SYNs, bare ACKs carrying a SYN cookie), and a raw listener that sees
//! every TCP segment reaching that pod, whatever the kernel then does with it.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A TCP segment, as sent or as seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Segment {
    /// The IPv4 packet (IP header with DF clear, TCP header without options), checksummed.
    pub fn packet(&self, ip_id: u16) -> Vec<u8> {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = self.flags;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&self.payload);
        let mut pseudo = Vec::with_capacity(12 + tcp.len());
        pseudo.extend_from_slice(&self.src.ip().octets());
        pseudo.extend_from_slice(&self.dst.ip().octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&tcp);
        let sum = checksum(&pseudo);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        ipv4(*self.src.ip(), *self.dst.ip(), ip_id, 0, &tcp)
    }

    /// The packet split in two IP fragments, the first carrying only `first` bytes (a multiple
    /// of 8) of the TCP header.
    pub fn fragments(&self, ip_id: u16, first: usize) -> Vec<Vec<u8>> {
        assert!(first.is_multiple_of(8) && first < 20, "fragment payloads are multiples of 8 bytes");
        let whole = self.packet(ip_id);
        let tcp = &whole[20..];
        let more_fragments = 0x2000;
        vec![
            ipv4(*self.src.ip(), *self.dst.ip(), ip_id, more_fragments, &tcp[..first]),
            ipv4(*self.src.ip(), *self.dst.ip(), ip_id, (first / 8) as u16, &tcp[first..]),
        ]
    }

    fn parse(packet: &[u8]) -> Option<Self> {
        let header = usize::from(packet.first()? & 0x0f) * 4;
        if packet.len() < header + 20 || packet[9] != 6 {
            return None;
        }
        let ip = |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
        let tcp = &packet[header..];
        let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
        let word = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
        let data = usize::from(tcp[12] >> 4) * 4;
        Some(Self {
            src: SocketAddrV4::new(ip(12), port(0)),
            dst: SocketAddrV4::new(ip(16), port(2)),
            seq: word(4),
            ack: word(8),
            flags: tcp[13],
            payload: tcp.get(data..).unwrap_or_default().to_vec(),
        })
    }
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, id: u16, fragment: u16, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&fragment.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw IPv4 socket inside a namespace: sends whole IP packets (`IP_HDRINCL`) and receives a
/// copy of every TCP segment that namespace's IP stack gets.
pub struct RawTcp {
    send: OwnedFd,
    receive: OwnedFd,
}

impl RawTcp {
    pub fn open(ns: &Path) -> anyhow::Result<Self> {
        let (send, receive) = netns::run_in(ns, || -> std::io::Result<(OwnedFd, OwnedFd)> {
            // SAFETY: plain socket(2) calls; the fds are owned at once.
            unsafe {
                let send =
                    libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW);
                if send < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let send = OwnedFd::from_raw_fd(send);
                let receive =
                    libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP);
                if receive < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok((send, OwnedFd::from_raw_fd(receive)))
            }
        })?
        .context("raw sockets")?;
        Ok(Self { send, receive })
    }

    pub fn send(&self, packet: &[u8]) -> anyhow::Result<()> {
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(dst).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffer and address for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                self.send.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sendto on the raw socket");
        }
        Ok(())
    }

    /// Segments received within `within` that `wanted` accepts.
    pub fn receive(&self, within: Duration, wanted: impl Fn(&Segment) -> bool) -> Vec<Segment> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut poll = libc::pollfd { fd: self.receive.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&raw mut poll, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: valid buffer for the duration of the call.
            let n = unsafe { libc::recv(self.receive.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            if let Some(segment) = Segment::parse(&buf[..n as usize])
                && wanted(&segment)
            {
                seen.push(segment);
            }
        }
        seen
    }
}
