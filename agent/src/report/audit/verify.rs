//! `lockmesh audit verify`: checks every hash link, sequence number and checkpoint signature of
//! a set of audit-log files, and names the file and line of whatever broke. A chain that does
//! not start at seq 1 must be vouched for by a `discarded` line (rotation deleted the oldest
//! files and said so); otherwise its oldest history was dropped silently.
use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    chain::{Checkpoint, Discarded, GENESIS, hash_hex},
    key,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProblemKind {
    /// A line's bytes changed (its hash no longer matches the next line's `prev`), or it is no
    /// longer a valid audit line.
    Edited,
    /// Records (or whole files) are missing: the sequence jumps.
    Removed,
    /// Records are out of order.
    Reordered,
    /// A file ends in a partial line.
    Truncated,
    /// A checkpoint's signature does not verify.
    BadSignature,
    /// A checkpoint is signed by a key other than the published one.
    UnknownKey,
    /// The chain does not start at seq 1 and no `discarded` line says rotation deleted what
    /// came before (or older files were not given).
    Unvouched,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub kind: ProblemKind,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ProblemKind::Edited => "edited record",
            ProblemKind::Removed => "removed record",
            ProblemKind::Reordered => "reordered record",
            ProblemKind::Truncated => "truncated file",
            ProblemKind::BadSignature => "bad signature",
            ProblemKind::UnknownKey => "unknown key",
            ProblemKind::Unvouched => "history missing",
        };
        write!(f, "{}:{}: {kind}: {}", self.file.display(), self.line, self.detail)
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Summary {
    pub files: Vec<PathBuf>,
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_time: Option<OffsetDateTime>,
    pub last_time: Option<OffsetDateTime>,
    /// The set starts with the chain's first line (otherwise older files were rotated away).
    pub from_genesis: bool,
    /// Flow records after the last checkpoint: their removal from the end is not detectable.
    pub unsealed: u64,
    /// Lines counting kernel resets, and the resets they count.
    pub reset_lines: u64,
    pub resets: u64,
    /// The `discarded` line that vouches for a chain starting after seq 1.
    pub vouched: Option<Discarded>,
    pub key_ids: BTreeSet<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub summary: Summary,
    pub problems: Vec<Problem>,
}

/// What verify needs of a line; the flow is not interpreted (a changed value is caught by the
/// hash, not by parsing).
#[derive(Deserialize)]
struct RawLine {
    seq: u64,
    prev: String,
    #[serde(default)]
    flow: Option<serde_json::Value>,
    #[serde(default)]
    resets: Option<serde_json::Value>,
    #[serde(default)]
    discarded: Option<Discarded>,
    #[serde(default)]
    checkpoint: Option<Checkpoint>,
}

struct Entry {
    file: usize,
    line: usize,
    hash: String,
    parsed: Option<RawLine>,
    /// Bytes of a partial last line.
    torn: Option<usize>,
}

/// Verifies `paths` (any order: files are ordered by their first sequence number; `.pub` files
/// are skipped). `trusted`: the published `(key id, public key hex)` checkpoints must use.
pub(crate) fn verify_files(paths: &[PathBuf], trusted: Option<(String, String)>) -> anyhow::Result<Report> {
    let mut files: Vec<(Option<u64>, PathBuf, Vec<Entry>)> = Vec::new();
    for path in paths.iter().filter(|p| p.extension().is_none_or(|e| e != "pub")) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let entries = split(&bytes);
        let first = entries.iter().find_map(|e| e.parsed.as_ref().map(|l| l.seq));
        files.push((first, path.clone(), entries));
    }
    files.sort_by_key(|(first, _, _)| first.unwrap_or(u64::MAX));
    let mut report = Report::default();
    let mut entries = Vec::new();
    for (index, (_, path, file_entries)) in files.into_iter().enumerate() {
        report.summary.files.push(path);
        entries.extend(file_entries.into_iter().map(|e| Entry { file: index, ..e }));
    }
    check(&entries, trusted.as_ref(), &mut report);
    Ok(report)
}

/// The published key next to the log: `FILE.pub`, with a rotation suffix (`.N`) removed.
pub(crate) fn pub_file_for(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    let base = match text.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base.to_string(),
        _ => text.into_owned(),
    };
    PathBuf::from(format!("{base}.pub"))
}

