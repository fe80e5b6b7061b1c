//! `POD_INITIATED` for connections that were open before sock_ops could see them connect: a pod
//! enrolled while its apps had connections out, or maps a restarted agent recreated (another
//! layout). The STRICT guard lets in only replies of connections the pod opened, so without
//! this a pod whose default is STRICT would lose its existing outbound connections at
//! enrolment. Read from the pod's own `/proc/net/tcp{,6}`: a socket on a port nothing listens
//! on was opened by `connect()`.
use std::collections::HashSet;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use lockmesh_common::{ConnKey, maps as map_names};

use crate::sys::netns::NetNs;

/// `/proc/net/tcp` states (include/net/tcp_states.h).
const TCP_LISTEN: u8 = 0x0a;
const TCP_TIME_WAIT: u8 = 0x06;
const TCP_CLOSE: u8 = 0x07;

pub(crate) struct PodInitiated {
    map: HashMap<MapData, ConnKey, u32>,
    /// Namespaces (by cookie) already seeded by this agent.
    seeded: HashSet<u64>,
}

impl PodInitiated {
    pub(super) fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(map_names::POD_INITIATED).context("POD_INITIATED map missing")?;
        Ok(Self { map: HashMap::try_from(map)?, seeded: HashSet::new() })
    }

    /// Records the open outbound connections of every pod not seen before; forgets pods that
    /// left. Returns how many connections were recorded.
    pub(crate) fn seed<'a>(&mut self, pods: impl IntoIterator<Item = &'a NetNs>) -> usize {
        let mut current = HashSet::new();
        let mut recorded = 0;
        for netns in pods {
            current.insert(netns.cookie());
            if self.seeded.contains(&netns.cookie()) {
                continue;
            }
            let read = netns.enter(|| -> anyhow::Result<(String, String)> {
                let v4 =
                    std::fs::read_to_string("/proc/thread-self/net/tcp").context("reading /proc/net/tcp")?;
                // Without IPv6 in the pod there is no tcp6 file: nothing to add.
                let v6 = std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default();
                Ok((v4, v6))
            });
            let (v4, v6) = match read.and_then(|r| r) {
                Ok(tables) => tables,
                Err(e) => {
                    // Retried at the next sync; until then replies to this pod's older
                    // connections may be reset on its STRICT ports.
                    tracing::warn!(netns = %netns.path().display(), error = %format!("{e:#}"), "cannot list the pod's open connections");
                    continue;
                }
            };
            let mut failed = 0;
            for key in outbound_connections(&v4, &v6) {
                match self.map.insert(key, 1, 0) {
                    Ok(()) => recorded += 1,
                    Err(_) => failed += 1,
                }
            }
            if failed > 0 {
                tracing::warn!(netns = %netns.path().display(), failed, "POD_INITIATED refused some of the pod's open connections");
            }
            self.seeded.insert(netns.cookie());
        }
        self.seeded.retain(|cookie| current.contains(cookie));
        recorded
    }
}

/// The connections in `/proc/net/tcp` (`v4`) and `/proc/net/tcp6` (`v6`) tables that the pod
/// opened: not listening, not on a listening port, not closing, not loopback.
pub(crate) fn outbound_connections(v4: &str, v6: &str) -> Vec<ConnKey> {
    let rows: Vec<Row> =
        v4.lines().skip(1).filter_map(Row::v4).chain(v6.lines().skip(1).filter_map(Row::v6)).collect();
    let listening: HashSet<u16> =
        rows.iter().filter(|r| r.state == TCP_LISTEN).map(|r| r.local_port).collect();
    rows.into_iter()
        .filter(|r| !matches!(r.state, TCP_LISTEN | TCP_TIME_WAIT | TCP_CLOSE))
        .filter(|r| !listening.contains(&r.local_port))
        .filter(|r| !is_loopback(&r.local_ip) && !is_loopback(&r.remote_ip))
        .map(|r| ConnKey {
            pod_ip: r.local_ip,
            peer_ip: r.remote_ip,
            pod_port: r.local_port,
            peer_port: r.remote_port,
        })
        .collect()
}

/// One socket of the table: addresses as `ConnKey` words (IPv4 mapped), ports in host order.
struct Row {
    local_ip: [u32; 4],
    local_port: u16,
    remote_ip: [u32; 4],
    remote_port: u16,
    state: u8,
}

impl Row {
    /// `sl local rem st …`, addresses printed as the hex of the kernel's 32-bit words (so
    /// parsing them gives back the words as they lie in memory), ports in host order.
    fn parse(line: &str, address: impl Fn(&str) -> Option<[u32; 4]>) -> Option<Self> {
        let mut fields = line.split_whitespace().skip(1);
        let (local, remote, state) = (fields.next()?, fields.next()?, fields.next()?);
        let endpoint = |text: &str| -> Option<([u32; 4], u16)> {
            let (ip, port) = text.split_once(':')?;
            Some((address(ip)?, u16::from_str_radix(port, 16).ok()?))
        };
        let (local_ip, local_port) = endpoint(local)?;
        let (remote_ip, remote_port) = endpoint(remote)?;
        Some(Self {
            local_ip,
            local_port,
            remote_ip,
            remote_port,
            state: u8::from_str_radix(state, 16).ok()?,
        })
    }

    fn v4(line: &str) -> Option<Self> {
        Self::parse(line, |hex| {
            (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok().map(ConnKey::mapped))?
        })
    }

    fn v6(line: &str) -> Option<Self> {
        Self::parse(line, |hex| {
            if hex.len() != 32 {
                return None;
            }
            let mut words = [0u32; 4];
            for (i, word) in words.iter_mut().enumerate() {
                *word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
            }
            Some(words)
        })
    }
}

/// 127.0.0.0/8 (IPv4-mapped) and ::1: never crosses the pod's interface.
fn is_loopback(ip: &[u32; 4]) -> bool {
    let mapped_v4 = ip[..3] == [0, 0, lockmesh_common::MAPPED_PREFIX_WORD];
    let v4_loopback = mapped_v4 && ip[3].to_ne_bytes()[0] == 127;
    v4_loopback || *ip == [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
}

#[cfg(test)]
mod tests;
