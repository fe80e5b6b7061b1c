use super::*;
use crate::report::flows::fixtures::flow;

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
    assert!(
        text.contains(
            "connection_security_policy=\"none\",request_protocol=\"tcp\",response_flags=\"UF\"} 1"
        )
    );
    assert!(line("istio_tcp_sent_bytes_total").ends_with(" 2000"));
    assert!(line("istio_tcp_received_bytes_total").ends_with(" 101"));
    assert_eq!(line("lockmesh_flows_tracked"), "lockmesh_flows_tracked 3");
    assert_eq!(line("lockmesh_kernel_events_dropped_total"), "lockmesh_kernel_events_dropped_total 5");
    assert_eq!(line("lockmesh_kernel_events_received_total"), "lockmesh_kernel_events_received_total 7");
    assert_eq!(line("lockmesh_spoofed_packets_dropped_total"), "lockmesh_spoofed_packets_dropped_total 4");
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
fn map_and_table_bounds_are_gauges_and_counters_that_do_not_double() {
    let metrics = Metrics::new();
    let mut bounds = Bounds { captured_without_destination: 2, ..Default::default() };
    bounds.maps.insert("ENROLLED".into(), MapStat { entries: Some(2), capacity: 2, update_failures: 3 });
    bounds.maps.insert("FLOW_EVENTS".into(), MapStat { entries: None, capacity: 4096, update_failures: 0 });
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
    assert!(!text.contains("lockmesh_bpf_map_entries{map=\"FLOW_EVENTS\"}"), "a ring buffer has no entries");
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

#[test]
fn kernel_resets_count_one_by_one() {
    // The audit log counts resets per second; metrics see each one (FlowObserver::reset).
    let metrics = Metrics::new();
    let mut reset = flow(1);
    reset.verdict = Verdict::Reset;
    for _ in 0..1000 {
        metrics.reset(&reset);
    }
    let text = metrics.render(FlowStats::default(), CounterValues::default(), 0, &[], &Bounds::default());
    let line = text.lines().find(|l| l.starts_with("lockmesh_resets_total")).unwrap();
    assert!(line.ends_with(" 1000"), "{line}");
}
