//! Appends the audit log: one line per finished flow (kernel resets counted per source,
//! destination, port and second), chained, rotated by size (saying so in the log when rotation
//! deletes history), checkpointed, and recovered after a restart (even `kill -9`).
use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use time::OffsetDateTime;

use super::{
    chain::{AUDIT_SCHEMA, AuditLine, Checkpoint, Discarded, GENESIS, ResetGroup, hash_hex},
    key::{ALG, NodeKey},
    resets::ResetGroups,
};
use crate::report::flows::{FlowObserver, FlowRecord};

/// When the log reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncPolicy {
    /// fsync after every line.
    Every,
    /// fsync at most every [`BATCH_SYNC`].
    Batch,
}

pub(crate) const BATCH_SYNC: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub(crate) struct AuditOptions {
    pub path: PathBuf,
    /// The active file is rotated before it would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` oldest … `FILE.N` newest); older ones are deleted.
    pub keep: usize,
    pub sync: SyncPolicy,
    /// A checkpoint after this many flow records…
    pub checkpoint_records: u64,
    /// …or this long after the previous one, if records were written since.
    pub checkpoint_interval: Duration,
    pub node: String,
}

pub(crate) struct AuditLog {
    options: AuditOptions,
    key: NodeKey,
    file: File,
    size: u64,
    head: String,
    next_seq: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    last_sync: Instant,
    dirty: bool,
    /// See [`Recovered::recent_flows`].
    written_before_restart: HashSet<String>,
    /// Kernel resets not yet written (at most a second's worth).
    resets: ResetGroups,
}

/// Where the chain stands in the files on disk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub head: String,
    pub next_seq: u64,
    /// Bytes of a partial last line (a write torn by a crash) in the active file.
    pub torn: Option<u64>,
    /// Ids of the last flows written: after a crash the kernel can hand the agent the event of
    /// a flow already in the log again (killed between the write and taking the event off the
    /// ring), and it must not be logged twice.
    pub recent_flows: HashSet<String>,
}

/// How many of the last flow lines [`Recovered::recent_flows`] holds; replays can only be of
/// flows written in the last moments before a crash.
const RECENT_FLOWS: usize = 1024;

impl AuditLog {
    /// Opens (or creates) the log, continuing the chain of what is on disk. A torn last line
    /// is left as it is, as evidence: the file is rotated and the chain continues in a new one
    /// from the last complete line (`lockmesh audit verify` reports the truncation).
    pub(crate) fn open(options: AuditOptions, key: NodeKey) -> anyhow::Result<Self> {
        if let Some(parent) = options.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let recovered = recover(&options.path)?;
        let mut discarded = None;
        if let Some(bytes) = recovered.torn {
            tracing::warn!(
                file = %options.path.display(), bytes,
                "audit log ends in a partial line (torn write); rotating it and continuing the chain"
            );
            discarded = rotate_file(&options.path, options.keep)?;
        }
        let pub_path = pub_path(&options.path);
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(key.pub_file().as_str()) {
            std::fs::write(&pub_path, key.pub_file())
                .with_context(|| format!("writing {}", pub_path.display()))?;
        }
        let file = open_active(&options.path)?;
        let size = file.metadata()?.len();
        tracing::info!(file = %options.path.display(), seq = recovered.next_seq, key_id = key.key_id(), "audit log open");
        let mut log = Self {
            options,
            key,
            file,
            size,
            head: recovered.head,
            next_seq: recovered.next_seq,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_sync: Instant::now(),
            dirty: false,
            written_before_restart: recovered.recent_flows,
            resets: ResetGroups::default(),
        };
        if let Some(discarded) = discarded {
            log.record_discard(discarded)?;
        }
        Ok(log)
    }

    pub(crate) fn append_flow(&mut self, record: &FlowRecord) -> anyhow::Result<()> {
        if self.written_before_restart.remove(&record.id) {
            tracing::debug!(flow = %record.id, "flow already in the audit log (event replayed after a restart)");
            return Ok(());
        }
        self.write_line(AuditLine { flow: Some(record.clone()), ..AuditLine::unstamped() }, true)?;
        self.count_record()
    }

    /// Counts a plaintext SYN the kernel reset; written as part of its group's line once its
    /// second is over (see [`ResetGroups`]).
    pub(crate) fn append_reset(&mut self, record: &FlowRecord) -> anyhow::Result<()> {
        let flushed = self.resets.add(record);
        if !flushed.is_empty() {
            tracing::warn!(groups = flushed.len(), "audit log: reset groups full; writing them early");
        }
        self.write_resets(flushed)
    }

    fn write_resets(&mut self, groups: Vec<ResetGroup>) -> anyhow::Result<()> {
        for group in groups {
            self.write_line(AuditLine { resets: Some(group), ..AuditLine::unstamped() }, true)?;
            self.count_record()?;
        }
        Ok(())
    }

