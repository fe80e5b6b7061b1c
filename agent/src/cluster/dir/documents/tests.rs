//! Parsing of Service, PeerAuthentication and DestinationRule documents.
use std::{fs, net::Ipv4Addr};

use crate::cluster::{
    dir::{ConfigDir, ConfigError, Reload},
    model::{ClusterIp, PeerMtlsMode, Protocol, TargetPort, TlsMode},
};

fn reload(text: &str) -> Reload {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), text).unwrap();
    ConfigDir::new(dir.path()).reload().unwrap()
}

fn errors_only(reload: &Reload) -> Vec<&ConfigError> {
    reload.errors.iter().filter(|e| !e.is_warning()).collect()
}

fn warnings_only(reload: &Reload) -> Vec<&ConfigError> {
    reload.errors.iter().filter(|e| e.is_warning()).collect()
}

/// Exactly one error (not a warning), naming `field`.
fn single_error(text: &str, field: &str) -> ConfigError {
    let reload = reload(text);
    let errors = errors_only(&reload);
    let [err] = errors.as_slice() else { panic!("one error expected: {:?}", reload.errors) };
    assert_eq!(err.field.as_deref(), Some(field), "{err}");
    assert!(!err.is_warning());
    (*err).clone()
}

const REVIEWS: &str = "apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: bookinfo
  labels: {app: reviews, service: reviews}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports:
  - name: http
    port: 9080
    targetPort: 9081
  - {port: 9443, protocol: TCP}
  - {name: admin, port: 15000, targetPort: admin-port}
";

#[test]
fn service_is_parsed() {
    let reload = reload(REVIEWS);
    assert!(reload.errors.is_empty(), "{:?}", reload.errors);
    let [svc] = reload.state.services.as_slice() else { panic!("one service") };
    assert_eq!(svc.key.to_string(), "bookinfo/reviews");
    assert_eq!(svc.selector.get("app").map(String::as_str), Some("reviews"));
    assert_eq!(svc.cluster_ip, Some(ClusterIp::Address(Ipv4Addr::new(10, 96, 0, 20))));
    assert_eq!(svc.ports.len(), 3);
    assert_eq!(svc.ports[0].name.as_deref(), Some("http"));
    assert_eq!(svc.ports[0].target_port, TargetPort::Number(9081));
    assert_eq!(svc.ports[1].target_port, TargetPort::Number(9443), "defaults to port");
    assert_eq!(svc.ports[1].protocol, Protocol::Tcp);
    assert_eq!(svc.ports[2].target_port, TargetPort::Name("admin-port".into()));
}

#[test]
fn service_defaults_and_headless() {
    let reload = reload(
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: None, ports: [{port: 5432}]}\n",
    );
    assert!(reload.errors.is_empty(), "{:?}", reload.errors);
    let svc = &reload.state.services[0];
    assert_eq!(svc.key.to_string(), "default/db");
    assert!(svc.selector.is_empty());
    assert_eq!(svc.cluster_ip, Some(ClusterIp::Headless));
}

#[test]
fn service_errors_name_fields() {
    for (from, to, field) in [
        ("port: 9080", "port: 70000", "spec.ports[0].port"),
        ("port: 9080", "port: 0", "spec.ports[0].port"),
        ("targetPort: 9081", "targetPort: 0", "spec.ports[0].targetPort"),
        ("targetPort: 9081", "targetPort: Not_A_Name", "spec.ports[0].targetPort"),
        ("protocol: TCP", "protocol: HTTP", "spec.ports[1].protocol"),
        ("clusterIP: 10.96.0.20", "clusterIP: fd00::1", "spec.clusterIP"),
        ("namespace: bookinfo", "namespace: Book", "metadata.namespace"),
        ("- {port: 9443, protocol: TCP}", "- {port: 9080}", "spec.ports[1].port"),
    ] {
        assert!(REVIEWS.contains(from), "{from}");
        let err = single_error(&REVIEWS.replace(from, to), field);
        assert!(err.to_string().contains("/reviews)"), "{err}");
        assert_eq!(err.object.as_deref().map(|o| o.starts_with("Service ")), Some(true), "{err}");
    }
}

