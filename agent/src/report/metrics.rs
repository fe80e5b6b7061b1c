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

use super::flows::{Encryption, FlowObserver, FlowRecord, FlowStats, Verdict};
use crate::{
    identity::{CertificateStatus, handshake_failure},
    kernel::{CounterValues, MapStat},
    sys::bounds::{TableStat, Tables},
};

pub(crate) use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

const UNKNOWN: &str = "unknown";

/// Istio's label set of `istio_tcp_*` (names exactly as Istio's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TcpLabels {
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
pub(crate) const MAX_RESET_SERIES: usize = 4096;

/// What `/metrics` shows of the agent's bounds, read at scrape time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bounds {
    /// Every eBPF map, by name.
    pub maps: BTreeMap<String, MapStat>,
    /// The agent's own tables.
    pub tables: Tables,
    /// Captured connections the engine found no original destination for.
    pub captured_without_destination: u64,
    /// What the engine refused or closed at a limit, by reason (see `engine::limits`).
    pub limited: Vec<(&'static str, u64)>,
}

/// Every family, registered in [`Metrics::new`] (`Default` leaves them unregistered).
#[derive(Default)]
pub(crate) struct Metrics {
    registry: Registry,
    limited: Family<ReasonLabels, Counter>,
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
    strict_drops: Counter,
    ipv6_refused: Counter,
    uncaptured_resets: Counter,
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

impl Metrics {
    pub(crate) fn new() -> Self {
        let metrics = Self::default();
        let mut registry = Registry::default();
        metrics.register_istio(&mut registry);
        metrics.register_lockmesh(&mut registry);
        Self { registry, ..metrics }
    }

    /// Istio's standard TCP metrics. Counter names get `_total` from the encoder.
    fn register_istio(&self, r: &mut Registry) {
        let metrics = self;
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
    }

    /// lockmesh's own: flows, kernel events, limits, certificates and the bounds of every map
    /// and table.
    fn register_lockmesh(&self, r: &mut Registry) {
        let metrics = self;
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
            "lockmesh_strict_packets_dropped",
            "Packets to pods with STRICT ports dropped in the kernel because they could not be checked (IP fragments, unparsable headers)",
            metrics.strict_drops.clone(),
        );
        r.register(
            "lockmesh_ipv6_connects_refused",
            "IPv6 connects of enrolled pods refused in the kernel (the engine does not tunnel IPv6: refused rather than sent in clear)",
            metrics.ipv6_refused.clone(),
        );
        r.register(
            "lockmesh_uncaptured_connections_reset",
            "Plaintext SYNs enrolled pods sent, uncaptured, to destinations their policy tunnels (the engine's socket mark set by an app, raw sockets), reset in the kernel",
            metrics.uncaptured_resets.clone(),
        );
        r.register(
            "lockmesh_connections_limited",
            "Connections, handshakes and streams the engine refused or closed at a limit, by reason",
            metrics.limited.clone(),
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
    }

    /// The Prometheus text exposition, with scrape-time values filled in.
    pub(crate) fn render(
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
        for (reason, hits) in &bounds.limited {
            let counter = self.limited.get_or_create(&ReasonLabels { reason: reason.to_string() });
            counter.inc_by(hits.saturating_sub(counter.get()));
        }
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
        catch_up(&self.strict_drops, kernel.strict_drops);
        catch_up(&self.ipv6_refused, kernel.ipv6_refused);
        catch_up(&self.uncaptured_resets, kernel.uncaptured_resets);
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
pub(crate) fn tcp_labels(r: &FlowRecord) -> TcpLabels {
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
mod tests;
