//! DestinationRule selection and auto mTLS.
use crate::cluster::model::{ClusterState, TlsMode};
use crate::policy::{
    Destination, Outbound,
    fixtures::{dest_rule, find_svc, find_workload, params, peer_auth, service, state, workload},
    outbound_tls,
};

/// bookinfo/reviews (9080 → 9081, 9443) selecting bookinfo/reviews-v1, plus `extra` documents.
fn bookinfo(extra: &str) -> ClusterState {
    state(&format!(
        "{}{}{extra}",
        workload("bookinfo", "reviews-v1", "app: reviews", "10.77.1.10"),
        service(
            "bookinfo",
            "reviews",
            "{selector: {app: reviews}, ports: [{name: http, port: 9080, targetPort: 9081}, {name: https, port: 9443}]}",
        ),
    ))
}

/// The client side towards reviews:`port` from a client in `client_ns`.
fn to_service(s: &ClusterState, client_ns: &str, port: u16, in_mesh: bool) -> Outbound {
    let dest = Destination::Service {
        service: find_svc(s, "bookinfo/reviews"),
        port,
        endpoint: find_workload(s, "bookinfo/reviews-v1"),
    };
    outbound_tls(s, &params(), client_ns, &dest, in_mesh)
}

/// Whether mTLS, and what decided (as `lockmesh check` names it). The description is leaked so that
/// the assertions compare plain `&str`s (a few bytes per call, in tests only).
fn decided(out: &Outbound) -> (bool, Option<&'static str>) {
    (out.mtls, out.decided_by.as_ref().map(|d| &*Box::leak(d.to_string().into_boxed_str())))
}

const DR_REVIEWS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bookinfo
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
---
";

#[test]
fn auto_mtls_without_rules() {
    let s = bookinfo("");
    let out = to_service(&s, "frontend", 9080, true);
    assert_eq!(decided(&out), (true, None));
    assert_eq!(out.tls_mode, None);
    assert_eq!(out.reason, "auto mTLS: destination in mesh, default PERMISSIVE");
    let out = to_service(&s, "frontend", 9080, false);
    assert_eq!(decided(&out), (false, None));
    assert_eq!(out.reason, "auto mTLS: destination not in mesh");
}

#[test]
fn auto_mtls_follows_the_server_mode_on_the_target_port() {
    let mesh = peer_auth("istio-system", "default", "", "{mtls: {mode: STRICT}}");
    let out = to_service(&bookinfo(&mesh), "frontend", 9080, true);
    assert_eq!(decided(&out), (true, Some("PeerAuthentication istio-system/default")));
    assert_eq!(out.reason, "auto mTLS: destination in mesh, PeerAuthentication istio-system/default STRICT");

    let ns = peer_auth("bookinfo", "off", "", "{mtls: {mode: DISABLE}}");
    assert_eq!(
        decided(&to_service(&bookinfo(&ns), "x", 9080, true)),
        (false, Some("PeerAuthentication bookinfo/off"))
    );

    // Port-level modes are keyed by the workload port: 9080 targets 9081.
    let wl = peer_auth(
        "bookinfo",
        "reviews",
        "",
        "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {9081: {mode: DISABLE}}}",
    );
    let s = bookinfo(&format!("{mesh}{wl}"));
    let out = to_service(&s, "x", 9080, true);
    assert!(!out.mtls, "{out:?}");
    assert!(out.reason.contains("port-level DISABLE"), "{}", out.reason);
    assert!(to_service(&s, "x", 9443, true).mtls);
}

