//! Issue 8, engine bounds: a slowloris on :15008 holds a few handshake slots of its own source
//! for the handshake timeout and is then closed, while in-mesh traffic goes on; idle HBONE
//! connections are closed; streams per peer identity are capped. Small limits via flags so the
//! test runs in seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::*;
use lockmesh_tests::{Agent, netns};
use serde_json::Value;

/// Slow peers the test opens from one out-of-mesh pod.
const SLOW: usize = 300;
const PER_SOURCE: usize = 8;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// A TLS record header announcing a 512-byte ClientHello, and its first bytes: never completed.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];

/// `lockmesh_connections_limited_total{reason="<reason>"}` on the agent's /metrics (0 if absent).
fn limited(agent: &Agent, reason: &str) -> u64 {
    metric(agent, &format!("lockmesh_connections_limited_total{{reason=\"{reason}\"}}")).unwrap_or(0)
}

/// Whether the engine closed the socket (EOF or reset); does not block.
fn closed_by_peer(mut stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

fn count_closed(streams: &[Option<TcpStream>]) -> usize {
    streams.iter().filter(|s| s.as_ref().is_none_or(closed_by_peer)).count()
}

#[test]
fn slowloris_on_15008_does_not_starve_in_mesh_clients_and_is_closed_after_the_timeout() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let _agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let per_source = PER_SOURCE.to_string();
    let timeout = format!("{}s", HANDSHAKE_TIMEOUT.as_secs());
    let agent2 = Agent::start(
        &tb,
        "node2",
        &config,
        &[
            "--max-handshakes-per-source",
            &per_source,
            "--max-handshakes",
            "64",
            "--handshake-timeout",
            &timeout,
        ],
    )
    .unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let hbone = addr(&tb, "details", 15008);

    // The out-of-mesh pod opens SLOW connections to details:15008; half say nothing, half send
    // the start of a ClientHello and stop.
    let opened = Instant::now();
    let slow: Vec<Option<TcpStream>> = netns::run_in(&tb.pod("outsider").netns_path(), move || {
        (0..SLOW)
            .map(|i| {
                let mut stream = match TcpStream::connect_timeout(&hbone, Duration::from_secs(2)) {
                    Ok(stream) => stream,
                    // Accepted and reset by the engine before connect() returned.
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                    Err(e) => panic!("connecting to {hbone}: {e}"),
                };
                if i % 2 == 1 {
                    // Fails when the engine already refused this one: that is counted below.
                    let _ = stream.write_all(PARTIAL_CLIENT_HELLO);
                }
                stream.set_nonblocking(true).unwrap();
                Some(stream)
            })
            .collect()
    })
    .unwrap();
    println!("{SLOW} slow connections opened in {:?}", opened.elapsed());

    // Beyond the per-source budget the engine resets at once, before any TLS work.
    let deadline = Instant::now() + WAIT;
    while count_closed(&slow) < SLOW - PER_SOURCE {
        assert!(Instant::now() < deadline, "the engine did not refuse the connections beyond its budget");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = count_closed(&slow);
    assert_eq!(refused, SLOW - PER_SOURCE, "exactly the per-source budget is held");

    // While the slow handshakes hang, an in-mesh request is served in a normal time.
    let started = Instant::now();
    let response = tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap();
    let took = started.elapsed();
    assert_eq!(response["status"], 200, "{response}");
    println!("in-mesh request during the slowloris took {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(opened.elapsed() < HANDSHAKE_TIMEOUT, "the slow handshakes were still pending");

    // After the timeout the engine closes the slow ones too.
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT + WAIT;
    while count_closed(&slow) < SLOW {
        assert!(Instant::now() < deadline, "slow handshakes were not closed after the timeout");
        std::thread::sleep(Duration::from_millis(50));
    }
    let all_closed = opened.elapsed();
    println!("all {SLOW} slow connections closed {all_closed:?} after opening");
    assert!(all_closed >= HANDSHAKE_TIMEOUT, "closed before the timeout: {all_closed:?}");
    assert_eq!(limited(&agent2, "handshakes_per_source"), (SLOW - PER_SOURCE) as u64);
    assert_eq!(limited(&agent2, "handshake_timeout"), PER_SOURCE as u64);
    assert_eq!(limited(&agent2, "handshakes"), 0, "one source never reaches the global budget");
    let flows = agent2.flows().unwrap();
    let timed_out = flows
        .iter()
        .filter(|f| f["reason"].as_str().is_some_and(|r| r.starts_with("handshake_timeout")))
        .count();
    assert_eq!(timed_out, PER_SOURCE, "each timed-out handshake is a denied flow with its reason");
    // And in-mesh traffic still works afterwards.
    assert_eq!(tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap()["status"], 200);
}

#[test]
fn idle_hbone_connections_are_closed_and_streams_per_peer_are_capped() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 =
        Agent::start(&tb, "node2", &config, &["--hbone-idle-timeout", "1s", "--max-streams-per-peer", "2"])
            .unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let details = addr(&tb, "details", 8080);

    // Four connections held at once from one identity: two streams fit, two are refused.
    let held = tb
        .client("productpage", &["hold", "--connect", &details.to_string(), "--count", "4", "--seconds", "0"])
        .unwrap();
    assert_eq!((held["ok"].as_u64(), held["failed"].as_u64()), (Some(2), Some(2)), "{held}");
    assert_eq!(limited(&agent2, "streams_per_peer"), 2);
    let flows = agent2.flows().unwrap();
    let refused: Vec<&Value> = flows
        .iter()
        .filter(|f| {
            f["verdict"] == "denied"
                && f["reason"].as_str().is_some_and(|r| r.starts_with("streams_per_peer"))
        })
        .collect();
    assert_eq!(refused.len(), 2, "{flows:#?}");

    // The pooled HBONE connection then sits idle: node2 closes it after 1 s, node1's pool
    // notices, and the next request dials again.
    assert!(hbone_connections(&agent1) >= 1);
    let deadline = Instant::now() + WAIT;
    while hbone_connections(&agent1) > 0 {
        assert!(Instant::now() < deadline, "the idle HBONE connection was not closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(limited(&agent2, "idle_timeout") >= 1);
    assert_eq!(tb.get("productpage", details, "/").unwrap()["status"], 200);
}

#[test]
fn a_full_hbone_pool_refuses_a_new_peer_until_a_connection_is_idle() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let agent1 = Agent::start(&tb, "node1", &config, &["--hbone-max-connections", "1"]).unwrap();
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let (_details, _ratings) = (tb.serve("details", 8080).unwrap(), tb.serve("ratings", 8080).unwrap());
    let (details, ratings) = (addr(&tb, "details", 8080), addr(&tb, "ratings", 8080));

    // A connection to details held open takes the pool's one HBONE connection: a tunnel to
    // another pod (another pool key) finds no room and nothing idle to close, so it is refused.
    std::thread::scope(|scope| {
        let tb = &tb;
        let holder = scope.spawn(move || {
            tb.client(
                "productpage",
                &["hold", "--connect", &details.to_string(), "--count", "1", "--seconds", "4"],
            )
            .unwrap()
        });
        let deadline = Instant::now() + WAIT;
        while hbone_connections(&agent1) < 1 {
            assert!(Instant::now() < deadline, "the held connection never got its HBONE connection");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(tb.get("productpage", ratings, "/").is_err(), "a second peer fit in a pool of one");
        let held = holder.join().unwrap();
        assert_eq!((held["ok"].as_u64(), held["failed"].as_u64()), (Some(1), Some(0)), "{held}");
    });
    assert_eq!(limited(&agent1, "hbone_pool"), 1);
    let flows = agent1.flows().unwrap();
    let refused: Vec<&Value> = flows
        .iter()
        .filter(|f| {
            f["verdict"] == "error"
                && f["dst"]["ip"] == ratings.ip().to_string()
                && f["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("hbone_pool") && r.contains("--hbone-max-connections"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "{flows:#?}");

    // Once the held connection closed, details' HBONE connection is idle: it makes room.
    assert_eq!(tb.get("productpage", ratings, "/").unwrap()["status"], 200);
    assert_eq!(hbone_connections(&agent1), 1, "the idle connection was closed for the new one");
    assert_eq!(limited(&agent1, "hbone_pool"), 1, "no refusal once a connection was idle");
}
