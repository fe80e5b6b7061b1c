//! The flow record: what lockmesh reports about one TCP connection. Its JSON form is a contract
//! with auditors (documented in the README); fields are only ever added.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::TlsInfo;

/// Version of the record's JSON schema, carried in every record.
pub(crate) const SCHEMA: &str = "lockmesh.flow/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub schema: String,
    /// Unique per node and connection: `<boot id prefix>-<kernel socket cookie>`.
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// `null` while the connection is open.
    #[serde(with = "time::serde::rfc3339::option")]
    pub end: Option<OffsetDateTime>,
    /// The node whose agent reported the flow.
    pub node: String,
    /// Which end of the connection the reporting node saw.
    pub reporter: Reporter,
    /// The client.
    pub src: Endpoint,
    /// The server.
    pub dst: Endpoint,
    pub encryption: Encryption,
    pub verdict: Verdict,
    /// Why the verdict, when it is not a plain `forwarded`.
    pub reason: Option<String>,
    /// The effective mTLS mode of the server's port (`STRICT`, `PERMISSIVE`, `DISABLE`) when
    /// the server is a mesh workload.
    #[serde(default)]
    pub mode: Option<String>,
    /// The Istio objects that decided how the flow was handled.
    #[serde(default)]
    pub policy: FlowPolicy,
    /// The Kubernetes Service the connection went to, as its host name
    /// (`name.namespace.svc.<domain>`): the one whose cluster IP the client dialled, else the one
    /// that selects the server on this port; `null` when none does.
    #[serde(default)]
    pub service: Option<String>,
    /// The mutual TLS session that carried the flow (`null` for plaintext).
    pub tls: Option<TlsInfo>,
    /// Bytes from client to server.
    pub bytes_sent: u64,
    /// Bytes from server to client.
    pub bytes_received: u64,
    /// `end - start` once the flow is closed.
    pub duration_ms: Option<u64>,
}

/// The Istio objects behind a flow, as `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPolicy {
    /// The PeerAuthentication that set the server's mode (`null`: Istio's default PERMISSIVE).
    pub peer_authentication: Option<String>,
    /// The DestinationRule whose TLS mode the client side used (`null`: auto mTLS).
    pub destination_rule: Option<String>,
}

/// One end of a flow. Workload fields come from the inventory (by address, or by the pod's own
/// network namespace on the reporting node); `identity` is set only when it is proven: the
/// reporting node's own pod, or a peer authenticated by mTLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub service_account: Option<String>,
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    Mtls,
    Plaintext,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Forwarded,
    Reset,
    Denied,
    Error,
}

impl FlowRecord {
    /// A flow that has just opened and is being forwarded; the rest is filled in as it goes.
    pub fn new(
        id: String,
        start: OffsetDateTime,
        node: String,
        reporter: Reporter,
        src: Endpoint,
        dst: Endpoint,
        encryption: Encryption,
    ) -> Self {
        Self {
            schema: SCHEMA.to_string(),
            id,
            start,
            end: None,
            node,
            reporter,
            src,
            dst,
            encryption,
            verdict: Verdict::Forwarded,
            reason: None,
            mode: None,
            policy: FlowPolicy::default(),
            service: None,
            tls: None,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.end.is_none()
    }

    /// Marks the flow closed at `end` with final byte counts.
    pub fn close(&mut self, end: OffsetDateTime, bytes_sent: u64, bytes_received: u64) {
        let end = end.max(self.start);
        self.end = Some(end);
        self.duration_ms = Some(u64::try_from((end - self.start).whole_milliseconds()).unwrap_or(0));
        self.bytes_sent = bytes_sent;
        self.bytes_received = bytes_received;
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encryption::Mtls => "mtls",
            Encryption::Plaintext => "plaintext",
        })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Forwarded => "forwarded",
            Verdict::Reset => "reset",
            Verdict::Denied => "denied",
            Verdict::Error => "error",
        })
    }
}

impl std::fmt::Display for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        })
    }
}
