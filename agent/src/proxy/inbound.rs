//! Inbound: HBONE connections from other engines to an enrolled pod (`<pod IP>:15008`). The
//! peer is verified by mutual TLS; each `CONNECT` must name this pod; the engine then connects
//! to the app inside the pod *as the client's address* (transparent), so the app sees the real
//! peer, and copies both ways.
use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use lockmesh_common::engine;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{EngineContext, PodProxy, copy, hbone};
use crate::{
    flows::{Encryption, Reporter, TlsInfo, Verdict},
    sockets,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    tls: TlsInfo,
}

async fn connection(ctx: Arc<EngineContext>, pod: Arc<PodProxy>, tcp: TcpStream, peer: SocketAddr) {
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
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = crate::identity::handshake_reason(&e);
            tracing::warn!(pod = %pod.workload.key, %peer, %reason, "HBONE handshake failed");
            return denied(format!("mTLS handshake: {reason}"));
        }
        Err(_) => return denied("mTLS handshake timed out".into()),
    };
    let info = crate::identity::peer_info(tls.get_ref().1);
    let peer = Arc::new(Peer { addr: peer, identity: info.identity.clone(), tls: info.tls_info() });
    let mut h2 = match hbone::server_builder(ctx.max_streams).handshake::<_, Bytes>(tls).await {
        Ok(h2) => h2,
        Err(e) => {
            tracing::debug!(pod = %pod.workload.key, peer = %peer.addr, error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
    };
    while let Some(request) = h2.accept().await {
        match request {
            Ok((request, respond)) => {
                let (ctx, pod, peer) = (ctx.clone(), pod.clone(), peer.clone());
                tokio::spawn(async move { stream(&ctx, &pod, &peer, request, respond).await });
            }
            Err(e) => {
                tracing::debug!(pod = %pod.workload.key, peer = %peer.addr, error = %e, "HBONE connection ended");
                break;
            }
        }
    }
}

async fn stream(
    ctx: &EngineContext,
    pod: &PodProxy,
    peer: &Peer,
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let started = time::OffsetDateTime::now_utc();
    let client_ip = crate::flows::ipv4(peer.addr);
    // The client's own port, as its engine reports it; the address is the TCP peer's.
    let client_port = hbone::forwarded_for(&request)
        .filter(|a| crate::flows::ipv4(*a) == client_ip)
        .map_or(peer.addr.port(), |a| a.port());
    let src = ctx.sink.remote_endpoint(client_ip, client_port, peer.identity.clone());
    let target = match target(pod, &request) {
        Ok(target) => target,
        Err((status, reason)) => {
            let dst = ctx.sink.local_endpoint(&pod.workload, pod.ip, 0);
            let mut record = ctx.sink.record(
                ctx.sink.synthetic_key(),
                started,
                Reporter::Destination,
                src,
                dst,
                Encryption::Mtls,
            );
            record.verdict = Verdict::Denied;
            record.reason = Some(reason.clone());
            record.tls = Some(peer.tls.clone());
            record.close(time::OffsetDateTime::now_utc(), 0, 0);
            ctx.sink.finished(record);
            tracing::warn!(pod = %pod.workload.key, peer = %peer.addr, %reason, "HBONE request refused");
            let _ = respond.send_response(status_response(status), true);
            return;
        }
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
    let (copied, error) = copy::bidirectional(&mut app, send, request.into_body()).await;
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

/// The app address a CONNECT names, if it is this pod's and not one of the engine's own ports.
fn target(pod: &PodProxy, request: &Request<h2::RecvStream>) -> Result<SocketAddrV4, (StatusCode, String)> {
    if request.method() != Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, format!("HBONE: {} is not CONNECT", request.method())));
    }
    let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or_default();
    let Ok(target) = authority.parse::<SocketAddrV4>() else {
        return Err((StatusCode::BAD_REQUEST, format!("HBONE: authority {authority:?} is not ip:port")));
    };
    if !pod.workload.addresses.contains(target.ip()) {
        return Err((StatusCode::BAD_REQUEST, format!("HBONE: {target} is not a workload of this pod")));
    }
    if target.port() == 0 || [engine::OUTBOUND_PORT, engine::HBONE_PORT].contains(&target.port()) {
        return Err((StatusCode::BAD_REQUEST, format!("HBONE: port {} is not an app port", target.port())));
    }
    Ok(target)
}

fn status_response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}
