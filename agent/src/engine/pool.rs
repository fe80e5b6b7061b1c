//! The client side of HBONE: a pool of multiplexed connections to peer engines per (source pod,
//! source identity, destination identity, destination pod), so that most new connections skip
//! the TLS handshake; bounded (`--hbone-max-connections`), reaped when idle, kept alive by
//! pings.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::{
    RecvStream, SendStream,
    client::{ResponseFuture, SendRequest},
};
use http::StatusCode;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{hbone, sockets::PodSockets};
use crate::{
    identity::{self, Identities, TlsInfo},
    sys::bounds::TableStat,
};

/// Keepalive: ping every 10 s, give up on a peer silent for 20 s.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pooled connections without streams for this long are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a tunnel stream could not be opened; maps to a flow's verdict and reason.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("mTLS handshake with {addr}: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    #[error("HTTP/2 with {0}: {1}")]
    Http2(SocketAddr, h2::Error),
    #[error("peer {0} answered CONNECT with {1}")]
    Status(SocketAddr, StatusCode),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("no certificate for {0}: {1}")]
    Identity(String, String),
    #[error(
        "hbone_pool: HBONE connection pool full ({0} connections, all carrying streams; raise --hbone-max-connections)"
    )]
    PoolFull(usize),
}

impl TunnelError {
    /// A policy decision (the peer is not who it must be, or refused us) rather than a fault.
    pub fn is_denial(&self) -> bool {
        matches!(self, TunnelError::Handshake { .. })
            || matches!(self, TunnelError::Status(_, s) if *s == StatusCode::FORBIDDEN || *s == StatusCode::BAD_REQUEST)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src_ip: Ipv4Addr,
    pub src_identity: Arc<str>,
    pub dst_identity: Arc<str>,
    pub dst: SocketAddr,
}

/// One TLS + HTTP/2 connection to a peer engine.
struct Connection {
    sender: SendRequest<Bytes>,
    active: AtomicUsize,
    dead: Arc<AtomicBool>,
    tls: TlsInfo,
    peer_identity: String,
    idle_since: Mutex<Instant>,
}

/// A tunnel stream whose CONNECT is sent: data may follow at once, before the peer answers
/// (its [`Answer`] comes with it). Holds its connection's stream slot until dropped.
pub struct Stream {
    pub send: SendStream<Bytes>,
    pub tls: TlsInfo,
    pub peer_identity: String,
    _slot: Slot,
}

/// The peer engine's answer to a CONNECT, and with it the peer → app direction.
pub struct Answer {
    response: ResponseFuture,
    dst: SocketAddr,
}

impl Answer {
    /// The stream from the peer once it answered 200; any other answer is refusal.
    pub async fn accepted(self) -> Result<RecvStream, TunnelError> {
        let response = self.response.await.map_err(|e| TunnelError::Http2(self.dst, e))?;
        if response.status() != StatusCode::OK {
            return Err(TunnelError::Status(self.dst, response.status()));
        }
        Ok(response.into_body())
    }
}

struct Slot(Arc<Connection>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut idle) = self.0.idle_since.lock()
        {
            *idle = Instant::now();
        }
    }
}

pub struct Pool {
    identities: Arc<Identities>,
    /// Streams per connection we open; also capped by what the peer allows.
    max_streams: usize,
    /// Connections held (and being dialed) at most: beyond it the connection idle longest is
    /// closed, and without an idle one the new tunnel is refused.
    max_connections: usize,
    connections: Mutex<HashMap<PoolKey, Vec<Arc<Connection>>>>,
    /// One dialer per key at a time: concurrent first connections share one handshake.
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Dials in progress, counted against `max_connections`.
    dials: Arc<AtomicUsize>,
    /// Idle connections closed, and tunnels refused, because the pool was full.
    overflows: AtomicU64,
}

/// A dial counted against the pool's maximum; released on drop.
struct DialSlot(Arc<AtomicUsize>);

