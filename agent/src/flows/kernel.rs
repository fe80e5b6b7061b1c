//! Turns the kernel observer's open/close events into flow records.
use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use lockmesh_common::{FlowEvent, event_kind, role};
use time::OffsetDateTime;

use super::{
    record::{Encryption, Endpoint, FlowRecord, Reporter, SCHEMA, Verdict},
    table::FlowTable,
};
use crate::{inventory::Inventory, model::Workload};

/// Maps kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        use nix::time::{ClockId, clock_gettime};
        let ns = |id| {
            clock_gettime(id).map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128).unwrap_or(0)
        };
        let realtime = ns(ClockId::CLOCK_REALTIME);
        let monotonic = ns(ClockId::CLOCK_MONOTONIC);
        Self { realtime_minus_monotonic_ns: realtime - monotonic }
    }

    pub fn wall(&self, monotonic_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.realtime_minus_monotonic_ns + monotonic_ns as i128)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Consumes kernel flow events into the flow table, enriching them from the inventory.
pub struct KernelFlows {
    inventory: Arc<ArcSwap<Inventory>>,
    table: Arc<Mutex<FlowTable>>,
    clock: Clock,
    id_prefix: String,
}

impl KernelFlows {
    pub fn new(inventory: Arc<ArcSwap<Inventory>>, table: Arc<Mutex<FlowTable>>) -> Self {
        Self { inventory, table, clock: Clock::now(), id_prefix: boot_id_prefix() }
    }

    pub fn handle(&self, event: FlowEvent) {
        match event.kind {
            event_kind::OPEN => {
                let Some(record) = self.open_record(&event) else { return };
                if let Ok(mut table) = self.table.lock() {
                    table.insert_open(event.sock_cookie, record);
                }
            }
            event_kind::CLOSE => {
                let end = self.clock.wall(event.ts_ns);
                if let Ok(mut table) = self.table.lock() {
                    table.close(event.sock_cookie, |record| {
                        // The kernel counts per socket; records count client → server. A
                        // client socket's `bytes_acked` also counts its SYN.
                        let (to_server, to_client) = match record.reporter {
                            Reporter::Source => (event.bytes_sent.saturating_sub(1), event.bytes_received),
                            Reporter::Destination => (event.bytes_received, event.bytes_sent),
                        };
                        record.close(end, to_server, to_client);
                    });
                }
            }
            other => tracing::debug!(kind = other, "unknown kernel event kind"),
        }
    }

    fn open_record(&self, event: &FlowEvent) -> Option<FlowRecord> {
        let inventory = self.inventory.load();
        let Some(pod) = inventory.enrolled_by_netns(event.netns_cookie) else {
            // Enrolled in the kernel map but not (or no longer) in the inventory: the pod was
            // removed between the event and now.
            tracing::debug!(netns = event.netns_cookie, "event for a namespace no longer enrolled");
            return None;
        };
        let local_ip = Ipv4Addr::from(u32::from_be(event.local_ip4));
        let remote_ip = Ipv4Addr::from(u32::from_be(event.remote_ip4));
        let local = local_endpoint(pod, &inventory.trust_domain, local_ip, event.local_port);
        let remote = remote_endpoint(
            inventory.workload_by_ip(remote_ip).map(Arc::as_ref),
            remote_ip,
            event.remote_port,
        );
        let (reporter, src, dst) = if event.role == role::CLIENT {
            (Reporter::Source, local, remote)
        } else {
            (Reporter::Destination, remote, local)
        };
        Some(FlowRecord {
            schema: SCHEMA.to_string(),
            id: format!("{}-{:x}", self.id_prefix, event.sock_cookie),
            start: self.clock.wall(event.ts_ns),
            end: None,
            node: inventory.node.clone(),
            reporter,
            src,
            dst,
            encryption: Encryption::Plaintext,
            verdict: Verdict::Forwarded,
            reason: None,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: None,
        })
    }
}

/// The reporting node's own pod: known by its network namespace, so its identity is proven.
fn local_endpoint(pod: &Workload, trust_domain: &str, ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint { identity: Some(pod.identity(trust_domain)), ..remote_endpoint(Some(pod), ip, port) }
}

/// The other end: named from the inventory by address, identity unproven (plaintext).
fn remote_endpoint(workload: Option<&Workload>, ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint {
        ip,
        port,
        namespace: workload.map(|w| w.key.namespace.clone()),
        workload: workload.map(|w| w.key.name.clone()),
        service_account: workload.map(|w| w.service_account.clone()),
        identity: None,
        labels: workload.map(|w| w.labels.clone()).unwrap_or_default(),
    }
}

/// First 8 hex digits of the kernel boot id: socket cookies are unique only within a boot.
fn boot_id_prefix() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().replace('-', "").chars().take(8).collect())
        .unwrap_or_else(|| "00000000".to_string())
}