fn split(bytes: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut line = 0;
    while !rest.is_empty() {
        line += 1;
        let (text, torn) = match rest.iter().position(|b| *b == b'\n') {
            Some(end) => {
                let text = &rest[..end];
                rest = &rest[end + 1..];
                (text, None)
            }
            None => {
                let text = rest;
                rest = &[];
                (text, Some(text.len()))
            }
        };
        let parsed = if torn.is_some() { None } else { serde_json::from_slice(text).ok() };
        out.push(Entry { file: 0, line, hash: hash_hex(text), parsed, torn });
    }
    out
}

fn check(entries: &[Entry], trusted: Option<&(String, String)>, report: &mut Report) {
    let files = report.summary.files.clone();
    let mut problem = |e: &Entry, kind, detail: String| {
        report.problems.push(Problem { file: files[e.file].clone(), line: e.line, kind, detail })
    };
    let mut positions: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(l) = &e.parsed {
            positions.entry(l.seq).or_default().push(i);
        }
    }
    let summary = &mut report.summary;
    // The next line's expected seq and prev; `None` before the first line.
    let mut expect: Option<(u64, String)> = None;
    let mut previous: Option<usize> = None;
    // The previous line was already reported: do not blame its successor's link too.
    let mut suppress = false;
    // The first readable line, and every `discarded` line.
    let mut start: Option<(usize, u64, String)> = None;
    let mut discards: Vec<Discarded> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(bytes) = e.torn {
            problem(
                e,
                ProblemKind::Truncated,
                format!("partial last line ({bytes} bytes): truncated, or a write torn by a crash"),
            );
            continue;
        }
        let Some(line) = &e.parsed else {
            problem(e, ProblemKind::Edited, "not a valid audit line (changed or corrupted)".into());
            expect = expect.map(|(seq, _)| (seq + 1, e.hash.clone()));
            previous = Some(i);
            suppress = true;
            continue;
        };
        let mut reported = false;
        match &expect {
            None => {
                summary.from_genesis = line.seq == 1;
                start = Some((i, line.seq, line.prev.clone()));
                if line.seq == 1 && line.prev != GENESIS {
                    problem(
                        e,
                        ProblemKind::Edited,
                        "the chain's first line does not start from genesis".into(),
                    );
                    reported = true;
                }
            }
            Some((seq, _)) if line.seq != *seq => {
                let later = positions.get(seq).is_some_and(|p| p.iter().any(|&j| j > i));
                let (kind, detail) = seq_problem(line.seq, *seq, later, e);
                problem(e, kind, detail);
                reported = true;
            }
            Some((_, prev)) if line.prev != *prev && !suppress => {
                // This line's own bytes changed if the next line does not chain to it either.
                let next = entries.get(i + 1).and_then(|n| n.parsed.as_ref());
                let this_changed = next.is_some_and(|n| n.seq == line.seq + 1 && n.prev != e.hash);
                match previous.filter(|_| !this_changed) {
                    Some(p) => problem(
                        &entries[p],
                        ProblemKind::Edited,
                        "its hash does not match the next line's prev: the line was changed".into(),
                    ),
                    None => {
                        problem(
                            e,
                            ProblemKind::Edited,
                            "the line was changed: it no longer chains to its neighbours".into(),
                        );
                        reported = true;
                    }
                }
            }
            Some(_) => {}
        }
        if let Some(checkpoint) = &line.checkpoint
            && let Some((kind, detail)) =
                checked_checkpoint(line.seq, &line.prev, checkpoint, trusted, summary)
        {
            problem(e, kind, detail);
        }
        note_contents(line, summary, &mut discards);
        summary.first_seq.get_or_insert(line.seq);
        summary.last_seq = Some(summary.last_seq.map_or(line.seq, |s| s.max(line.seq)));
        let next_seq = expect.as_ref().map_or(line.seq + 1, |(s, _)| (*s).max(line.seq + 1));
        expect = Some((next_seq, e.hash.clone()));
        previous = Some(i);
        suppress = reported;
    }
    if let Some((first, detail)) = check_start(start, discards, summary) {
        problem(&entries[first], ProblemKind::Unvouched, detail);
    }
}

