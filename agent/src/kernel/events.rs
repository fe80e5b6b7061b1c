//! Reads the kernel's flow events from the `FLOW_EVENTS` ring buffer.
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use lockmesh_common::{FlowEvent, maps as map_names};
use tokio::io::unix::AsyncFd;

/// An event as the kernel reported it.
pub(crate) type KernelEvent = FlowEvent;

pub(crate) struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub(super) fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(map_names::FLOW_EVENTS).context("FLOW_EVENTS map missing")?;
        let ring = RingBuf::try_from(map)?;
        // SAFETY: the RingBuf owns its map fd and moves into the AsyncFd, so the fd stays open
        // for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("registering FLOW_EVENTS with the runtime")?;
        Ok(Self { ring })
    }

    /// Waits for events and hands each to `sink`, in kernel order.
    pub(crate) async fn next_batch(&mut self, mut sink: impl FnMut(KernelEvent)) -> anyhow::Result<()> {
        let mut guard = self.ring.readable_mut().await.context("polling FLOW_EVENTS")?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<FlowEvent>() {
                tracing::warn!(len = item.len(), "short record in FLOW_EVENTS ignored");
                continue;
            }
            // SAFETY: the record is at least size_of::<FlowEvent>() bytes of plain data written
            // by the kernel program as a FlowEvent; read_unaligned copes with any alignment.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) };
            sink(event);
        }
        guard.clear_ready();
        Ok(())
    }
}
