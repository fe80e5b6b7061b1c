//! `cargo xtask demo`: from a fresh clone, everything in one command.
use std::net::SocketAddr;

use lockmesh_tests::{Agent, Testbed, app::MARKER, capture::Capture, testbed::WIRE_IF};

use crate::{step, testbed};

pub fn run(keep: bool) -> anyhow::Result<()> {
    crate::require_root("the demo (it loads eBPF programs and creates network namespaces)")?;
    crate::setup::run()?;
    let binaries = crate::build(true)?;

    let mut tb =
        step::run("bringing up two nodes of bookinfo-like pods", || Testbed::up(&testbed::bookinfo()))?;
    tb.app_binary = Some(binaries.testapp.clone());
    testbed::print_testbed(&tb);
    let config = tb.config_dir("config")?;

    let agents = step::run("starting the lockmesh agents of node1 and node2", || {
        Ok::<_, anyhow::Error>([
            Agent::start_binary(&tb, "node1", &config, &[], &binaries.lockmesh)?,
            Agent::start_binary(&tb, "node2", &config, &[], &binaries.lockmesh)?,
        ])
    })?;

    let servers = step::run("starting the apps (details, reviews, ratings on :9080)", || {
        Ok::<_, anyhow::Error>(vec![
            tb.serve("details", 9080)?,
            tb.serve("reviews", 9080)?,
            tb.serve("ratings", 9080)?,
        ])
    })?;

    // The mesh pods' traffic on the wire (the outsider is not in the mesh: left out).
    let capture = Capture::start(
        &tb.node("node2").netns_path(),
        WIRE_IF,
        &format!("tcp and not host {}", tb.pod("outsider").ip),
        tb.work_dir.join("node2-wire.pcap"),
    )?;
    step::run("making traffic", || {
        let to = |pod: &str| SocketAddr::new(tb.pod(pod).ip.into(), 9080);
        for (from, pod, path) in [
            ("productpage", "details", "/"),
            ("productpage", "reviews", "/bytes/20000"),
            ("reviews", "ratings", "/bytes/512"),
            ("outsider", "details", "/"),
        ] {
            let result = tb.get(from, to(pod), path)?;
            step::note(&format!(
                "{from} → {pod} {path}: HTTP {} ({} bytes)",
                result["status"], result["bytes"]
            ));
        }
        Ok(())
    })?;
    // Let the close events reach the agents.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let wire = capture.finish()?;
    println!("\n$ tcpdump -i {WIRE_IF}        # on node2: what crossed the node-to-node wire");
    for line in wire.summary.lines().filter(|l| l.contains(".15008")).take(6) {
        println!("{line}");
    }
    println!(
        "… {} packets between mesh pods: {} to/from HBONE port 15008; the apps' plaintext marker {}",
        wire.packet_count(),
        wire.packets_on_port(15008),
        if wire.contains(MARKER.as_bytes()) { "appears" } else { "never appears" },
    );

    for agent in &agents {
        println!("\n$ lockmesh flows        # on {}", agent.node);
        print!("{}", agent.cli(&["flows"])?);
    }
    println!("\nJSON lines for scripts and audits: lockmesh flows -o json (schema in README.md)");

    if keep {
        let state = tb.persist()?;
        println!(
            "\nKept running: testbed {} ({}); agents' admin endpoints at 127.0.0.1:15000 (metrics :15020) inside each node netns.",
            tb.id,
            state.display()
        );
        println!("Stop everything with: cargo xtask testbed down {}", tb.id);
        std::mem::forget(servers);
        std::mem::forget(agents);
        return Ok(());
    }
    step::run("tearing down", || {
        drop(servers);
        drop(agents);
        tb.down()
    })
}
