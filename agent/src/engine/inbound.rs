//! Inbound: HBONE connections from other engines to an enrolled pod (`<pod IP>:15008`). The
//! peer is verified by mutual TLS; each `CONNECT` must name this pod; the engine then connects
//! to the app inside the pod *as the client's address* (transparent), so the app sees the real
//! peer, and copies both ways. Handshakes, idle connections and streams per peer identity are
//! bounded (see `limits`).
use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use lockmesh_common::engine;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{
    EngineContext, ServedPod,
    connections::{Closed, Connection, ConnectionError, Direction},
    copy, hbone,
    limits::{LimitReason, StreamPermit},
    sockets,
};
use crate::identity::{PeerInfo, TlsInfo};

/// How long a connection closed for idleness may take to say goodbye (GOAWAY).
const GOODBYE: Duration = Duration::from_secs(1);

pub(super) async fn serve(
    ctx: Arc<EngineContext>,
    pod: Arc<ServedPod>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) {
    super::accept_loop(pod, listener, stop, "HBONE", move |pod, stream, peer| {
        connection(ctx.clone(), pod, stream, peer)
    })
    .await
}

/// What the TLS handshake proved about the peer, shared by the connection's streams.
struct Peer {
    addr: SocketAddr,
    identity: Option<String>,
    /// What its streams are counted under: the SPIFFE ID, else the address.
    limit_key: Arc<str>,
    tls: TlsInfo,
}

/// Why an inbound connection did not get as far as HTTP/2.
enum SetupError {
    Tls(std::io::Error),
    Http2(h2::Error),
}

async fn connection(ctx: Arc<EngineContext>, pod: Arc<ServedPod>, tcp: TcpStream, peer: SocketAddr) {
    // Refused before any TLS work: an unauthenticated flood costs one accept and one reset
    // each. Not a flow record (that would let the flood fill the flow table and audit log).
    let Ok(permit) = ctx.limiter.handshake(peer.ip()) else {
        if ctx.limiter.should_log() {
            tracing::warn!(pod = %pod.workload.key, %peer, "HBONE handshake refused: too many in progress (logged at most once a second)");
        }
        return sockets::reset(tcp);
    };
    let started = time::OffsetDateTime::now_utc();
    let key = sockets::socket_cookie(&tcp);
    let denied = |error: ConnectionError| {
        let connection = Connection {
            started,
            direction: Direction::Inbound,
            pod: pod.workload.clone(),
            local: SocketAddrV4::new(pod.ip, engine::HBONE_PORT),
            peer: SocketAddrV4::new(sockets::ipv4(peer), peer.port()),
            peer_identity: None,
            mtls: true,
            tls: None,
            decision: None,
        };
        ctx.observer.failed(Some(key), &connection, &error);
    };
    let config = match ctx.identities.server_config(&pod.identity) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(pod = %pod.workload.key, error = %e, "no server certificate; refusing HBONE");
            return denied(ConnectionError::NoCertificate {
                identity: pod.identity.clone(),
                error: format!("{e:#}"),
            });
        }
    };
    let handshake_timeout = ctx.limiter.limits.handshake_timeout;
    let handshake = async {
        let tls = TlsAcceptor::from(config).accept(tcp).await.map_err(SetupError::Tls)?;
        let info = crate::identity::peer_info(tls.get_ref().1);
        let h2 = hbone::server_builder(ctx.max_streams)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(SetupError::Http2)?;
        Ok::<_, SetupError>((info, h2))
    };
    let (info, h2) = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(SetupError::Tls(e))) => {
            let reason = crate::identity::handshake_reason(&e);
            tracing::warn!(pod = %pod.workload.key, %peer, %reason, "HBONE handshake failed");
            return denied(ConnectionError::Handshake(reason));
        }
        Ok(Err(SetupError::Http2(e))) => {
            tracing::debug!(pod = %pod.workload.key, %peer, error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            ctx.limiter.hit(LimitReason::HandshakeTimeout);
            tracing::info!(pod = %pod.workload.key, %peer, timeout = ?handshake_timeout, "HBONE handshake timed out");
            return denied(ConnectionError::HandshakeTimeout(handshake_timeout));
        }
    };
    drop(permit);
    serve_streams(ctx, pod, peer_of(peer, &info), h2).await;
}

fn peer_of(addr: SocketAddr, info: &PeerInfo) -> Arc<Peer> {
    let limit_key = info.identity.clone().unwrap_or_else(|| addr.ip().to_string()).into();
    Arc::new(Peer { addr, identity: info.identity.clone(), limit_key, tls: info.tls_info() })
}

impl Peer {
    /// A stream of this peer to `pod`, from the client port its engine reports (the pod's end
    /// is the app's address, filled in by the caller).
    fn connection(&self, pod: &ServedPod, started: time::OffsetDateTime, client_port: u16) -> Connection {
        Connection {
            started,
            direction: Direction::Inbound,
            pod: pod.workload.clone(),
            local: SocketAddrV4::new(pod.ip, 0),
            peer: SocketAddrV4::new(sockets::ipv4(self.addr), client_port),
            peer_identity: self.identity.clone(),
            mtls: true,
            tls: Some(self.tls.clone()),
            decision: None,
        }
    }
}

