//! Test fixtures: cluster states read from YAML, as users write it.
use std::{fs, sync::Arc};

use super::MeshParams;
use crate::cluster::{
    dir::ConfigDir,
    model::{ClusterState, Service, Workload},
};

pub(crate) fn params() -> MeshParams {
    MeshParams::default()
}

/// The state a config dir holding `yaml` yields; fails on errors (warnings are fine).
pub(crate) fn state(yaml: &str) -> ClusterState {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.yaml"), yaml).unwrap();
    let reload = ConfigDir::new(dir.path()).reload().unwrap();
    let errors: Vec<_> = reload.errors.iter().filter(|e| !e.is_warning()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    reload.state
}

/// A Workload document.
pub(crate) fn workload(namespace: &str, name: &str, labels: &str, ip: &str) -> String {
    format!(
        "apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}
spec: {{node: node1, addresses: [{ip}]}}
---
"
    )
}

/// A PeerAuthentication document; `extra` is added to `metadata` (e.g. a creationTimestamp).
pub(crate) fn peer_auth(namespace: &str, name: &str, extra: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {namespace}{extra}}}
spec: {spec}
---
"
    )
}

/// A DestinationRule document.
pub(crate) fn dest_rule(namespace: &str, name: &str, extra: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}{extra}}}
spec: {spec}
---
"
    )
}

/// A Service document.
pub(crate) fn service(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {spec}
---
"
    )
}

pub(crate) fn find_workload<'a>(state: &'a ClusterState, key: &str) -> &'a Arc<Workload> {
    state.workloads.iter().find(|w| w.key.to_string() == key).unwrap()
}

pub(crate) fn find_svc<'a>(state: &'a ClusterState, key: &str) -> &'a Arc<Service> {
    state.services.iter().find(|s| s.key.to_string() == key).unwrap()
}

/// bookinfo's productpage (node1) and details (node2, probed by its kubelet on 8081 and 15020);
/// details' Service (80 → 8080, 81 → 9090); a STRICT PeerAuthentication for details with port
/// 9000 PERMISSIVE; an ISTIO_MUTUAL DestinationRule for details with port 81 DISABLE.
pub(crate) const BOOKINFO_DETAILS: &str = "\
apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {name: productpage, namespace: bookinfo, labels: {app: productpage}}
spec: {node: node1, serviceAccount: productpage, addresses: [10.77.1.2]}
---
apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {name: details, namespace: bookinfo, labels: {app: details}}
spec:
  node: node2
  serviceAccount: details
  addresses: [10.77.2.2]
  probes: [{port: 8081, from: 10.76.0.2}, {port: 15020, from: 10.76.0.2}]
---
apiVersion: v1
kind: Service
metadata: {name: details, namespace: bookinfo}
spec: {selector: {app: details}, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}, {port: 81, targetPort: 9090}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: details, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: STRICT}
  portLevelMtls: {9000: {mode: PERMISSIVE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: bookinfo}
spec:
  host: details
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings: [{port: {number: 81}, tls: {mode: DISABLE}}]
";
