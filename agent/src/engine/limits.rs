//! Bounds on what peers can make the engine hold: concurrent TLS handshakes (in all and per
//! source address), how long a handshake may take, how long an HBONE connection may sit without
//! streams, and how many streams one peer identity may have open. A slowloris on :15008 then
//! holds a few handshake slots of its own source for a few seconds, not the engine.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::sys::bounds::TableStat;

/// The limits, from the agent's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineLimits {
    /// TLS handshakes in progress on :15008, all pods and sources together.
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one source address.
    pub max_handshakes_per_source: usize,
    /// Time for a peer to finish the TLS handshake and the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// An inbound HBONE connection without streams for this long is closed.
    pub idle_timeout: Duration,
    /// Inbound tunnel streams one peer identity may have open, over all its connections.
    pub max_streams_per_peer: usize,
}

/// Why the engine refused or closed something; the `reason` label of
/// `lockmesh_connections_limited_total` and part of the flow's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitReason {
    Handshakes,
    HandshakesPerSource,
    HandshakeTimeout,
    IdleTimeout,
    StreamsPerPeer,
    /// [`MAX_PEERS`] identities already have streams open.
    Peers,
    /// The HBONE connection pool is full of busy connections.
    HbonePool,
}

/// Peer identities tracked with open streams at once; a stream of one more identity is refused
/// (429) and counted. Each needs a certificate of the mesh's CA, so this only bounds a mesh
/// with more distinct clients of one node than any real one has.
pub(crate) const MAX_PEERS: usize = 65_536;

impl LimitReason {
    /// Every reason, in the order of the counters.
    pub const ALL: [LimitReason; 7] = [
        LimitReason::Handshakes,
        LimitReason::HandshakesPerSource,
        LimitReason::HandshakeTimeout,
        LimitReason::IdleTimeout,
        LimitReason::StreamsPerPeer,
        LimitReason::Peers,
        LimitReason::HbonePool,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LimitReason::Handshakes => "handshakes",
            LimitReason::HandshakesPerSource => "handshakes_per_source",
            LimitReason::HandshakeTimeout => "handshake_timeout",
            LimitReason::IdleTimeout => "idle_timeout",
            LimitReason::StreamsPerPeer => "streams_per_peer",
            LimitReason::Peers => "peers",
            LimitReason::HbonePool => "hbone_pool",
        }
    }
}

/// How often each limit was hit, by reason: `lockmesh_connections_limited_total{reason}`, read
/// when the metrics are scraped. Cheap to clone; clones count together.
#[derive(Clone, Default)]
pub struct LimitCounters(Arc<[AtomicU64; LimitReason::ALL.len()]>);

impl LimitCounters {
    pub fn inc(&self, reason: LimitReason) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: LimitReason) -> u64 {
        self.0[reason as usize].load(Ordering::Relaxed)
    }

    /// Every reason's label and count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        LimitReason::ALL.iter().map(|reason| (reason.label(), self.get(*reason))).collect()
    }
}

/// Counts in-flight handshakes and open streams against [`EngineLimits`].
pub struct Limiter {
    pub limits: EngineLimits,
    counters: LimitCounters,
    handshakes: Mutex<Usage<IpAddr>>,
    streams: Mutex<HashMap<Arc<str>, usize>>,
    /// Unix second of the last refusal logged (a flood must not flood the log too).
    logged_at: AtomicU64,
}

struct Usage<K> {
    total: usize,
    by_key: HashMap<K, usize>,
}

impl<K> Default for Usage<K> {
    fn default() -> Self {
        Self { total: 0, by_key: HashMap::new() }
    }
}

/// A handshake slot; released on drop.
pub struct HandshakePermit {
    limiter: Arc<Limiter>,
    source: IpAddr,
}

/// A stream slot of one peer identity; released on drop.
pub struct StreamPermit {
    limiter: Arc<Limiter>,
    identity: Arc<str>,
}