#[test]
fn rule_tls_modes() {
    let strict_off = peer_auth("bookinfo", "off", "", "{mtls: {mode: DISABLE}}");
    let out = to_service(&bookinfo(&format!("{DR_REVIEWS}{strict_off}")), "bookinfo", 9080, true);
    assert_eq!(decided(&out), (true, Some("DestinationRule bookinfo/reviews")));
    assert_eq!(out.tls_mode, Some(TlsMode::IstioMutual));
    assert_eq!(out.reason, "DestinationRule bookinfo/reviews sets ISTIO_MUTUAL");

    let out = to_service(&bookinfo(DR_REVIEWS), "bookinfo", 9080, false);
    assert!(out.mtls && out.reason.contains("not in the mesh"), "{out:?}");

    let disable = DR_REVIEWS.replace("ISTIO_MUTUAL", "DISABLE");
    let out = to_service(&bookinfo(&disable), "bookinfo", 9080, true);
    assert_eq!((out.mtls, out.tls_mode), (false, Some(TlsMode::Disable)));
    assert_eq!(out.reason, "DestinationRule bookinfo/reviews sets DISABLE");

    for mode in ["SIMPLE", "MUTUAL"] {
        let out = to_service(&bookinfo(&DR_REVIEWS.replace("ISTIO_MUTUAL", mode)), "bookinfo", 9080, true);
        assert!(!out.mtls);
        assert!(out.reason.contains(mode) && out.reason.contains("not mesh mTLS"), "{}", out.reason);
    }
}

#[test]
fn rule_without_tls_means_auto_mtls() {
    let dr =
        dest_rule("bookinfo", "lb", "", "{host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}}");
    let out = to_service(&bookinfo(&dr), "bookinfo", 9080, true);
    assert_eq!(decided(&out), (true, None));
    assert_eq!(
        out.reason,
        "auto mTLS (DestinationRule bookinfo/lb sets no tls): destination in mesh, default PERMISSIVE"
    );
}

#[test]
fn exact_host_beats_wildcards_and_longest_wildcard_wins() {
    let wild = dest_rule(
        "bookinfo",
        "wild",
        "",
        "{host: \"*.bookinfo.svc.cluster.local\", trafficPolicy: {tls: {mode: DISABLE}}}",
    );
    let s = bookinfo(&format!("{wild}{DR_REVIEWS}"));
    assert_eq!(
        decided(&to_service(&s, "bookinfo", 9080, true)),
        (true, Some("DestinationRule bookinfo/reviews"))
    );

    let all =
        dest_rule("istio-system", "all", "", "{host: \"*\", trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}");
    let local =
        dest_rule("istio-system", "local", "", "{host: \"*.local\", trafficPolicy: {tls: {mode: DISABLE}}}");
    let s = bookinfo(&format!("{all}{local}"));
    assert_eq!(
        decided(&to_service(&s, "frontend", 9080, true)),
        (false, Some("DestinationRule istio-system/local"))
    );
    let s = bookinfo(&format!("{all}{local}{wild}"));
    assert_eq!(
        decided(&to_service(&s, "frontend", 9080, true)),
        (false, Some("DestinationRule bookinfo/wild"))
    );
    let s = bookinfo(&all);
    assert_eq!(
        decided(&to_service(&s, "frontend", 9080, true)),
        (true, Some("DestinationRule istio-system/all"))
    );
}

#[test]
fn short_hosts_resolve_against_the_rule_namespace_only_without_dots() {
    // `reviews` in namespace other means reviews.other.svc.cluster.local.
    let other = dest_rule("other", "r", "", "{host: reviews, trafficPolicy: {tls: {mode: DISABLE}}}");
    assert_eq!(decided(&to_service(&bookinfo(&other), "other", 9080, true)), (true, None));
    // With a dot, Istio takes the host as written: reviews.bookinfo matches nothing.
    let dotted =
        dest_rule("bookinfo", "r", "", "{host: reviews.bookinfo, trafficPolicy: {tls: {mode: DISABLE}}}");
    assert_eq!(decided(&to_service(&bookinfo(&dotted), "bookinfo", 9080, true)), (true, None));
    let fqdn = dest_rule(
        "other",
        "r",
        "",
        "{host: reviews.bookinfo.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}",
    );
    assert_eq!(
        decided(&to_service(&bookinfo(&fqdn), "other", 9080, true)),
        (false, Some("DestinationRule other/r"))
    );
}

