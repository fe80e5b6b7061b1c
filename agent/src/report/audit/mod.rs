//! The tamper-evident audit log: every finished flow (and every reset and denial) as one JSON
//! line, hash-chained (`prev` = SHA-256 of the previous line) across files and restarts, with
//! periodic checkpoints signed by the node's Ed25519 key. `lockmesh audit verify` checks it.
pub mod chain;
pub mod key;
pub mod verify;
pub mod writer;

pub use chain::{AuditLine, Checkpoint, GENESIS};
pub use key::NodeKey;
pub use verify::{Problem, ProblemKind, Summary, verify_files};
pub use writer::{AuditLog, AuditOptions, AuditSink, SyncPolicy};

#[cfg(test)]
pub(crate) mod fixtures;