/// Counts what a line holds (flows, resets, times) and keeps its `discarded` record.
fn note_contents(line: &RawLine, summary: &mut Summary, discards: &mut Vec<Discarded>) {
    let parse =
        |value: &serde_json::Value| value.as_str().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    if let Some(discarded) = &line.discarded {
        discards.push(discarded.clone());
    }
    if let Some(resets) = &line.resets {
        summary.reset_lines += 1;
        summary.unsealed += 1;
        summary.resets += resets["count"].as_u64().unwrap_or(0);
        note_time(summary, parse(&resets["first"]));
        note_time(summary, parse(&resets["last"]));
    }
    if let Some(flow) = &line.flow {
        summary.records += 1;
        summary.unsealed += 1;
        note_time(summary, parse(&flow["end"]).or_else(|| parse(&flow["start"])));
    }
}

/// A chain that starts after seq 1 (`start`: entry, seq, prev of its first line) must be vouched
/// for by a `discarded` line naming exactly what precedes it; returns the entry to blame if not.
fn check_start(
    start: Option<(usize, u64, String)>,
    discards: Vec<Discarded>,
    summary: &mut Summary,
) -> Option<(usize, String)> {
    let (first, seq, prev) = start.filter(|(_, seq, _)| *seq != 1)?;
    summary.vouched =
        discards.into_iter().rev().find(|d| d.last_seq.saturating_add(1) == seq && d.last_head == prev);
    if summary.vouched.is_some() {
        return None;
    }
    let detail = format!(
        "the chain starts at seq {seq}, not 1: lines 1..={} are missing and no `discarded` line \
         in these files says rotation deleted them (dropped silently, or older files not given)",
        seq - 1
    );
    Some((first, detail))
}

/// What a line whose `seq` is not the `expected` one means: reordered (it comes back `later`, or
/// goes backwards) or records removed before it (a whole file, when it starts a file).
fn seq_problem(seq: u64, expected: u64, later: bool, e: &Entry) -> (ProblemKind, String) {
    if seq < expected || later {
        (ProblemKind::Reordered, format!("seq {seq} where {expected} was expected"))
    } else if e.line == 1 && e.file > 0 {
        let detail = format!(
            "seq jumps from {} to {seq} at the start of this file: records or a whole file removed",
            expected - 1
        );
        (ProblemKind::Removed, detail)
    } else {
        let detail = format!(
            "seq jumps from {} to {seq}: {} record(s) removed before this line",
            expected - 1,
            seq - expected
        );
        (ProblemKind::Removed, detail)
    }
}

/// Counts a checkpoint and checks its signature, and its key against the published one.
fn checked_checkpoint(
    seq: u64,
    prev: &str,
    checkpoint: &Checkpoint,
    trusted: Option<&(String, String)>,
    summary: &mut Summary,
) -> Option<(ProblemKind, String)> {
    summary.checkpoints += 1;
    summary.unsealed = 0;
    summary.key_ids.insert(checkpoint.key_id.clone());
    note_time(summary, Some(checkpoint.time));
    let public = key::key_id(&super::chain::unhex(&checkpoint.public_key).unwrap_or_default());
    let signed = key::verify(&checkpoint.public_key, &checkpoint.message(seq, prev), &checkpoint.signature);
    if !signed || public != checkpoint.key_id {
        let detail = format!("checkpoint seq {seq} does not verify with key {}", checkpoint.key_id);
        return Some((ProblemKind::BadSignature, detail));
    }
    let (id, _) = trusted.filter(|(id, key)| *id != checkpoint.key_id || *key != checkpoint.public_key)?;
    Some((
        ProblemKind::UnknownKey,
        format!("checkpoint signed by key {}, not the published {id}", checkpoint.key_id),
    ))
}

fn note_time(summary: &mut Summary, time: Option<OffsetDateTime>) {
    let Some(time) = time else { return };
    summary.first_time = Some(summary.first_time.map_or(time, |t| t.min(time)));
    summary.last_time = Some(summary.last_time.map_or(time, |t| t.max(time)));
}

#[cfg(test)]
mod tests;
