//! The per-node tunnel engine (tokio): for each enrolled pod, listeners inside the pod's
//! namespace — 127.0.0.1:15001 for captured outbound connections, 0.0.0.0:15008 for HBONE from
//! other engines — and the pool of HBONE connections to peers. Enrolment opens and closes them
//! live.
pub(crate) mod connections;
mod copy;
pub mod hbone;
mod inbound;
pub(crate) mod limits;
mod outbound;
pub(crate) mod pool;
pub mod sockets;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lockmesh_common::engine;
use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwap;

use self::{connections::ConnectionObserver, sockets::PodSockets};
use crate::{
    cluster::model::{ObjectKey, Workload},
    desired::{enrolment::EnrolledWorkload, inventory::Inventory},
    identity::Identities,
    kernel::OrigDstMap,
    sys::podnet,
};

/// What every connection handler needs.
pub struct EngineContext {
    pub identities: Arc<Identities>,
    /// Names workloads and holds the policy routes are decided by.
    pub inventory: Arc<ArcSwap<Inventory>>,
    /// Where every connection is reported (the flow sink).
    pub observer: Arc<dyn ConnectionObserver>,
    pub orig_dst: Mutex<OrigDstMap>,
    pub pool: Arc<pool::Pool>,
    /// HTTP/2 streams per HBONE connection, both directions.
    pub max_streams: u32,
    /// Round-robin position for Service endpoints.
    pub balancer: AtomicUsize,
    /// Bounds on handshakes, idle connections and streams per peer.
    pub limiter: Arc<limits::Limiter>,
    /// Captured connections accepted without an original destination in the kernel map.
    pub orig_dst_misses: Arc<AtomicU64>,
}

/// One enrolled pod as the engine serves it.
pub struct ServedPod {
    pub workload: Arc<Workload>,
    pub identity: Arc<str>,
    pub ip: Ipv4Addr,
    pub netns_cookie: u64,
    pub sockets: PodSockets,
    pub connections: Connections,
}

/// Counts a pod's open connections, so that unenrolment and shutdown can wait for them.
#[derive(Default)]
pub struct Connections(Arc<AtomicUsize>);

pub struct ConnectionGuard(Arc<AtomicUsize>);

impl Connections {
    pub fn track(&self) -> ConnectionGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.0.clone())
    }

    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts on one of a pod's listeners until `stop`, handing each connection to `handle` in a
