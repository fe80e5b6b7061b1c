//! Typed handles to the datapath's maps.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf, Pod,
    maps::{HashMap, MapData, MapError, PerCpuArray},
};
use lockmesh_common::{
    CaptureKey, EnrolledPod, ExemptKey, OrigDst, PortKey, SourceKey, StrictKey, counter, maps as map_names,
};

use super::stats::MapStats;

/// A hash map the agent owns: `sync` makes it hold exactly the desired entries, counting what
/// it holds and the writes the kernel refused (a full map) in [`MapStats`].
pub(crate) struct SyncedMap<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
    stats: MapStats,
    /// Entries not written at the last sync, and when that was last logged.
    last_failure_log: Option<(usize, Instant)>,
}

/// Enrolled pods by network-namespace cookie.
pub(super) type EnrolledMap = SyncedMap<u64, EnrolledPod>;
/// Which destinations each class of pods has steered into the engine.
pub(super) type CaptureMap = SyncedMap<CaptureKey, u32>;
/// STRICT ports of enrolled pods.
pub(super) type StrictMap = SyncedMap<StrictKey, u32>;
/// Sources exempt from STRICT (health probes).
pub(super) type ExemptMap = SyncedMap<ExemptKey, u32>;
/// Addresses each enrolled pod may send from (anti-spoofing).
pub(super) type PodSourcesMap = SyncedMap<SourceKey, u32>;
/// Each guarded pod's IPv4 address by its host-side interface index (IPv6 STRICT).
pub(super) type PodIfacesMap = SyncedMap<u32, lockmesh_common::PodIface>;

/// A write (an insert or a removal) the kernel refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct WriteError {
    /// The map is at its capacity (`E2BIG`).
    pub full: bool,
    pub message: String,
}

/// What one sync did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SyncOutcome<K> {
    pub added: usize,
    pub removed: usize,
    /// Entries the map holds afterwards.
    pub entries: usize,
    /// Desired entries the kernel refused, with why (retried at the next sync).
    pub failed: Vec<(K, WriteError)>,
    /// Stale entries that could not be removed.
    pub not_removed: Vec<(K, WriteError)>,
}

impl<K> SyncOutcome<K> {
    /// Whether any refusal was because the map is full.
    pub(crate) fn full(&self) -> bool {
        self.failed.iter().any(|(_, e)| e.full)
    }
}

/// The operations a sync needs; the kernel map, or a fake in tests.
pub(crate) trait MapBackend<K, V> {
    fn keys(&self) -> Vec<K>;
    fn get(&self, key: &K) -> Option<V>;
    fn insert(&mut self, key: &K, value: &V) -> Result<(), WriteError>;
    fn remove(&mut self, key: &K) -> Result<(), WriteError>;
}

impl<K: Pod, V: Pod> MapBackend<K, V> for HashMap<MapData, K, V> {
    fn keys(&self) -> Vec<K> {
        HashMap::keys(self).filter_map(Result::ok).collect()
    }

    fn get(&self, key: &K) -> Option<V> {
        HashMap::get(self, key, 0).ok()
    }

    fn insert(&mut self, key: &K, value: &V) -> Result<(), WriteError> {
        HashMap::insert(self, key, value, 0).map_err(|e| {
            let full =
                matches!(&e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG));
            WriteError { full, message: e.to_string() }
        })
    }

    fn remove(&mut self, key: &K) -> Result<(), WriteError> {
        HashMap::remove(self, key).map_err(|e| WriteError { full: false, message: e.to_string() })
    }
}

/// Makes `map` hold exactly `desired`, as far as it can: stale entries first (making room),
/// then every desired entry not already there. Refused writes are collected, never fatal.
pub(crate) fn sync_entries<K: Ord + Copy, V: Copy + PartialEq>(
    map: &mut impl MapBackend<K, V>,
    desired: &BTreeMap<K, V>,
) -> SyncOutcome<K> {
    let mut present: BTreeSet<K> = map.keys().into_iter().collect();
    let stale: Vec<K> = present.iter().filter(|k| !desired.contains_key(k)).copied().collect();
    let mut outcome =
        SyncOutcome { added: 0, removed: 0, entries: 0, failed: Vec::new(), not_removed: Vec::new() };
    for key in stale {
        match map.remove(&key) {
            Ok(()) => {
                present.remove(&key);
                outcome.removed += 1;
            }
            Err(e) => outcome.not_removed.push((key, e)),
        }
    }
    for (key, value) in desired {
        if map.get(key).as_ref() == Some(value) {
            continue;
        }
        match map.insert(key, value) {
            Ok(()) => {
                present.insert(*key);
                outcome.added += 1;
            }
            Err(e) => outcome.failed.push((*key, e)),
        }
    }
    outcome.entries = present.len();
    outcome
}

