//! Attack 3: a plaintext connection opened while the pod was PERMISSIVE must not outlive the
//! switch to STRICT: its next segment resets both ends, and the reset is recorded.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lockmesh_tests::{Agent, Testbed, netns};

use super::{common::*, refusal_record, until_strict};

/// A plaintext connection from `pod` to the stream echo server at `to`, after one round trip.
fn echoing(tb: &Testbed, pod: &str, to: SocketAddr) -> TcpStream {
    let mut stream = netns::run_in(&tb.pod(pod).netns_path(), move || TcpStream::connect_timeout(&to, WAIT))
        .unwrap()
        .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut echoed = [0u8; 5];
    stream.write_all(b"hello").unwrap();
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello");
    stream
}

#[test]
fn a_plaintext_connection_open_across_the_switch_to_strict_is_closed() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("PERMISSIVE"));
    let _agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _echo = tb.stream_echo("details", 9000).unwrap();
    let to = addr(&tb, "details", 9000);

    // The outsider (out of the mesh) talks plaintext to details, as PERMISSIVE allows.
    let mut stream = echoing(&tb, "outsider", to);

    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    until_strict(&tb, "details", 9000);

    // Its next segment is refused: the client is reset at once, nothing is echoed.
    let started = Instant::now();
    let wrote = stream.write_all(b"again");
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf);
    let took = started.elapsed();
    match (&wrote, &read) {
        (_, Err(e)) if e.kind() == ErrorKind::ConnectionReset => {}
        (Err(e), _) if e.kind() == ErrorKind::ConnectionReset => {}
        _ => {
            panic!("the live plaintext connection survived STRICT: write {wrote:?}, read {read:?} {:?}", &buf)
        }
    }
    assert!(took < Duration::from_secs(2), "the reset took {took:?}");
    let record = refusal_record(&agent2, "opened before the port became STRICT");
    assert_eq!(record["verdict"], "reset", "{record}");
    assert_eq!(record["src"]["ip"], tb.pod("outsider").ip.to_string(), "{record}");
    assert_eq!(record["dst"]["port"], 9000, "{record}");

    // The pod's end is closed too: the echo server's socket is gone (nothing established from
    // the outsider on 9000 remains in the pod).
    let sockets =
        netns::run_cmd(&tb.pod("details").netns_path(), "ss", &["-Htn", "state", "established"]).unwrap();
    let outsider = format!("{}:", tb.pod("outsider").ip);
    assert!(
        !sockets.lines().any(|l| l.contains(":9000") && l.contains(&outsider)),
        "the pod still holds the connection:\n{sockets}"
    );
}

/// The other side of per-connection STRICT: a connection the pod itself opened before it was
/// enrolled (its app was running before the mesh took it) keeps working once STRICT applies —
/// the agent records it from the pod's socket table before it writes STRICT.
#[test]
fn a_connection_the_pod_opened_before_enrolment_survives_strict() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    let all = tb.workload_yaml();
    let without_details: String = all
        .split("---\n")
        .filter(|doc| !doc.contains("name: details,") && !doc.contains("name: details\n"))
        .collect::<Vec<_>>()
        .join("---\n");
    apply(&config, "workloads.yaml", &without_details);
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 9080).unwrap();
    let _echo = tb.stream_echo("outsider", 9000).unwrap();
    let to = addr(&tb, "outsider", 9000);
    let mut stream = echoing(&tb, "details", to);
    let mut echoed = [0u8; 5];

    // details joins the mesh, STRICT on every port.
    apply(&config, "workloads.yaml", &all);
    until_strict(&tb, "details", 9080);
    for round in 0..3 {
        stream.write_all(b"again").unwrap();
        stream.read_exact(&mut echoed).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(&echoed, b"again");
    }
}
