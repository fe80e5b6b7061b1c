//! Typed handles to the datapath's maps.
use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::{
    Ebpf, Pod,
    maps::{HashMap, MapData, PerCpuArray},
};
use lockmesh_common::{
    CaptureKey, EnrolledPod, ExemptKey, OrigDst, PortKey, SourceKey, StrictKey, counter, maps as map_names,
};

/// A hash map the agent owns: `sync` makes it hold exactly the desired entries.
pub struct SyncedMap<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
}

/// Enrolled pods by network-namespace cookie.
pub type EnrolledMap = SyncedMap<u64, EnrolledPod>;
/// Which destinations each class of pods has steered into the engine.
pub type CaptureMap = SyncedMap<CaptureKey, u32>;
/// STRICT ports of enrolled pods.
pub type StrictMap = SyncedMap<StrictKey, u32>;
/// Sources exempt from STRICT (health probes).
pub type ExemptMap = SyncedMap<ExemptKey, u32>;
/// Addresses each enrolled pod may send from (anti-spoofing).
pub type PodSourcesMap = SyncedMap<SourceKey, u32>;

impl<K: Pod + Ord + std::fmt::Debug, V: Pod + PartialEq> SyncedMap<K, V> {
    pub(super) fn take(ebpf: &mut Ebpf, name: &'static str) -> anyhow::Result<Self> {
        let map = ebpf.take_map(name).with_context(|| format!("{name} map missing"))?;
        Ok(Self { name, map: HashMap::try_from(map)? })
    }

    /// Makes the map hold exactly `desired` (entries adopted from a previous agent included);
    /// returns how many entries were added or changed, and removed.
    pub fn sync(&mut self, desired: &BTreeMap<K, V>) -> anyhow::Result<(usize, usize)> {
        let present: Vec<K> = self.map.keys().filter_map(Result::ok).collect();
        let mut removed = 0;
        for stale in present.iter().filter(|k| !desired.contains_key(k)) {
            self.map.remove(stale).with_context(|| format!("removing {stale:?} from {}", self.name))?;
            removed += 1;
        }
        let mut added = 0;
        for (key, value) in desired {
            if self.map.get(key, 0).ok().as_ref() != Some(value) {
                self.map
                    .insert(key, value, 0)
                    .with_context(|| format!("adding {key:?} to {} (map full?)", self.name))?;
                added += 1;
            }
        }
        Ok((added, removed))
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
pub struct Counters {
    map: PerCpuArray<MapData, u64>,
}

/// A reading of the kernel counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterValues {
    pub ring_buffer_drops: u64,
    pub flows_opened: u64,
    pub flows_closed: u64,
    pub captured: u64,
    pub strict_resets: u64,
    pub spoof_drops: u64,
}

impl Counters {
    pub(super) fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(map_names::COUNTERS).context("COUNTERS map missing")?;
        Ok(Self { map: PerCpuArray::try_from(map)? })
    }

    pub fn read(&self) -> anyhow::Result<CounterValues> {
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
        })
    }
}
