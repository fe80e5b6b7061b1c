//! Audit-log options for tests.
use super::writer::{AuditOptions, SyncPolicy};

pub(crate) fn options(path: &std::path::Path) -> AuditOptions {
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
