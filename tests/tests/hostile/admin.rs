//! The admin API (issue 15, item 10): from a pod, the node's admin port (flows, config dump,
//! graph) is closed; only metrics (15020) and readiness (15021) answer on the node's address,
//! and they serve nothing else. Authenticated remote access to flows is issue 18.
use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lockmesh_tests::{Agent, http, netns};

use crate::common::*;

#[test]
fn from_a_pod_only_metrics_and_readiness_answer_on_the_node() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let node = tb.node("node1").wire_ip;
    let admin = SocketAddr::from((node, 15000));
    // From an out-of-mesh pod and from a mesh pod on the node, and from a pod on the other node.
    for pod in ["outsider", "productpage", "details"] {
        let ns = tb.pod(pod).netns_path();
        let refused = netns::run_in(&ns, move || TcpStream::connect_timeout(&admin, Duration::from_secs(3)))
            .unwrap()
            .expect_err("the admin port answered a pod");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{pod}: {refused}");
        let metrics = http::get_in(&ns, SocketAddr::from((node, 15020)), "/metrics").unwrap();
        assert_eq!(metrics.status, 200, "{pod}");
        assert!(metrics.text().contains("lockmesh_flows_tracked"), "{pod}: {}", metrics.text());
        for path in ["/flows", "/config_dump", "/graph", "/readyz", "/check"] {
            let response = http::get_in(&ns, SocketAddr::from((node, 15020)), path).unwrap();
            assert_eq!(response.status, 404, "{pod}: {path} on the metrics port");
        }
        let ready = http::get_in(&ns, SocketAddr::from((node, 15021)), "/healthz/ready").unwrap();
        assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"), "{pod}");
        let flows = http::get_in(&ns, SocketAddr::from((node, 15021)), "/flows").unwrap();
        assert_eq!(flows.status, 404, "{pod}: /flows on the readiness port");
    }
    // The node itself still reads everything on loopback (what `lockmesh flows` does).
    assert_eq!(agent1.get("/flows").unwrap().status, 200);
}
