//! `/metrics`: Istio's standard TCP metrics (same names and labels, so Istio dashboards work)
//! and lockmesh's own, in the Prometheus text format. Fed by the flow sink, once per flow and
//! reporter; gauges and kernel counters are read at scrape time.
use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    bounds::{TableStat, Tables},
    flows::{Encryption, FlowObserver, FlowRecord, FlowStats, Verdict},
    identity::CertificateStatus,
    kernel::{CounterValues, MapStat},
};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

const UNKNOWN: &str = "unknown";

/// Istio's label set of `istio_tcp_*` (names exactly as Istio's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub connection_security_policy: String,
    pub request_protocol: String,
    pub response_flags: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetLabels {
    destination_workload: String,
    destination_workload_namespace: String,
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictedLabels {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

/// Series of `lockmesh_resets_total` at most: its `port` label comes from traffic (a port scan
/// of a STRICT pod would otherwise add one series per port). Beyond it, new series count under
/// `port="other"`.
pub const MAX_RESET_SERIES: usize = 4096;

/// What `/metrics` shows of the agent's bounds, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Bounds {
    /// Every eBPF map, by name.
    pub maps: BTreeMap<String, MapStat>,
    /// The agent's own tables.
    pub tables: Tables,
    /// Captured connections the engine found no original destination for.
    pub captured_without_destination: u64,
}

/// `lockmesh_connections_limited_total{reason}`: what the engine refused or closed because a
/// limit was reached (see `proxy::limits`). Cheap to clone; clones count into the same family.
#[derive(Clone, Default)]
pub struct LimitCounters(Family<ReasonLabels, Counter>);

impl LimitCounters {
    pub fn inc(&self, reason: &str) {
        self.0.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }

    pub fn get(&self, reason: &str) -> u64 {
        self.0.get_or_create(&ReasonLabels { reason: reason.to_string() }).get()
    }
}

pub struct Metrics {
    registry: Registry,
    limited: LimitCounters,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    resets: Family<ResetLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    tracked: Gauge,
    evicted: Family<EvictedLabels, Counter>,
    kernel_drops: Counter,
    spoof_drops: Counter,
    kernel_received: Counter,
    cert_expiry: Family<IdentityLabels, Gauge>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    map_update_failures: Family<MapLabels, Counter>,
    table_entries: Family<EvictedLabels, Gauge>,
    table_capacity: Family<EvictedLabels, Gauge>,
    table_overflows: Family<EvictedLabels, Counter>,
    captured_without_destination: Counter,
    /// Series of `resets`, and resets that went to `port="other"` because there were
    /// [`MAX_RESET_SERIES`].
    reset_series: AtomicUsize,
    reset_series_overflows: AtomicU64,
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            opened: Family::default(),
            closed: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            resets: Family::default(),
            handshake_failures: Family::default(),
            tracked: Gauge::default(),
            evicted: Family::default(),
            kernel_drops: Counter::default(),
            spoof_drops: Counter::default(),
            kernel_received: Counter::default(),
            cert_expiry: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_update_failures: Family::default(),
            table_entries: Family::default(),
            table_capacity: Family::default(),
            table_overflows: Family::default(),
            captured_without_destination: Counter::default(),
            reset_series: AtomicUsize::new(0),
            reset_series_overflows: AtomicU64::new(0),
            scrape: Mutex::new(()),
            limited: LimitCounters::default(),
            registry: Registry::default(),
        };
        // Counter names get `_total` from the encoder.
        let r = &mut registry;
        r.register("istio_tcp_connections_opened", "TCP connections opened", metrics.opened.clone());
        r.register("istio_tcp_connections_closed", "TCP connections closed", metrics.closed.clone());
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent in responses (server to client)",
            metrics.sent.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received in requests (client to server)",
            metrics.received.clone(),
        );
        r.register("lockmesh_flows_tracked", "Open flows in the agent's flow table", metrics.tracked.clone());
        r.register(
            "lockmesh_flows_evicted",
            "Flows dropped from the flow table because it was full (open: never reported closed)",
            metrics.evicted.clone(),
        );
        r.register(
            "lockmesh_kernel_events_dropped",
            "Kernel flow events lost because the ring buffer was full",
            metrics.kernel_drops.clone(),
        );
        r.register(
            "lockmesh_spoofed_packets_dropped",
            "Packets an enrolled pod sent from an IPv4 address not its own (or VLAN-tagged), dropped in the kernel",
            metrics.spoof_drops.clone(),
        );
        r.register(
            "lockmesh_connections_limited",
            "Connections, handshakes and streams the engine refused or closed at a limit, by reason",
            metrics.limited.0.clone(),
        );
        r.register(
            "lockmesh_kernel_events_received",
            "Kernel flow events the agent read from the ring buffer (with the dropped ones: every event the kernel had)",
            metrics.kernel_received.clone(),
        );
        r.register("lockmesh_resets", "Connections reset or denied, by destination", metrics.resets.clone());
        r.register(
            "lockmesh_handshake_failures",
            "Failed mTLS handshakes, by reason",
            metrics.handshake_failures.clone(),
        );
        r.register(
            "lockmesh_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of each workload certificate the agent holds",
            metrics.cert_expiry.clone(),
        );
        r.register(
            "lockmesh_bpf_map_entries",
            "Entries in each eBPF map (agent-owned maps: after each sync; ORIG_DST, ORIG_DST_BY_PORT, FIN_WAIT2_RCV_NXT: counted every 10 s)",
            metrics.map_entries.clone(),
        );
        r.register(
            "lockmesh_bpf_map_capacity",
            "Capacity (max entries; bytes for the FLOW_EVENTS ring buffer) of each eBPF map",
            metrics.map_capacity.clone(),
        );
        r.register(
            "lockmesh_bpf_map_update_failures",
            "Agent writes to an eBPF map the kernel refused (map full); retried every second, each counted",
            metrics.map_update_failures.clone(),
        );
        r.register(
            "lockmesh_table_entries",
            "Entries in each of the agent's bounded tables",
            metrics.table_entries.clone(),
        );
        r.register(
            "lockmesh_table_capacity",
            "The most entries each of the agent's tables may hold",
            metrics.table_capacity.clone(),
        );
        r.register(
            "lockmesh_table_overflows",
            "Entries a full table evicted, or additions it refused (the table's policy says which)",
            metrics.table_overflows.clone(),
        );
        r.register(
            "lockmesh_captured_without_destination",
            "Captured connections the engine accepted without an original destination in the kernel (evicted from ORIG_DST or ORIG_DST_BY_PORT); reset",
            metrics.captured_without_destination.clone(),
        );
        Self { registry, ..metrics }
    }

    /// The engine's limit counters, registered here.
    pub fn limit_counters(&self) -> LimitCounters {
        self.limited.clone()
    }

    /// The Prometheus text exposition, with scrape-time values filled in.
    pub fn render(
        &self,
        flows: FlowStats,
        kernel: CounterValues,
        kernel_events_received: u64,
        certificates: &[CertificateStatus],
        bounds: &Bounds,
    ) -> String {
        let _guard = self.scrape.lock();
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for (name, map) in &bounds.maps {
            let labels = MapLabels { map: name.clone() };
            if let Some(entries) = map.entries {
                self.map_entries.get_or_create(&labels).set(gauge(entries));
            }
            self.map_capacity.get_or_create(&labels).set(gauge(map.capacity));
            let failures = self.map_update_failures.get_or_create(&labels);
            failures.inc_by(map.update_failures.saturating_sub(failures.get()));
        }
        let mut tables = bounds.tables.clone();
        tables.insert("reset_series", self.reset_series());
        for (name, table) in &tables {
            let labels = EvictedLabels { table: name.to_string() };
            self.table_entries.get_or_create(&labels).set(gauge(table.entries));
            self.table_capacity.get_or_create(&labels).set(gauge(table.capacity));
            let overflows = self.table_overflows.get_or_create(&labels);
            overflows.inc_by(table.overflows.saturating_sub(overflows.get()));
        }
        self.captured_without_destination.inc_by(
            bounds.captured_without_destination.saturating_sub(self.captured_without_destination.get()),
        );
        self.tracked.set(i64::try_from(flows.open).unwrap_or(i64::MAX));
        let catch_up = |counter: &Counter, value: u64| {
            counter.inc_by(value.saturating_sub(counter.get()));
        };
        catch_up(&self.evicted.get_or_create(&EvictedLabels { table: "open".into() }), flows.evicted_open);
        catch_up(
            &self.evicted.get_or_create(&EvictedLabels { table: "closed".into() }),
            flows.evicted_closed,
        );
        catch_up(&self.kernel_drops, kernel.ring_buffer_drops);
        catch_up(&self.spoof_drops, kernel.spoof_drops);
        catch_up(&self.kernel_received, kernel_events_received);
        self.cert_expiry.clear();
        for cert in certificates {
            self.cert_expiry
                .get_or_create(&IdentityLabels { identity: cert.identity.clone() })
                .set(cert.not_after.unix_timestamp());
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

impl Metrics {
    /// `lockmesh_resets_total`'s series as a table.
    fn reset_series(&self) -> TableStat {
        TableStat::new(
            self.reset_series.load(Ordering::Relaxed),
            MAX_RESET_SERIES,
            self.reset_series_overflows.load(Ordering::Relaxed),
        )
    }
}

/// Istio's labels for a flow.
pub fn tcp_labels(r: &FlowRecord) -> TcpLabels {
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| UNKNOWN.to_string());
    let app = |labels: &std::collections::BTreeMap<String, String>| {
        labels
            .get("app")
            .or_else(|| labels.get("app.kubernetes.io/name"))
            .cloned()
            .unwrap_or_else(|| UNKNOWN.into())
    };
    TcpLabels {
        reporter: r.reporter.to_string(),
        source_workload: or_unknown(&r.src.workload),
        source_workload_namespace: or_unknown(&r.src.namespace),
        source_principal: or_unknown(&r.src.identity),
        source_app: app(&r.src.labels),
        destination_workload: or_unknown(&r.dst.workload),
        destination_workload_namespace: or_unknown(&r.dst.namespace),
        destination_principal: or_unknown(&r.dst.identity),
        destination_app: app(&r.dst.labels),
        destination_service: r.service.clone().unwrap_or_else(|| UNKNOWN.into()),
        destination_service_name: service_part(r, 0),
        destination_service_namespace: service_part(r, 1),
        connection_security_policy: match r.encryption {
            Encryption::Mtls => "mutual_tls",
            Encryption::Plaintext => "none",
        }
        .into(),
        request_protocol: "tcp".into(),
        response_flags: response_flags(r.verdict).into(),
    }
}

/// Name (`part` 0) or namespace (1) of the flow's Service, from its host name
/// `name.namespace.svc.<domain>` (neither may contain a dot).
fn service_part(r: &FlowRecord, part: usize) -> String {
    r.service.as_deref().and_then(|host| host.split('.').nth(part)).unwrap_or(UNKNOWN).to_string()
}

/// Envoy's response flags: `-` none, `UF` upstream connection failure (denied: the peer or the
/// policy refused the tunnel), `UR` upstream reset.
fn response_flags(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Forwarded => "-",
        Verdict::Denied | Verdict::Error => "UF",
        Verdict::Reset => "UR",
    }
}

