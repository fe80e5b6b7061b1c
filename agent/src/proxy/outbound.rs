//! Outbound: connections an enrolled pod's app made to a mesh destination, steered by the kernel
//! to the engine's listener inside that pod (127.0.0.1:15001), tunneled over HBONE to the
//! destination pod's engine.
use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use lockmesh_common::engine;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{
    EngineContext, PodProxy, copy,
    hbone::{PoolKey, TunnelError},
};
use crate::{
    flows::{Encryption, FlowRecord, Reporter, Verdict},
    inventory::Inventory,
    model::Workload,
    policy::{self, Destination, Outbound},
    sockets,
};

pub async fn serve(
    ctx: Arc<EngineContext>,
    pod: Arc<PodProxy>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) {
    super::accept_loop(pod, listener, stop, "outbound", move |pod, stream, peer| {
        let ctx = ctx.clone();
        async move { handle(&ctx, &pod, stream, peer).await }
    })
    .await
}

async fn handle(ctx: &EngineContext, pod: &PodProxy, app: TcpStream, peer: SocketAddr) {
    let started = time::OffsetDateTime::now_utc();
    let key = sockets::socket_cookie(&app);
    // Where the app meant to go, as the kernel recorded it: found by this pod's namespace and
    // the app's port, so one pod can never pick up another's connection.
    let orig = ctx.orig_dst.lock().ok().and_then(|mut m| m.take_entry(pod.netns_cookie, peer.port()));
    let Some(orig) = orig else {
        // The kernel's entry was evicted (ORIG_DST or ORIG_DST_BY_PORT full) or never made:
        // nowhere to send it, so fail closed, and count it.
        ctx.orig_dst_misses.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(pod = %pod.workload.key, port = peer.port(), "captured connection without an original destination (kernel map entry evicted?); resetting");
        return sockets::reset(app);
    };
    let target = SocketAddrV4::new(u32::from_be(orig.ip4).into(), orig.port);
    let src = ctx.sink.local_endpoint(&pod.workload, pod.ip, peer.port());
    let route = {
        let inventory = ctx.sink.inventory();
        route(&inventory, &pod.workload, target, &ctx.balancer)
    };
    let route = match route {
        Ok(route) => route,
        Err(reason) => {
            // Captured, but there is nowhere to send it: fail closed.
            let dst = ctx.sink.remote_endpoint(*target.ip(), target.port(), None);
            let mut record = ctx.sink.record(key, started, Reporter::Source, src, dst, Encryption::Mtls);
            record.verdict = Verdict::Error;
            record.reason = Some(reason);
            record.close(time::OffsetDateTime::now_utc(), 0, 0);
            ctx.sink.finished(record);
            return sockets::reset(app);
        }
    };
    let dst = ctx.sink.remote_endpoint(*route.addr.ip(), route.addr.port(), None);
    let encryption = if route.outbound.mtls { Encryption::Mtls } else { Encryption::Plaintext };
    let mut record = ctx.sink.record(key, started, Reporter::Source, src, dst, encryption);
    ctx.sink.annotate_server(&mut record);
    if let Some(service) = &route.service {
        // The Service dialled, rather than any other that also selects the endpoint.
        record.service = Some(service.clone());
    }
    record.policy.destination_rule = route
        .outbound
        .decided_by
        .as_deref()
        .and_then(|d| d.strip_prefix("DestinationRule "))
        .map(str::to_string);
    if route.outbound.mtls {
        tunnel(ctx, pod, app, peer, key, record, &route).await
    } else {
        direct(ctx, pod, app, key, record, route.addr).await
    }
}

/// Where a captured connection goes and how.
struct Route {
    /// The workload that serves it (a Service's cluster IP is balanced to one of its endpoints).
    endpoint: Arc<Workload>,
    addr: SocketAddrV4,
    outbound: Outbound,
    /// Host name of the Service whose cluster IP was dialled.
    service: Option<String>,
}

