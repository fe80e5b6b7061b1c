use std::collections::BTreeSet;

use super::*;

#[test]
fn the_ruleset_snats_only_node_originated_connections_to_probed_ports() {
    let probed =
        BTreeSet::from([("10.77.2.2".parse().unwrap(), 8081), ("10.77.2.3".parse().unwrap(), 15021)]);
    let script = ruleset("169.254.7.127".parse().unwrap(), &probed);
    assert!(script.starts_with("add table ip lockmesh\ndelete table ip lockmesh\n"), "{script}");
    assert!(script.contains("elements = { 10.77.2.2 . 8081, 10.77.2.3 . 15021 }"), "{script}");
    assert!(
        script.contains("fib saddr type local ip daddr . tcp dport @probed snat to 169.254.7.127"),
        "{script}"
    );
    assert!(script.contains("type nat hook postrouting priority srcnat - 10"), "{script}");
}

#[test]
fn no_probes_means_no_table() {
    let script = ruleset("169.254.7.127".parse().unwrap(), &BTreeSet::new());
    assert_eq!(script, "add table ip lockmesh\ndelete table ip lockmesh\n");
}
