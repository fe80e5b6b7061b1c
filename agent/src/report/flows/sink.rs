//! The one place flow records are built and stored, for the kernel observer and the engine
//! alike: names endpoints from the inventory, stamps ids and times.
use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use time::OffsetDateTime;

use super::{
    observe::FlowObserver,
    record::{Encryption, Endpoint, FlowRecord, Reporter},
    table::FlowTable,
};
use crate::{cluster::model::Workload, desired::inventory::Inventory};

#[derive(Clone)]
pub(crate) struct FlowSink {
    table: Arc<Mutex<FlowTable>>,
    inventory: Arc<ArcSwap<Inventory>>,
    id_prefix: Arc<str>,
    synthetic: Arc<std::sync::atomic::AtomicU64>,
    observers: Arc<[Arc<dyn FlowObserver>]>,
}

/// Keys of flows without a socket of their own (refused requests) count down from here; kernel
/// socket cookies count up from 1 and never get near.
const SYNTHETIC_KEYS: u64 = u64::MAX;

impl FlowSink {
    pub(crate) fn new(table: Arc<Mutex<FlowTable>>, inventory: Arc<ArcSwap<Inventory>>) -> Self {
        Self {
            table,
            inventory,
            id_prefix: boot_id_prefix().into(),
            synthetic: Arc::new(std::sync::atomic::AtomicU64::new(synthetic_start())),
            observers: Arc::new([]),
        }
    }

    /// Also tells `observers` (audit log, metrics) of every flow opened and finished.
    pub(crate) fn with_observers(mut self, observers: Vec<Arc<dyn FlowObserver>>) -> Self {
        self.observers = observers.into();
        self
    }

    /// A unique key for a flow that has no socket (and so no cookie) of its own.
    pub(crate) fn synthetic_key(&self) -> u64 {
        self.synthetic.fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn inventory(&self) -> arc_swap::Guard<Arc<Inventory>> {
        self.inventory.load()
    }

    /// The reporting node's own pod: known by its network namespace, so its identity is proven.
    pub(crate) fn local_endpoint(&self, pod: &Workload, ip: Ipv4Addr, port: u16) -> Endpoint {
        let inventory = self.inventory.load();
        Endpoint { identity: Some(pod.identity(&inventory.trust_domain)), ..named(Some(pod), ip, port) }
    }

    /// The other end, named from the inventory by address; `identity` only when mTLS proved it.
    pub(crate) fn remote_endpoint(
        &self,
        ip: Ipv4Addr,
        port: u16,
        proven_identity: Option<String>,
    ) -> Endpoint {
        let inventory = self.inventory.load();
        Endpoint {
            identity: proven_identity,
            ..named(inventory.workload_by_ip(ip).map(Arc::as_ref), ip, port)
        }
    }

    /// A new open record with a stable id for `key` (a kernel socket cookie).
    pub(crate) fn record(
        &self,
        key: u64,
        start: OffsetDateTime,
        reporter: Reporter,
        src: Endpoint,
        dst: Endpoint,
        encryption: Encryption,
    ) -> FlowRecord {
        let id = format!("{}-{key:x}", self.id_prefix);
        FlowRecord::new(id, start, self.inventory.load().node.clone(), reporter, src, dst, encryption)
    }

    /// Fills a flow's Service (the cluster IP dialled, else the Service selecting the server's
    /// port), and its `mode` and PeerAuthentication from the server's policy when the server is a
    /// mesh workload.
    pub(crate) fn annotate_server(&self, record: &mut FlowRecord) {
        let inventory = self.inventory();
        let (state, domain) = (&inventory.state, &inventory.mesh.domain);
        let server = inventory.workload_by_ip(record.dst.ip);
        let service = crate::policy::service_by_cluster_ip(state, record.dst.ip).or_else(|| {
            server
                .and_then(|w| crate::policy::service_for_workload_port(state, w, record.dst.port))
                .map(|(s, _)| s)
        });
        if let Some(service) = service {
            record.service = Some(crate::policy::service_fqdn(service, domain));
        }
        let Some(server) = server else { return };
        let resolved =
            crate::policy::effective_mtls(&inventory.state, &inventory.mesh, server, Some(record.dst.port));
        record.mode = Some(resolved.mode.to_string());
        record.policy.peer_authentication = resolved.decided_by.map(|key| key.to_string());
    }

    pub(crate) fn open(&self, key: u64, record: FlowRecord) {
        for observer in self.observers.iter() {
            observer.opened(&record);
        }
        if let Ok(mut table) = self.table.lock() {
            table.insert_open(key, record);
        }
    }

    /// Closes an open flow; `finish` sets its final fields. False when no such flow is open.
    pub(crate) fn close(&self, key: u64, finish: impl FnOnce(&mut FlowRecord)) -> bool {
        let closed = self.table.lock().ok().and_then(|mut table| table.close(key, finish));
        let Some(record) = closed else { return false };
        for observer in self.observers.iter() {
            observer.closed(&record, true);
        }
        true
    }

    /// Stores a flow that was over when it was reported (a denial, a reset).
    pub(crate) fn finished(&self, record: FlowRecord) {
        self.notify_finished(&record);
        if let Ok(mut table) = self.table.lock() {
            table.insert_closed(record);
        }
    }

    /// Stores a kernel reset (see [`FlowObserver::reset`]). The flow table keeps each one, as
    /// any closed flow: it is bounded (`--max-closed-flows`, evictions counted) and
    /// `/flows?follow` shows resets as they happen, source port included.
    pub(crate) fn reset(&self, record: FlowRecord) {
        for observer in self.observers.iter() {
            observer.reset(&record);
        }
        if let Ok(mut table) = self.table.lock() {
            table.insert_closed(record);
        }
    }

    /// Stores a flow rebuilt from its close event alone (its open was never seen here).
    pub(crate) fn recovered(&self, record: FlowRecord) {
        self.notify_finished(&record);
        if let Ok(mut table) = self.table.lock() {
            table.insert_recovered(record);
        }
    }

    fn notify_finished(&self, record: &FlowRecord) {
        for observer in self.observers.iter() {
            observer.closed(record, false);
        }
    }
}

/// Where this process's synthetic keys start: below [`SYNTHETIC_KEYS`] by the start time, so
/// that ids of refused requests stay unique across agent restarts (the audit log keeps them).
fn synthetic_start() -> u64 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() & 0xff_ffff_ffff)
        .unwrap_or(0);
    SYNTHETIC_KEYS - (seconds << 20)
}

/// An endpoint named from the inventory; no identity.
fn named(workload: Option<&Workload>, ip: Ipv4Addr, port: u16) -> Endpoint {
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