#[test]
fn knative_service_is_skipped() {
    let reload = reload("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: x}\nspec: {}\n");
    assert!(reload.errors.is_empty() && reload.state.services.is_empty());
}

const MESH_STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

const WORKLOAD_PA: &str = "apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: reviews
  namespace: bookinfo
  creationTimestamp: \"2024-05-01T10:00:00Z\"
spec:
  selector:
    matchLabels:
      app: reviews
  mtls:
    mode: PERMISSIVE
  portLevelMtls:
    9080:
      mode: DISABLE
    \"9443\":
      mode: STRICT
    15000: {}
";

#[test]
fn peer_authentication_mesh_wide() {
    let reload = reload(MESH_STRICT);
    assert!(reload.errors.is_empty(), "{:?}", reload.errors);
    let pa = &reload.state.peer_authentications[0];
    assert_eq!(pa.key.to_string(), "istio-system/default");
    assert_eq!(pa.mode, PeerMtlsMode::Strict);
    assert!(!pa.has_selector() && pa.port_level_mtls.is_empty() && pa.creation_timestamp.is_none());
}

#[test]
fn peer_authentication_workload_v1beta1_with_ports() {
    let reload = reload(WORKLOAD_PA);
    assert!(reload.errors.is_empty(), "{:?}", reload.errors);
    let pa = &reload.state.peer_authentications[0];
    assert_eq!(pa.mode, PeerMtlsMode::Permissive);
    assert_eq!(pa.selector.get("app").map(String::as_str), Some("reviews"));
    assert_eq!(pa.creation_timestamp.map(|t| t.unix_timestamp()), Some(1_714_557_600));
    let ports: Vec<_> = pa.port_level_mtls.iter().map(|(p, m)| (*p, *m)).collect();
    assert_eq!(
        ports,
        vec![(9080, PeerMtlsMode::Disable), (9443, PeerMtlsMode::Strict), (15000, PeerMtlsMode::Unset)]
    );
}

#[test]
fn peer_authentication_without_spec_or_mode_is_unset() {
    for text in [
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: x}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: x}\nspec: {mtls: {}}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: x}\nspec: {selector: {}}\n",
    ] {
        let reload = reload(text);
        assert!(reload.errors.is_empty(), "{:?}", reload.errors);
        let pa = &reload.state.peer_authentications[0];
        assert_eq!(pa.mode, PeerMtlsMode::Unset);
        assert!(!pa.has_selector());
    }
}

#[test]
fn peer_authentication_errors_name_fields() {
    for (from, to, field) in [
        ("mode: PERMISSIVE", "mode: STRICTER", "spec.mtls.mode"),
        ("9080:\n      mode: DISABLE", "9080:\n      mode: OFF", "spec.portLevelMtls.9080.mode"),
        ("9080:", "70000:", "spec.portLevelMtls.70000"),
        ("9080:", "http:", "spec.portLevelMtls.http"),
        ("9080:", "0:", "spec.portLevelMtls.0"),
        ("2024-05-01T10:00:00Z", "yesterday", "metadata.creationTimestamp"),
        ("security.istio.io/v1beta1", "security.istio.io/v2", "apiVersion"),
    ] {
        assert!(WORKLOAD_PA.contains(from), "{from}");
        let err = single_error(&WORKLOAD_PA.replace(from, to), field);
        assert!(err.to_string().contains("PeerAuthentication bookinfo/reviews"), "{err}");
        assert_eq!(err.document, Some(1));
    }
    let err = single_error(&WORKLOAD_PA.replace("mode: PERMISSIVE", "mode: STRICTER"), "spec.mtls.mode");
    assert!(err.message.contains("STRICTER"), "{err}");
}

