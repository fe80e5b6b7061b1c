//! Flows: the record lockmesh reports per connection, the bounded table the agent keeps, and the
//! making of records from what the kernel (its events) and the engine (its connections) report.
mod engine;
#[cfg(test)]
pub(crate) mod fixtures;
mod kernel;
mod observe;
pub(crate) mod record;
mod sink;
mod table;

pub(crate) use kernel::KernelFlows;
pub(crate) use observe::FlowObserver;
pub(crate) use record::{Encryption, Endpoint, FlowRecord, Verdict};
pub(crate) use sink::FlowSink;
pub(crate) use table::{FOLLOW_BUFFER, FlowLimits, FlowStats, FlowTable, MAX_FOLLOWERS};
