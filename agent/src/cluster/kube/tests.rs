//! The Kubernetes source against a mock API server (kube's `Client` over `tower_test::mock`).
use std::{collections::BTreeMap, fs, net::Ipv4Addr, path::Path, time::Duration};

use http::{Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{KubeOptions, KubeSource};
use crate::cluster::{dir::ConfigDir, model::ClusterState, source::Update};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const LOCAL_UID: &str = "6f1c2d3e-aaaa-4bbb-8ccc-123456789abc";

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    let metadata = json!({"resourceVersion": "1"});
    json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": metadata, "items": items})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str, node: &str, ip: Option<&str>, extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": {"app": name},
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {"nodeName": node, "serviceAccountName": format!("{name}-sa"),
                 "containers": [{"name": "app"}]},
        "status": {"phase": "Running"},
    });
    if let Some(ip) = ip {
        pod["status"]["podIP"] = json!(ip);
        pod["status"]["podIPs"] = json!([{"ip": ip}, {"ip": "fd00::1"}]);
    }
    merge(&mut pod, extra);
    pod
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

const PEER_AUTHENTICATIONS: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system, creationTimestamp: "2024-01-02T03:04:05Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: mesh}
spec:
  selector: {matchLabels: {app: a}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    8080: {mode: DISABLE}
"#;

const DESTINATION_RULES_AND_SERVICES: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: web, namespace: mesh}
spec:
  host: web
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9090}
      tls: {mode: DISABLE}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: mesh}
spec:
  selector: {app: a}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

fn yaml_items(text: &str, kind: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| v["kind"] == kind)
        .collect()
}

/// Answers the watchers' lists; holds watches open. The first Pod watch gets one ADDED event
/// when `add_pod` fires.
async fn serve(mut handle: Handle, responses: BTreeMap<String, Value>, add_pod: oneshot::Receiver<Value>) {
    let mut held = Vec::new();
    let mut pod_watch = None;
    let mut add_pod = Some(add_pod);
    loop {
        tokio::select! {
            next = handle.next_request() => {
                let Some((request, send)) = next else { return };
                let path = request.uri().path().to_string();
                if request.uri().query().unwrap_or_default().contains("watch=true") {
                    if path == "/api/v1/pods" && pod_watch.is_none() {
                        pod_watch = Some(send);
                    } else {
                        held.push(send);
                    }
                    continue;
                }
                let response = match responses.get(&path) {
                    Some(body) => Response::new(Body::from(serde_json::to_vec(body).unwrap())),
                    None => {
                        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "reason": "NotFound", "code": 404});
                        let mut response = Response::new(Body::from(serde_json::to_vec(&status).unwrap()));
                        *response.status_mut() = http::StatusCode::NOT_FOUND;
                        response
                    }
                };
                send.send_response(response);
            }
            pod = async { add_pod.as_mut().unwrap().await }, if add_pod.is_some() && pod_watch.is_some() => {
                add_pod = None;
                let event = serde_json::to_vec(&json!({"type": "ADDED", "object": pod.unwrap()})).unwrap();
                pod_watch.take().unwrap().send_response(Response::new(Body::from(event)));
            }
        }
    }
}

/// The local pod's containers and node address, as the API server returns them: an httpGet
/// liveness probe on a named port, a tcpSocket readiness probe, a grpc startup probe on a
/// sidecar, an exec probe (no port).
fn local_probes() -> Value {
    json!({
        "spec": {"containers": [{
            "name": "app", "image": "registry.test/app:1",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                      {"name": "metrics", "containerPort": 9100, "protocol": "TCP"}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                              "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3},
            "readinessProbe": {"tcpSocket": {"port": 8443}, "periodSeconds": 5},
        }, {
            "name": "helper", "image": "registry.test/helper:1",
            "livenessProbe": {"exec": {"command": ["/bin/true"]}},
        }],
        "initContainers": [{
            "name": "sidecar", "image": "registry.test/sidecar:1", "restartPolicy": "Always",
            "startupProbe": {"grpc": {"port": 9090, "service": "health"}},
        }]},
        "status": {"hostIP": "192.168.10.1", "hostIPs": [{"ip": "192.168.10.1"}, {"ip": "fd00::10"}]},
    })
}

