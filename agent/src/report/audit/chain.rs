//! The audit log's line format and hash chain.
//!
//! Each line is a JSON object `{"seq":N,"prev":"<hex sha256 of the previous line>", ...}` with
//! one of `"flow":{…lockmesh.flow/v1…}`, `"resets":{…}` (kernel resets of one source,
//! destination, port and second, counted), `"discarded":{…}` (rotation deleted the oldest files)
//! or `"checkpoint":{…}`. `seq` counts lines from 1 over the whole chain (all files, all
//! restarts); the first line's `prev` is [`GENESIS`]. A line's hash is over its bytes without the
//! newline.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::report::flows::FlowRecord;

/// Version of the audit line format, carried in checkpoints and signed.
pub(crate) const AUDIT_SCHEMA: &str = "lockmesh.audit/v1";

/// `prev` of the very first line.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct AuditLine {
    pub seq: u64,
    pub prev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets: Option<ResetGroup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<Discarded>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

impl AuditLine {
    /// A line to be stamped with its place in the chain when it is written.
    pub(crate) fn unstamped() -> Self {
        Self { seq: 0, prev: String::new(), flow: None, resets: None, discarded: None, checkpoint: None }
    }
}

/// Plaintext SYNs the kernel reset (STRICT) from one source address to one destination address
/// and port within one second, for one verdict and reason (those of `sample`), as one line: a flood cannot outgrow the evidence it leaves. When
/// more sources reset within a second than the writer itemises, the rest are counted in one line
/// without `src`, `dst` and `port` (`sample` is the first of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResetGroup {
    /// The (UTC) second the resets fell in, by the kernel's timestamps.
    #[serde(with = "time::serde::rfc3339")]
    pub second: OffsetDateTime,
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    pub port: Option<u16>,
    /// Resets in the group (each one SYN the kernel answered with a RST).
    pub count: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub first: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last: OffsetDateTime,
    /// The group's first reset as its flow record (names, mode, policy, reason, source port).
    pub sample: FlowRecord,
}

/// Rotation deleted the oldest files of the chain (`--audit-keep`). The line tells `audit
/// verify` where the surviving chain starts and that the gap is the writer's, not an attacker's:
/// the oldest kept line has `seq = last_seq + 1` and `prev = last_head`. Nobody had verified the
/// deleted lines (the agent cannot know whether they were shipped elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Discarded {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Files deleted by this rotation.
    pub files: u64,
    /// Their lines: `first_seq..=last_seq`.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Hash of the last deleted line.
    pub last_head: String,
}

/// A signed statement that the chain up to this line (whose `prev` is the chain head) is as the
/// node wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub schema: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The node that wrote the log.
    pub node: String,
    /// Flow records in the chain so far (all files).
    pub records: u64,
    /// `ed25519`.
    pub alg: String,
    /// First 16 hex digits of the SHA-256 of the public key.
    pub key_id: String,
    /// The raw public key, hex.
    pub public_key: String,
    /// Signature over [`Checkpoint::message`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes a checkpoint signs: the schema, its place in the chain and its own fields.
    pub(crate) fn message(&self, seq: u64, prev: &str) -> Vec<u8> {
        format!(
            "{AUDIT_SCHEMA} checkpoint\nseq={seq}\nprev={prev}\ntime={}\nnode={}\nrecords={}\nkey_id={}\n",
            self.time.unix_timestamp_nanos(),
            self.node,
            self.records,
            self.key_id
        )
        .into_bytes()
    }
}

/// SHA-256 of `bytes`, hex.
pub(crate) fn hash_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The flows of audit-log lines (for `lockmesh flows --file`): checkpoints and lines that do not
/// parse (a torn last line) are skipped.
pub(crate) fn flows_in(text: &str) -> impl Iterator<Item = FlowRecord> + '_ {
    text.lines().filter_map(|line| serde_json::from_str::<AuditLine>(line).ok()?.flow)
}

#[cfg(test)]
mod tests;
