//! Flows: the record lockmesh reports per connection, the bounded table the agent keeps, and the
//! making of records from what the kernel (its events) and the engine (its connections) report.
mod engine;
#[cfg(test)]
pub(crate) mod fixtures;
mod kernel;
mod observe;
pub mod record;
mod sink;
mod table;

pub use kernel::KernelFlows;
pub use observe::FlowObserver;
pub use record::{Encryption, Endpoint, FlowPolicy, FlowRecord, Reporter, SCHEMA, Verdict};
pub use sink::FlowSink;
pub use table::{FOLLOW_BUFFER, FlowLimits, FlowStats, FlowTable, Follower, FollowersFull, MAX_FOLLOWERS};
