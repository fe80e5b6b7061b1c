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
pub(crate) mod testutil {
    use time::OffsetDateTime;

    use super::writer::{AuditOptions, SyncPolicy};
    use crate::flows::{Encryption, Endpoint, FlowRecord, Reporter};

    pub fn flow(id: u64) -> FlowRecord {
        let endpoint = |ip: [u8; 4], port| Endpoint {
            ip: ip.into(),
            port,
            namespace: Some("bookinfo".into()),
            workload: Some("details".into()),
            service_account: None,
            identity: None,
            labels: Default::default(),
        };
        let start = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_700_000_000 + id as i64);
        let mut record = FlowRecord::new(
            format!("test-{id:x}"),
            start,
            "node1".into(),
            Reporter::Source,
            endpoint([10, 0, 0, 1], 40000),
            endpoint([10, 0, 0, 2], 8080),
            Encryption::Mtls,
        );
        record.close(start + time::Duration::milliseconds(20), 100 + id, 2000);
        record
    }

    pub fn options(path: &std::path::Path) -> AuditOptions {
        AuditOptions {
            path: path.to_path_buf(),
            max_bytes: 64 << 20,
            keep: 10,
            sync: SyncPolicy::Batch,
            checkpoint_records: 1000,
            checkpoint_interval: std::time::Duration::from_secs(3600),
            node: "node1".into(),
        }
    }
}
