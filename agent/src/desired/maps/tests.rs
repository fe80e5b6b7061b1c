use super::*;
use crate::policy::fixtures::{self, BOOKINFO_DETAILS};

fn state() -> ClusterState {
    fixtures::state(BOOKINFO_DETAILS)
}

#[test]
fn pod_sources_are_the_workload_addresses_per_interface() {
    let first = [Ipv4Addr::new(10, 77, 1, 2), Ipv4Addr::new(10, 77, 1, 9)];
    let second = [Ipv4Addr::new(10, 77, 1, 3)];
    let sources = pod_sources([(7, &first[..]), (8, &second[..])]);
    let keys: Vec<_> = sources.keys().map(|k| (k.ifindex, Ipv4Addr::from(u32::from_be(k.ip4)))).collect();
    assert_eq!(keys, vec![(7, first[0]), (7, first[1]), (8, second[0])]);
    assert!(pod_sources([(9, &[][..])]).is_empty(), "a pod without addresses may send nothing");
}

#[test]
fn classes_are_stable_and_forgotten_with_their_last_pod() {
    let mut classes = Classes::default();
    let a = classes.of("bookinfo");
    let b = classes.of("default");
    assert_ne!(a, b);
    assert_eq!(classes.of("bookinfo"), a);
    assert_eq!(classes.name_of(b), Some("default"));
    // "bookinfo" has no pod here any more: its number is free again, "default" keeps its own.
    classes.retain(&BTreeSet::from(["default"]));
    assert_eq!((classes.len(), classes.name_of(a)), (1, None));
    assert_eq!(classes.of("reviews"), a, "the freed number is given again");
    assert_eq!(classes.of("default"), b);
    assert_eq!(classes.len(), 2);
}

fn ip(text: &str) -> u32 {
    u32::from(text.parse::<Ipv4Addr>().unwrap()).to_be()
}

#[test]
fn capture_follows_destination_rules_per_port() {
    let state = state();
    let details = state.workloads.iter().find(|w| w.key.name == "details").unwrap();
    let mut capture = BTreeMap::new();
    capture_entries(&state, &MeshParams::default(), 1, "bookinfo", details, &mut capture);
    let get = |port| capture.get(&CaptureKey { class: 1, ip4: ip("10.77.2.2"), port, _pad: 0 }).copied();
    assert_eq!(get(0), Some(capture::TUNNEL), "auto mTLS to a STRICT workload");
    assert_eq!(get(9090), Some(capture::DIRECT), "DR portLevelSettings DISABLE on service port 81 → 9090");
    assert_eq!(get(8080), None, "same as the default: no exact entry");
}

#[test]
fn strict_entries_follow_port_level_modes() {
    let state = state();
    let details = state.workloads.iter().find(|w| w.key.name == "details").unwrap();
    let mut strict = BTreeMap::new();
    strict_entries(&state, &MeshParams::default(), details, &mut strict);
    let key = |port| StrictKey { ip4: ip("10.77.2.2"), port, _pad: 0 };
    assert_eq!(strict.get(&key(0)), Some(&strict::RESET));
    assert_eq!(strict.get(&key(9000)), Some(&strict::ALLOW));
    assert_eq!(strict.len(), 2);
    let productpage = state.workloads.iter().find(|w| w.key.name == "productpage").unwrap();
    let mut none = BTreeMap::new();
    strict_entries(&state, &MeshParams::default(), productpage, &mut none);
    assert!(none.is_empty(), "PERMISSIVE by default");
}

#[test]
fn probe_ports_are_exempt_for_the_node_and_that_pod_only() {
    let state = state();
    let details = state.workloads.iter().find(|w| w.key.name == "details").unwrap();
    let mut exempt = BTreeMap::new();
    probe_entries(details, None, &mut exempt);
    let key = |port| ExemptKey { src_ip4: ip("10.76.0.2"), dst_ip4: ip("10.77.2.2"), port, _pad: 0 };
    assert_eq!(exempt.keys().copied().collect::<Vec<_>>(), [key(8081), key(15020)]);
    let productpage = state.workloads.iter().find(|w| w.key.name == "productpage").unwrap();
    let mut none = BTreeMap::new();
    probe_entries(productpage, None, &mut none);
    assert!(none.is_empty(), "no probes declared");
}

#[test]
fn a_pod_with_only_some_strict_ports_is_marked_so_fragments_to_it_are_refused() {
    let yaml = BOOKINFO_DETAILS.replace(
        "mtls: {mode: STRICT}\n  portLevelMtls: {9000: {mode: PERMISSIVE}}",
        "mtls: {mode: PERMISSIVE}\n  portLevelMtls: {8080: {mode: STRICT}}",
    );
    let state = fixtures::state(&yaml);
    let details = state.workloads.iter().find(|w| w.key.name == "details").unwrap();
    let mut strict = BTreeMap::new();
    strict_entries(&state, &MeshParams::default(), details, &mut strict);
    let key = |port| StrictKey { ip4: ip("10.77.2.2"), port, _pad: 0 };
    assert_eq!(strict.get(&key(8080)), Some(&strict::RESET));
    assert_eq!(
        strict.get(&key(0)),
        Some(&strict::SOME),
        "the pod has STRICT ports, its default is plaintext"
    );
    assert_eq!(strict.len(), 2);
}