#[test]
fn peer_authentication_bad_version_keeps_last_good() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), WORKLOAD_PA).unwrap();
    let mut config = ConfigDir::new(dir.path());
    assert_eq!(config.reload().unwrap().state.peer_authentications.len(), 1);
    fs::write(dir.path().join("a.yaml"), WORKLOAD_PA.replace("mode: PERMISSIVE", "mode: NOPE")).unwrap();
    let reload = config.reload().unwrap();
    assert_eq!(reload.errors.len(), 1);
    assert_eq!(reload.state.peer_authentications[0].mode, PeerMtlsMode::Permissive);
}

#[test]
fn peer_authentication_warnings() {
    // portLevelMtls without selector: accepted, warned, ignored by the resolution.
    let text = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: bookinfo}
spec: {mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}
";
    let r = reload(text);
    let warnings = warnings_only(&r);
    assert_eq!(r.state.peer_authentications.len(), 1);
    let [w] = warnings.as_slice() else { panic!("{:?}", r.errors) };
    assert_eq!(w.field.as_deref(), Some("spec.portLevelMtls"));
    assert!(w.to_string().starts_with("warning: "), "{w}");

    // A selector in the root namespace; also with a custom root namespace.
    let text = WORKLOAD_PA.replace("namespace: bookinfo", "namespace: istio-system");
    let r = reload(&text);
    let [w] = warnings_only(&r).into_iter().cloned().collect::<Vec<_>>().try_into().unwrap();
    assert_eq!(w.field.as_deref(), Some("spec.selector"));
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), WORKLOAD_PA.replace("namespace: bookinfo", "namespace: mesh-root"))
        .unwrap();
    let r = ConfigDir::new(dir.path()).with_root_namespace("mesh-root").reload().unwrap();
    assert_eq!(warnings_only(&r).len(), 1, "{:?}", r.errors);
}

#[test]
fn second_namespace_wide_policy_is_warned() {
    let newer =
        MESH_STRICT.replace("name: default", "name: a-newer, creationTimestamp: 2024-01-01T00:00:00Z");
    let r = reload(&format!("{newer}---\n{MESH_STRICT}"));
    assert!(errors_only(&r).is_empty());
    let [w] = warnings_only(&r).into_iter().cloned().collect::<Vec<_>>().try_into().unwrap();
    // No timestamp counts as oldest (Go's zero time), so `default` wins.
    assert!(w.object.as_deref() == Some("PeerAuthentication istio-system/a-newer"), "{w}");
    assert!(w.message.contains("istio-system/default"), "{w}");
    assert_eq!(w.document, Some(1));
}

const REVIEWS_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bookinfo
spec:
  host: reviews
  exportTo: [\".\", other]
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp: {maxConnections: 100}
    tls:
      mode: ISTIO_MUTUAL
    portLevelSettings:
    - port:
        number: 9080
      tls:
        mode: DISABLE
    - port: {number: 9443}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: DISABLE}}
";

#[test]
fn destination_rule_is_parsed() {
    for api in ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"] {
        let r = reload(&REVIEWS_DR.replace("networking.istio.io/v1", api));
        assert!(r.errors.is_empty(), "{api}: {:?}", r.errors);
        let dr = &r.state.destination_rules[0];
        assert_eq!(dr.key.to_string(), "bookinfo/reviews");
        assert_eq!(dr.host, "reviews");
        assert_eq!(dr.export_to, vec![".".to_string(), "other".to_string()]);
        let tp = dr.traffic_policy.as_ref().unwrap();
        assert_eq!(tp.tls, Some(TlsMode::IstioMutual));
        let ports: Vec<_> = tp.port_level.iter().map(|(p, m)| (*p, *m)).collect();
        assert_eq!(ports, vec![(9080, Some(TlsMode::Disable)), (9443, None)]);
    }
}