    fn count_record(&mut self) -> anyhow::Result<()> {
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.options.checkpoint_records {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Writes a checkpoint signed over the chain head.
    pub(crate) fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.checkpoint_line(true)
    }

    fn checkpoint_line(&mut self, may_rotate: bool) -> anyhow::Result<()> {
        let checkpoint = Checkpoint {
            schema: AUDIT_SCHEMA.to_string(),
            time: OffsetDateTime::now_utc(),
            node: self.options.node.clone(),
            records: self.since_checkpoint,
            alg: ALG.to_string(),
            key_id: self.key.key_id().to_string(),
            public_key: self.key.public_hex(),
            signature: String::new(),
        };
        self.write_line(AuditLine { checkpoint: Some(checkpoint), ..AuditLine::unstamped() }, may_rotate)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Periodic work: reset groups of past seconds, batched fsync, time-based checkpoints.
    pub(crate) fn tick(&mut self) -> anyhow::Result<()> {
        let due = self.resets.due(OffsetDateTime::now_utc());
        self.write_resets(due)?;
        if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.options.checkpoint_interval {
            self.checkpoint()?;
        }
        if self.dirty && self.last_sync.elapsed() >= BATCH_SYNC {
            self.sync()?;
        }
        Ok(())
    }

    /// Clean shutdown: the reset groups still held, a final checkpoint seals the tail, then fsync.
    pub(crate) fn close(&mut self) -> anyhow::Result<()> {
        let held = self.resets.all();
        self.write_resets(held)?;
        self.checkpoint()?;
        self.sync()
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        self.file.sync_data().context("fsync of the audit log")?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Gives `line` its place in the chain (and signs it, if it is a checkpoint).
    fn stamp(&self, line: &mut AuditLine) -> anyhow::Result<(Vec<u8>, String)> {
        line.seq = self.next_seq;
        line.prev = self.head.clone();
        if let Some(checkpoint) = &mut line.checkpoint {
            checkpoint.signature = self.key.sign_hex(&checkpoint.message(line.seq, &line.prev));
        }
        let mut bytes = serde_json::to_vec(line)?;
        let hash = hash_hex(&bytes);
        bytes.push(b'\n');
        Ok((bytes, hash))
    }

    /// Appends `line`, first rotating the file if it would grow past `max_bytes` (unless
    /// `may_rotate` is false: the lines that record a rotation go into the file it started).
    fn write_line(&mut self, mut line: AuditLine, may_rotate: bool) -> anyhow::Result<()> {
        let (mut bytes, mut hash) = self.stamp(&mut line)?;
        if may_rotate && self.size > 0 && self.size + bytes.len() as u64 > self.options.max_bytes {
            self.sync()?;
            let discarded = rotate_file(&self.options.path, self.options.keep)?;
            self.file = open_active(&self.options.path)?;
            self.size = 0;
            if let Some(discarded) = discarded {
                self.record_discard(discarded)?;
                (bytes, hash) = self.stamp(&mut line)?;
            }
        }
        // One write(2) on an O_APPEND file: a crash leaves at worst one partial last line.
        self.file.write_all(&bytes).context("writing the audit log")?;
        self.size += bytes.len() as u64;
        self.head = hash;
        self.next_seq += 1;
        self.dirty = true;
        if self.options.sync == SyncPolicy::Every {
            self.sync()?;
        }
        Ok(())
    }

    /// Rotation deleted the oldest files: says so in the log (sealed by a checkpoint at once)
    /// and in the agent's log. `audit verify` accepts a chain that starts after seq 1 only with
    /// this line.
    fn record_discard(&mut self, discarded: Discarded) -> anyhow::Result<()> {
        tracing::warn!(
            file = %self.options.path.display(),
            files = discarded.files,
            first_seq = discarded.first_seq,
            last_seq = discarded.last_seq,
            last_head = %discarded.last_head,
            keep = self.options.keep,
            "audit log rotation deleted the oldest files, which nobody verified here; \
             ship the log elsewhere or raise --audit-keep to keep that evidence"
        );
        self.write_line(AuditLine { discarded: Some(discarded), ..AuditLine::unstamped() }, false)?;
        self.checkpoint_line(false)
    }
}

pub(crate) fn pub_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn open_active(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("opening the audit log {}", path.display()))
}

/// Rotated files of `path` (`path.N`), oldest (lowest N) first.
pub(crate) fn rotated(path: &Path) -> Vec<(u64, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name();
            let n = file.to_str()?.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
            Some((n, entry.path()))
        })
        .collect();
    out.sort();
    out
}

/// Renames the active file to the next `path.N` and deletes rotated files beyond `keep`; says
/// what it deleted.
fn rotate_file(path: &Path, keep: usize) -> anyhow::Result<Option<Discarded>> {
    let existing = rotated(path);
    let next = existing.last().map_or(1, |(n, _)| n + 1);
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".{next}"));
    std::fs::rename(path, &target).with_context(|| format!("rotating {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    let total = existing.len() + 1;
    let deleted = total.saturating_sub(keep);
    if deleted == 0 {
        return Ok(None);
    }
    // The oldest kept file starts where the deleted ones end.
    let oldest_kept = existing.get(deleted).map_or_else(|| PathBuf::from(&target), |(_, p)| p.clone());
    let kept = first_line(&oldest_kept);
    let first_seq = existing.iter().take(deleted).find_map(|(_, p)| first_line(p)).map_or(0, |l| l.seq);
    for (_, old) in existing.iter().take(deleted) {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "removing an old audit log");
        }
    }
    Ok(Some(Discarded {
        time: OffsetDateTime::now_utc(),
        files: deleted as u64,
        first_seq,
        last_seq: kept.as_ref().map_or(0, |l| l.seq.saturating_sub(1)),
        last_head: kept.map_or_else(String::new, |l| l.prev),
    }))
}

