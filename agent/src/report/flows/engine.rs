//! Turns what the engine reports about its connections into flow records.
use time::OffsetDateTime;

use super::{
    record::{Encryption, FlowRecord, Reporter, Verdict},
    sink::FlowSink,
};
use crate::{
    engine::connections::{Closed, Connection, ConnectionError, ConnectionObserver, Direction, Outcome},
    policy::Decision,
};

impl ConnectionObserver for FlowSink {
    fn opened(&self, key: u64, connection: &Connection) {
        let mut record = self.engine_record(key, connection);
        if connection.direction == Direction::Inbound {
            // The server is this node's pod: its mode and Service, from the policy now.
            self.annotate_server(&mut record);
        }
        self.open(key, record);
    }

    fn closed(&self, key: u64, closed: Closed) {
        self.close(key, |record| {
            if let Some(error) = &closed.error {
                if error.outcome() == Outcome::Failed {
                    record.verdict = Verdict::Error;
                }
                record.reason = Some(error.to_string());
            }
            record.close(OffsetDateTime::now_utc(), closed.to_server, closed.to_client);
        });
    }

    fn failed(&self, key: Option<u64>, connection: &Connection, error: &ConnectionError) {
        let key = key.unwrap_or_else(|| self.synthetic_key());
        let mut record = self.engine_record(key, connection);
        record.verdict = match error.outcome() {
            Outcome::Denied => Verdict::Denied,
            Outcome::Failed | Outcome::Interrupted => Verdict::Error,
        };
        record.reason = Some(error.to_string());
        record.close(OffsetDateTime::now_utc(), 0, 0);
        self.finished(record);
    }
}

impl FlowSink {
    /// The record of an engine connection: the pod's end named by its namespace, the other by
    /// its address (and its identity where mTLS proved it), and an outbound connection's policy
    /// decision as it was made.
    fn engine_record(&self, key: u64, connection: &Connection) -> FlowRecord {
        let local = self.local_endpoint(&connection.pod, *connection.local.ip(), connection.local.port());
        let remote = self.remote_endpoint(
            *connection.peer.ip(),
            connection.peer.port(),
            connection.peer_identity.clone(),
        );
        let (reporter, src, dst) = match connection.direction {
            Direction::Outbound => (Reporter::Source, local, remote),
            Direction::Inbound => (Reporter::Destination, remote, local),
        };
        let encryption = if connection.mtls { Encryption::Mtls } else { Encryption::Plaintext };
        let mut record = self.record(key, connection.started, reporter, src, dst, encryption);
        record.tls = connection.tls.clone();
        if let Some(decision) = &connection.decision {
            decided(&mut record, decision);
        }
        record
    }
}

/// A flow's Service, mode and deciding objects, from the decision that routed it.
fn decided(record: &mut FlowRecord, decision: &Decision) {
    record.service = decision.service.clone();
    record.mode = Some(decision.server.mode.to_string());
    record.policy.peer_authentication = decision.server.decided_by.as_ref().map(ToString::to_string);
    record.policy.destination_rule = decision.outbound.destination_rule().map(ToString::to_string);
}
