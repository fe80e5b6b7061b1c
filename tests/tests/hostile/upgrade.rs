//! Attack 7: an upgrade that changes the maps' layout (another version, `--bpf-map-entries`,
//! `--max-enrolled`, `--ring-buffer-bytes`) starts with empty maps. The previous agent's
//! programs must keep steering until the new agent's maps hold its first config: no in-mesh
//! request may leave in clear meanwhile.
use std::time::Duration;

use lockmesh_tests::{Agent, app::MARKER, capture::Capture, testbed::WIRE_IF};

use super::common::*;

#[test]
fn an_upgrade_to_another_map_layout_leaves_no_request_in_clear() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    // PERMISSIVE: a request that escaped the tunnel would be served, and seen on the wire.
    apply(&config, "peer-authentication.yaml", &namespace_policy("PERMISSIVE"));
    let mut agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let wire =
        Capture::start(&tb.node("node2").netns_path(), WIRE_IF, "tcp", tb.work_dir.join("upgrade.pcap"))
            .unwrap();
    let mesh = tb.load_client("productpage", addr(&tb, "details", 8080), 2).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    for (round, layout) in
        [["--bpf-map-entries", "CAPTURE=70000"], ["--ring-buffer-bytes", "2097152"]].iter().enumerate()
    {
        assert_eq!(agent1.terminate().unwrap(), Some(0), "round {round}");
        agent1 = Agent::start(&tb, "node1", &config, layout).unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    let records = mesh.stop().unwrap();
    let wire = wire.finish().unwrap();
    let served = records.iter().filter(|r| r.ok).count();
    println!("in-mesh requests: {} ({served} served)", records.len());
    assert!(served > 100, "the load hardly ran: {served}");
    assert!(
        !wire.contains(MARKER.as_bytes()),
        "a request crossed the wire in clear during the upgrade:\n{}",
        wire.summary
    );
    assert!(wire.packets_on_port(15008) > 0, "{}", wire.summary);
    let cgroup_links = std::fs::read_dir(agent1.pin_dir.join("links"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("lockmesh_"))
        .count();
    assert_eq!(cgroup_links, 7, "one link per cgroup program: the previous agents' were released");
    let maps = std::fs::read_dir(&agent1.pin_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("maps-"))
        .count();
    assert_eq!(maps, 1, "the previous layouts' maps are gone once the new agent is ready");
}
