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
    EngineContext, ServedPod,
    connections::{Closed, Connection, ConnectionError, Direction, RouteError},
    copy,
    limits::LimitReason,
    pool::{PoolKey, TunnelError},
    sockets,
};
use crate::{
    cluster::model::Workload,
    desired::inventory::Inventory,
    policy::{self, Decision, Destination},
};

pub(super) async fn serve(
    ctx: Arc<EngineContext>,
    pod: Arc<ServedPod>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) {
    super::accept_loop(pod, listener, stop, "outbound", move |pod, stream, peer| {
        let ctx = ctx.clone();
        async move { handle(&ctx, &pod, stream, peer).await }
    })
    .await
}

async fn handle(ctx: &EngineContext, pod: &ServedPod, app: TcpStream, peer: SocketAddr) {
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
    let mut connection = Connection {
        started,
        direction: Direction::Outbound,
        pod: pod.workload.clone(),
        local: SocketAddrV4::new(pod.ip, peer.port()),
        peer: target,
        peer_identity: None,
        // Captured, so meant for the tunnel unless policy says otherwise.
        mtls: true,
        tls: None,
        decision: None,
    };
    let route = route(&ctx.inventory.load(), &pod.workload, target, &ctx.balancer);
    let route = match route {
        Ok(route) => route,
        Err(error) => {
            // Captured, but there is nowhere to send it: fail closed.
            ctx.observer.failed(Some(key), &connection, &error.into());
            return sockets::reset(app);
        }
    };
    let Route { endpoint, addr, decision } = route;
    connection.peer = addr;
    connection.mtls = decision.outbound.mtls;
    connection.decision = Some(decision);
    if connection.mtls {
        tunnel(ctx, pod, app, key, connection, &endpoint).await
    } else {
        direct(ctx, pod, app, key, connection).await
    }
}

/// Where a captured connection goes and how.
struct Route {
    /// The workload that serves it (a Service's cluster IP is balanced to one of its endpoints).
    endpoint: Arc<Workload>,
    addr: SocketAddrV4,
    decision: Decision,
}

fn route(
    inventory: &Inventory,
    client: &Workload,
    target: SocketAddrV4,
    balancer: &AtomicUsize,
) -> Result<Route, RouteError> {
    let (state, mesh) = (&inventory.state, &inventory.mesh);
    let namespace = &client.key.namespace;
    if let Some(service) = policy::service_by_cluster_ip(state, *target.ip()) {
        let endpoints: Vec<_> =
            policy::endpoints(state, service).into_iter().filter(|w| w.primary_address().is_some()).collect();
        if endpoints.is_empty() {
            return Err(RouteError::NoEndpoints(service.key.clone()));
        }
        let endpoint = endpoints[balancer.fetch_add(1, Ordering::Relaxed) % endpoints.len()].clone();
        let port = service.ports.iter().find(|p| p.port == target.port());
        let Some(port) = port else {
            return Err(RouteError::NoPort(service.key.clone(), target.port()));
        };
        let target_port = policy::target_port(port, &endpoint);
        let dest = Destination::Service { service, port: target.port(), endpoint: &endpoint };
        let decision = policy::decide(state, mesh, namespace, &dest, true);
        let ip = endpoint.primary_address().unwrap_or(*target.ip());
        return Ok(Route { addr: SocketAddrV4::new(ip, target_port), endpoint, decision });
    }
    let Some(endpoint) = inventory.workload_by_ip(*target.ip()).cloned() else {
        return Err(RouteError::UnknownDestination);
    };
    let dest = Destination::Workload { workload: &endpoint, port: target.port() };
    let decision = policy::decide(state, mesh, namespace, &dest, true);
    Ok(Route { addr: target, endpoint, decision })
}

/// Over HBONE to the endpoint's engine.
async fn tunnel(
    ctx: &EngineContext,
    pod: &ServedPod,
    mut app: TcpStream,
    key: u64,
    mut connection: Connection,
    endpoint: &Workload,
) {
    let addr = connection.peer;
    let dst_identity = endpoint.identity(&ctx.inventory.load().trust_domain);
    let pool_key = PoolKey {
        src_ip: pod.ip,
        src_identity: pod.identity.clone(),
        dst_identity: dst_identity.as_str().into(),
        dst: SocketAddr::new((*addr.ip()).into(), engine::HBONE_PORT),
    };
    let client = SocketAddr::V4(connection.local);
    let opened = match ctx.pool.open(&pool_key, &pod.sockets, SocketAddr::V4(addr), client).await {
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
                ctx.limiter.hit(LimitReason::HbonePool);
            }
            log_failure(&error, pod, &addr);
            ctx.observer.failed(Some(key), &connection, &error.into());
            return sockets::reset(app);
        }
    };
    connection.peer_identity = Some(stream.peer_identity.clone());
    connection.tls = Some(stream.tls.clone());
    ctx.observer.opened(key, &connection);

    let (copied, error) = copy::bidirectional(&mut app, stream.send, recv, early).await;
    let reset = matches!(error, Some(copy::CopyError::Tunnel(_) | copy::CopyError::TunnelClosed));
    let error = error.map(ConnectionError::Copy);
    ctx.observer.closed(key, Closed { to_server: copied.sent, to_client: copied.received, error });
    if reset {
        sockets::reset(app);
    }
}

/// Plaintext, straight from the pod (policy says no mTLS for a captured destination, e.g. a
/// Service whose DestinationRule disables TLS).
async fn direct(ctx: &EngineContext, pod: &ServedPod, mut app: TcpStream, key: u64, connection: Connection) {
    let addr = connection.peer;
    let mut upstream = match pod.sockets.connect_outbound(SocketAddr::V4(addr)).await {
        Ok(upstream) => upstream,
        Err(error) => {
            ctx.observer.failed(Some(key), &connection, &ConnectionError::Connect { addr, error });
            return sockets::reset(app);
        }
    };
    ctx.observer.opened(key, &connection);
    let closed = match tokio::io::copy_bidirectional(&mut app, &mut upstream).await {
        Ok((to_server, to_client)) => Closed { to_server, to_client, error: None },
        Err(error) => Closed { to_server: 0, to_client: 0, error: Some(ConnectionError::Relay(error)) },
    };
    ctx.observer.closed(key, closed);
}

fn log_failure(error: &TunnelError, pod: &ServedPod, target: &SocketAddrV4) {
    if error.is_denial() {
        tracing::warn!(pod = %pod.workload.key, %target, %error, "tunnel denied");
    } else {
        tracing::warn!(pod = %pod.workload.key, %target, %error, "tunnel failed");
    }
}
