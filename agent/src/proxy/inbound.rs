//! Inbound: HBONE connections from other engines to an enrolled pod (`<pod IP>:15008`). The
//! peer is verified by mutual TLS; each `CONNECT` must name this pod; the engine then connects
//! to the app inside the pod *as the client's address* (transparent), so the app sees the real
//! peer, and copies both ways. Handshakes, idle connections and streams per peer identity are
//! bounded (see `limits`).
use std::{
    net::SocketAddr,
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
    EngineContext, PodProxy, copy, hbone,
    limits::{LimitReason, StreamPermit},
};
use crate::{
    flows::{Encryption, Reporter, TlsInfo, Verdict},
    identity::PeerInfo,
    sockets,
};

/// How long a connection closed for idleness may take to say goodbye (GOAWAY).
const GOODBYE: Duration = Duration::from_secs(1);

pub async fn serve(
    ctx: Arc<EngineContext>,
    pod: Arc<PodProxy>,
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

async fn connection(ctx: Arc<EngineContext>, pod: Arc<PodProxy>, tcp: TcpStream, peer: SocketAddr) {
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
    let denied = |reason: String| {
        let src = ctx.sink.remote_endpoint(crate::flows::ipv4(peer), peer.port(), None);
        let dst = ctx.sink.local_endpoint(&pod.workload, pod.ip, engine::HBONE_PORT);
        let mut record = ctx.sink.record(key, started, Reporter::Destination, src, dst, Encryption::Mtls);
        record.verdict = Verdict::Denied;
        record.reason = Some(reason);
        record.close(time::OffsetDateTime::now_utc(), 0, 0);
        ctx.sink.finished(record);
    };
    let config = match ctx.identities.server_config(&pod.identity) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(pod = %pod.workload.key, error = %e, "no server certificate; refusing HBONE");
            return denied(format!("no certificate for {}: {e:#}", pod.identity));
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
            return denied(format!("mTLS handshake: {reason}"));
        }
        Ok(Err(SetupError::Http2(e))) => {
            tracing::debug!(pod = %pod.workload.key, %peer, error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            ctx.limiter.hit(LimitReason::HandshakeTimeout);
            tracing::info!(pod = %pod.workload.key, %peer, timeout = ?handshake_timeout, "HBONE handshake timed out");
            return denied(format!(
                "{}: mTLS handshake not done within {handshake_timeout:?}",
                LimitReason::HandshakeTimeout.label()
            ));
        }
    };
    drop(permit);
    serve_streams(ctx, pod, peer_of(peer, &info), h2).await;
}

fn peer_of(addr: SocketAddr, info: &PeerInfo) -> Arc<Peer> {
    let limit_key = info.identity.clone().unwrap_or_else(|| addr.ip().to_string()).into();
    Arc::new(Peer { addr, identity: info.identity.clone(), limit_key, tls: info.tls_info() })
}

/// Accepts the connection's CONNECT streams, each in a task of its own, until the peer goes
/// or the connection has had no stream for the idle timeout.
async fn serve_streams<T>(
    ctx: Arc<EngineContext>,
    pod: Arc<PodProxy>,
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

/// Answers a CONNECT with an error status and records the refusal as a denied flow.
fn refuse(
    ctx: &EngineContext,
    pod: &PodProxy,
    peer: &Peer,
    client_port: u16,
    mut respond: SendResponse<Bytes>,
    status: StatusCode,
    reason: String,
) {
    let started = time::OffsetDateTime::now_utc();
    let src = ctx.sink.remote_endpoint(crate::flows::ipv4(peer.addr), client_port, peer.identity.clone());
    let dst = ctx.sink.local_endpoint(&pod.workload, pod.ip, 0);
    let mut record =
        ctx.sink.record(ctx.sink.synthetic_key(), started, Reporter::Destination, src, dst, Encryption::Mtls);
    record.verdict = Verdict::Denied;
    record.reason = Some(reason.clone());
    record.tls = Some(peer.tls.clone());
    record.close(time::OffsetDateTime::now_utc(), 0, 0);
    ctx.sink.finished(record);
    tracing::warn!(pod = %pod.workload.key, peer = %peer.addr, %reason, "HBONE request refused");
    let _ = respond.send_response(status_response(status), true);
}

async fn stream(
    ctx: &EngineContext,
    pod: &PodProxy,
    peer: &Peer,
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    _permit: StreamPermit,
) {
    let started = time::OffsetDateTime::now_utc();
    let client_ip = crate::flows::ipv4(peer.addr);
    // The client's own port, as its engine reports it; the address is the TCP peer's.
    let client_port = hbone::client_port(&request, peer.addr);
    let src = ctx.sink.remote_endpoint(client_ip, client_port, peer.identity.clone());
    let target = match hbone::connect_target(&request, &pod.workload.addresses) {
        Ok(target) => target,
        Err((status, reason)) => return refuse(ctx, pod, peer, client_port, respond, status, reason),
    };
    let dst = ctx.sink.local_endpoint(&pod.workload, *target.ip(), target.port());
    let mut app = match pod
        .sockets
        .connect_transparent(SocketAddr::new(client_ip.into(), client_port), SocketAddr::V4(target))
        .await
    {
        Ok(app) => app,
        Err(e) => {
            let mut record = ctx.sink.record(
                ctx.sink.synthetic_key(),
                started,
                Reporter::Destination,
                src,
                dst,
                Encryption::Mtls,
            );
            record.verdict = Verdict::Error;
            record.reason = Some(format!("connect to the app at {target}: {e}"));
            record.tls = Some(peer.tls.clone());
            record.close(time::OffsetDateTime::now_utc(), 0, 0);
            ctx.sink.finished(record);
            let _ = respond.send_response(status_response(StatusCode::SERVICE_UNAVAILABLE), true);
            return;
        }
    };
    let key = sockets::socket_cookie(&app);
    let mut record = ctx.sink.record(key, started, Reporter::Destination, src, dst, Encryption::Mtls);
    record.tls = Some(peer.tls.clone());
    ctx.sink.annotate_server(&mut record);
    ctx.sink.open(key, record);
    let send = match respond.send_response(status_response(StatusCode::OK), false) {
        Ok(send) => send,
        Err(e) => {
            ctx.sink.close(key, |r| {
                r.verdict = Verdict::Error;
                r.reason = Some(format!("answering CONNECT: {e}"));
                r.close(time::OffsetDateTime::now_utc(), 0, 0);
            });
            return sockets::reset(app);
        }
    };
    let (copied, error) =
        copy::bidirectional(&mut app, send, request.into_body(), copy::Early::Nothing).await;
    // The record counts client → server: what arrived through the tunnel went to the app.
    ctx.sink.close(key, |record| {
        if let Some(error) = &error {
            record.reason = Some(error.to_string());
        }
        record.close(time::OffsetDateTime::now_utc(), copied.received, copied.sent);
    });
    if matches!(error, Some(copy::CopyError::Tunnel(_) | copy::CopyError::TunnelClosed)) {
        sockets::reset(app);
    }
}

fn status_response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}
