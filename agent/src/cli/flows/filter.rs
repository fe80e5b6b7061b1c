//! Filters of `lockmesh flows`, like `hubble observe`'s: pure, so they are unit-tested. Values of
//! one flag are alternatives (OR); different flags must all hold (AND).
use std::net::Ipv4Addr;

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::report::flows::{Encryption, Endpoint, FlowRecord, Verdict};

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
pub(super) fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let addr = addr.parse().map_err(|_| format!("{text:?}: expected an IPv4 address or CIDR"))?;
    let prefix = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{text:?}: bad prefix"))?;
    Ok(Cidr { addr, prefix })
}

pub(super) fn parse_verdict(text: &str) -> Result<Verdict, String> {
    serde_json::from_value(serde_json::Value::String(text.to_ascii_lowercase()))
        .map_err(|_| format!("{text:?}: one of forwarded, reset, denied, error"))
}

pub(super) fn parse_encryption(text: &str) -> Result<Encryption, String> {
    match text.to_ascii_lowercase().as_str() {
        "mtls" | "mutual_tls" | "encrypted" => Ok(Encryption::Mtls),
        "plaintext" | "none" | "plain" => Ok(Encryption::Plaintext),
        _ => Err(format!("{text:?}: mtls or plaintext")),
    }
}

/// RFC 3339 (`2026-01-02T15:04:05Z`) or a time ago (`30s`, `5m`, `2h`, `1d`).
pub(super) fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let ago = crate::cli::parse::parse_duration(text)
        .map_err(|_| format!("{text:?}: expected RFC 3339 (2026-01-02T15:04:05Z) or a time ago (5m)"))?;
    Ok(now - ago)
}

pub(super) fn parse_time_now(text: &str) -> Result<OffsetDateTime, String> {
    parse_time(text, OffsetDateTime::now_utc())
}

/// The last `n` of `records` (all when `None`).
pub(super) fn last<T>(mut records: Vec<T>, n: Option<usize>) -> Vec<T> {
    if let Some(n) = n {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    records
}

#[cfg(test)]
mod tests;
