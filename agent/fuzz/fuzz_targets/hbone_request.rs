//! The HBONE server's checks on an incoming request (`engine::hbone::connect_target` and
//! `client_port`, what the inbound engine decides before connecting to the app): which app
//! address of this pod a CONNECT may reach, which status refuses it, which client port the
//! flow reports.
//!
//! Input, one item per line: the method, the authority (for CONNECT; the URI otherwise), the
//! TCP peer's `ip:port` (a default when it does not parse), then `name: value` headers. The
//! request is built as h2 builds it from the pseudo-headers: a CONNECT's URI is its authority
//! alone; what h2 would refuse (bad method, authority or header bytes) is skipped.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, uri};
use libfuzzer_sys::fuzz_target;
use lockmesh::engine::{hbone, sockets::ipv4};

/// The pod the engine serves.
const POD: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 2, 2), Ipv4Addr::new(10, 77, 2, 3)];
/// Ports of the engine itself, never an app's (lockmesh-common's engine::OUTBOUND_PORT and
/// HBONE_PORT).
const ENGINE_PORTS: [u16; 2] = [15001, 15008];

fn request(data: &[u8]) -> Option<(Request<()>, SocketAddr)> {
    let mut lines = data.split(|b| *b == b'\n');
    let method = Method::from_bytes(lines.next()?).ok()?;
    let target = lines.next().unwrap_or_default();
    let uri = if method == Method::CONNECT {
        let mut parts = uri::Parts::default();
        parts.authority = Some(uri::Authority::try_from(target).ok()?);
        Uri::from_parts(parts).ok()?
    } else {
        Uri::try_from(target).ok()?
    };
    let peer = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.parse().ok())
        .unwrap_or(SocketAddr::from(([10, 77, 1, 2], 40000)));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else {
            continue;
        };
        request.headers_mut().append(name, value);
    }
    Some((request, peer))
}

fuzz_target!(|data: &[u8]| {
    let Some((request, peer)) = request(data) else { return };

    match hbone::connect_target(&request, &POD) {
        Ok(target) => {
            assert_eq!(request.method(), Method::CONNECT);
            assert!(POD.contains(target.ip()), "{target} is not the pod's");
            assert!(target.port() != 0 && !ENGINE_PORTS.contains(&target.port()), "{target}");
            let authority = request.uri().authority().map(|a| a.as_str());
            assert_eq!(authority.and_then(|a| a.parse::<SocketAddrV4>().ok()), Some(target));
        }
        Err((status, reason)) => {
            assert!(!reason.is_empty());
            let expected = if request.method() == Method::CONNECT {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::METHOD_NOT_ALLOWED
            };
            assert_eq!(status, expected, "{reason}");
        }
    }

    let port = hbone::client_port(&request, peer);
    match hbone::forwarded_for(&request) {
        Some(forwarded) if ipv4(forwarded) == ipv4(peer) => {
            assert_eq!(port, forwarded.port())
        }
        _ => assert_eq!(port, peer.port()),
    }
});