impl Drop for DialSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub fn new(identities: Arc<Identities>, max_streams: u32, max_connections: usize) -> Arc<Self> {
        let pool = Arc::new(Self {
            identities,
            max_streams: max_streams.max(1) as usize,
            max_connections: max_connections.max(1),
            connections: Mutex::default(),
            dialing: Mutex::default(),
            dials: Arc::default(),
            overflows: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 4);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.reap();
            }
        });
        pool
    }

    /// Sends a CONNECT for `authority` through a pooled connection for `key`, dialing (from
    /// inside the source pod) when no pooled connection has room. Returns once the request is
    /// queued, not when it is answered: that is the [`Answer`].
    pub async fn open(
        &self,
        key: &PoolKey,
        sockets: &PodSockets,
        authority: SocketAddr,
        client: SocketAddr,
    ) -> Result<(Stream, Answer), TunnelError> {
        let connection = match self.reserve(key) {
            Some(c) => c,
            None => {
                let gate = self.dial_gate(key);
                let _dialing = gate.lock().await;
                match self.reserve(key) {
                    Some(c) => c,
                    None => {
                        let slot = self.admit()?;
                        // Boxed: the dial (TLS handshake, HTTP/2 setup) is the largest state
                        // of this future, and inline it would size every tunneled connection's
                        // task for its whole life (≈12 KiB per idle connection).
                        let connection = Arc::new(Box::pin(self.dial(key, sockets)).await?);
                        connection.active.fetch_add(1, Ordering::AcqRel);
                        if let Ok(mut map) = self.connections.lock() {
                            map.entry(key.clone()).or_default().push(connection.clone());
                        }
                        // Counted as a live connection from here on.
                        drop(slot);
                        connection
                    }
                }
            }
        };
        let slot = Slot(connection.clone());
        let mut sender = connection.sender.clone();
        let dst = key.dst;
        sender = sender.ready().await.map_err(|e| TunnelError::Http2(dst, e))?;
        let request = hbone::connect_request(authority, client);
        let (response, send) = sender.send_request(request, false).map_err(|e| TunnelError::Http2(dst, e))?;
        let stream = Stream {
            send,
            tls: connection.tls.clone(),
            peer_identity: connection.peer_identity.clone(),
            _slot: slot,
        };
        Ok((stream, Answer { response, dst }))
    }

    /// A live pooled connection with a free stream slot, its slot taken.
    fn reserve(&self, key: &PoolKey) -> Option<Arc<Connection>> {
        let mut map = self.connections.lock().ok()?;
        let list = map.get_mut(key)?;
        list.retain(|c| !c.dead.load(Ordering::Acquire));
        list.iter()
            .find(|c| {
                // The peer's SETTINGS_MAX_CONCURRENT_STREAMS bounds what we may open.
                let limit = self.max_streams.min(c.sender.current_max_send_streams());
                c.active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
                    .is_ok()
            })
            .cloned()
    }

    /// Room for one more connection: a dial slot, after closing the connection idle longest
    /// if the pool is full; refused (counted) when every connection carries streams.
    fn admit(&self) -> Result<DialSlot, TunnelError> {
        let full = TunnelError::PoolFull(self.max_connections);
        let Ok(mut map) = self.connections.lock() else { return Err(full) };
        let live = map.values().flatten().filter(|c| !c.dead.load(Ordering::Acquire)).count();
        if live + self.dials.load(Ordering::Acquire) >= self.max_connections {
            let idle_longest = map
                .iter()
                .flat_map(|(key, list)| list.iter().map(move |c| (key, c)))
                .filter(|(_, c)| c.active.load(Ordering::Acquire) == 0 && !c.dead.load(Ordering::Acquire))
                .filter_map(|(key, c)| c.idle_since.lock().ok().map(|since| (*since, key.clone(), c.clone())))
                .min_by_key(|(since, _, _)| *since);
            self.overflows.fetch_add(1, Ordering::Relaxed);
            let Some((_, key, victim)) = idle_longest else { return Err(full) };
            // Dropping the pool's handle closes it (no stream can start on it: reserving one
            // needs this lock).
            if let Some(list) = map.get_mut(&key) {
                list.retain(|c| !Arc::ptr_eq(c, &victim));
            }
            tracing::debug!(peer = %key.dst, "HBONE pool full: closing the connection idle longest");
        }
        self.dials.fetch_add(1, Ordering::AcqRel);
        Ok(DialSlot(self.dials.clone()))
    }

    /// The pool as a table: live connections, the maximum, idle connections closed and tunnels
    /// refused because it was full.
    pub fn table(&self) -> TableStat {
        TableStat::new(self.connection_count(), self.max_connections, self.overflows.load(Ordering::Relaxed))
    }

    fn dial_gate(&self, key: &PoolKey) -> Arc<tokio::sync::Mutex<()>> {
        match self.dialing.lock() {
            Ok(mut map) => map.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    async fn dial(&self, key: &PoolKey, sockets: &PodSockets) -> Result<Connection, TunnelError> {
        let dst = key.dst;
        let config = self
            .identities
            .client_config(&key.src_identity, &key.dst_identity)
            .map_err(|e| TunnelError::Identity(key.src_identity.to_string(), format!("{e:#}")))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, sockets.connect_outbound(dst))
            .await
            .map_err(|_| TunnelError::Timeout("connecting to the peer engine"))?
            .map_err(|e| TunnelError::Connect(dst, e))?;
        // No SNI is sent (as ztunnel); the verifier checks the SPIFFE ID, not this name.
        let name = ServerName::IpAddress(dst.ip().into());
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
            .await
            .map_err(|_| TunnelError::Timeout("mTLS handshake"))?
            .map_err(|e| TunnelError::Handshake { addr: dst, reason: identity::handshake_reason(&e) })?;
        let (tls_info, peer_identity) = {
            let (_, session) = tls.get_ref();
            let peer = identity::peer_info(session);
            (peer.tls_info(), peer.identity.unwrap_or_default())
        };
        let (sender, connection) = hbone::client_builder()
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| TunnelError::Http2(dst, e))?;
        let dead = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(connection, dead.clone(), dst));
        tracing::debug!(peer = %dst, identity = %peer_identity, "HBONE connection established");
        Ok(Connection {
            sender,
            active: AtomicUsize::new(0),
            dead,
            tls: tls_info,
            peer_identity,
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// Closes connections idle for too long and forgets dead ones.
    fn reap(&self) {
        let Ok(mut map) = self.connections.lock() else { return };
        map.retain(|_, list| {
            list.retain(|c| {
                let idle = c.active.load(Ordering::Acquire) == 0
                    && c.idle_since.lock().is_ok_and(|since| since.elapsed() > IDLE_TIMEOUT);
                !c.dead.load(Ordering::Acquire) && !idle
            });
            !list.is_empty()
        });
        if let Ok(mut dialing) = self.dialing.lock() {
            dialing.retain(|k, gate| map.contains_key(k) || Arc::strong_count(gate) > 1);
        }
    }

    /// Number of live pooled connections (for tests and `/readyz`).
    pub fn connection_count(&self) -> usize {
        self.connections
            .lock()
            .map(|m| m.values().flatten().filter(|c| !c.dead.load(Ordering::Acquire)).count())
            .unwrap_or(0)
    }
}

/// Drives a client connection, pinging the peer; marks it dead when it ends.
async fn drive<T>(mut connection: h2::client::Connection<T, Bytes>, dead: Arc<AtomicBool>, peer: SocketAddr)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ping_pong = connection.ping_pong();
    let keepalive = async {
        let Some(ping_pong) = ping_pong.as_mut() else { return std::future::pending().await };
        loop {
            tokio::time::sleep(PING_EVERY).await;
            match tokio::time::timeout(PING_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "HBONE ping failed"),
                Err(_) => return tracing::warn!(%peer, "HBONE peer silent for 20 s; dropping the connection"),
            }
        }
    };
    tokio::select! {
        result = &mut connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HBONE connection ended");
            }
        }
        () = keepalive => {}
    }
    dead.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests;
