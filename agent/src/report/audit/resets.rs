//! Kernel resets counted per source address, destination address, destination port and second
//! (and verdict and reason, so that different refusals are never folded together), for the audit
//! log: a pod flooding a STRICT port with SYNs leaves one line per second, not one
//! per SYN. The state is bounded: past [`MAX_RESET_GROUPS`] groups, resets from further sources
//! are counted in one line per second that names no source (`src`, `dst`, `port` null); past
//! that, everything held is written out at once. Nothing is dropped.
use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
    net::Ipv4Addr,
};

use time::OffsetDateTime;

use super::chain::ResetGroup;
use crate::report::flows::FlowRecord;

/// Itemised groups held at once (≈ 1 KiB each).
pub(crate) const MAX_RESET_GROUPS: usize = 512;
/// Un-itemised (overflow) groups held besides, one per second.
const MAX_OVERFLOW_GROUPS: usize = 8;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    second: i64,
    /// Hash of the verdict and reason: a group's `sample` speaks for all of its resets.
    kind: u64,
    /// Source, destination and destination port; `None` for the overflow group of a second.
    itemised: Option<(Ipv4Addr, Ipv4Addr, u16)>,
}

/// The resets not yet written.
pub(crate) struct ResetGroups {
    groups: HashMap<Key, ResetGroup>,
    max: usize,
}

impl Default for ResetGroups {
    fn default() -> Self {
        Self::with_capacity(MAX_RESET_GROUPS)
    }
}

impl ResetGroups {
    pub(crate) fn with_capacity(max: usize) -> Self {
        Self { groups: HashMap::new(), max }
    }

    /// Groups held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }

    /// Counts one reset (a finished flow record with the kernel's time in `start`). Returns the
    /// groups to write now: all of them when the state was full, else none.
    pub(crate) fn add(&mut self, record: &FlowRecord) -> Vec<ResetGroup> {
        let second = record.start.unix_timestamp();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (record.verdict.to_string(), &record.reason).hash(&mut hasher);
        let kind = hasher.finish();
        let itemised = Key { second, kind, itemised: Some((record.src.ip, record.dst.ip, record.dst.port)) };
        let overflow = Key { second, kind, itemised: None };
        let mut flushed = Vec::new();
        let key = if self.groups.contains_key(&itemised) || self.groups.len() < self.max {
            itemised
        } else if self.groups.contains_key(&overflow) || self.groups.len() < self.max + MAX_OVERFLOW_GROUPS {
            overflow
        } else {
            flushed = self.drain(|_| true);
            itemised
        };
        let group = self.groups.entry(key).or_insert_with(|| ResetGroup {
            second: OffsetDateTime::from_unix_timestamp(second).unwrap_or(record.start),
            src: key.itemised.map(|(src, _, _)| src),
            dst: key.itemised.map(|(_, dst, _)| dst),
            port: key.itemised.map(|(_, _, port)| port),
            count: 0,
            first: record.start,
            last: record.start,
            sample: record.clone(),
        });
        group.count += 1;
        group.first = group.first.min(record.start);
        group.last = group.last.max(record.start);
        flushed
    }

    /// The groups of seconds before `now` (a second is written once it is over), oldest first.
    pub(crate) fn due(&mut self, now: OffsetDateTime) -> Vec<ResetGroup> {
        let now = now.unix_timestamp();
        self.drain(|key| key.second < now)
    }

    /// Every group (shutdown), oldest first.
    pub(crate) fn all(&mut self) -> Vec<ResetGroup> {
        self.drain(|_| true)
    }

    fn drain(&mut self, take: impl Fn(&Key) -> bool) -> Vec<ResetGroup> {
        let keys: Vec<Key> = self.groups.keys().filter(|k| take(k)).copied().collect();
        let mut out: Vec<ResetGroup> = keys.iter().filter_map(|k| self.groups.remove(k)).collect();
        out.sort_by_key(|g| (g.second, g.src.is_none(), g.first, g.src, g.dst, g.port));
        out
    }
}

#[cfg(test)]
mod tests;
