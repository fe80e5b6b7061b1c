//! Flow records for tests.
use time::OffsetDateTime;

use super::record::{Encryption, Endpoint, FlowRecord, Reporter};

/// A closed mTLS flow bookinfo/details → bookinfo/details:8080, numbered `id`.
pub(crate) fn flow(id: u64) -> FlowRecord {
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
