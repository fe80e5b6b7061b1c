use serde_json::json;

use super::*;

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).unwrap())
}

fn pod(name: &str, ip: &str) -> Arc<Pod> {
    object(json!({
        "metadata": {"namespace": "mesh", "name": name, "uid": format!("uid-{name}")},
        "spec": {"nodeName": "node1", "containers": []},
        "status": {"podIPs": [{"ip": ip}]},
    }))
}

#[test]
fn broken_policies_are_left_out_and_warnings_kept() {
    let pa = |name: &str, spec: serde_json::Value| {
        object::<DynamicObject>(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"namespace": "istio-system", "name": name}, "spec": spec,
        }))
    };
    let objects = Objects {
        peer_authentications: vec![
            pa("broken", json!({"mtls": {"mode": "SOMETIMES"}})),
            pa("selector", json!({"selector": {"matchLabels": {"app": "x"}}, "mtls": {"mode": "STRICT"}})),
        ],
        ..Objects::default()
    };
    let (state, problems, _) = cluster_state(&objects, "node1", "istio-system", |_| HashMap::new());
    assert_eq!(state.peer_authentications.len(), 1);
    assert_eq!(state.peer_authentications[0].key.name, "selector");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        !problems[0].warning
            && problems[0].message.starts_with("PeerAuthentication istio-system/broken: spec.mtls.mode")
    );
    assert!(problems[1].warning && problems[1].message.contains("root namespace"));
}

#[test]
fn default_service_account_shared_addresses_and_missing_netns() {
    let namespace =
        object::<Namespace>(json!({"metadata": {"name": "mesh", "labels": {"lockmesh.io/mesh": "enabled"}}}));
    let objects = Objects {
        pods: vec![pod("a", "10.0.0.1"), pod("b", "10.0.0.1"), pod("c", "10.0.0.2")],
        namespaces: vec![namespace],
        ..Objects::default()
    };
    let mut asked = Vec::new();
    let (state, problems, missing) = cluster_state(&objects, "node1", "istio-system", |uids| {
        asked = uids.to_vec();
        HashMap::from([("uid-a".to_string(), PathBuf::from("/proc/1/ns/net"))])
    });
    assert_eq!(asked, ["uid-a", "uid-b", "uid-c"]);
    let names: Vec<&str> = state.workloads.iter().map(|w| w.key.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(state.workloads[0].service_account, "default");
    assert_eq!(state.workloads[0].netns, Some(PathBuf::from("/proc/1/ns/net")));
    assert!(missing, "c has no process yet");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("10.0.0.1 already belongs to Pod mesh/a"));
}
