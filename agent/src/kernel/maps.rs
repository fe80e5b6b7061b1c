//! Typed handles to the datapath's maps.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use lockmesh_common::{CaptureKey, EnrolledPod, OrigDst, PortKey, counter, maps as map_names};

/// Enrolled pods by network-namespace cookie.
pub struct EnrolledMap {
    map: HashMap<MapData, u64, EnrolledPod>,
}

impl EnrolledMap {
    pub(super) fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(map_names::ENROLLED).context("ENROLLED map missing")?;
        Ok(Self { map: HashMap::try_from(map)? })
    }

    /// Makes the map hold exactly `desired` (entries adopted from a previous agent included).
    /// Returns how many entries were added and removed.
    pub fn sync(&mut self, desired: &BTreeMap<u64, EnrolledPod>) -> anyhow::Result<(usize, usize)> {
        let present: BTreeSet<u64> = self.map.keys().filter_map(Result::ok).collect();
        let mut removed = 0;
        for stale in present.iter().filter(|k| !desired.contains_key(k)) {
            self.map.remove(stale).with_context(|| format!("removing netns {stale} from ENROLLED"))?;
            removed += 1;
        }
        let mut added = 0;
        for (cookie, pod) in desired {
            if self.map.get(cookie, 0).ok().as_ref() != Some(pod) {
                self.map
                    .insert(cookie, pod, 0)
                    .with_context(|| format!("adding netns {cookie} to ENROLLED (map full?)"))?;
                added += 1;
            }
        }
        Ok((added, removed))
    }
}

/// Which destinations each class of pods has steered into the engine.
pub struct CaptureMap {
    map: HashMap<MapData, CaptureKey, u32>,
}

impl CaptureMap {
    pub(super) fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(map_names::CAPTURE).context("CAPTURE map missing")?;
        Ok(Self { map: HashMap::try_from(map)? })
    }

    /// Makes the map hold exactly `desired`; returns (added or changed, removed).
    pub fn sync(&mut self, desired: &BTreeMap<CaptureKey, u32>) -> anyhow::Result<(usize, usize)> {
        let present: Vec<CaptureKey> = self.map.keys().filter_map(Result::ok).collect();
        let mut removed = 0;
        for stale in present.iter().filter(|k| !desired.contains_key(k)) {
            self.map.remove(stale).context("removing from CAPTURE")?;
            removed += 1;
        }
        let mut added = 0;
        for (key, action) in desired {
            if self.map.get(key, 0).ok() != Some(*action) {
                self.map.insert(key, action, 0).context("adding to CAPTURE (map full?)")?;
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
        })
    }
}
