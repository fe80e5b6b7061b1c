use std::path::{Path, PathBuf};

use super::*;
use crate::report::audit::{fixtures::options, key::NodeKey, writer::AuditLog};
use crate::report::flows::fixtures::flow;

/// Six flow lines and a closing checkpoint (line 7); returns the lines and another key.
fn log(dir: &Path) -> (Vec<String>, NodeKey) {
    let path = dir.join("audit.log");
    let mut log = AuditLog::open(options(&path), NodeKey::ephemeral().unwrap()).unwrap();
    for id in 0..6 {
        log.append_flow(&flow(id)).unwrap();
    }
    log.close().unwrap();
    let lines = std::fs::read_to_string(&path).unwrap().lines().map(String::from).collect();
    (lines, NodeKey::load_or_create(&dir.join("state")).unwrap())
}

fn check(dir: &Path, lines: &[String], tail: &str) -> Report {
    let path = dir.join("tampered.log");
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>() + tail).unwrap();
    verify_files(&[path], None).unwrap()
}

fn first(report: &Report) -> (ProblemKind, usize) {
    let p = report.problems.first().unwrap_or_else(|| panic!("no problem found: {:?}", report.summary));
    (p.kind, p.line)
}

#[test]
fn an_untouched_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = log(dir.path());
    let report = check(dir.path(), &lines, "");
    assert_eq!(report.problems, vec![]);
    let s = &report.summary;
    assert_eq!((s.records, s.checkpoints, s.unsealed, s.from_genesis), (6, 1, 0, true));
    assert!(s.first_time.unwrap() < s.last_time.unwrap());
}

#[test]
fn an_edited_byte_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lines, _) = log(dir.path());
    lines[2] = lines[2].replacen("\"bytes_sent\":102", "\"bytes_sent\":902", 1);
    assert_eq!(first(&check(dir.path(), &lines, "")), (ProblemKind::Edited, 3));
    // Its `prev` field changed: still this line.
    let (mut lines, _) = log(dir.path());
    let at = lines[2].find("\"prev\":\"").unwrap() + 8;
    let digit = if &lines[2][at..at + 1] == "0" { "1" } else { "0" };
    lines[2].replace_range(at..at + 1, digit);
    let report = check(dir.path(), &lines, "");
    assert_eq!(first(&report), (ProblemKind::Edited, 3));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    // No longer JSON.
    let (mut lines, _) = log(dir.path());
    lines[4].insert(3, '#');
    assert_eq!(first(&check(dir.path(), &lines, "")), (ProblemKind::Edited, 5));
}

#[test]
fn a_removed_record_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lines, _) = log(dir.path());
    lines.remove(2);
    let report = check(dir.path(), &lines, "");
    assert_eq!(first(&report), (ProblemKind::Removed, 3));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

#[test]
fn swapped_records_are_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lines, _) = log(dir.path());
    lines.swap(2, 3);
    let report = check(dir.path(), &lines, "");
    assert_eq!(first(&report), (ProblemKind::Reordered, 3));
    assert!(report.problems.iter().all(|p| p.kind == ProblemKind::Reordered), "{:?}", report.problems);
}

#[test]
fn a_file_truncated_mid_line_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = log(dir.path());
    let half = lines[4][..40].to_string();
    let report = check(dir.path(), &lines[..4], &half);
    assert_eq!(first(&report), (ProblemKind::Truncated, 5));
    assert_eq!(report.summary.unsealed, 4, "records after the last checkpoint");
}

#[test]
fn signatures_and_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lines, other) = log(dir.path());
    let good = lines.clone();
    let at = lines[6].find("\"signature\":\"").unwrap() + 13;
    let flipped = if &lines[6][at..at + 1] == "a" { "b" } else { "a" };
    lines[6].replace_range(at..at + 1, flipped);
    assert_eq!(first(&check(dir.path(), &lines, "")), (ProblemKind::BadSignature, 7));
    // A valid signature, but not by the published key.
    let path: PathBuf = dir.path().join("good.log");
    std::fs::write(&path, good.join("\n") + "\n").unwrap();
    let report =
        verify_files(std::slice::from_ref(&path), Some((other.key_id().into(), other.public_hex()))).unwrap();
    assert_eq!(first(&report), (ProblemKind::UnknownKey, 7));
    assert_eq!(pub_file_for(Path::new("/x/audit.log.12")), PathBuf::from("/x/audit.log.pub"));
    assert_eq!(pub_file_for(Path::new("/x/audit.log")), PathBuf::from("/x/audit.log.pub"));
}

#[test]
fn a_chain_that_does_not_start_at_seq_1_needs_a_discarded_line() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = log(dir.path());
    // The first two lines deleted by hand: nothing vouches for it.
    let report = check(dir.path(), &lines[2..], "");
    assert_eq!(first(&report), (ProblemKind::Unvouched, 1));
    assert!(report.problems[0].detail.contains("starts at seq 3"), "{}", report.problems[0]);
    assert!(!report.summary.from_genesis);
    // A `discarded` line naming them (as rotation writes it) vouches for the gap…
    let third: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    let vouching = |last_head: &str| Discarded {
        time: time::OffsetDateTime::now_utc(),
        files: 1,
        first_seq: 1,
        last_seq: 2,
        last_head: last_head.to_string(),
    };
    let with = |d: Discarded| {
        let tail = crate::report::audit::chain::AuditLine {
            seq: 8,
            prev: hash_hex(lines[6].as_bytes()),
            discarded: Some(d),
            ..crate::report::audit::chain::AuditLine::unstamped()
        };
        format!("{}\n", serde_json::to_string(&tail).unwrap())
    };
    let good = check(dir.path(), &lines[2..], &with(vouching(third["prev"].as_str().unwrap())));
    assert_eq!(good.problems, vec![]);
    assert_eq!(good.summary.vouched.map(|d| d.last_seq), Some(2));
    // …only if it names the last deleted line's hash.
    let wrong = check(dir.path(), &lines[2..], &with(vouching(GENESIS)));
    assert_eq!(first(&wrong), (ProblemKind::Unvouched, 1));
}
