//! Turns the kernel observer's open/close events into flow records.
use std::net::Ipv4Addr;

use lockmesh_common::{FlowEvent, event_kind, refusal, role};
use time::OffsetDateTime;

use super::{
    record::{Encryption, FlowRecord, Reporter, Verdict},
    sink::FlowSink,
};

/// Maps kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    realtime_minus_monotonic_ns: i128,
}

impl Clock {
    pub(super) fn now() -> Self {
        use nix::time::{ClockId, clock_gettime};
        let ns = |id| {
            clock_gettime(id).map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128).unwrap_or(0)
        };
        let realtime = ns(ClockId::CLOCK_REALTIME);
        let monotonic = ns(ClockId::CLOCK_MONOTONIC);
        Self { realtime_minus_monotonic_ns: realtime - monotonic }
    }

    pub(super) fn wall(&self, monotonic_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.realtime_minus_monotonic_ns + monotonic_ns as i128)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Consumes kernel flow events into the flow table, enriching them from the inventory.
pub(crate) struct KernelFlows {
    sink: FlowSink,
    clock: Clock,
}

impl KernelFlows {
    pub(crate) fn new(sink: FlowSink) -> Self {
        Self { sink, clock: Clock::now() }
    }

    pub(crate) fn handle(&self, event: FlowEvent) {
        match event.kind {
            event_kind::OPEN => {
                let Some(record) = self.open_record(&event) else { return };
                self.sink.open(event.sock_cookie, record);
            }
            event_kind::RESET => self.reset(&event),
            event_kind::CLOSE => {
                let end = self.clock.wall(event.ts_ns);
                if !self.sink.close(event.sock_cookie, |record| close_record(record, &event, end)) {
                    self.close_without_open(&event, end);
                }
            }
            other => tracing::debug!(kind = other, "unknown kernel event kind"),
        }
    }

    fn open_record(&self, event: &FlowEvent) -> Option<FlowRecord> {
        let inventory = self.sink.inventory();
        let Some(pod) = inventory.enrolled_by_netns(event.netns_cookie) else {
            // Enrolled in the kernel map but not (or no longer) in the inventory: the pod was
            // removed between the event and now.
            tracing::debug!(netns = event.netns_cookie, "event for a namespace no longer enrolled");
            return None;
        };
        let local_ip = Ipv4Addr::from(u32::from_be(event.local_ip4));
        let remote_ip = Ipv4Addr::from(u32::from_be(event.remote_ip4));
        let local = self.sink.local_endpoint(pod, local_ip, event.local_port);
        let remote = self.sink.remote_endpoint(remote_ip, event.remote_port, None);
        let (reporter, src, dst) = if event.role == role::CLIENT {
            (Reporter::Source, local, remote)
        } else {
            (Reporter::Destination, remote, local)
        };
        let start = self.clock.wall(event.ts_ns);
        let mut record =
            self.sink.record(event.sock_cookie, start, reporter, src, dst, Encryption::Plaintext);
        self.sink.annotate_server(&mut record);
        Some(record)
    }

    /// A close whose open this agent never saw (a previous agent took it out of the ring before
    /// it stopped): the close event carries the start and the role, so the record is whole and
    /// the audit log misses no connection across a restart.
    fn close_without_open(&self, event: &FlowEvent, end: OffsetDateTime) {
        // Established before the observer tracked it (or its start aged out): nothing to name.
        if event.start_ns == 0 || event.role == 0 {
            return;
        }
        let opened = FlowEvent { ts_ns: event.start_ns, ..*event };
        let Some(mut record) = self.open_record(&opened) else { return };
        close_record(&mut record, event, end);
        self.sink.recovered(record);
    }