/// Accepts the connection's CONNECT streams, each in a task of its own, until the peer goes
/// or the connection has had no stream for the idle timeout.
async fn serve_streams<T>(
    ctx: Arc<EngineContext>,
    pod: Arc<ServedPod>,
    peer: Arc<Peer>,
    mut h2: h2::server::Connection<T, Bytes>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let idle_timeout = ctx.limiter.limits.idle_timeout;
    // Each stream task holds a clone: the count of the others is the streams in flight.
    let in_flight = Arc::new(());
    let mut idle_since = Some(Instant::now());
    let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
    loop {
        let request = tokio::select! {
            request = h2.accept() => request,
            _ = check.tick() => {
                if Arc::strong_count(&in_flight) > 1 {
                    idle_since = None;
                    continue;
                }
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < idle_timeout {
                    continue;
                }
                ctx.limiter.hit(LimitReason::IdleTimeout);
                tracing::debug!(pod = %pod.workload.key, peer = %peer.addr, timeout = ?idle_timeout, "closing idle HBONE connection");
                h2.graceful_shutdown();
                let _ = tokio::time::timeout(GOODBYE, async { while h2.accept().await.is_some() {} }).await;
                return;
            }
        };
        match request {
            Some(Ok((request, respond))) => {
                idle_since = None;
                let permit = match ctx.limiter.stream(&peer.limit_key) {
                    Ok(permit) => permit,
                    Err(limit) => {
                        let reason = match limit {
                            LimitReason::Peers => format!(
                                "{}: {} other peer identities already have tunnel streams open",
                                limit.label(),
                                super::limits::MAX_PEERS
                            ),
                            _ => format!(
                                "{}: {} already has {} tunnel streams open",
                                limit.label(),
                                peer.limit_key,
                                ctx.limiter.limits.max_streams_per_peer
                            ),
                        };
                        let port = peer.addr.port();
                        refuse(&ctx, &pod, &peer, port, respond, StatusCode::TOO_MANY_REQUESTS, reason);
                        continue;
                    }
                };
                let (ctx, pod, peer, in_flight) = (ctx.clone(), pod.clone(), peer.clone(), in_flight.clone());
                tokio::spawn(async move {
                    stream(&ctx, &pod, &peer, request, respond, permit).await;
                    drop(in_flight);
                });
            }
            Some(Err(e)) => {
                tracing::debug!(pod = %pod.workload.key, peer = %peer.addr, error = %e, "HBONE connection ended");
                return;
            }
            None => return,
        }
    }
}

/// Answers a CONNECT with an error status and reports the refusal (a denied flow).
fn refuse(
    ctx: &EngineContext,
    pod: &ServedPod,
    peer: &Peer,
    client_port: u16,
    mut respond: SendResponse<Bytes>,
    status: StatusCode,
    reason: String,
) {
    let connection = Connection {
        local: SocketAddrV4::new(pod.ip, 0),
        ..peer.connection(pod, time::OffsetDateTime::now_utc(), client_port)
    };
    tracing::warn!(pod = %pod.workload.key, peer = %peer.addr, %reason, "HBONE request refused");
    ctx.observer.failed(None, &connection, &ConnectionError::Refused(reason));
    let _ = respond.send_response(status_response(status), true);
}

async fn stream(
    ctx: &EngineContext,
    pod: &ServedPod,
    peer: &Peer,
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    _permit: StreamPermit,
) {
    let started = time::OffsetDateTime::now_utc();
    // The client's own port, as its engine reports it; the address is the TCP peer's.
    let client_port = hbone::client_port(&request, peer.addr);
    let target = match hbone::connect_target(&request, &pod.workload.addresses) {
        Ok(target) => target,
        Err((status, reason)) => return refuse(ctx, pod, peer, client_port, respond, status, reason),
    };
    let connection = Connection { local: target, ..peer.connection(pod, started, client_port) };
    let client = SocketAddr::V4(connection.peer);
    let mut app = match pod.sockets.connect_transparent(client, SocketAddr::V4(target)).await {
        Ok(app) => app,
        Err(error) => {
            ctx.observer.failed(None, &connection, &ConnectionError::App { target, error });
            let _ = respond.send_response(status_response(StatusCode::SERVICE_UNAVAILABLE), true);
            return;
        }
    };
    let key = sockets::socket_cookie(&app);
    ctx.observer.opened(key, &connection);
    let send = match respond.send_response(status_response(StatusCode::OK), false) {
        Ok(send) => send,
        Err(e) => {
            let error = Some(ConnectionError::Answer(e));
            ctx.observer.closed(key, Closed { to_server: 0, to_client: 0, error });
            return sockets::reset(app);
        }
    };
    let (copied, error) =
        copy::bidirectional(&mut app, send, request.into_body(), copy::Early::Nothing).await;
    let reset = matches!(error, Some(copy::CopyError::Tunnel(_) | copy::CopyError::TunnelClosed));
    // What arrived through the tunnel went to the app: client → server.
    let closed = Closed { to_server: copied.received, to_client: copied.sent, error: error.map(Into::into) };
    ctx.observer.closed(key, closed);
    if reset {
        sockets::reset(app);
    }
}

fn status_response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}
