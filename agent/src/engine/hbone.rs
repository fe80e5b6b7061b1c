//! HBONE, Istio ambient's tunnel: HTTP/2 `CONNECT` over mutual TLS 1.3 to `<pod IP>:15008`.
//! What both ends agree on: the HTTP/2 settings (ztunnel's, so the two interoperate), the
//! `CONNECT` a client sends, and what a server accepts of it. The client's connections are
//! pooled (`pool`).
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use http::{Method, Request, StatusCode};
use lockmesh_common::engine;

use super::sockets::ipv4;

/// Streams per pooled connection before another connection is opened (ztunnel's default).
pub(crate) const DEFAULT_MAX_STREAMS: u32 = 100;
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// `CONNECT <authority>` with the headers ztunnel sends.
pub(crate) fn connect_request(authority: SocketAddr, client: SocketAddr) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = http::Uri::try_from(authority.to_string()).unwrap_or_default();
    let headers = request.headers_mut();
    if let Ok(value) = http::HeaderValue::try_from(format!("for=\"{client}\"")) {
        headers.insert(http::header::FORWARDED, value);
    }
    // W3C trace context, as ztunnel sends: a fresh trace per tunneled connection, sampled off.
    let ids = trace_ids();
    if let Ok(value) = http::HeaderValue::try_from(format!("00-{:032x}-{:016x}-00", ids.0, ids.1)) {
        headers.insert("traceparent", value);
    }
    request
}

/// Non-cryptographic ids for `traceparent` (never zero, as the spec requires).
fn trace_ids() -> (u128, u64) {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    let a = hasher.finish();
    hasher.write_u64(a);
    let b = hasher.finish();
    (((a as u128) << 64 | b as u128).max(1), (a ^ b.rotate_left(17)).max(1))
}

/// The client address a CONNECT request names in its `forwarded: for="ip:port"` header.
pub fn forwarded_for<B>(request: &Request<B>) -> Option<SocketAddr> {
    let value = request.headers().get(http::header::FORWARDED)?.to_str().ok()?;
    value
        .split(';')
        .flat_map(|part| part.split(','))
        .find_map(|pair| pair.trim().strip_prefix("for="))
        .map(|v| v.trim_matches('"'))
        .and_then(|v| v.parse().ok())
}

/// The client port of an incoming CONNECT from the TCP peer `peer`: the one its `forwarded`
/// header reports when that names the peer's own address (its engine knows the client's port),
/// else the peer's.
pub fn client_port<B>(request: &Request<B>, peer: SocketAddr) -> u16 {
    let client_ip = ipv4(peer);
    forwarded_for(request).filter(|a| ipv4(*a) == client_ip).map_or(peer.port(), |a| a.port())
}

/// The app address an incoming CONNECT names, if it is one of `addresses` (the pod's) and not
/// one of the engine's own ports; else the status to answer and why.
pub fn connect_target<B>(
    request: &Request<B>,
    addresses: &[Ipv4Addr],
) -> Result<SocketAddrV4, (StatusCode, String)> {
    if request.method() != Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, format!("HBONE: {} is not CONNECT", request.method())));
    }
    let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or_default();
    let Ok(target) = authority.parse::<SocketAddrV4>() else {
        return Err((StatusCode::BAD_REQUEST, format!("HBONE: authority {authority:?} is not ip:port")));
    };
    if !addresses.contains(target.ip()) {
        return Err((StatusCode::BAD_REQUEST, format!("HBONE: {target} is not a workload of this pod")));
    }
    if target.port() == 0 || [engine::OUTBOUND_PORT, engine::HBONE_PORT].contains(&target.port()) {
        return Err((StatusCode::BAD_REQUEST, format!("HBONE: port {} is not an app port", target.port())));
    }
    Ok(target)
}

/// Settings of the server side, matching the client's.
pub fn server_builder(max_streams: u32) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(max_streams);
    builder
}

/// Settings of the client side, matching the server's.
pub(crate) fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .enable_push(false);
    builder
}

#[cfg(test)]
mod tests;