/// A bounded `reason` label for a failed mTLS handshake, or `None` if `reason` is not one.
/// The labels name what an operator fixes: the peer's identity, trust domain, CA, clock,
/// certificate profile (usage, chain) or the network.
pub fn handshake_failure(reason: &str) -> Option<&'static str> {
    if !reason.contains("handshake") {
        return None;
    }
    let has = |words: &[&str]| words.iter().any(|w| reason.contains(w));
    Some(if has(&["secure naming", "is not the expected"]) {
        "wrong_identity"
    } else if has(&["outside trust domain"]) {
        "wrong_trust_domain"
    } else if has(&["UnknownIssuer", "BadSignature", "not trusted", "trusted CA"]) {
        "untrusted_ca"
    } else if has(&["expired"]) {
        "expired"
    } else if has(&["not valid yet"]) {
        "not_yet_valid"
    } else if has(&["is not allowed for TLS", "key usage lacks"]) {
        "wrong_usage"
    } else if has(&["chain too long", "is not a CA certificate", "is a CA certificate"]) {
        "bad_chain"
    } else if has(&["no SPIFFE ID"]) {
        "no_spiffe_id"
    } else if has(&["timed out", "not done within"]) {
        "timeout"
    } else if has(&["alert"]) {
        "peer_refused"
    } else if has(&["no certificate", "presented no certificate"]) {
        "no_certificate"
    } else {
        "other"
    })
}

