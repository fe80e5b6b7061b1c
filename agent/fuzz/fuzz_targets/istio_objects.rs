//! Istio's PeerAuthentication and DestinationRule → the model → policy.
//!
//! Input: YAML documents (up to eight). Each is made into a PeerAuthentication or a
//! DestinationRule so that the fuzzer reaches the conversion rather than the "unknown kind" path
//! (the config_yaml target covers that): a missing or foreign `kind` is chosen from the content
//! (a `spec.host` makes a DestinationRule), a wrong `apiVersion` is replaced by a supported one,
//! a missing `metadata` gets a name. Then:
//!
//! - the config dir's conversion (`cluster::convert::peer_authentication` / `destination_rule`
//!   on the YAML value) and the Kubernetes source's (`cluster::kube::state::cluster_state` on the same
//!   object as a `DynamicObject`, JSON as the API server sends it);
//! - the converted policies, over a fixed bookinfo-like set of workloads and services, through
//!   `check::check` (what `lockmesh check` shows: every workload's modes, every outbound
//!   decision) and `policy::outbound_tls` for workload-to-workload connections, with invariants
//!   a decision must keep.
#![no_main]

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use libfuzzer_sys::fuzz_target;
use lockmesh::{
    cluster::{
        convert,
        dir::ConfigDir,
        kube::state::{Objects, cluster_state},
        model::{ClusterState, TlsMode},
    },
    desired::inventory::Inventory,
    policy::{self, DecidedBy, Destination, MeshParams, MtlsMode},
    report::check,
};
use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};

/// Workloads and Services the policies apply to (four namespaces, ports with and without
/// target ports and names).
const BASE: &str = "\
apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {name: productpage, namespace: bookinfo, labels: {app: productpage}}
spec: {node: node1, serviceAccount: productpage, addresses: [10.77.1.2]}
---
apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {name: details, namespace: bookinfo, labels: {app: details, version: v1}}
spec: {node: node2, serviceAccount: details, addresses: [10.77.2.2], probes: [{port: 8080, from: 10.76.0.2}]}
---
apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {name: reviews, namespace: bookinfo, labels: {app: reviews, version: v2}}
spec: {node: node1, serviceAccount: reviews, addresses: [10.77.1.3, 10.77.1.4]}
---
apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {name: legacy, namespace: legacy, labels: {app: legacy}}
spec: {node: node2, addresses: [10.77.2.9]}
---
apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {name: gateway, namespace: istio-system, labels: {app: gateway}}
spec: {node: node1, addresses: [10.77.1.9]}
---
apiVersion: v1
kind: Service
metadata: {name: details, namespace: bookinfo}
spec: {clusterIP: 10.96.0.10, selector: {app: details}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9081}, {port: 9443}, {name: admin, port: 15000, targetPort: admin}]
---
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: bookinfo}
spec: {selector: {app: productpage}, ports: [{port: 9080}, {port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: legacy}
spec: {clusterIP: None, selector: {app: legacy}, ports: [{port: 80, targetPort: 8080}]}
";

const ROOT: &str = "istio-system";
const CLIENT_NAMESPACES: &[&str] = &["bookinfo", "legacy", ROOT, "elsewhere"];

fn base() -> &'static ClusterState {
    static BASE_STATE: OnceLock<ClusterState> = OnceLock::new();
    BASE_STATE.get_or_init(|| {
        let files = [(PathBuf::from("/config/base.yaml"), Ok::<_, io::Error>(BASE.to_string()))];
        let reload = ConfigDir::new("/config").load(files);
        assert!(reload.errors.is_empty(), "{:?}", reload.errors);
        reload.state
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    PeerAuthentication,
    DestinationRule,
}

/// Gives a document the kind, apiVersion and metadata that get it to the conversion.
fn as_istio_object(document: Value) -> (Kind, Value) {
    let mut map = match document {
        Value::Mapping(map) => map,
        // Anything else becomes the spec of an object.
        other => {
            let mut map = Mapping::new();
            map.insert("spec".into(), other);
            map
        }
    };
    let kind = match map.get("kind").and_then(Value::as_str) {
        Some("PeerAuthentication") => Kind::PeerAuthentication,
        Some("DestinationRule") => Kind::DestinationRule,
        _ if map.get("spec").and_then(|s| s.get("host")).is_some() => Kind::DestinationRule,
        _ => Kind::PeerAuthentication,
    };
    let (name, versions): (&str, &[&str]) = match kind {
        Kind::PeerAuthentication => {
            ("PeerAuthentication", &["security.istio.io/v1", "security.istio.io/v1beta1"])
        }
        Kind::DestinationRule => (
            "DestinationRule",
            &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"],
        ),
    };
    map.insert("kind".into(), name.into());
    if !map.get("apiVersion").and_then(Value::as_str).is_some_and(|v| versions.contains(&v)) {
        map.insert("apiVersion".into(), versions[0].into());
    }
    if !map.get("metadata").is_some_and(Value::is_mapping) {
        let mut metadata = Mapping::new();
        metadata.insert("name".into(), "fuzz".into());
        metadata.insert("namespace".into(), "bookinfo".into());
        map.insert("metadata".into(), Value::Mapping(metadata));
    }
    (kind, Value::Mapping(map))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text).take(8) {
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => documents.push(as_istio_object(value)),
            Err(_) => break,
        }
    }
    if documents.is_empty() {
        return;
    }

    // The config dir's conversion (duplicates: the first wins, as there).
    let mut peer_authentications = BTreeMap::new();
    let mut destination_rules = BTreeMap::new();
    let mut kube = Objects::default();
    for (kind, value) in documents {
        // The Kubernetes source gets the object from the API server, as JSON.
        let object = serde_json::to_value(&value).ok().and_then(|json| serde_json::from_value(json).ok());
        match kind {
            Kind::PeerAuthentication => {
                if let Ok((pa, _warnings)) = convert::peer_authentication(value, ROOT) {
                    peer_authentications.entry(pa.key.clone()).or_insert_with(|| Arc::new(pa));
                }
                kube.peer_authentications.extend(object.map(Arc::new));
            }
            Kind::DestinationRule => {
                if let Ok((dr, _warnings)) = convert::destination_rule(value) {
                    destination_rules.entry(dr.key.clone()).or_insert_with(|| Arc::new(dr));
                }
                kube.destination_rules.extend(object.map(Arc::new));
            }
        }
    }
    let (from_kube, problems, _) = cluster_state(&kube, "node1", ROOT, |_| HashMap::new());
    for problem in &problems {
        let _ = problem.message.len();
    }

    let mesh = MeshParams::default();
    let base = base();
    let from_yaml: (Vec<_>, Vec<_>) =
        (peer_authentications.into_values().collect(), destination_rules.into_values().collect());
    let from_kube = (from_kube.peer_authentications, from_kube.destination_rules);
    // Usually both sources agree; the policy is evaluated once per distinct outcome.
    let distinct = if from_kube == from_yaml { vec![from_yaml] } else { vec![from_yaml, from_kube] };
    for policies in distinct {
        let state = ClusterState {
            workloads: base.workloads.clone(),
            services: base.services.clone(),
            peer_authentications: policies.0,
            destination_rules: policies.1,
        };
        evaluate(state, &mesh);
    }
});