#[test]
fn lookup_order_client_then_service_then_root_namespace() {
    let host = "{host: reviews.bookinfo.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}";
    let client = dest_rule("frontend", "client", "", host);
    let root =
        dest_rule("istio-system", "root", "", "{host: \"*.local\", trafficPolicy: {tls: {mode: SIMPLE}}}");
    let s = bookinfo(&format!("{client}{DR_REVIEWS}{root}"));
    assert_eq!(decided(&to_service(&s, "frontend", 9080, true)).1, Some("DestinationRule frontend/client"));
    assert_eq!(decided(&to_service(&s, "bookinfo", 9080, true)).1, Some("DestinationRule bookinfo/reviews"));
    assert_eq!(decided(&to_service(&s, "elsewhere", 9080, true)).1, Some("DestinationRule bookinfo/reviews"));
    let s = bookinfo(&format!("{client}{root}"));
    assert_eq!(
        decided(&to_service(&s, "elsewhere", 9080, true)).1,
        Some("DestinationRule istio-system/root")
    );
    // Even a wildcard in the client's namespace beats an exact host in the service's.
    let client_wild = dest_rule("frontend", "w", "", "{host: \"*\", trafficPolicy: {tls: {mode: DISABLE}}}");
    let s = bookinfo(&format!("{client_wild}{DR_REVIEWS}"));
    assert_eq!(decided(&to_service(&s, "frontend", 9080, true)).1, Some("DestinationRule frontend/w"));
}

#[test]
fn export_to() {
    let private = DR_REVIEWS.replace("  host: reviews\n", "  host: reviews\n  exportTo: [\".\"]\n");
    let s = bookinfo(&private);
    assert_eq!(decided(&to_service(&s, "bookinfo", 9080, true)).1, Some("DestinationRule bookinfo/reviews"));
    assert_eq!(decided(&to_service(&s, "frontend", 9080, true)).1, None);

    let to_frontend = DR_REVIEWS.replace("  host: reviews\n", "  host: reviews\n  exportTo: [frontend]\n");
    let s = bookinfo(&to_frontend);
    assert_eq!(decided(&to_service(&s, "frontend", 9080, true)).1, Some("DestinationRule bookinfo/reviews"));
    assert_eq!(decided(&to_service(&s, "other", 9080, true)).1, None);
    assert_eq!(decided(&to_service(&s, "bookinfo", 9080, true)).1, None, "not exported to its own namespace");

    let star = DR_REVIEWS.replace("  host: reviews\n", "  host: reviews\n  exportTo: [\"*\"]\n");
    assert_eq!(
        decided(&to_service(&bookinfo(&star), "other", 9080, true)).1,
        Some("DestinationRule bookinfo/reviews")
    );
    let none = DR_REVIEWS.replace("  host: reviews\n", "  host: reviews\n  exportTo: [\"~\"]\n");
    assert_eq!(decided(&to_service(&bookinfo(&none), "bookinfo", 9080, true)).1, None);
}

#[test]
fn unexported_specific_rule_hides_a_wildcard_of_its_namespace() {
    // As in Istio: the most specific host is chosen before exportTo is checked.
    let private = DR_REVIEWS.replace("  host: reviews\n", "  host: reviews\n  exportTo: [bookinfo, x]\n");
    let wild = dest_rule(
        "bookinfo",
        "wild",
        "",
        "{host: \"*.bookinfo.svc.cluster.local\", trafficPolicy: {tls: {mode: DISABLE}}}",
    );
    let root = dest_rule("istio-system", "root", "", "{host: \"*\", trafficPolicy: {tls: {mode: SIMPLE}}}");
    let s = bookinfo(&format!("{private}{wild}{root}"));
    assert_eq!(decided(&to_service(&s, "frontend", 9080, true)).1, Some("DestinationRule istio-system/root"));
    let s = bookinfo(&format!("{wild}{root}"));
    assert_eq!(decided(&to_service(&s, "frontend", 9080, true)).1, Some("DestinationRule bookinfo/wild"));
}