impl FlowObserver for Metrics {
    fn opened(&self, record: &FlowRecord) {
        self.opened.get_or_create(&tcp_labels(record)).inc();
    }

    fn closed(&self, record: &FlowRecord, was_open: bool) {
        let labels = tcp_labels(record);
        if !was_open {
            self.opened.get_or_create(&labels).inc();
        }
        self.closed.get_or_create(&labels).inc();
        self.sent.get_or_create(&labels).inc_by(record.bytes_received);
        self.received.get_or_create(&labels).inc_by(record.bytes_sent);
        if matches!(record.verdict, Verdict::Reset | Verdict::Denied) {
            let mut labels = ResetLabels {
                destination_workload: labels.destination_workload.clone(),
                destination_workload_namespace: labels.destination_workload_namespace.clone(),
                port: record.dst.port.to_string(),
            };
            if self.resets.get(&labels).is_none() {
                if self.reset_series.load(Ordering::Relaxed) >= MAX_RESET_SERIES {
                    self.reset_series_overflows.fetch_add(1, Ordering::Relaxed);
                    labels.port = "other".into();
                }
                if self.resets.get(&labels).is_none() {
                    self.reset_series.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.resets.get_or_create(&labels).inc();
        }
        if let Some(reason) = record.reason.as_deref().and_then(handshake_failure) {
            self.handshake_failures.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testutil::flow;

    #[test]
    fn flows_count_once_with_istio_labels() {
        let metrics = Metrics::new();
        let mut mtls = flow(1);
        mtls.src.identity = Some("spiffe://cluster.local/ns/bookinfo/sa/productpage".into());
        mtls.dst.labels.insert("app".into(), "details".into());
        mtls.service = Some("details.bookinfo.svc.cluster.local".into());
        metrics.opened(&mtls);
        metrics.closed(&mtls, true);
        let mut denied = flow(2);
        denied.encryption = Encryption::Plaintext;
        denied.verdict = Verdict::Denied;
        denied.reason = Some("mTLS handshake: peer identity x is not the expected y (secure naming)".into());
        metrics.closed(&denied, false);
        let stats = FlowStats { open: 3, evicted_open: 2, ..Default::default() };
        let kernel = CounterValues { ring_buffer_drops: 5, spoof_drops: 4, ..Default::default() };
        let text = metrics.render(stats, kernel, 7, &[], &Bounds::default());
        let line = |prefix: &str| {
            let mut lines = text.lines().filter(|l| l.starts_with(prefix));
            let first = lines.next().unwrap_or_else(|| panic!("{prefix} in\n{text}"));
            lines.find(|l| l.contains("mutual_tls")).unwrap_or(first)
        };
        let opened = text
            .lines()
            .find(|l| {
                l.starts_with("istio_tcp_connections_opened_total{reporter=\"source\"")
                    && l.contains("mutual_tls")
            })
            .unwrap();
        assert!(opened.contains("source_principal=\"spiffe://cluster.local/ns/bookinfo/sa/productpage\""));
        assert!(
            opened.contains("destination_app=\"details\",destination_service=\"details.bookinfo.svc.cluster.local\",destination_service_name=\"details\",destination_service_namespace=\"bookinfo\""),
            "{opened}"
        );
        let denied_line = text.lines().find(|l| l.contains("response_flags=\"UF\"")).unwrap();
        assert!(
            denied_line.contains("destination_service=\"unknown\",destination_service_name=\"unknown\",destination_service_namespace=\"unknown\""),
            "{denied_line}"
        );
        assert!(text.contains(
            "connection_security_policy=\"mutual_tls\",request_protocol=\"tcp\",response_flags=\"-\"} 1"
        ));
        assert!(text.contains(
            "connection_security_policy=\"none\",request_protocol=\"tcp\",response_flags=\"UF\"} 1"
        ));
        assert!(line("istio_tcp_sent_bytes_total").ends_with(" 2000"));
        assert!(line("istio_tcp_received_bytes_total").ends_with(" 101"));
        assert_eq!(line("lockmesh_flows_tracked"), "lockmesh_flows_tracked 3");
        assert_eq!(line("lockmesh_kernel_events_dropped_total"), "lockmesh_kernel_events_dropped_total 5");
        assert_eq!(line("lockmesh_kernel_events_received_total"), "lockmesh_kernel_events_received_total 7");
        assert_eq!(
            line("lockmesh_spoofed_packets_dropped_total"),
            "lockmesh_spoofed_packets_dropped_total 4"
        );
        assert_eq!(
            line("lockmesh_flows_evicted_total{table=\"open\"}"),
            "lockmesh_flows_evicted_total{table=\"open\"} 2"
        );
        assert!(line("lockmesh_resets_total").contains("port=\"8080\"} 1"));
        assert_eq!(
            line("lockmesh_handshake_failures_total"),
            "lockmesh_handshake_failures_total{reason=\"wrong_identity\"} 1"
        );
        // Scrape-time counters do not double on a second scrape.
        let again = metrics.render(stats, kernel, 7, &[], &Bounds::default());
        assert!(again.contains("lockmesh_kernel_events_dropped_total 5"));
    }

    #[test]
    fn handshake_reasons_are_bounded() {
        assert_eq!(
            handshake_failure("mTLS handshake: peer certificate issuer is not trusted (UnknownIssuer)"),
            Some("untrusted_ca")
        );
        assert_eq!(handshake_failure("mTLS handshake timed out"), Some("timeout"));
        // The inbound side's own timeout reason.
        assert_eq!(
            handshake_failure("handshake_timeout: mTLS handshake not done within 10s"),
            Some("timeout")
        );
        assert_eq!(
            handshake_failure("mTLS handshake with 10.0.0.2:15008: peer presented no certificate"),
            Some("no_certificate")
        );
        assert_eq!(handshake_failure("connect to 10.0.0.1:8080: refused"), None);
    }

    #[test]
    fn map_and_table_bounds_are_gauges_and_counters_that_do_not_double() {
        let metrics = Metrics::new();
        let mut bounds = Bounds { captured_without_destination: 2, ..Default::default() };
        bounds.maps.insert("ENROLLED".into(), MapStat { entries: Some(2), capacity: 2, update_failures: 3 });
        bounds
            .maps
            .insert("FLOW_EVENTS".into(), MapStat { entries: None, capacity: 4096, update_failures: 0 });
        bounds.tables.insert("hbone_pool", TableStat::new(5, 4096, 1));
        let render =
            |bounds: &Bounds| metrics.render(FlowStats::default(), CounterValues::default(), 0, &[], bounds);
        let text = render(&bounds);
        for line in [
            "lockmesh_bpf_map_entries{map=\"ENROLLED\"} 2",
            "lockmesh_bpf_map_capacity{map=\"ENROLLED\"} 2",
            "lockmesh_bpf_map_update_failures_total{map=\"ENROLLED\"} 3",
            "lockmesh_bpf_map_capacity{map=\"FLOW_EVENTS\"} 4096",
            "lockmesh_table_entries{table=\"hbone_pool\"} 5",
            "lockmesh_table_capacity{table=\"hbone_pool\"} 4096",
            "lockmesh_table_overflows_total{table=\"hbone_pool\"} 1",
            "lockmesh_table_capacity{table=\"reset_series\"} 4096",
            "lockmesh_captured_without_destination_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("lockmesh_bpf_map_entries{map=\"FLOW_EVENTS\"}"),
            "a ring buffer has no entries"
        );
        // Totals follow the sources, once.
        bounds.maps.get_mut("ENROLLED").unwrap().update_failures = 4;
        bounds.maps.get_mut("ENROLLED").unwrap().entries = Some(1);
        let text = render(&bounds);
        assert!(text.contains("lockmesh_bpf_map_update_failures_total{map=\"ENROLLED\"} 4"), "{text}");
        assert!(text.contains("lockmesh_bpf_map_entries{map=\"ENROLLED\"} 1"), "{text}");
        assert!(text.contains("lockmesh_captured_without_destination_total 2"), "{text}");
    }

    #[test]
    fn reset_series_are_capped_by_port() {
        let metrics = Metrics::new();
        let mut scan = flow(1);
        scan.verdict = Verdict::Reset;
        for port in 0..(MAX_RESET_SERIES as u16 + 10) {
            scan.dst.port = port;
            metrics.closed(&scan, false);
        }
        assert_eq!(metrics.reset_series(), TableStat::new(MAX_RESET_SERIES + 1, MAX_RESET_SERIES, 10));
        let text = metrics.render(FlowStats::default(), CounterValues::default(), 0, &[], &Bounds::default());
        let other = text
            .lines()
            .find(|l| l.starts_with("lockmesh_resets_total") && l.contains("port=\"other\""))
            .unwrap();
        assert!(other.ends_with(" 10"), "{other}");
    }
}
