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
    assert_eq!(counters.get(LimitReason::HandshakesPerSource), 1);
    assert_eq!(counters.get(LimitReason::Handshakes), 1);
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
    assert_eq!(counters.get(LimitReason::StreamsPerPeer), 1);
    drop(y1);
    assert_eq!(limiter.tables()[1].1.entries, 1, "an identity without streams is forgotten");
}
