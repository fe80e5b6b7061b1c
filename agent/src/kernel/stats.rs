//! How full each eBPF map is, for `/metrics` and `/readyz`: capacity (read from the kernel at
//! load), entries (agent-owned maps: after each sync, from what the sync saw and wrote;
//! kernel-written LRU maps: counted by walking their keys every [`COUNT_EVERY`]) and the agent's
//! writes the kernel refused.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use serde::Serialize;

/// How often the kernel-written maps are counted. Walking a map costs one `bpf()` syscall per
/// entry (about a microsecond): at most 3 × 65 536 syscalls, ~0.1–0.2 s of one CPU, every
/// 10 s when every LRU map is full; nothing when they are empty.
pub(super) const COUNT_EVERY: Duration = Duration::from_secs(10);

/// One map's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct MapStat {
    /// Entries now; `None` for maps without countable entries (the ring buffer, the counters
    /// array) and before the first count.
    pub entries: Option<u64>,
    /// `max_entries` as loaded (bytes for the ring buffer).
    pub capacity: u64,
    /// Agent writes the kernel refused (a full map); retried at the next sync, each counted.
    pub update_failures: u64,
}

/// Shared figures of every map, by map name. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct MapStats(Arc<Mutex<BTreeMap<&'static str, MapStat>>>);

impl MapStats {
    pub(crate) fn update(&self, map: &'static str, change: impl FnOnce(&mut MapStat)) {
        if let Ok(mut maps) = self.0.lock() {
            change(maps.entry(map).or_default());
        }
    }

    pub(crate) fn get(&self, map: &str) -> MapStat {
        self.0.lock().ok().and_then(|m| m.get(map).copied()).unwrap_or_default()
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, MapStat> {
        self.0
            .lock()
            .map(|m| m.iter().map(|(name, stat)| (name.to_string(), *stat)).collect())
            .unwrap_or_default()
    }
}

/// A kernel-written map to count: its name and a handle of its own (a second fd on the pinned
/// map, so that counting never holds a lock the engine needs).
pub(super) struct Countable {
    name: &'static str,
    count: Box<dyn Fn(usize) -> usize + Send>,
}

impl Countable {
    /// `map` holds keys of type `K` (values are never read).
    pub(super) fn new<K: aya::Pod + Send, V: aya::Pod + Send>(
        name: &'static str,
        map: Map,
    ) -> anyhow::Result<Self> {
        let map: HashMap<MapData, K, V> = HashMap::try_from(map)?;
        // The walk stops at `cap`: keys deleted while walking can restart it from the start.
        let count = move |cap: usize| map.keys().take(cap).filter(Result::is_ok).count();
        Ok(Self { name, count: Box::new(count) })
    }
}

/// Counts `maps` now and then every [`COUNT_EVERY`], on a thread of its own, for the life of
/// the process.
pub(super) fn count_forever(maps: Vec<Countable>, stats: MapStats) -> anyhow::Result<()> {
    std::thread::Builder::new().name("bpf-map-count".into()).spawn(move || {
        loop {
            for map in &maps {
                let cap = usize::try_from(stats.get(map.name).capacity).unwrap_or(usize::MAX).max(1);
                let entries = (map.count)(cap) as u64;
                stats.update(map.name, |stat| stat.entries = Some(entries));
            }
            std::thread::sleep(COUNT_EVERY);
        }
    })?;
    Ok(())
}