fn route(
    inventory: &Inventory,
    client: &Workload,
    target: SocketAddrV4,
    balancer: &AtomicUsize,
) -> Result<Route, String> {
    let (state, mesh) = (&inventory.state, &inventory.mesh);
    let namespace = &client.key.namespace;
    if let Some(service) = policy::service_by_cluster_ip(state, *target.ip()) {
        let endpoints: Vec<_> =
            policy::endpoints(state, service).into_iter().filter(|w| w.primary_address().is_some()).collect();
        if endpoints.is_empty() {
            return Err(format!("Service {} has no endpoints", service.key));
        }
        let endpoint = endpoints[balancer.fetch_add(1, Ordering::Relaxed) % endpoints.len()].clone();
        let port = service.ports.iter().find(|p| p.port == target.port());
        let Some(port) = port else {
            return Err(format!("Service {} has no port {}", service.key, target.port()));
        };
        let target_port = policy::target_port(port, &endpoint);
        let dest = Destination::Service { service, port: target.port(), endpoint: &endpoint };
        let outbound = policy::outbound_tls(state, mesh, namespace, &dest, true);
        let ip = endpoint.primary_address().unwrap_or(*target.ip());
        let service = Some(policy::service_fqdn(service, &mesh.domain));
        return Ok(Route { addr: SocketAddrV4::new(ip, target_port), endpoint, outbound, service });
    }
    let Some(endpoint) = inventory.workload_by_ip(*target.ip()).cloned() else {
        return Err("destination is no longer a known mesh workload".into());
    };
    let dest = Destination::Workload { workload: &endpoint, port: target.port() };
    let outbound = policy::outbound_tls(state, mesh, namespace, &dest, true);
    Ok(Route { addr: target, endpoint, outbound, service: None })
}

/// Over HBONE to the endpoint's engine.
async fn tunnel(
    ctx: &EngineContext,
    pod: &PodProxy,
    mut app: TcpStream,
    peer: SocketAddr,
    key: u64,
    mut record: FlowRecord,
    route: &Route,
) {
    let trust_domain = ctx.sink.inventory().trust_domain.clone();
    let dst_identity = route.endpoint.identity(&trust_domain);
    let pool_key = PoolKey {
        src_ip: pod.ip,
        src_identity: pod.identity.clone(),
        dst_identity: dst_identity.as_str().into(),
        dst: SocketAddr::new((*route.addr.ip()).into(), engine::HBONE_PORT),
    };
    let client = SocketAddr::new(pod.ip.into(), peer.port());
    let opened = match ctx.pool.open(&pool_key, &pod.sockets, SocketAddr::V4(route.addr), client).await {
        Ok((mut stream, answer)) => {
            let (answer, early) = copy::while_answering(&app, &mut stream.send, answer.accepted()).await;
            answer.map(|recv| (stream, recv, early))
        }
        Err(error) => Err(error),
    };
    let (stream, recv, early) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            if matches!(error, TunnelError::PoolFull(_)) {
                ctx.limiter.hit(super::limits::LimitReason::HbonePool);
            }
            record.verdict = if error.is_denial() { Verdict::Denied } else { Verdict::Error };
            record.reason = Some(error.to_string());
            record.close(time::OffsetDateTime::now_utc(), 0, 0);
            log_failure(&error, pod, &route.addr);
            ctx.sink.finished(record);
            return sockets::reset(app);
        }
    };
    record.dst.identity = Some(stream.peer_identity.clone());
    record.tls = Some(stream.tls.clone());
    ctx.sink.open(key, record);

    let (copied, error) = copy::bidirectional(&mut app, stream.send, recv, early).await;
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

/// Plaintext, straight from the pod (policy says no mTLS for a captured destination, e.g. a
/// Service whose DestinationRule disables TLS).
async fn direct(
    ctx: &EngineContext,
    pod: &PodProxy,
    mut app: TcpStream,
    key: u64,
    mut record: FlowRecord,
    addr: SocketAddrV4,
) {
    let mut upstream = match pod.sockets.connect_outbound(SocketAddr::V4(addr)).await {
        Ok(upstream) => upstream,
        Err(e) => {
            record.verdict = Verdict::Error;
            record.reason = Some(format!("connect to {addr}: {e}"));
            record.close(time::OffsetDateTime::now_utc(), 0, 0);
            ctx.sink.finished(record);
            return sockets::reset(app);
        }
    };
    ctx.sink.open(key, record);
    let result = tokio::io::copy_bidirectional(&mut app, &mut upstream).await;
    ctx.sink.close(key, |record| {
        let (sent, received) = match &result {
            Ok(counts) => *counts,
            Err(e) => {
                record.reason = Some(e.to_string());
                (0, 0)
            }
        };
        record.close(time::OffsetDateTime::now_utc(), sent, received);
    });
}

fn log_failure(error: &TunnelError, pod: &PodProxy, target: &SocketAddrV4) {
    if error.is_denial() {
        tracing::warn!(pod = %pod.workload.key, %target, %error, "tunnel denied");
    } else {
        tracing::warn!(pod = %pod.workload.key, %target, %error, "tunnel failed");
    }
}