#[test]
fn clients_in_the_root_namespace() {
    let root_private = dest_rule(
        "istio-system",
        "p",
        "",
        "{host: \"*\", exportTo: [\".\"], trafficPolicy: {tls: {mode: DISABLE}}}",
    );
    let s = bookinfo(&format!("{root_private}{DR_REVIEWS}"));
    assert_eq!(
        decided(&to_service(&s, "istio-system", 9080, true)).1,
        Some("DestinationRule istio-system/p")
    );
    assert_eq!(decided(&to_service(&s, "frontend", 9080, true)).1, Some("DestinationRule bookinfo/reviews"));
    let root_public =
        dest_rule("istio-system", "p", "", "{host: \"*\", trafficPolicy: {tls: {mode: DISABLE}}}");
    let s = bookinfo(&format!("{root_public}{DR_REVIEWS}"));
    assert_eq!(
        decided(&to_service(&s, "istio-system", 9080, true)).1,
        Some("DestinationRule bookinfo/reviews")
    );
}

#[test]
fn port_level_settings_replace_the_top_level_policy() {
    let dr = dest_rule(
        "bookinfo",
        "reviews",
        "",
        "{host: reviews, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, portLevelSettings: [{port: {number: 9080}, tls: {mode: DISABLE}}, {port: {number: 9443}, loadBalancer: {simple: RANDOM}}]}}",
    );
    let strict = peer_auth("istio-system", "default", "", "{mtls: {mode: STRICT}}");
    let s = bookinfo(&format!("{dr}{strict}"));
    let out = to_service(&s, "bookinfo", 9080, true);
    assert_eq!(decided(&out), (false, Some("DestinationRule bookinfo/reviews")));
    assert_eq!(out.reason, "DestinationRule bookinfo/reviews sets DISABLE for port 9080");
    let out = to_service(&s, "bookinfo", 9443, true);
    assert_eq!(decided(&out), (true, Some("PeerAuthentication istio-system/default")), "{}", out.reason);
    assert!(out.reason.starts_with("auto mTLS (DestinationRule bookinfo/reviews sets no tls)"));
    let out = to_service(&s, "bookinfo", 8000, true);
    assert_eq!((out.mtls, out.tls_mode), (true, Some(TlsMode::IstioMutual)));
}

#[test]
fn pod_ip_dialed_directly_uses_the_selecting_service() {
    let dr = dest_rule(
        "bookinfo",
        "reviews",
        "",
        "{host: reviews, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, portLevelSettings: [{port: {number: 9080}, tls: {mode: DISABLE}}]}}",
    );
    let s = bookinfo(&dr);
    let w = find_workload(&s, "bookinfo/reviews-v1");
    let direct =
        |port| outbound_tls(&s, &params(), "frontend", &Destination::Workload { workload: w, port }, true);
    // 9081 is the target of service port 9080.
    let out = direct(9081);
    assert_eq!(out.reason, "DestinationRule bookinfo/reviews sets DISABLE for port 9080");
    assert_eq!(direct(9443).tls_mode, Some(TlsMode::IstioMutual));
    let out = direct(7000);
    assert_eq!((out.mtls, out.tls_mode), (true, None), "no service on that port: auto mTLS");
}

#[test]
fn rules_of_one_host_merge_oldest_policy_first() {
    let old_no_policy =
        dest_rule("bookinfo", "a-old", ", creationTimestamp: 2024-01-01T00:00:00Z", "{host: reviews}");
    let newer = dest_rule(
        "bookinfo",
        "b-new",
        ", creationTimestamp: 2024-02-01T00:00:00Z",
        "{host: reviews, trafficPolicy: {tls: {mode: DISABLE}}}",
    );
    let newest = dest_rule(
        "bookinfo",
        "c-newest",
        ", creationTimestamp: 2024-03-01T00:00:00Z",
        "{host: reviews.bookinfo.svc.cluster.local, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}",
    );
    let s = bookinfo(&format!("{newest}{newer}{old_no_policy}"));
    assert_eq!(
        decided(&to_service(&s, "bookinfo", 9080, true)),
        (false, Some("DestinationRule bookinfo/b-new"))
    );
}

#[test]
fn rules_with_a_workload_selector_are_ignored() {
    let dr = dest_rule(
        "bookinfo",
        "sel",
        "",
        "{host: reviews, workloadSelector: {matchLabels: {app: productpage}}, trafficPolicy: {tls: {mode: DISABLE}}}",
    );
    assert_eq!(decided(&to_service(&bookinfo(&dr), "bookinfo", 9080, true)), (true, None));
}
