//! The tamper-evident audit log: every finished flow (and every denial; kernel resets counted per
//! source, destination, port and second) as one JSON line, hash-chained (`prev` = SHA-256 of the previous line) across files and restarts, with
//! periodic checkpoints signed by the node's Ed25519 key. `lockmesh audit verify` checks it.
pub(crate) mod chain;
pub(crate) mod key;
pub(crate) mod resets;
pub(crate) mod verify;
pub(crate) mod writer;

pub(crate) use key::NodeKey;
pub(crate) use writer::{AuditLog, AuditOptions, AuditSink, SyncPolicy};

#[cfg(test)]
pub(crate) mod fixtures;
