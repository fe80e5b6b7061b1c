use time::OffsetDateTime;

use super::*;
use crate::report::flows::record::{Encryption, Endpoint, Reporter};

fn endpoint(ip: [u8; 4], port: u16) -> Endpoint {
    Endpoint {
        ip: ip.into(),
        port,
        namespace: None,
        workload: None,
        service_account: None,
        identity: None,
        labels: Default::default(),
    }
}

fn record(id: u64) -> FlowRecord {
    FlowRecord::new(
        id.to_string(),
        OffsetDateTime::UNIX_EPOCH,
        "n".into(),
        Reporter::Source,
        endpoint([10, 0, 0, 1], 1),
        endpoint([10, 0, 0, 2], 2),
        Encryption::Plaintext,
    )
}

#[test]
fn open_then_close_moves_the_flow() {
    let mut table = FlowTable::new(FlowLimits::default());
    let mut updates = table.follow().unwrap().updates;
    table.insert_open(7, record(7));
    assert!(table.snapshot()[0].is_open());
    let closed =
        table.close(7, |r| r.close(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(2), 10, 20)).unwrap();
    assert_eq!((closed.bytes_sent, closed.bytes_received, closed.duration_ms), (10, 20, Some(2000)));
    let snapshot = table.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert!(!snapshot[0].is_open());
    assert!(updates.try_recv().unwrap().is_open());
    assert!(!updates.try_recv().unwrap().is_open());
}

#[test]
fn limits_evict_and_count() {
    let mut table = FlowTable::new(FlowLimits { max_open: 2, max_closed: 2 });
    for k in 0..3 {
        table.insert_open(k, record(k));
    }
    assert_eq!(table.stats().evicted_open, 1);
    assert!(table.close(0, |_| {}).is_none(), "the oldest was evicted");
    for k in [1, 2] {
        assert!(table.close(k, |_| {}).is_some());
    }
    table.insert_closed(record(9));
    let stats = table.stats();
    assert_eq!((stats.open, stats.closed, stats.evicted_closed, stats.unmatched_closes), (0, 2, 1, 1));
    let ids: Vec<_> = table.snapshot().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["2", "9"]);
}

#[test]
fn followers_are_capped_and_counted() {
    let mut table = FlowTable::new(FlowLimits::default());
    let followers: Vec<Follower> = (0..MAX_FOLLOWERS).map(|_| table.follow().unwrap()).collect();
    assert!(table.follow().is_err());
    let stats = table.stats();
    assert_eq!((stats.followers, stats.followers_refused), (MAX_FOLLOWERS, 1));
    table.insert_closed(record(1));
    assert_eq!(table.stats().follow_queued, 1);
    followers[0].lagged.fetch_add(3, Ordering::Relaxed);
    assert_eq!(table.stats().follow_lagged, 3);
    drop(followers);
    assert_eq!(table.stats().followers, 0);
    assert!(table.follow().is_ok(), "a follower that left frees its place");
}
