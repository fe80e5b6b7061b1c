//! Flows: the record lockmesh reports per connection, the bounded table the agent keeps, and
//! the conversion of kernel events into records.
mod kernel;
mod observe;
pub mod record;
mod sink;
mod table;

pub use kernel::KernelFlows;
pub use observe::FlowObserver;
pub use record::{Encryption, Endpoint, FlowPolicy, FlowRecord, Reporter, SCHEMA, TlsInfo, Verdict};
pub use sink::{FlowSink, ipv4};
pub use table::{FOLLOW_BUFFER, FlowLimits, FlowStats, FlowTable, Follower, FollowersFull, MAX_FOLLOWERS};
