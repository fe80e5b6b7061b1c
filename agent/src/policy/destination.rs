//! The client side: does a connection use mesh mTLS? DestinationRules first, as Istio selects
//! them (pilot's `PushContext.destinationRule`), then auto mTLS.
//!
//! - A rule's `host` is resolved against its namespace when it is a short name without any dot
//!   (`reviews` → `reviews.<ns>.svc.<domain>`); anything with a dot (`reviews.bookinfo`) is taken
//!   as fully qualified, as Istio does. `*` matches every host.
//! - In a namespace, an exact host beats the most specific (longest) matching wildcard.
//! - Lookup: the client's namespace (rules visible there: `exportTo` empty, `*`, `.` or naming
//!   it); then the service's namespace, then the root namespace (rules exported beyond their own
//!   namespace, used if their `exportTo` is empty, has `*` or names the client's namespace). When
//!   the client is in the root namespace, its first step only sees the root's private rules. The
//!   first namespace with a matching host decides, even when that rule is not exported to the
//!   client (then there is no rule), as in Istio.
//! - Several rules for one host in one namespace merge: the oldest with a `trafficPolicy` gives
//!   it (exportTo is the union of theirs; Istio may keep rules with different exportTo apart).
//! - `portLevelSettings` for the service port replace the top-level policy for that port.
//! - ISTIO_MUTUAL ⇒ mTLS; DISABLE ⇒ plaintext; SIMPLE / MUTUAL (TLS origination) ⇒ not mesh
//!   mTLS, sent as plaintext to the mesh tunnel; no rule or no `tls` ⇒ auto mTLS: mTLS when the
//!   destination is in the mesh and its server mode on the target port is not DISABLE.
//! - Rules with a `workloadSelector` are ignored (lockmesh does not support them).
use std::{collections::BTreeSet, fmt};

use super::{
    MeshParams, MtlsMode,
    peer::{Resolved, effective_mtls},
    service_for_workload_port, service_fqdn, target_port,
};
use crate::cluster::model::{
    ClusterState, DestinationRule, ObjectKey, Protocol, Service, TlsMode, TrafficPolicy, Workload,
    creation_order,
};

/// Where a client connects.
#[derive(Clone, Copy, Debug)]
pub enum Destination<'a> {
    /// A Service's port, load-balanced to `endpoint`. The endpoint's port is the TCP service
    /// port's target port (`port` itself if the service does not list it).
    Service { service: &'a Service, port: u16, endpoint: &'a Workload },
    /// A workload's IP dialed directly, on `port` (a workload port). Istio applies the rules of the
    /// Service selecting the pod on that port (the first by `namespace/name` if several).
    Workload { workload: &'a Workload, port: u16 },
}

/// The client side's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub mtls: bool,
    /// What decided: a DestinationRule when its `tls` applies; otherwise (auto mTLS) the
    /// PeerAuthentication that gave the destination's mode, if any.
    pub decided_by: Option<DecidedBy>,
    /// The rule's TLS mode, when a rule's `tls` applies.
    pub tls_mode: Option<TlsMode>,
    /// A short human explanation.
    pub reason: String,
}

/// The Istio object behind a client-side decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// A DestinationRule's `tls` (or its port-level settings) applies.
    DestinationRule(ObjectKey),
    /// Auto mTLS followed the destination's mode, which this PeerAuthentication set.
    PeerAuthentication(ObjectKey),
}

impl Outbound {
    /// The DestinationRule that decided, if one did.
    pub fn destination_rule(&self) -> Option<&ObjectKey> {
        match &self.decided_by {
            Some(DecidedBy::DestinationRule(key)) => Some(key),
            _ => None,
        }
    }
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DestinationRule(key) => write!(f, "DestinationRule {key}"),
            Self::PeerAuthentication(key) => write!(f, "PeerAuthentication {key}"),
        }
    }
}

/// Everything policy decides for one connection, evaluated once when it is routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The client side: mesh mTLS or not, and why.
    pub outbound: Outbound,
    /// The mode the destination enforces on the port the connection reaches.
    pub server: Resolved,
    /// The Service the connection goes to, as its host name (`name.namespace.svc.<domain>`): the
    /// one dialled, else the one selecting the destination on that port.
    pub service: Option<String>,
}

