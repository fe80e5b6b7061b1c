use serde_json::json;

use super::*;

fn pod(containers: serde_json::Value, host_ip: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": "mesh", "name": "p"},
        "spec": {"containers": containers},
        "status": {"hostIP": host_ip, "podIP": "10.0.0.1"},
    }))
    .unwrap()
}

fn exemption(port: u16, from: &str) -> ProbeExemption {
    ProbeExemption { port, from: from.parse().unwrap() }
}

#[test]
fn ports_of_every_probe_kind_from_the_host_ip() {
    let pod = pod(
        json!([{
            "name": "app",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9901}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            "readinessProbe": {"tcpSocket": {"port": 8443}},
            "startupProbe": {"grpc": {"port": 9090}},
        }, {
            "name": "sidecar",
            "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"httpGet": {"port": 7000, "host": "example.test"}},
        }]),
        Some("192.168.5.10"),
    );
    let (exemptions, problems) = probe_exemptions(&pod);
    assert!(problems.is_empty(), "{problems:?}");
    let from = "192.168.5.10";
    assert_eq!(exemptions, [exemption(8080, from), exemption(8443, from), exemption(9090, from)]);
}

#[test]
fn unknown_named_port_is_reported_and_unscheduled_pods_have_none() {
    let containers = json!([{"name": "app", "livenessProbe": {"httpGet": {"port": "metrics"}},
                             "readinessProbe": {"tcpSocket": {"port": 70000}}}]);
    let (exemptions, problems) = probe_exemptions(&pod(containers.clone(), Some("192.168.5.10")));
    assert!(exemptions.is_empty());
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("container app livenessProbe: httpGet.port: named port \"metrics\""));
    assert!(problems[1].contains("tcpSocket.port: 70000 is not a port number"));
    assert_eq!(probe_exemptions(&pod(containers, None)), (Vec::new(), Vec::new()));
}

#[test]
fn trimmed_pods_keep_what_probes_need() {
    let mut full = pod(
        json!([{"name": "app", "image": "registry.test/app:1", "env": [{"name": "A", "value": "b"}],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "livenessProbe": {"httpGet": {"port": "http", "path": "/x"}, "periodSeconds": 3}}]),
        Some("192.168.5.10"),
    );
    let before = probe_exemptions(&full);
    trim_containers(full.spec.as_mut().unwrap());
    let app = &full.spec.as_ref().unwrap().containers[0];
    assert!(app.image.is_none() && app.env.is_none());
    assert_eq!(probe_exemptions(&full), before);
    assert_eq!(before.0, [exemption(8080, "192.168.5.10")]);
}