/// Refused writes are logged when their number changes, else at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

impl<K: Pod + Ord, V: Pod + PartialEq> SyncedMap<K, V> {
    pub(super) fn take(ebpf: &mut Ebpf, name: &'static str, stats: MapStats) -> anyhow::Result<Self> {
        let map = ebpf.take_map(name).with_context(|| format!("{name} map missing"))?;
        Ok(Self { name, map: HashMap::try_from(map)?, stats, last_failure_log: None })
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The map's capacity (max entries).
    pub(crate) fn capacity(&self) -> u64 {
        self.stats.get(self.name).capacity
    }

    /// Makes the map hold exactly `desired` (entries adopted from a previous agent included),
    /// as far as it fits; counts its entries and the refused writes.
    pub(crate) fn sync(&mut self, desired: &BTreeMap<K, V>) -> SyncOutcome<K> {
        let outcome = sync_entries(&mut self.map, desired);
        self.stats.update(self.name, |stat| {
            stat.entries = Some(outcome.entries as u64);
            stat.update_failures += outcome.failed.len() as u64;
        });
        outcome
    }

    /// Whether to log this sync's refused writes: when their number changed, or once a minute
    /// while it lasts (the agent retries every second).
    pub(crate) fn should_log_failures(&mut self, failed: usize) -> bool {
        let due = match self.last_failure_log {
            _ if failed == 0 => false,
            Some((last, at)) => last != failed || at.elapsed() >= FAILURE_LOG_EVERY,
            None => true,
        };
        if due {
            self.last_failure_log = Some((failed, Instant::now()));
        } else if failed == 0 {
            self.last_failure_log = None;
        }
        due
    }
}

/// Original destinations of captured connections, for the engine's accept().
pub struct OrigDstMap {
    map: HashMap<MapData, PortKey, OrigDst>,
}

impl OrigDstMap {
    pub(super) fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(map_names::ORIG_DST_BY_PORT).context("ORIG_DST_BY_PORT map missing")?;
        Ok(Self { map: HashMap::try_from(map)? })
    }

    /// Takes (reads and deletes) the original destination of the connection the app in the pod
    /// of `netns_cookie` made from local port `port`.
    pub fn take_entry(&mut self, netns_cookie: u64, port: u16) -> Option<OrigDst> {
        let key = PortKey { netns_cookie, port, _pad: [0; 6] };
        let value = self.map.get(&key, 0).ok()?;
        let _ = self.map.remove(&key);
        Some(value)
    }
}

/// The kernel's per-CPU counters, summed.
pub(crate) struct Counters {
    map: PerCpuArray<MapData, u64>,
}

/// A reading of the kernel counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct CounterValues {
    pub ring_buffer_drops: u64,
    pub flows_opened: u64,
    pub flows_closed: u64,
    pub captured: u64,
    pub strict_resets: u64,
    pub spoof_drops: u64,
    pub strict_drops: u64,
    pub ipv6_refused: u64,
    pub uncaptured_resets: u64,
}

impl Counters {
    pub(super) fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(map_names::COUNTERS).context("COUNTERS map missing")?;
        Ok(Self { map: PerCpuArray::try_from(map)? })
    }

    pub(crate) fn read(&self) -> anyhow::Result<CounterValues> {
        let sum = |index: u32| -> anyhow::Result<u64> {
            Ok(self.map.get(&index, 0).context("reading COUNTERS")?.iter().sum())
        };
        Ok(CounterValues {
            ring_buffer_drops: sum(counter::RINGBUF_DROPS)?,
            flows_opened: sum(counter::FLOWS_OPENED)?,
            flows_closed: sum(counter::FLOWS_CLOSED)?,
            captured: sum(counter::CAPTURED)?,
            strict_resets: sum(counter::STRICT_RESETS)?,
            spoof_drops: sum(counter::SPOOF_DROPS)?,
            strict_drops: sum(counter::STRICT_DROPS)?,
            ipv6_refused: sum(counter::IPV6_REFUSED)?,
            uncaptured_resets: sum(counter::UNCAPTURED_RESETS)?,
        })
    }
}

#[cfg(test)]
mod tests;
