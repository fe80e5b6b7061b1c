//! The agent's bounded flow table: open flows plus the most recently closed ones, and the
//! updates `/flows?follow` streams to a bounded number of followers.
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;
use tokio::sync::broadcast;

use super::record::FlowRecord;

/// Limits of the flow table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlowLimits {
    /// Open flows tracked at once; beyond it the oldest open flow is evicted.
    pub max_open: usize,
    /// Closed flows kept for `/flows`; beyond it the oldest closed flow is dropped.
    pub max_closed: usize,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self { max_open: 65_536, max_closed: 10_000 }
    }
}

/// `/flows?follow` streams at once; one more is refused (503) and counted.
pub(crate) const MAX_FOLLOWERS: usize = 64;
/// Updates queued for followers (one ring shared by all); a follower that falls further behind
/// skips the oldest, counted as lagged.
pub(crate) const FOLLOW_BUFFER: usize = 4096;

/// What the table had to forget or could not match, so that nothing is lost silently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct FlowStats {
    pub open: usize,
    pub closed: usize,
    /// Open flows forgotten because the table was full.
    pub evicted_open: u64,
    /// Closed flows dropped from the recent list because it was full.
    pub evicted_closed: u64,
    /// Close events for connections the table never saw open (opened before the agent ran, or
    /// evicted, or their open event was dropped), recovered ones included.
    pub unmatched_closes: u64,
    /// Of those, closes made into whole records from the close event itself (it carries the
    /// start and the side): the open went to a previous agent or was dropped.
    pub recovered_closes: u64,
    /// `/flows?follow` streams open now.
    pub followers: usize,
    /// Followers refused because [`MAX_FOLLOWERS`] were following.
    pub followers_refused: u64,
    /// Updates queued for followers now.
    pub follow_queued: usize,
    /// Updates followers skipped because they fell more than [`FOLLOW_BUFFER`] behind.
    pub follow_lagged: u64,
}

/// Too many `/flows?follow` streams.
#[derive(Debug, thiserror::Error)]
#[error("{0} /flows followers already (at most {MAX_FOLLOWERS})")]
pub(crate) struct FollowersFull(pub usize);

/// A follower's stream of updates; it reports what it skipped through `lagged`.
pub(crate) struct Follower {
    pub updates: broadcast::Receiver<FlowRecord>,
    pub lagged: Arc<AtomicU64>,
}

/// Open flows keyed by an id the reporter chooses (the kernel socket cookie), in arrival order.
pub(crate) struct FlowTable {
    limits: FlowLimits,
    open: HashMap<u64, FlowRecord>,
    open_order: VecDeque<u64>,
    closed: VecDeque<FlowRecord>,
    stats: FlowStats,
    updates: broadcast::Sender<FlowRecord>,
    lagged: Arc<AtomicU64>,
}

impl FlowTable {
    pub(crate) fn new(limits: FlowLimits) -> Self {
        let (updates, _) = broadcast::channel(FOLLOW_BUFFER);
        Self {
            limits,
            open: HashMap::new(),
            open_order: VecDeque::new(),
            closed: VecDeque::new(),
            stats: FlowStats::default(),
            updates,
            lagged: Arc::default(),
        }
    }

    /// Every record the table stores or changes, as it happens (for `--follow`), unless
    /// [`MAX_FOLLOWERS`] already follow (counted).
    pub(crate) fn follow(&mut self) -> Result<Follower, FollowersFull> {
        let followers = self.updates.receiver_count();
        if followers >= MAX_FOLLOWERS {
            self.stats.followers_refused += 1;
            return Err(FollowersFull(followers));
        }
        Ok(Follower { updates: self.updates.subscribe(), lagged: self.lagged.clone() })
    }

    pub(crate) fn limits(&self) -> FlowLimits {
        self.limits
    }

    pub(crate) fn insert_open(&mut self, key: u64, record: FlowRecord) {
        if self.open.len() >= self.limits.max_open {
            self.evict_oldest_open();
        }
        let _ = self.updates.send(record.clone());
        if self.open.insert(key, record).is_none() {
            self.open_order.push_back(key);
        }
    }

    /// Closes an open flow; returns `None` (and counts it) when the key is unknown.
    pub(crate) fn close(&mut self, key: u64, finish: impl FnOnce(&mut FlowRecord)) -> Option<FlowRecord> {
        let Some(mut record) = self.open.remove(&key) else {
            self.stats.unmatched_closes += 1;
            return None;
        };
        finish(&mut record);
        self.push_closed(record.clone());
        Some(record)
    }

    /// Records a flow that is already over when reported (a reset, a denial).
    pub(crate) fn insert_closed(&mut self, record: FlowRecord) {
        self.push_closed(record);
    }

    /// Stores a flow rebuilt from a close event that matched no open flow.
    pub(crate) fn insert_recovered(&mut self, record: FlowRecord) {
        self.stats.recovered_closes += 1;
        self.push_closed(record);
    }

    fn push_closed(&mut self, record: FlowRecord) {
        let _ = self.updates.send(record.clone());
        if self.closed.len() >= self.limits.max_closed {
            self.closed.pop_front();
            self.stats.evicted_closed += 1;
        }
        self.closed.push_back(record);
        // Keep the order queue from growing with keys of flows already closed.
        if self.open_order.len() > 2 * self.open.len() + 64 {
            let open = &self.open;
            self.open_order.retain(|k| open.contains_key(k));
        }
    }

    fn evict_oldest_open(&mut self) {
        while let Some(key) = self.open_order.pop_front() {
            if self.open.remove(&key).is_some() {
                self.stats.evicted_open += 1;
                return;
            }
        }
    }

    /// Closed flows (oldest first), then open ones (oldest first).
    pub(crate) fn snapshot(&self) -> Vec<FlowRecord> {
        let mut out: Vec<FlowRecord> = self.closed.iter().cloned().collect();
        out.extend(self.open_order.iter().filter_map(|k| self.open.get(k)).cloned());
        out
    }

    pub(crate) fn stats(&self) -> FlowStats {
        FlowStats {
            open: self.open.len(),
            closed: self.closed.len(),
            followers: self.updates.receiver_count(),
            follow_queued: self.updates.len(),
            follow_lagged: self.lagged.load(Ordering::Relaxed),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests;
