//! Services: hosts, selection, endpoints, ports.
use std::net::Ipv4Addr;

use super::services_for_workload_port;
use crate::{
    cluster::model::ClusterState,
    policy::{
        endpoints,
        fixtures::{find_svc, find_workload, service, state, workload},
        selects, service_by_cluster_ip, service_for_workload_port, service_fqdn, target_port,
    },
};

fn bookinfo() -> ClusterState {
    state(&format!(
        "{}{}{}{}{}{}{}",
        workload("bookinfo", "reviews-v1", "app: reviews, version: v1", "10.77.1.10"),
        workload("bookinfo", "reviews-v2", "app: reviews, version: v2", "10.77.1.11"),
        workload("other", "reviews-v1", "app: reviews, version: v1", "10.77.2.10"),
        service(
            "bookinfo",
            "reviews",
            "{clusterIP: 10.96.0.20, selector: {app: reviews}, ports: [{name: http, port: 9080, targetPort: 9081}, \
             {name: metrics, port: 15020, targetPort: metrics}, {name: dns, port: 53, protocol: UDP}]}",
        ),
        service("bookinfo", "reviews-v2", "{selector: {app: reviews, version: v2}, ports: [{port: 9081}]}"),
        service("bookinfo", "a-all", "{selector: {app: reviews}, ports: [{port: 80, targetPort: 9081}]}"),
        service("bookinfo", "manual", "{ports: [{port: 80}]}"),
    ))
}

#[test]
fn fqdn() {
    let s = bookinfo();
    let reviews = find_svc(&s, "bookinfo/reviews");
    assert_eq!(service_fqdn(reviews, "cluster.local"), "reviews.bookinfo.svc.cluster.local");
}

#[test]
fn cluster_ip_lookup() {
    let s = bookinfo();
    let found = service_by_cluster_ip(&s, Ipv4Addr::new(10, 96, 0, 20)).map(|s| s.key.to_string());
    assert_eq!(found.as_deref(), Some("bookinfo/reviews"));
    assert!(service_by_cluster_ip(&s, Ipv4Addr::new(10, 96, 0, 21)).is_none());
}

#[test]
fn selection_and_endpoints() {
    let s = bookinfo();
    let reviews = find_svc(&s, "bookinfo/reviews");
    let v2 = find_svc(&s, "bookinfo/reviews-v2");
    let manual = find_svc(&s, "bookinfo/manual");
    assert!(selects(reviews, find_workload(&s, "bookinfo/reviews-v1")));
    assert!(!selects(reviews, find_workload(&s, "other/reviews-v1")), "other namespace");
    assert!(!selects(v2, find_workload(&s, "bookinfo/reviews-v1")), "selector not a subset");
    assert!(!selects(manual, find_workload(&s, "bookinfo/reviews-v1")), "no selector selects nothing");
    let keys = |svc| endpoints(&s, svc).iter().map(|w| w.key.to_string()).collect::<Vec<_>>();
    assert_eq!(keys(reviews), vec!["bookinfo/reviews-v1", "bookinfo/reviews-v2"]);
    assert_eq!(keys(v2), vec!["bookinfo/reviews-v2"]);
    assert!(keys(manual).is_empty());
}

#[test]
fn target_ports() {
    let s = bookinfo();
    let reviews = find_svc(&s, "bookinfo/reviews");
    let w = find_workload(&s, "bookinfo/reviews-v1");
    assert_eq!(target_port(&reviews.ports[0], w), 9081);
    assert_eq!(target_port(&reviews.ports[1], w), 15020, "named target port falls back to the port");
    assert_eq!(target_port(&find_svc(&s, "bookinfo/manual").ports[0], w), 80, "defaults to the port");
}

#[test]
fn service_of_a_workload_port() {
    let s = bookinfo();
    let v1 = find_workload(&s, "bookinfo/reviews-v1");
    let v2 = find_workload(&s, "bookinfo/reviews-v2");
    let name = |found: Option<(
        &std::sync::Arc<crate::cluster::model::Service>,
        &crate::cluster::model::ServicePort,
    )>| { found.map(|(svc, port)| format!("{}:{}", svc.key, port.port)) };
    // The first by key among a-all:80, reviews:9080 (and reviews-v2:9081 for v2).
    assert_eq!(name(service_for_workload_port(&s, v1, 9081)).as_deref(), Some("bookinfo/a-all:80"));
    assert_eq!(services_for_workload_port(&s, v2, 9081).len(), 3);
    assert_eq!(name(service_for_workload_port(&s, v1, 9080)), None, "9080 is a service port, not a target");
    assert_eq!(name(service_for_workload_port(&s, v1, 15020)).as_deref(), Some("bookinfo/reviews:15020"));
    assert_eq!(name(service_for_workload_port(&s, v1, 53)), None, "UDP ports are not considered");
    assert_eq!(name(service_for_workload_port(&s, find_workload(&s, "other/reviews-v1"), 9081)), None);
}
