use std::net::Ipv4Addr;

use time::{Duration, OffsetDateTime};

use super::*;
use crate::report::flows::fixtures::flow;

const T0: i64 = 1_700_000_000;

/// A reset from `src` to 10.0.0.2:8080 at `T0 + ms` milliseconds.
fn reset(src: [u8; 4], ms: i64) -> FlowRecord {
    let mut record = flow(0);
    record.src.ip = Ipv4Addr::from(src);
    record.start = OffsetDateTime::from_unix_timestamp(T0).unwrap() + Duration::milliseconds(ms);
    record
}

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(T0 + seconds).unwrap()
}

#[test]
fn a_flood_is_one_group_per_source_destination_port_and_second() {
    let mut groups = ResetGroups::default();
    for ms in 0..2000 {
        assert!(groups.add(&reset([10, 0, 0, 9], ms)).is_empty());
    }
    groups.add(&reset([10, 0, 0, 8], 500));
    let mut other_reason = reset([10, 0, 0, 9], 700);
    other_reason.reason = Some("a fragment to a STRICT port: dropped".into());
    groups.add(&other_reason);
    let mut other_port = reset([10, 0, 0, 9], 600);
    other_port.dst.port = 9090;
    groups.add(&other_port);
    assert_eq!(groups.len(), 5);
    assert_eq!(groups.due(at(0)), vec![], "the first second is not over yet");
    let first = groups.due(at(1));
    let summary: Vec<_> = first.iter().map(|g| (g.src, g.port, g.count)).collect();
    let (nine, eight) = (Some(Ipv4Addr::new(10, 0, 0, 9)), Some(Ipv4Addr::new(10, 0, 0, 8)));
    assert_eq!(
        summary,
        vec![(nine, Some(8080), 1000), (eight, Some(8080), 1), (nine, Some(9090), 1), (nine, Some(8080), 1)],
        "another reason is another group"
    );
    assert_eq!((first[0].first, first[0].last), (at(0), at(0) + Duration::milliseconds(999)));
    assert_eq!(first[0].second, at(0));
    assert_eq!(first[0].sample.start, at(0), "the sample is the group's first reset");
    let rest = groups.all();
    assert_eq!(rest.iter().map(|g| (g.second, g.count)).collect::<Vec<_>>(), vec![(at(1), 1000)]);
    assert_eq!(groups.len(), 0);
}

#[test]
fn sources_beyond_the_bound_are_counted_without_names_and_nothing_is_lost() {
    let mut groups = ResetGroups::with_capacity(4);
    let mut written = Vec::new();
    // 4 itemised sources, then 20 more in the same second: one overflow group.
    for i in 0..24u8 {
        written.extend(groups.add(&reset([10, 1, 0, i], i64::from(i))));
    }
    assert_eq!(written, vec![]);
    assert_eq!(groups.len(), 5);
    // Overflow groups of 8 more seconds fill the state: it is written out, and counting goes on.
    for second in 1..=9 {
        written.extend(groups.add(&reset([10, 2, 0, 1], second * 1000)));
        written.extend(groups.add(&reset([10, 2, 0, 2], second * 1000)));
        written.extend(groups.add(&reset([10, 2, 0, 3], second * 1000)));
        written.extend(groups.add(&reset([10, 2, 0, 4], second * 1000)));
        written.extend(groups.add(&reset([10, 2, 0, 5], second * 1000)));
        assert!(groups.len() <= 4 + MAX_OVERFLOW_GROUPS, "bounded: {}", groups.len());
    }
    assert!(!written.is_empty(), "a full state is written out");
    written.extend(groups.all());
    assert_eq!(written.iter().map(|g| g.count).sum::<u64>(), 24 + 9 * 5, "every reset counted");
    let overflow = written.iter().find(|g| g.second == at(0) && g.src.is_none()).unwrap();
    assert_eq!((overflow.count, overflow.dst, overflow.port), (20, None, None));
    assert_eq!(overflow.sample.src.ip, Ipv4Addr::new(10, 1, 0, 4), "the first source not itemised");
}
