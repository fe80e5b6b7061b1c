//! Outbound: connections an enrolled pod's app made to a mesh destination, steered by the kernel
//! to the engine's listener inside that pod (127.0.0.1:15001), tunneled over HBONE to the
//! destination pod's engine.
use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use lockmesh_common::engine;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{
    EngineContext, PodProxy, copy,
    hbone::{PoolKey, TunnelError},
};
use crate::{
    flows::{Encryption, Reporter, Verdict},
    sockets,
};

pub async fn serve(
    ctx: Arc<EngineContext>,
    pod: Arc<PodProxy>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (ctx, pod) = (ctx.clone(), pod.clone());
                let guard = pod.connections.track();
                tokio::spawn(async move {
                    handle(&ctx, &pod, stream, peer).await;
                    drop(guard);
                });
            }
            Err(e) => {
                tracing::warn!(pod = %pod.workload.key, error = %e, "outbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(ctx: &EngineContext, pod: &PodProxy, mut app: TcpStream, peer: SocketAddr) {
    let started = time::OffsetDateTime::now_utc();
    let key = sockets::socket_cookie(&app);
    // Where the app meant to go, as the kernel recorded it: found by this pod's namespace and
    // the app's port, so one pod can never pick up another's connection.
    let orig = ctx.orig_dst.lock().ok().and_then(|mut m| m.take_entry(pod.netns_cookie, peer.port()));
    let Some(orig) = orig else {
        tracing::warn!(pod = %pod.workload.key, port = peer.port(), "captured connection without an original destination; resetting");
        return sockets::reset(app);
    };
    let target = SocketAddrV4::new(u32::from_be(orig.ip4).into(), orig.port);
    let src_ip = pod.ip;
    let src = ctx.sink.local_endpoint(&pod.workload, src_ip, peer.port());
    let inventory = ctx.sink.inventory();
    let Some(destination) = inventory.workload_by_ip(*target.ip()).cloned() else {
        // Captured, but the inventory no longer knows the address: fail closed.
        let dst = ctx.sink.remote_endpoint(*target.ip(), target.port(), None);
        let mut record = ctx.sink.record(key, started, Reporter::Source, src, dst, Encryption::Mtls);
        record.verdict = Verdict::Error;
        record.reason = Some("destination is no longer a known mesh workload".into());
        record.close(time::OffsetDateTime::now_utc(), 0, 0);
        ctx.sink.finished(record);
        return sockets::reset(app);
    };
    let trust_domain = inventory.trust_domain.clone();
    drop(inventory);
    let dst_identity = destination.identity(&trust_domain);
    let Some(dst_pod_ip) = destination.primary_address() else { return sockets::reset(app) };
    let pool_key = PoolKey {
        src_ip,
        src_identity: pod.identity.clone(),
        dst_identity: dst_identity.as_str().into(),
        dst: SocketAddr::new(dst_pod_ip.into(), engine::HBONE_PORT),
    };
    let dst = ctx.sink.remote_endpoint(*target.ip(), target.port(), None);
    let record = ctx.sink.record(key, started, Reporter::Source, src, dst, Encryption::Mtls);

    let stream = ctx
        .pool
        .open(&pool_key, &pod.sockets, SocketAddr::V4(target), SocketAddr::new(src_ip.into(), peer.port()))
        .await;
    let stream = match stream {
        Ok(stream) => stream,
        Err(error) => {
            let mut record = record;
            record.verdict = if error.is_denial() { Verdict::Denied } else { Verdict::Error };
            record.reason = Some(error.to_string());
            record.close(time::OffsetDateTime::now_utc(), 0, 0);
            log_failure(&error, pod, &target);
            ctx.sink.finished(record);
            return sockets::reset(app);
        }
    };
    let mut record = record;
    record.dst.identity = Some(stream.peer_identity.clone());
    record.tls = Some(stream.tls.clone());
    ctx.sink.open(key, record);

    let (copied, error) = copy::bidirectional(&mut app, stream.send, stream.recv).await;
    ctx.sink.close(key, |record| {
        if let Some(error) = &error {
            record.reason = Some(error.to_string());
        }
        record.close(time::OffsetDateTime::now_utc(), copied.sent, copied.received);
    });
    if matches!(error, Some(copy::CopyError::Tunnel(_) | copy::CopyError::TunnelClosed)) {
        sockets::reset(app);
    }
}

fn log_failure(error: &TunnelError, pod: &PodProxy, target: &SocketAddrV4) {
    if error.is_denial() {
        tracing::warn!(pod = %pod.workload.key, %target, %error, "tunnel denied");
    } else {
        tracing::warn!(pod = %pod.workload.key, %target, %error, "tunnel failed");
    }
}