#[test]
fn destination_rule_tls_without_mode_is_disable_and_policy_without_tls_is_kept() {
    let r = reload(&REVIEWS_DR.replace("      mode: ISTIO_MUTUAL\n", "      sni: reviews.example\n"));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.state.destination_rules[0].traffic_policy.as_ref().unwrap().tls, Some(TlsMode::Disable));
    let r = reload(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n",
    );
    let dr = &r.state.destination_rules[0];
    assert_eq!(dr.key.namespace, "default");
    assert!(dr.export_to.is_empty());
    assert_eq!(dr.traffic_policy.as_ref().map(|t| t.tls), Some(None));
}

#[test]
fn destination_rule_errors_name_fields() {
    for (from, to, field) in [
        ("mode: ISTIO_MUTUAL", "mode: ISTIO", "spec.trafficPolicy.tls.mode"),
        (
            "mode: DISABLE\n    - port",
            "mode: OFF\n    - port",
            "spec.trafficPolicy.portLevelSettings[0].tls.mode",
        ),
        ("number: 9080", "number: 0", "spec.trafficPolicy.portLevelSettings[0].port.number"),
        ("number: 9443", "number: 65536", "spec.trafficPolicy.portLevelSettings[1].port.number"),
        ("port: {number: 9443}", "port: {}", "spec.trafficPolicy.portLevelSettings[1].port.number"),
        ("host: reviews", "host: \"re views\"", "spec.host"),
        ("host: reviews", "host: \"\"", "spec.host"),
        ("exportTo: [\".\", other]", "exportTo: [Other_NS]", "spec.exportTo[0]"),
        ("networking.istio.io/v1", "networking.istio.io/v2", "apiVersion"),
    ] {
        assert!(REVIEWS_DR.contains(from), "{from}");
        let err = single_error(&REVIEWS_DR.replace(from, to), field);
        assert!(err.to_string().contains("DestinationRule bookinfo/reviews"), "{err}");
    }
    let err = single_error(&REVIEWS_DR.replace("  host: reviews\n", ""), "spec");
    assert!(err.message.contains("host"), "{err}");
}

#[test]
fn destination_rule_warnings() {
    let r = reload(
        &REVIEWS_DR
            .replace("mode: ISTIO_MUTUAL", "mode: SIMPLE")
            .replace("mode: DISABLE\n    - port", "mode: MUTUAL\n    - port"),
    );
    assert!(errors_only(&r).is_empty(), "{:?}", r.errors);
    let fields: Vec<_> = warnings_only(&r).iter().map(|w| w.field.clone().unwrap_or_default()).collect();
    assert_eq!(
        fields,
        vec!["spec.trafficPolicy.tls.mode", "spec.trafficPolicy.portLevelSettings[0].tls.mode"]
    );
    assert_eq!(r.state.destination_rules.len(), 1, "kept");

    let r = reload(
        &REVIEWS_DR
            .replace("  host: reviews\n", "  host: reviews\n  workloadSelector: {matchLabels: {app: x}}\n"),
    );
    let [w] = warnings_only(&r).into_iter().cloned().collect::<Vec<_>>().try_into().unwrap();
    assert_eq!(w.field.as_deref(), Some("spec.workloadSelector"));
    assert_eq!(r.state.destination_rules[0].workload_selector.len(), 1);
}

#[test]
fn all_kinds_in_one_file_and_duplicates() {
    let text = format!("{REVIEWS}---\n{MESH_STRICT}---\n{REVIEWS_DR}---\n{WORKLOAD_PA}");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), &text).unwrap();
    fs::write(dir.path().join("b.yaml"), REVIEWS_DR).unwrap();
    let r = ConfigDir::new(dir.path()).reload().unwrap();
    assert_eq!(r.state.services.len(), 1);
    assert_eq!(r.state.peer_authentications.len(), 2);
    assert_eq!(r.state.destination_rules.len(), 1);
    let [err] = errors_only(&r).into_iter().cloned().collect::<Vec<_>>().try_into().unwrap();
    assert!(err.message.contains("duplicate DestinationRule"), "{err}");
    assert!(err.file.ends_with("b.yaml"));
}
