//! Flows: the record lockmesh reports per connection, the bounded table the agent keeps, and
//! the conversion of kernel events into records.
mod kernel;
pub mod record;
mod table;

pub use kernel::KernelFlows;
pub use record::{Encryption, Endpoint, FlowRecord, Reporter, SCHEMA, Verdict};
pub use table::{FlowLimits, FlowStats, FlowTable};
