//! Observers of finished and started flows: the audit log and the metrics are fed from the same
//! place flows are stored, once per flow and reporter.
use super::record::FlowRecord;

pub(crate) trait FlowObserver: Send + Sync {
    /// A flow was opened (stored as open in the table).
    fn opened(&self, _record: &FlowRecord) {}
    /// A flow is over: closed after being open (`was_open`), or reported finished (a denial, a
    /// reset, an error) without ever having been open.
    fn closed(&self, _record: &FlowRecord, _was_open: bool) {}
    /// A plaintext SYN the kernel reset (STRICT): a finished flow that may come by the
    /// thousand per second from one source. The audit log counts these per source, destination,
    /// port and second; every other observer sees it as any finished flow.
    fn reset(&self, record: &FlowRecord) {
        self.closed(record, false);
    }
}