fn evaluate(state: ClusterState, mesh: &MeshParams) {
    let state = Arc::new(state);
    // Every workload enrolled: `check` reports on all of them.
    let enrolled = state.workloads.iter().enumerate().map(|(i, w)| (i as u64 + 1, w.clone()));
    let inventory = Inventory::new("node1", "cluster.local", mesh, state.clone(), enrolled);
    let checks = check::check(&inventory, &[], None);
    assert_eq!(checks.len(), state.workloads.len());
    let _ = check::render(&checks);

    for workload in &state.workloads {
        let modes = policy::workload_mtls(&state, mesh, workload);
        assert!(!modes.default.port_level);
        if modes.default.decided_by.is_none() {
            assert_eq!(modes.default.mode, MtlsMode::Permissive);
        }
        for resolved in modes.ports.values() {
            assert!(resolved.port_level && resolved.decided_by.is_some());
        }
    }

    let ports = [80, 8080, 9080, 9081, 9443, 15000];
    for client in CLIENT_NAMESPACES {
        for workload in &state.workloads {
            for port in ports {
                for in_mesh in [true, false] {
                    let dest = Destination::Workload { workload, port };
                    let outbound = policy::outbound_tls(&state, mesh, client, &dest, in_mesh);
                    check_outbound(&outbound, in_mesh);
                }
            }
        }
        for service in &state.services {
            for endpoint in policy::endpoints(&state, service) {
                for port in &service.ports {
                    let dest = Destination::Service { service, port: port.port, endpoint };
                    check_outbound(&policy::outbound_tls(&state, mesh, client, &dest, true), true);
                }
            }
        }
    }
}

/// What any decision must keep: a rule's TLS mode decides mTLS, and only a rule names itself.
fn check_outbound(outbound: &policy::Outbound, in_mesh: bool) {
    match outbound.tls_mode {
        Some(TlsMode::IstioMutual) => assert!(outbound.mtls, "{outbound:?}"),
        Some(_) => assert!(!outbound.mtls, "{outbound:?}"),
        None if !in_mesh => assert!(!outbound.mtls, "{outbound:?}"),
        None => {}
    }
    let by_rule = matches!(outbound.decided_by, Some(DecidedBy::DestinationRule(_)));
    assert_eq!(by_rule, outbound.tls_mode.is_some(), "{outbound:?}");
}