fn responses() -> BTreeMap<String, Value> {
    let enrolled = json!({"istio.io/dataplane-mode": "ambient"});
    let mut local = pod("mesh", "a", "node1", Some("10.0.0.1"), local_probes());
    local["metadata"]["uid"] = json!(LOCAL_UID);
    let pods = vec![
        local,
        pod("mesh", "b", "node2", Some("10.0.1.5"), json!({})),
        pod(
            "mesh",
            "opted-out",
            "node1",
            Some("10.0.0.2"),
            json!({"metadata": {"labels": {"istio.io/dataplane-mode": "none"}}}),
        ),
        pod(
            "mesh",
            "disabled",
            "node1",
            Some("10.0.0.6"),
            json!({"metadata": {"labels": {"lockmesh.io/mesh": "disabled"}}}),
        ),
        pod("mesh", "host", "node1", Some("192.168.1.10"), json!({"spec": {"hostNetwork": true}})),
        pod("mesh", "starting", "node1", None, json!({"status": {"phase": "Pending"}})),
        pod("mesh", "done", "node1", Some("10.0.0.3"), json!({"status": {"phase": "Succeeded"}})),
        pod("mine", "c", "node2", Some("10.0.1.6"), json!({})),
        pod("plain", "d", "node1", Some("10.0.0.4"), json!({})),
    ];
    let namespaces = vec![
        namespace("mesh", enrolled),
        namespace("mine", json!({"lockmesh.io/mesh": "enabled"})),
        namespace("plain", json!({"istio.io/dataplane-mode": "none"})),
        namespace("istio-system", json!({})),
    ];
    let discovery = |gv: &str, kind: &str, plural: &str| {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
            {"name": plural, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind,
             "verbs": ["get", "list", "watch"]}]})
    };
    let docs = format!("{PEER_AUTHENTICATIONS}---{DESTINATION_RULES_AND_SERVICES}");
    let mut r = BTreeMap::new();
    r.insert("/api/v1/pods".into(), list("Pod", "v1", pods));
    r.insert("/api/v1/namespaces".into(), list("Namespace", "v1", namespaces));
    r.insert("/api/v1/services".into(), list("Service", "v1", yaml_items(&docs, "Service")));
    r.insert(
        "/apis/security.istio.io/v1".into(),
        discovery("security.istio.io/v1", "PeerAuthentication", "peerauthentications"),
    );
    // DestinationRule only in v1beta1 (an older Istio): the source falls back to it.
    r.insert(
        "/apis/networking.istio.io/v1beta1".into(),
        discovery("networking.istio.io/v1beta1", "DestinationRule", "destinationrules"),
    );
    let pas = yaml_items(&docs, "PeerAuthentication");
    r.insert(
        "/apis/security.istio.io/v1/peerauthentications".into(),
        list("PeerAuthentication", "security.istio.io/v1", pas),
    );
    let drs = yaml_items(&docs, "DestinationRule");
    r.insert(
        "/apis/networking.istio.io/v1beta1/destinationrules".into(),
        list("DestinationRule", "networking.istio.io/v1beta1", drs),
    );
    r
}

async fn next(source: &mut KubeSource) -> Update {
    tokio::time::timeout(Duration::from_secs(10), source.next_state()).await.unwrap().unwrap()
}

fn fake_proc(root: &Path) {
    let cgroup = format!(
        "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-1.scope\n",
        LOCAL_UID.replace('-', "_")
    );
    fs::create_dir_all(root.join("4242/ns")).unwrap();
    fs::write(root.join("4242/cgroup"), cgroup).unwrap();
}

#[tokio::test]
async fn api_objects_become_the_same_cluster_state_as_the_config_dir() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (add_pod, added) = oneshot::channel();
    tokio::spawn(serve(handle, responses(), added));
    let proc_root = tempfile::tempdir().unwrap();
    fake_proc(proc_root.path());
    let options = KubeOptions { kubeconfig: None, node: "node1".into(), proc_root: proc_root.path().into() };
    let mut source = KubeSource::with_client(Client::new(service, "default"), &options, "istio-system").await;

    let update = next(&mut source).await;
    let state = update.state.unwrap();
    let names: Vec<String> = state.workloads.iter().map(|w| w.key.to_string()).collect();
    assert_eq!(names, ["mesh/a", "mesh/b", "mine/c"], "problems: {:?}", update.problems);
    let a = &state.workloads[0];
    assert_eq!(a.node, "node1");
    assert_eq!(a.service_account, "a-sa");
    assert_eq!(a.addresses, [Ipv4Addr::new(10, 0, 0, 1)]);
    assert_eq!(a.labels.get("app").map(String::as_str), Some("a"));
    assert_eq!(a.netns.as_deref(), Some(proc_root.path().join("4242/ns/net").as_path()));
    assert_eq!(state.workloads[1].netns, None, "remote pods need no netns");
    let node = Ipv4Addr::new(192, 168, 10, 1);
    let probes: Vec<(u16, Ipv4Addr)> = a.probes.iter().map(|p| (p.port, p.from)).collect();
    assert_eq!(probes, [(8080, node), (8443, node), (9090, node)], "from the Pod's probes");
    assert!(state.workloads[1].probes.is_empty(), "no probes declared");

    // The same documents through the config dir give the same objects.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("istio.yaml"),
        format!("{PEER_AUTHENTICATIONS}---{DESTINATION_RULES_AND_SERVICES}"),
    )
    .unwrap();
    let from_dir: ClusterState = ConfigDir::new(dir.path()).reload().unwrap().state;
    assert_eq!(state.peer_authentications.len(), 2);
    assert_eq!(state.peer_authentications, from_dir.peer_authentications);
    assert_eq!(state.destination_rules.len(), 1);
    assert_eq!(state.destination_rules, from_dir.destination_rules);
    assert_eq!(state.services, from_dir.services);

    // A watch event makes a new snapshot.
    add_pod
        .send(pod("mine", "e", "node2", Some("10.0.1.7"), json!({"metadata": {"resourceVersion": "2"}})))
        .unwrap();
    let update = next(&mut source).await;
    let names: Vec<String> = update.state.unwrap().workloads.iter().map(|w| w.key.to_string()).collect();
    assert_eq!(names, ["mesh/a", "mesh/b", "mine/c", "mine/e"]);
}
