use super::*;
use crate::report::flows::fixtures::flow;

fn sample() -> Vec<FlowRecord> {
    let mut a = flow(1); // bookinfo/details 10.0.0.1:40000 → bookinfo/details 10.0.0.2:8080, mtls
    a.src.workload = Some("productpage".into());
    a.src.identity = Some("spiffe://cluster.local/ns/bookinfo/sa/productpage".into());
    let mut b = flow(2);
    b.src.workload = Some("productpage".into());
    b.dst = Endpoint { namespace: Some("default".into()), workload: Some("outsider".into()), ..b.dst };
    b.dst.ip = [10, 0, 1, 9].into();
    b.encryption = Encryption::Plaintext;
    let mut c = flow(3);
    c.verdict = Verdict::Denied;
    c.end = None;
    vec![a, b, c]
}

fn ids(filter: &FlowFilter) -> Vec<String> {
    sample().into_iter().filter(|r| filter.matches(r)).map(|r| r.id).collect()
}

#[test]
fn each_filter_selects() {
    let all = ["test-1", "test-2", "test-3"];
    assert_eq!(ids(&FlowFilter::default()), all);
    let f = |f: FlowFilter| ids(&f);
    assert_eq!(f(FlowFilter { namespace: vec!["default".into()], ..Default::default() }), ["test-2"]);
    assert_eq!(f(FlowFilter { workload: vec!["default/outsider".into()], ..Default::default() }), ["test-2"]);
    assert_eq!(f(FlowFilter { workload: vec!["outsider".into()], ..Default::default() }), ["test-2"]);
    assert_eq!(
        f(FlowFilter { from_workload: vec!["productpage".into()], ..Default::default() }),
        ["test-1", "test-2"]
    );
    assert_eq!(
        f(FlowFilter { to_workload: vec!["productpage".into()], ..Default::default() }),
        Vec::<String>::new()
    );
    let cidr = |s| parse_cidr(s).unwrap();
    assert_eq!(f(FlowFilter { to_ip: vec![cidr("10.0.1.0/24")], ..Default::default() }), ["test-2"]);
    assert_eq!(f(FlowFilter { from_ip: vec![cidr("10.0.0.1")], ..Default::default() }), all);
    assert_eq!(f(FlowFilter { identity: vec!["sa/productpage".into()], ..Default::default() }), ["test-1"]);
    assert_eq!(
        f(FlowFilter {
            identity: vec!["spiffe://cluster.local/ns/bookinfo/sa/productpage".into()],
            ..Default::default()
        }),
        ["test-1"]
    );
    assert_eq!(f(FlowFilter { verdict: vec![Verdict::Denied], ..Default::default() }), ["test-3"]);
    assert_eq!(f(FlowFilter { encryption: Some(Encryption::Plaintext), ..Default::default() }), ["test-2"]);
    assert_eq!(f(FlowFilter { port: vec![8080], ..Default::default() }), all);
    assert_eq!(f(FlowFilter { port: vec![9], ..Default::default() }), Vec::<String>::new());
    // Ports AND encryption.
    assert_eq!(
        f(FlowFilter { port: vec![8080], encryption: Some(Encryption::Mtls), ..Default::default() }),
        ["test-1", "test-3"]
    );
}

#[test]
fn time_windows() {
    let records = sample();
    let t2 = records[1].start;
    let f = |f: FlowFilter| ids(&f);
    // test-1 ended before test-2 started; test-3 is still open.
    assert_eq!(f(FlowFilter { since: Some(t2), ..Default::default() }), ["test-2", "test-3"]);
    assert_eq!(f(FlowFilter { until: Some(t2), ..Default::default() }), ["test-1", "test-2"]);
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
    assert_eq!(parse_time("5m", now), Ok(now - time::Duration::minutes(5)));
    assert_eq!(parse_time("2026-01-02T15:04:05Z", now).unwrap().unix_timestamp(), 1_767_366_245);
    assert!(parse_time("yesterday", now).is_err());
}

#[test]
fn values_parse_and_last_keeps_the_tail() {
    assert_eq!(parse_verdict("DENIED"), Ok(Verdict::Denied));
    assert!(parse_verdict("maybe").is_err());
    assert_eq!(parse_encryption("plaintext"), Ok(Encryption::Plaintext));
    assert_eq!(parse_cidr("10.1.0.0/16").map(|c| c.contains([10, 1, 2, 3].into())), Ok(true));
    assert!(parse_cidr("10.1.0.0/33").is_err());
    assert_eq!(parse_cidr("0.0.0.0/0").map(|c| c.contains([1, 2, 3, 4].into())), Ok(true));
    assert_eq!(last(vec![1, 2, 3, 4], Some(2)), [3, 4]);
    assert_eq!(last(vec![1, 2], Some(5)), [1, 2]);
    assert_eq!(last(vec![1, 2], None), [1, 2]);
}