/// The client side's and the server side's decisions for a connection from a client in
/// `client_namespace` to `dest` (see [`outbound_tls`]), and the Service it goes to.
pub fn decide(
    state: &ClusterState,
    params: &MeshParams,
    client_namespace: &str,
    dest: &Destination<'_>,
    dst_in_mesh: bool,
) -> Decision {
    let target = Target::of(state, dest);
    let server = effective_mtls(state, params, target.endpoint, Some(target.workload_port));
    let outbound = client_side(state, params, client_namespace, &target, dst_in_mesh, || server.clone());
    let service = target.service.map(|s| service_fqdn(s, &params.domain));
    Decision { outbound, server, service }
}

/// Whether a connection from a client in `client_namespace` to `dest` uses mesh mTLS.
/// `dst_in_mesh`: the destination workload is enrolled (can terminate mesh mTLS).
pub fn outbound_tls(
    state: &ClusterState,
    params: &MeshParams,
    client_namespace: &str,
    dest: &Destination<'_>,
    dst_in_mesh: bool,
) -> Outbound {
    let target = Target::of(state, dest);
    client_side(state, params, client_namespace, &target, dst_in_mesh, || {
        effective_mtls(state, params, target.endpoint, Some(target.workload_port))
    })
}

/// The Service (and service port) rules are looked up for, the endpoint and its port.
struct Target<'a> {
    service: Option<&'a Service>,
    service_port: u16,
    endpoint: &'a Workload,
    workload_port: u16,
}

impl<'a> Target<'a> {
    fn of(state: &'a ClusterState, dest: &Destination<'a>) -> Self {
        match *dest {
            Destination::Service { service, port, endpoint } => {
                let entry = service.ports.iter().find(|p| p.port == port && p.protocol == Protocol::Tcp);
                let workload_port = entry.map_or(port, |p| target_port(p, endpoint));
                Self { service: Some(service), service_port: port, endpoint, workload_port }
            }
            Destination::Workload { workload, port } => {
                match service_for_workload_port(state, workload, port) {
                    Some((service, entry)) => Self {
                        service: Some(service),
                        service_port: entry.port,
                        endpoint: workload,
                        workload_port: port,
                    },
                    None => {
                        Self { service: None, service_port: port, endpoint: workload, workload_port: port }
                    }
                }
            }
        }
    }
}

/// The client side's decision; `server` gives the destination's mode when auto mTLS needs it.
fn client_side(
    state: &ClusterState,
    params: &MeshParams,
    client_namespace: &str,
    target: &Target<'_>,
    dst_in_mesh: bool,
    server: impl FnOnce() -> Resolved,
) -> Outbound {
    let service_port = target.service_port;
    let rule = target.service.and_then(|s| {
        let host = service_fqdn(s, &params.domain);
        destination_rule(state, params, client_namespace, &s.key.namespace, &host)
    });
    let rule_tls = rule.as_ref().and_then(|r| {
        let policy = r.policy?;
        match policy.port_level.get(&service_port) {
            Some(tls) => tls.map(|mode| (mode, true)),
            None => policy.tls.map(|mode| (mode, false)),
        }
    });

    if let (Some(rule), Some((mode, port_level))) = (&rule, rule_tls) {
        let decided_by = DecidedBy::DestinationRule(rule.rule.key.clone());
        let port = if port_level { format!(" for port {service_port}") } else { String::new() };
        let (mtls, tail) = match mode {
            TlsMode::IstioMutual if dst_in_mesh => (true, String::new()),
            TlsMode::IstioMutual => (true, " (destination not in the mesh: it cannot accept mTLS)".into()),
            TlsMode::Disable => (false, String::new()),
            TlsMode::Simple | TlsMode::Mutual => {
                (false, ": TLS origination, not mesh mTLS; plaintext to the mesh tunnel".into())
            }
        };
        return Outbound {
            mtls,
            reason: format!("{decided_by} sets {mode}{port}{tail}"),
            decided_by: Some(decided_by),
            tls_mode: Some(mode),
        };
    }

    let rule_note = match &rule {
        Some(r) => format!(" (DestinationRule {} sets no tls)", r.rule.key),
        None => String::new(),
    };
    if !dst_in_mesh {
        return Outbound {
            mtls: false,
            decided_by: None,
            tls_mode: None,
            reason: format!("auto mTLS{rule_note}: destination not in mesh"),
        };
    }
    let server = server();
    Outbound {
        mtls: server.mode != MtlsMode::Disable,
        tls_mode: None,
        reason: format!("auto mTLS{rule_note}: destination in mesh, {}", server.describe()),
        decided_by: server.decided_by.map(DecidedBy::PeerAuthentication),
    }
}