impl Limiter {
    pub fn new(limits: EngineLimits, counters: LimitCounters) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counters,
            handshakes: Mutex::default(),
            streams: Mutex::default(),
            logged_at: AtomicU64::new(0),
        })
    }

    /// Whether to log a refusal now: at most once a second (the counter has them all).
    pub fn should_log(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.logged_at.swap(now, Ordering::Relaxed) != now
    }

    /// How often each limit was hit.
    pub fn counters(&self) -> &LimitCounters {
        &self.counters
    }

    /// Counts a limit that was hit.
    pub fn hit(&self, reason: LimitReason) {
        self.counters.inc(reason);
    }

    /// A slot for a handshake from `source`, or which limit refused it (counted).
    pub fn handshake(self: &Arc<Self>, source: IpAddr) -> Result<HandshakePermit, LimitReason> {
        let refused = {
            let Ok(mut usage) = self.handshakes.lock() else { return Err(LimitReason::Handshakes) };
            let from_source = usage.by_key.get(&source).copied().unwrap_or(0);
            if usage.total >= self.limits.max_handshakes {
                Some(LimitReason::Handshakes)
            } else if from_source >= self.limits.max_handshakes_per_source {
                Some(LimitReason::HandshakesPerSource)
            } else {
                usage.total += 1;
                *usage.by_key.entry(source).or_default() += 1;
                None
            }
        };
        match refused {
            Some(reason) => {
                self.hit(reason);
                Err(reason)
            }
            None => Ok(HandshakePermit { limiter: self.clone(), source }),
        }
    }

    /// A slot for one more inbound stream of `identity`, or which limit refused it (counted):
    /// it has `max_streams_per_peer` open, or [`MAX_PEERS`] other identities have streams.
    pub fn stream(self: &Arc<Self>, identity: &Arc<str>) -> Result<StreamPermit, LimitReason> {
        let refused = match self.streams.lock() {
            Err(_) => Some(LimitReason::StreamsPerPeer),
            Ok(streams) if !streams.contains_key(identity) && streams.len() >= MAX_PEERS => {
                Some(LimitReason::Peers)
            }
            Ok(mut streams) => {
                let open = streams.entry(identity.clone()).or_default();
                let room = *open < self.limits.max_streams_per_peer;
                if room {
                    *open += 1;
                }
                (!room).then_some(LimitReason::StreamsPerPeer)
            }
        };
        match refused {
            None => Ok(StreamPermit { limiter: self.clone(), identity: identity.clone() }),
            Some(reason) => {
                self.hit(reason);
                Err(reason)
            }
        }
    }

    /// The sizes of the limiter's tables: handshakes in progress by source address (at most
    /// `max_handshakes` sources; refusals are the handshake limits' hits) and open streams by
    /// peer identity (at most [`MAX_PEERS`]).
    pub fn tables(&self) -> Vec<(&'static str, TableStat)> {
        let sources = self.handshakes.lock().map_or(0, |u| u.by_key.len());
        let peers = self.streams.lock().map_or(0, |s| s.len());
        let refused_handshakes =
            self.counters.get(LimitReason::Handshakes) + self.counters.get(LimitReason::HandshakesPerSource);
        vec![
            ("handshakes_by_source", TableStat::new(sources, self.limits.max_handshakes, refused_handshakes)),
            ("streams_by_peer", TableStat::new(peers, MAX_PEERS, self.counters.get(LimitReason::Peers))),
        ]
    }

    /// Handshakes in progress (all sources), for tests.
    #[cfg(test)]
    fn handshakes_in_progress(&self) -> usize {
        self.handshakes.lock().map(|u| u.total).unwrap_or(0)
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        if let Ok(mut usage) = self.limiter.handshakes.lock() {
            usage.total = usage.total.saturating_sub(1);
            if let Some(n) = usage.by_key.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    usage.by_key.remove(&self.source);
                }
            }
        }
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.limiter.streams.lock()
            && let Some(n) = streams.get_mut(&self.identity)
        {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests;