/// task of its own that holds a [`ConnectionGuard`] (so unenrolment and shutdown can drain).
async fn accept_loop<F, Fut>(
    pod: Arc<ServedPod>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<ServedPod>, tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small writes (HTTP/2 frames, request/response apps) must not wait for Nagle
                // behind a delayed ACK: that alone costs ~40 ms per short connection.
                let _ = stream.set_nodelay(true);
                let guard = pod.connections.track();
                let connection = handle(pod.clone(), stream, peer);
                tokio::spawn(async move {
                    connection.await;
                    drop(guard);
                });
            }
            Err(e) => {
                tracing::warn!(pod = %pod.workload.key, error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct Running {
    pod: Arc<ServedPod>,
    stop: CancellationToken,
}

pub struct Engine {
    ctx: Arc<EngineContext>,
    pods: HashMap<ObjectKey, Running>,
}

impl Engine {
    pub fn new(
        identities: Arc<Identities>,
        inventory: Arc<ArcSwap<Inventory>>,
        observer: Arc<dyn ConnectionObserver>,
        orig_dst: OrigDstMap,
        max_streams: u32,
        max_connections: usize,
        limiter: Arc<limits::Limiter>,
    ) -> Self {
        let pool = pool::Pool::new(identities.clone(), max_streams, max_connections);
        let ctx = EngineContext {
            identities,
            inventory,
            observer,
            orig_dst: Mutex::new(orig_dst),
            pool,
            max_streams,
            balancer: AtomicUsize::new(0),
            limiter,
            orig_dst_misses: Arc::default(),
        };
        Self { ctx: Arc::new(ctx), pods: HashMap::new() }
    }

    pub fn pool(&self) -> Arc<pool::Pool> {
        self.ctx.pool.clone()
    }

    pub fn limiter(&self) -> Arc<limits::Limiter> {
        self.ctx.limiter.clone()
    }

    /// Captured connections the engine accepted but found no original destination for (reset).
    pub fn orig_dst_misses(&self) -> Arc<AtomicU64> {
        self.ctx.orig_dst_misses.clone()
    }

    /// Starts serving pods it does not serve yet, and restarts pods whose namespace, identity
    /// or address changed. Runs before the kernel steers traffic to new pods.
    pub async fn serve<'a>(
        &mut self,
        pods: impl IntoIterator<Item = &'a EnrolledWorkload>,
        trust_domain: &str,
    ) {
        for pod in pods {
            let key = &pod.workload.key;
            if let Some(running) = self.pods.get(key) {
                let same = pod.netns.cookie() == running.pod.netns_cookie
                    && *running.pod.identity == *pod.workload.identity(trust_domain)
                    && pod.workload.primary_address() == Some(running.pod.ip);
                if same {
                    continue;
                }
                if let Some(old) = self.pods.remove(key) {
                    old.stop.cancel();
                }
            }
            match self.start(pod, trust_domain).await {
                Ok(running) => {
                    tracing::info!(pod = %key, ip = %running.pod.ip, "engine serving pod on 127.0.0.1:15001 and :15008");
                    self.pods.insert(key.clone(), running);
                }
                Err(e) => tracing::error!(pod = %key, error = format!("{e:#}"), "engine cannot serve pod"),
            }
        }
    }

    /// Stops serving pods that are no longer enrolled. Runs after the kernel stopped steering
    /// their traffic here.
    pub async fn retire<'a>(&mut self, pods: impl IntoIterator<Item = &'a EnrolledWorkload>) {
        let keep: std::collections::HashSet<&ObjectKey> = pods.into_iter().map(|p| &p.workload.key).collect();
        let gone: Vec<ObjectKey> = self.pods.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for key in gone {
            if let Some(running) = self.pods.remove(&key) {
                running.stop.cancel();
                if let Err(e) = podnet::undo(running.pod.sockets.netns()).await {
                    tracing::debug!(pod = %key, error = %e, "cleaning the pod's routing (it may be gone)");
                }
                tracing::info!(pod = %key, open = running.pod.connections.open(), "engine stopped serving pod");
            }
        }
    }

    async fn start(&self, pod: &EnrolledWorkload, trust_domain: &str) -> anyhow::Result<Running> {
        let ip = pod.workload.primary_address().ok_or_else(|| anyhow::anyhow!("workload has no address"))?;
        let identity: Arc<str> = pod.workload.identity(trust_domain).into();
        // The pod's certificate first (it may have to wait for the CA service), not on its first
        // connection.
        self.ctx.identities.prepare(&identity).await?;
        let sockets = PodSockets::new(pod.netns.clone());
        podnet::prepare(&pod.netns).await?;
        let outbound = sockets.listen(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), engine::OUTBOUND_PORT))?;
        let inbound = sockets.listen(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), engine::HBONE_PORT))?;
        let served = Arc::new(ServedPod {
            workload: pod.workload.clone(),
            identity,
            ip,
            netns_cookie: pod.netns.cookie(),
            sockets,
            connections: Connections::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(outbound::serve(self.ctx.clone(), served.clone(), outbound, stop.clone()));
        tokio::spawn(inbound::serve(self.ctx.clone(), served.clone(), inbound, stop.clone()));
        Ok(Running { pod: served, stop })
    }

    /// Stops accepting everywhere and waits up to `grace` for open connections to finish.
    pub async fn drain(&mut self, grace: Duration) {
        for running in self.pods.values() {
            running.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.pods.values().any(|r| r.pod.connections.open() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.pods.clear();
    }
}