/// The rule that applies, and the traffic policy of the merged rules for its host.
#[derive(Debug)]
struct Selected<'a> {
    /// The rule giving the policy (the oldest with one), or the oldest if none has one.
    rule: &'a DestinationRule,
    policy: Option<&'a TrafficPolicy>,
}

/// `spec.host` as Istio resolves it (`ResolveShortnameToFQDN`).
pub(super) fn resolve_host(host: &str, namespace: &str, domain: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain}")
    }
}

/// Istio's `MostSpecificHostMatch`: the exact host, else the longest wildcard matching it.
fn most_specific<'h>(needle: &str, hosts: impl Iterator<Item = &'h str>) -> Option<&'h str> {
    let mut best: Option<&str> = None;
    for host in hosts {
        if host == needle {
            return Some(host);
        }
        if let Some(suffix) = host.strip_prefix('*')
            && needle.ends_with(suffix)
            && best.is_none_or(|b| host.len() > b.len())
        {
            best = Some(host);
        }
    }
    best
}

/// A rule visible only in its own namespace (`exportTo: [.]` or its own name, alone).
fn private_only(rule: &DestinationRule) -> bool {
    matches!(rule.export_to.as_slice(), [one] if one == "." || *one == rule.key.namespace)
}

/// Visible to clients of its own namespace (Istio's namespace-local index).
fn namespace_local(rule: &DestinationRule) -> bool {
    rule.export_to.is_empty()
        || rule.export_to.iter().any(|e| e == "*" || e == "." || *e == rule.key.namespace)
}

/// Istio's lookup order (see the module documentation).
fn destination_rule<'a>(
    state: &'a ClusterState,
    params: &MeshParams,
    client_namespace: &str,
    service_namespace: &str,
    host: &str,
) -> Option<Selected<'a>> {
    let rules: Vec<(&'a DestinationRule, String)> = state
        .destination_rules
        .iter()
        .filter(|r| r.workload_selector.is_empty())
        .map(|r| (&**r, resolve_host(&r.host, &r.key.namespace, &params.domain)))
        .collect();
    let in_namespace =
        |ns: &str, keep: &dyn Fn(&DestinationRule) -> bool| -> Vec<(&'a DestinationRule, &str)> {
            rules
                .iter()
                .filter(|(r, _)| r.key.namespace == ns && keep(r))
                .map(|(r, h)| (*r, h.as_str()))
                .collect()
        };
    let root = params.root_namespace.as_str();

    // 1. The client's namespace (for a client in the root namespace: the root's private rules).
    let local = if client_namespace != root {
        in_namespace(client_namespace, &namespace_local)
    } else {
        in_namespace(root, &private_only)
    };
    if let Some(found) = pick(&local, host) {
        return merge(found);
    }
    // 2. Exported rules of the service's namespace, then of the root namespace.
    for namespace in [service_namespace, root] {
        let exported = in_namespace(namespace, &|r: &DestinationRule| !private_only(r));
        if let Some(found) = pick(&exported, host) {
            let export_to: BTreeSet<&str> =
                found.iter().flat_map(|r| r.export_to.iter().map(String::as_str)).collect();
            let everywhere = found.iter().any(|r| r.export_to.is_empty());
            if everywhere || export_to.contains("*") || export_to.contains(client_namespace) {
                return merge(found);
            }
            // Istio does not fall back to a less specific host here.
        }
    }
    None
}

/// The rules (of one namespace's index) for the most specific host matching `host`.
fn pick<'a>(rules: &[(&'a DestinationRule, &str)], host: &str) -> Option<Vec<&'a DestinationRule>> {
    let best = most_specific(host, rules.iter().map(|(_, h)| *h))?;
    Some(rules.iter().filter(|(_, h)| *h == best).map(|(r, _)| *r).collect())
}

/// Merges the rules of one host (never empty when `pick` found them).
fn merge(mut rules: Vec<&DestinationRule>) -> Option<Selected<'_>> {
    rules.sort_by(|a, b| creation_order((a.creation_timestamp, &a.key), (b.creation_timestamp, &b.key)));
    let rule = rules.iter().find(|r| r.traffic_policy.is_some()).or(rules.first())?;
    Some(Selected { rule, policy: rule.traffic_policy.as_ref() })
}

#[cfg(test)]
mod tests;