/// The first line of an audit file, if it is readable.
fn first_line(path: &Path) -> Option<AuditLine> {
    let mut line = String::new();
    BufReader::new(File::open(path).ok()?).take(1 << 20).read_line(&mut line).ok()?;
    serde_json::from_str(line.trim_end()).ok()
}

/// Reads where the chain stands: the last complete line of the active file, or of the newest
/// rotated file when the active one is empty or missing.
pub(crate) fn recover(path: &Path) -> anyhow::Result<Recovered> {
    let mut candidates: Vec<PathBuf> = rotated(path).into_iter().map(|(_, p)| p).collect();
    candidates.push(path.to_path_buf());
    let mut torn = None;
    for (i, candidate) in candidates.iter().rev().enumerate() {
        let Some((tail, file_len)) = read_tail(candidate)? else { continue };
        let complete_end = tail.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        if i == 0 && complete_end < tail.len() {
            torn = Some((tail.len() - complete_end) as u64);
        }
        let lines: Vec<&[u8]> =
            tail[..complete_end].split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let Some(last) = lines.last() else {
            if file_len > tail.len() as u64 {
                bail!("{}: no line end in the last {} bytes", candidate.display(), tail.len());
            }
            continue;
        };
        // The seq of the last line; if that line is damaged, count on from one that is not.
        let seq = lines.iter().rev().enumerate().find_map(|(after, line)| {
            serde_json::from_slice::<AuditLine>(line).ok().map(|l| l.seq + after as u64)
        });
        let Some(seq) = seq else {
            bail!("{}: no readable audit line at its end; move it aside", candidate.display())
        };
        let recent_flows = lines
            .iter()
            .rev()
            .filter_map(|line| serde_json::from_slice::<AuditLine>(line).ok()?.flow.map(|f| f.id))
            .take(RECENT_FLOWS)
            .collect();
        return Ok(Recovered { head: hash_hex(last), next_seq: seq + 1, torn, recent_flows });
    }
    Ok(Recovered { head: GENESIS.to_string(), next_seq: 1, torn, recent_flows: HashSet::new() })
}

const TAIL: u64 = 4 << 20;

fn read_tail(path: &Path) -> anyhow::Result<Option<(Vec<u8>, u64)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    Ok(Some((tail, len)))
}

/// The audit log shared by everything that finishes flows. Each record is written (one
/// `write(2)`) before `closed` returns, so a kernel event is taken off the ring only once its
/// line is in the file: a `kill -9` loses no record. Kernel resets are the exception: they are
/// counted in memory and written once their second is over (a `kill -9` loses at most the
/// last second's reset lines; `lockmesh_resets_total` and the kernel's counter still count them).
/// A thread does the batched fsyncs, the reset lines and the time-based checkpoints.
pub(crate) struct AuditSink {
    log: Arc<Mutex<AuditLog>>,
    stop: mpsc::Sender<()>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn locked(log: &Mutex<AuditLog>) -> std::sync::MutexGuard<'_, AuditLog> {
    // A panic while holding the lock leaves the log as consistent as a crash would: go on.
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AuditSink {
    pub(crate) fn start(log: AuditLog) -> anyhow::Result<Self> {
        let log = Arc::new(Mutex::new(log));
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = log.clone();
        let ticker = std::thread::Builder::new().name("audit-log".into()).spawn(move || {
            loop {
                match stopped.recv_timeout(BATCH_SYNC) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = locked(&shared).tick() {
                            tracing::error!(error = %format!("{e:#}"), "audit log write failed");
                        }
                    }
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if let Err(e) = locked(&shared).close() {
                            tracing::error!(error = %format!("{e:#}"), "closing the audit log");
                        }
                        return;
                    }
                }
            }
        })?;
        Ok(Self { log, stop, ticker: Mutex::new(Some(ticker)) })
    }

    /// A final checkpoint, and waits for the disk.
    pub(crate) fn shutdown(&self) {
        let _ = self.stop.send(());
        if let Some(ticker) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            let _ = ticker.join();
        }
    }
}

impl FlowObserver for AuditSink {
    fn closed(&self, record: &FlowRecord, _was_open: bool) {
        if let Err(e) = locked(&self.log).append_flow(record) {
            tracing::error!(error = %format!("{e:#}"), flow = %record.id, "audit log write failed");
        }
    }

    fn reset(&self, record: &FlowRecord) {
        if let Err(e) = locked(&self.log).append_reset(record) {
            tracing::error!(error = %format!("{e:#}"), flow = %record.id, "audit log write failed");
        }
    }
}

#[cfg(test)]
mod tests;