    /// Plaintext the kernel's STRICT guard refused: a SYN or a segment answered with a RST, a
    /// fragment or an unparsable header dropped.
    fn reset(&self, event: &FlowEvent) {
        if event.reason == refusal::UNCAPTURED {
            return self.uncaptured(event);
        }
        let pod_ip = Ipv4Addr::from(u32::from_be(event.local_ip4));
        let client_ip = Ipv4Addr::from(u32::from_be(event.remote_ip4));
        let client_ip6 = (event.remote_ip6 != [0; 4]).then(|| {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_exact_mut(4).zip(event.remote_ip6) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            std::net::Ipv6Addr::from(bytes)
        });
        let inventory = self.sink.inventory();
        let dst = match inventory.workload_by_ip(pod_ip) {
            Some(pod) => self.sink.local_endpoint(pod, pod_ip, event.local_port),
            None => self.sink.remote_endpoint(pod_ip, event.local_port, None),
        };
        drop(inventory);
        let src = self.sink.remote_endpoint(client_ip, event.remote_port, None);
        let at = self.clock.wall(event.ts_ns);
        let key = self.sink.synthetic_key();
        let mut record = self.sink.record(key, at, Reporter::Destination, src, dst, Encryption::Plaintext);
        self.sink.annotate_server(&mut record);
        let (verdict, reason) = refusal_record(event.reason);
        record.verdict = verdict;
        record.reason = Some(match client_ip6 {
            // Flow records hold IPv4 endpoints: the IPv6 client is named in the reason.
            Some(ip6) => format!("{reason} (IPv6 client [{ip6}]:{})", event.remote_port),
            None => reason.to_string(),
        });
        record.close(at, 0, 0);
        self.sink.reset(record);
    }
}

impl KernelFlows {
    /// A plaintext SYN an enrolled pod sent, uncaptured, to a destination its policy tunnels:
    /// recorded by the source (the pod is the client), reset in its own namespace.
    fn uncaptured(&self, event: &FlowEvent) {
        let pod_ip = Ipv4Addr::from(u32::from_be(event.local_ip4));
        let dst_ip = Ipv4Addr::from(u32::from_be(event.remote_ip4));
        let inventory = self.sink.inventory();
        let src = match inventory.workload_by_ip(pod_ip) {
            Some(pod) => self.sink.local_endpoint(pod, pod_ip, event.local_port),
            None => self.sink.remote_endpoint(pod_ip, event.local_port, None),
        };
        drop(inventory);
        let dst = self.sink.remote_endpoint(dst_ip, event.remote_port, None);
        let at = self.clock.wall(event.ts_ns);
        let key = self.sink.synthetic_key();
        let mut record = self.sink.record(key, at, Reporter::Source, src, dst, Encryption::Plaintext);
        self.sink.annotate_server(&mut record);
        record.verdict = Verdict::Reset;
        record.reason = Some(
            "plaintext connection the capture did not take (the engine's socket mark set by the app, a raw \
             socket) to a destination the pod's policy tunnels: reset inside the pod, in the kernel"
                .into(),
        );
        record.close(at, 0, 0);
        self.sink.reset(record);
    }
}

/// The verdict and reason of a kernel refusal (`FlowEvent::reason` of a RESET event).
fn refusal_record(reason: u32) -> (Verdict, &'static str) {
    match reason {
        refusal::SEGMENT => (
            Verdict::Reset,
            "plaintext segment of a connection whose SYN never passed the STRICT check (opened before \
             the port became STRICT, or a replayed SYN cookie): both ends reset in the kernel",
        ),
        refusal::FRAGMENT => (
            Verdict::Denied,
            "IP fragment of TCP to a pod with STRICT ports (its ports cannot be checked): dropped in the kernel",
        ),
        refusal::UNPARSED => (
            Verdict::Denied,
            "TCP/IP headers that cannot be parsed, to a pod with STRICT ports: dropped in the kernel",
        ),
        _ => (Verdict::Reset, "plaintext connection to a STRICT port: reset in the kernel"),
    }
}

/// The final fields of a record from its CLOSE event. The kernel counts per socket; records
/// count client → server. A client socket's `bytes_acked` also counts its SYN.
fn close_record(record: &mut FlowRecord, event: &FlowEvent, end: OffsetDateTime) {
    let (to_server, to_client) = match record.reporter {
        Reporter::Source => (event.bytes_sent.saturating_sub(1), event.bytes_received),
        Reporter::Destination => (event.bytes_received, event.bytes_sent),
    };
    record.close(end, to_server, to_client);
}
