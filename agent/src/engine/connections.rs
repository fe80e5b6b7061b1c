//! What the engine tells about each connection it handles: opened, closed, or refused before it
//! opened, with a typed reason. The report stage makes flow records of it (`report::flows`), as it
//! does of the kernel's events; the engine itself builds no records.
use std::{io, net::SocketAddrV4, sync::Arc, time::Duration};

use time::OffsetDateTime;

use super::{copy::CopyError, limits::LimitReason, pool::TunnelError};
use crate::{cluster::model::Workload, identity::TlsInfo, policy::Decision};

/// Which end of the connection the engine's pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The pod's app connected out (captured by the kernel): the pod is the client.
    Outbound,
    /// A peer engine tunneled in: the pod is the server.
    Inbound,
}

/// A connection as the engine knows it.
#[derive(Clone, Debug)]
pub struct Connection {
    pub started: OffsetDateTime,
    pub direction: Direction,
    /// The enrolled pod the engine serves here.
    pub pod: Arc<Workload>,
    /// The pod's end: its address and the app's port.
    pub local: SocketAddrV4,
    /// The other end: the client of an inbound connection; for an outbound one, where it goes
    /// (the endpoint a Service's cluster IP was balanced to).
    pub peer: SocketAddrV4,
    /// The other end's SPIFFE ID, once mutual TLS proved it.
    pub peer_identity: Option<String>,
    /// Meant for the mTLS tunnel (whether or not it got that far).
    pub mtls: bool,
    /// The mutual TLS session that carries it.
    pub tls: Option<TlsInfo>,
    /// An outbound connection's policy decision, made once when it was routed.
    pub decision: Option<Decision>,
}

/// How an open connection ended.
#[derive(Debug)]
pub struct Closed {
    /// Bytes from the client to the server.
    pub to_server: u64,
    /// Bytes from the server to the client.
    pub to_client: u64,
    /// Why it ended early, if it did.
    pub error: Option<ConnectionError>,
}

/// Why a connection was refused, failed or ended early; its text is the flow's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// A plaintext connection from the pod could not be made.
    #[error("connect to {addr}: {error}")]
    Connect { addr: SocketAddrV4, error: io::Error },
    #[error("no certificate for {identity}: {error}")]
    NoCertificate { identity: Arc<str>, error: String },
    /// The peer's mTLS handshake failed (the text says which check).
    #[error("mTLS handshake: {0}")]
    Handshake(String),
    #[error("{}: mTLS handshake not done within {:?}", LimitReason::HandshakeTimeout.label(), .0)]
    HandshakeTimeout(Duration),
    /// A tunnel stream was refused: a limit, or a CONNECT this pod does not serve.
    #[error("{0}")]
    Refused(String),
    #[error("connect to the app at {target}: {error}")]
    App { target: SocketAddrV4, error: io::Error },
    #[error("answering CONNECT: {0}")]
    Answer(h2::Error),
    /// Copying through the tunnel ended with an error.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Copying a plaintext connection ended with an error.
    #[error("{0}")]
    Relay(io::Error),
}

/// What an error makes of the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Policy or a peer refused it.
    Denied,
    /// It could not be carried.
    Failed,
    /// It was carried, then ended early: only the reason is recorded.
    Interrupted,
}

impl ConnectionError {
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Tunnel(error) if error.is_denial() => Outcome::Denied,
            Self::NoCertificate { .. }
            | Self::Handshake(_)
            | Self::HandshakeTimeout(_)
            | Self::Refused(_) => Outcome::Denied,
            Self::Route(_) | Self::Tunnel(_) | Self::Connect { .. } | Self::App { .. } | Self::Answer(_) => {
                Outcome::Failed
            }
            Self::Copy(_) | Self::Relay(_) => Outcome::Interrupted,
        }
    }
}

/// Why a captured connection has nowhere to go: it is reset.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("Service {0} has no endpoints")]
    NoEndpoints(crate::cluster::model::ObjectKey),
    #[error("Service {0} has no port {1}")]
    NoPort(crate::cluster::model::ObjectKey, u16),
    #[error("destination is no longer a known mesh workload")]
    UnknownDestination,
}

/// Where the engine's connections are reported (the flow sink).
pub trait ConnectionObserver: Send + Sync {
    /// The connection is open and known by `key` (the kernel's cookie of the engine's socket
    /// towards the app) until [`closed`](Self::closed).
    fn opened(&self, key: u64, connection: &Connection);
    /// The connection opened under `key` is over.
    fn closed(&self, key: u64, closed: Closed);
    /// The connection never opened. `key`: the cookie of a socket it had, if any.
    fn failed(&self, key: Option<u64>, connection: &Connection, error: &ConnectionError);
}
