//! Filters of `lockmesh flows`, like `hubble observe`'s: pure, so they are unit-tested. Values of
//! one flag are alternatives (OR); different flags must all hold (AND).
use std::net::Ipv4Addr;

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::flows::{Encryption, Endpoint, FlowRecord, Verdict};

#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    /// Either end in one of these namespaces.
    pub namespace: Vec<String>,
    /// Either end is one of these workloads (`name` or `namespace/name`).
    pub workload: Vec<String>,
    pub from_workload: Vec<String>,
    pub to_workload: Vec<String>,
    /// Client address in one of these (an address or a CIDR).
    pub from_ip: Vec<Cidr>,
    pub to_ip: Vec<Cidr>,
    /// Either end has this SPIFFE identity (a full `spiffe://` URI, or a part of one such as a
    /// service account `ns/bookinfo/sa/details`).
    pub identity: Vec<String>,
    pub verdict: Vec<Verdict>,
    pub encryption: Option<Encryption>,
    /// Either end's port.
    pub port: Vec<u16>,
    /// Flows still open at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Flows started at or before this time.
    pub until: Option<OffsetDateTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl FlowFilter {
    pub fn matches(&self, r: &FlowRecord) -> bool {
        let any =
            |list: &[String], test: &dyn Fn(&str) -> bool| list.is_empty() || list.iter().any(|v| test(v));
        let either = |test: &dyn Fn(&Endpoint) -> bool| test(&r.src) || test(&r.dst);
        any(&self.namespace, &|ns| either(&|e| e.namespace.as_deref() == Some(ns)))
            && any(&self.workload, &|w| either(&|e| workload_is(e, w)))
            && any(&self.from_workload, &|w| workload_is(&r.src, w))
            && any(&self.to_workload, &|w| workload_is(&r.dst, w))
            && (self.from_ip.is_empty() || self.from_ip.iter().any(|c| c.contains(r.src.ip)))
            && (self.to_ip.is_empty() || self.to_ip.iter().any(|c| c.contains(r.dst.ip)))
            && any(&self.identity, &|id| either(&|e| identity_is(e, id)))
            && (self.verdict.is_empty() || self.verdict.contains(&r.verdict))
            && self.encryption.is_none_or(|e| e == r.encryption)
            && (self.port.is_empty() || self.port.iter().any(|p| *p == r.src.port || *p == r.dst.port))
            && self.since.is_none_or(|since| r.end.is_none_or(|end| end >= since))
            && self.until.is_none_or(|until| r.start <= until)
    }
}

fn workload_is(e: &Endpoint, pattern: &str) -> bool {
    match pattern.split_once('/') {
        Some((ns, name)) => e.namespace.as_deref() == Some(ns) && e.workload.as_deref() == Some(name),
        None => e.workload.as_deref() == Some(pattern),
    }
}

fn identity_is(e: &Endpoint, pattern: &str) -> bool {
    let Some(identity) = e.identity.as_deref() else { return false };
    if pattern.starts_with("spiffe://") { identity == pattern } else { identity.contains(pattern) }
}

/// `10.0.0.1` or `10.0.0.0/24`.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let addr = addr.parse().map_err(|_| format!("{text:?}: expected an IPv4 address or CIDR"))?;
    let prefix = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{text:?}: bad prefix"))?;
    Ok(Cidr { addr, prefix })
}

pub fn parse_verdict(text: &str) -> Result<Verdict, String> {
    serde_json::from_value(serde_json::Value::String(text.to_ascii_lowercase()))
        .map_err(|_| format!("{text:?}: one of forwarded, reset, denied, error"))
}

pub fn parse_encryption(text: &str) -> Result<Encryption, String> {
    match text.to_ascii_lowercase().as_str() {
        "mtls" | "mutual_tls" | "encrypted" => Ok(Encryption::Mtls),
        "plaintext" | "none" | "plain" => Ok(Encryption::Plaintext),
        _ => Err(format!("{text:?}: mtls or plaintext")),
    }
}

/// RFC 3339 (`2026-01-02T15:04:05Z`) or a time ago (`30s`, `5m`, `2h`, `1d`).
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let ago = crate::cli::parse_duration(text)
        .map_err(|_| format!("{text:?}: expected RFC 3339 (2026-01-02T15:04:05Z) or a time ago (5m)"))?;
    Ok(now - ago)
}

pub fn parse_time_now(text: &str) -> Result<OffsetDateTime, String> {
    parse_time(text, OffsetDateTime::now_utc())
}

/// The last `n` of `records` (all when `None`).
pub fn last<T>(mut records: Vec<T>, n: Option<usize>) -> Vec<T> {
    if let Some(n) = n {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testutil::flow;

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
        assert_eq!(
            f(FlowFilter { workload: vec!["default/outsider".into()], ..Default::default() }),
            ["test-2"]
        );
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
        assert_eq!(
            f(FlowFilter { identity: vec!["sa/productpage".into()], ..Default::default() }),
            ["test-1"]
        );
        assert_eq!(
            f(FlowFilter {
                identity: vec!["spiffe://cluster.local/ns/bookinfo/sa/productpage".into()],
                ..Default::default()
            }),
            ["test-1"]
        );
        assert_eq!(f(FlowFilter { verdict: vec![Verdict::Denied], ..Default::default() }), ["test-3"]);
        assert_eq!(
            f(FlowFilter { encryption: Some(Encryption::Plaintext), ..Default::default() }),
            ["test-2"]
        );
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
}
