use std::sync::Arc;

use super::*;
use crate::cluster::model::{ClusterState, ObjectKey, Workload};

#[test]
fn dump_lists_workloads_and_marks_the_enrolled() {
    let workload = |name: &str, node: &str, ip: [u8; 4]| {
        Arc::new(Workload {
            key: ObjectKey { namespace: "bookinfo".into(), name: name.into() },
            labels: Default::default(),
            node: node.into(),
            service_account: name.into(),
            addresses: vec![ip.into()],
            netns: None,
            probes: Vec::new(),
        })
    };
    let (pp, details) =
        (workload("productpage", "node1", [10, 0, 0, 1]), workload("details", "node2", [10, 0, 0, 2]));
    let state = ClusterState { workloads: vec![pp.clone(), details], ..Default::default() };
    let mesh = crate::policy::MeshParams::default();
    let inventory = Inventory::new("node1", "cluster.local", &mesh, std::sync::Arc::new(state), [(7, pp)]);
    let dump = dump(&inventory, vec![], vec!["bad".into()]);
    let names: Vec<(&str, bool)> = dump.workloads.iter().map(|w| (w.name.as_str(), w.enrolled)).collect();
    assert_eq!(names, [("details", false), ("productpage", true)]);
    assert_eq!(dump.workloads[1].identity, "spiffe://cluster.local/ns/bookinfo/sa/productpage");
    let json = serde_json::to_string(&dump).unwrap();
    assert!(json.contains("\"config_errors\":[\"bad\"]"), "{json}");
}
