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

use crate::{bounds::TableStat, metrics::LimitCounters};

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
pub const MAX_PEERS: usize = 65_536;

impl LimitReason {
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

    /// Counts a limit that was hit.
    pub fn hit(&self, reason: LimitReason) {
        self.counters.inc(reason.label());
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
        let refused_handshakes = self.counters.get(LimitReason::Handshakes.label())
            + self.counters.get(LimitReason::HandshakesPerSource.label());
        vec![
            ("handshakes_by_source", TableStat::new(sources, self.limits.max_handshakes, refused_handshakes)),
            (
                "streams_by_peer",
                TableStat::new(peers, MAX_PEERS, self.counters.get(LimitReason::Peers.label())),
            ),
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
mod tests {
    use super::*;

    fn limiter(max: usize, per_source: usize, streams: usize) -> (Arc<Limiter>, LimitCounters) {
        let counters = LimitCounters::default();
        let limits = EngineLimits {
            max_handshakes: max,
            max_handshakes_per_source: per_source,
            max_streams_per_peer: streams,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        };
        (Limiter::new(limits, counters.clone()), counters)
    }

    #[test]
    fn handshakes_are_capped_per_source_then_in_all_and_released() {
        let (limiter, counters) = limiter(3, 2, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = limiter.handshake(a).unwrap();
        let _a2 = limiter.handshake(a).unwrap();
        assert_eq!(limiter.handshake(a).err(), Some(LimitReason::HandshakesPerSource));
        let _b1 = limiter.handshake(b).unwrap();
        assert_eq!(limiter.handshake(c).err(), Some(LimitReason::Handshakes));
        drop(a1);
        let _c1 = limiter.handshake(c).expect("a finished handshake frees its slot");
        assert_eq!(limiter.handshakes_in_progress(), 3);
        assert_eq!(counters.get("handshakes_per_source"), 1);
        assert_eq!(counters.get("handshakes"), 1);
        // Sources a and c hold slots; b's entry stays while its handshake runs.
        assert_eq!(limiter.tables()[0].1, TableStat::new(3, 3, 2));
    }

    #[test]
    fn streams_are_capped_per_identity() {
        let (limiter, counters) = limiter(1, 1, 2);
        let x: Arc<str> = "spiffe://cluster.local/ns/a/sa/x".into();
        let y: Arc<str> = "spiffe://cluster.local/ns/a/sa/y".into();
        let first = limiter.stream(&x).unwrap();
        let _second = limiter.stream(&x).unwrap();
        assert_eq!(limiter.stream(&x).err(), Some(LimitReason::StreamsPerPeer));
        let y1 = limiter.stream(&y).expect("another identity has its own budget");
        assert_eq!(limiter.tables()[1].1, TableStat::new(2, MAX_PEERS, 0));
        drop(first);
        assert!(limiter.stream(&x).is_ok());
        assert_eq!(counters.get("streams_per_peer"), 1);
        drop(y1);
        assert_eq!(limiter.tables()[1].1.entries, 1, "an identity without streams is forgotten");
    }
}
