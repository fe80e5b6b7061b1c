//! The engine's socket mark: the capture hook lets sockets carrying it go where they are sent
//! (the engine's own legs). An app with CAP_NET_ADMIN can set it and leave uncaptured — in clear
//! to a destination its policy tunnels. The pod's interface catches that SYN: reset inside the
//! pod, recorded by the pod's node.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::FromRawFd as _,
    time::Duration,
};

use lockmesh_tests::{Agent, Testbed, app::MARKER, capture::Capture, netns, testbed::WIRE_IF};

use super::{common::*, kernel_counter, refusal_record};

/// The engine's outbound mark (lockmesh_common::engine::MARK_OUTBOUND, ztunnel's 0x539).
const ENGINE_MARK: u32 = 0x539;

/// A GET from `pod` on a socket carrying the engine's mark; the response, or the error.
fn marked_get(tb: &Testbed, pod: &str, to: SocketAddrV4) -> std::io::Result<String> {
    let stream = netns::run_in(&tb.pod(pod).netns_path(), move || -> std::io::Result<TcpStream> {
        // SAFETY: plain socket calls on a descriptor owned by the TcpStream at once.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let stream = TcpStream::from_raw_fd(fd);
            let mark = ENGINE_MARK;
            let size = std::mem::size_of::<u32>() as libc::socklen_t;
            if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, (&raw const mark).cast(), size) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: to.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(stream)
        }
    })
    .unwrap()?;
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: details\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn an_app_setting_the_engine_mark_cannot_leave_in_clear() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    // PERMISSIVE: a plaintext request that got out would be served (and seen on the wire).
    apply(&config, "peer-authentication.yaml", &namespace_policy("PERMISSIVE"));
    let _details = tb.serve("details", 9080).unwrap();
    let SocketAddr::V4(to) = addr(&tb, "details", 9080) else { unreachable!() };
    let wire = || {
        Capture::start(&tb.node("node2").netns_path(), WIRE_IF, "tcp", tb.work_dir.join("mark.pcap")).unwrap()
    };

    // Control, no agent: the marked request crosses the wire in clear and is served.
    let capture = wire();
    let response = marked_get(&tb, "productpage", to).unwrap();
    let capture = capture.finish().unwrap();
    assert!(
        response.contains(MARKER) && capture.contains(MARKER.as_bytes()),
        "control: {response}\n{}",
        capture.summary
    );

    let agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let _agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let capture = wire();
    let marked = marked_get(&tb, "productpage", to);
    let unmarked = tb.get("productpage", addr(&tb, "details", 9080), "/").unwrap();
    let capture = capture.finish().unwrap();
    let error = marked.expect_err("the marked plaintext request must not be served");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{error}");
    assert_eq!(unmarked["status"], 200, "the app's ordinary connections are tunnelled: {unmarked}");
    assert!(!capture.contains(MARKER.as_bytes()), "plaintext on the wire:\n{}", capture.summary);
    super::until("the reset counted", || kernel_counter(&agent1, "uncaptured_resets") >= 1);
    let record = refusal_record(&agent1, "capture did not take");
    assert_eq!(record["reporter"], "source", "{record}");
    assert_eq!(record["src"]["workload"], "productpage", "{record}");
    assert_eq!(record["dst"]["port"], 9080, "{record}");
}
