//! Appends the audit log: one line per finished flow, chained, rotated by size, checkpointed,
//! and recovered after a restart (even `kill -9`).
use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use time::OffsetDateTime;

use super::{
    chain::{AUDIT_SCHEMA, AuditLine, Checkpoint, GENESIS, hash_hex},
    key::{ALG, NodeKey},
};
use crate::{
    bounds::TableStat,
    flows::{FlowObserver, FlowRecord},
};

/// When the log reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncPolicy {
    /// fsync after every line.
    Every,
    /// fsync at most every [`BATCH_SYNC`].
    Batch,
}

pub const BATCH_SYNC: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct AuditOptions {
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

pub struct AuditLog {
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
}

/// Where the chain stands in the files on disk.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    pub head: String,
    pub next_seq: u64,
    /// Bytes of a partial last line (a write torn by a crash) in the active file.
    pub torn: Option<u64>,
}

impl AuditLog {
    /// Opens (or creates) the log, continuing the chain of what is on disk. A torn last line
    /// is left as it is, as evidence: the file is rotated and the chain continues in a new one
    /// from the last complete line (`lockmesh audit verify` reports the truncation).
    pub fn open(options: AuditOptions, key: NodeKey) -> anyhow::Result<Self> {
        if let Some(parent) = options.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let recovered = recover(&options.path)?;
        if let Some(bytes) = recovered.torn {
            tracing::warn!(
                file = %options.path.display(), bytes,
                "audit log ends in a partial line (torn write); rotating it and continuing the chain"
            );
            rotate_file(&options.path, options.keep)?;
        }
        let pub_path = pub_path(&options.path);
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(key.pub_file().as_str()) {
            std::fs::write(&pub_path, key.pub_file())
                .with_context(|| format!("writing {}", pub_path.display()))?;
        }
        let file = open_active(&options.path)?;
        let size = file.metadata()?.len();
        tracing::info!(file = %options.path.display(), seq = recovered.next_seq, key_id = key.key_id(), "audit log open");
        Ok(Self {
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
        })
    }

    pub fn append_flow(&mut self, record: &FlowRecord) -> anyhow::Result<()> {
        let line = AuditLine {
            seq: self.next_seq,
            prev: self.head.clone(),
            flow: Some(record.clone()),
            checkpoint: None,
        };
        self.write_line(&line)?;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.options.checkpoint_records {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Writes a checkpoint signed over the chain head.
    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        let mut checkpoint = Checkpoint {
            schema: AUDIT_SCHEMA.to_string(),
            time: OffsetDateTime::now_utc(),
            node: self.options.node.clone(),
            records: self.since_checkpoint,
            alg: ALG.to_string(),
            key_id: self.key.key_id().to_string(),
            public_key: self.key.public_hex(),
            signature: String::new(),
        };
        checkpoint.signature = self.key.sign_hex(&checkpoint.message(self.next_seq, &self.head));
        let line = AuditLine {
            seq: self.next_seq,
            prev: self.head.clone(),
            flow: None,
            checkpoint: Some(checkpoint),
        };
        self.write_line(&line)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Periodic work: batched fsync, time-based checkpoints.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.options.checkpoint_interval {
            self.checkpoint()?;
        }
        if self.dirty && self.last_sync.elapsed() >= BATCH_SYNC {
            self.sync()?;
        }
        Ok(())
    }

    /// Clean shutdown: a final checkpoint seals the tail, then fsync.
    pub fn close(&mut self) -> anyhow::Result<()> {
        self.checkpoint()?;
        self.sync()
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        self.file.sync_data().context("fsync of the audit log")?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn write_line(&mut self, line: &AuditLine) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        let hash = hash_hex(&bytes);
        bytes.push(b'\n');
        if self.size > 0 && self.size + bytes.len() as u64 > self.options.max_bytes {
            self.sync()?;
            rotate_file(&self.options.path, self.options.keep)?;
            self.file = open_active(&self.options.path)?;
            self.size = 0;
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
}

pub fn pub_path(path: &Path) -> PathBuf {
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
pub fn rotated(path: &Path) -> Vec<(u64, PathBuf)> {
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

/// Renames the active file to the next `path.N` and deletes rotated files beyond `keep`.
fn rotate_file(path: &Path, keep: usize) -> anyhow::Result<()> {
    let existing = rotated(path);
    let next = existing.last().map_or(1, |(n, _)| n + 1);
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".{next}"));
    std::fs::rename(path, &target).with_context(|| format!("rotating {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    let total = existing.len() + 1;
    for (_, old) in existing.iter().take(total.saturating_sub(keep)) {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "removing an old audit log");
        }
    }
    Ok(())
}

/// Reads where the chain stands: the last complete line of the active file, or of the newest
/// rotated file when the active one is empty or missing.
pub fn recover(path: &Path) -> anyhow::Result<Recovered> {
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
        return Ok(Recovered { head: hash_hex(last), next_seq: seq + 1, torn });
    }
    Ok(Recovered { head: GENESIS.to_string(), next_seq: 1, torn })
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

enum Message {
    Flow(Box<FlowRecord>),
    Shutdown,
}

/// Finished flows queued for the writer thread at most (~5 s at 10 000 flows/s, a few tens of
/// MiB); when the disk cannot keep up beyond that, new records are dropped and counted
/// (`lockmesh_table_overflows_total{table="audit_queue"}`) rather than growing the agent's
/// memory without bound.
pub const AUDIT_QUEUE: usize = 65_536;

/// The writer thread's queue: bounded, with its depth and drops counted.
struct Queue {
    tx: mpsc::SyncSender<Message>,
    capacity: usize,
    queued: Arc<AtomicUsize>,
    dropped: AtomicU64,
    /// Unix second of the last drop logged.
    logged_at: AtomicU64,
}

impl Queue {
    fn new(capacity: usize) -> (Self, mpsc::Receiver<Message>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let queue = Self {
            tx,
            capacity,
            queued: queued.clone(),
            dropped: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
        };
        (queue, rx, queued)
    }

    /// Queues a record, or drops it (counted, logged at most once a minute) when full.
    fn push(&self, record: &FlowRecord) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(Message::Flow(Box::new(record.clone()))) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if now.saturating_sub(self.logged_at.swap(now, Ordering::Relaxed)) >= 60 {
                    tracing::error!(
                        dropped,
                        queue = self.capacity,
                        "audit log behind: its queue is full, finished flows are being dropped from the audit log (counted in lockmesh_table_overflows_total{{table=\"audit_queue\"}})"
                    );
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn table(&self) -> TableStat {
        TableStat::new(
            self.queued.load(Ordering::Acquire),
            self.capacity,
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// The audit log's writer thread, fed by the flow sink through a bounded queue.
pub struct AuditSink {
    queue: Queue,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditSink {
    pub fn start(log: AuditLog) -> anyhow::Result<Self> {
        Self::start_with_queue(log, AUDIT_QUEUE)
    }

    fn start_with_queue(mut log: AuditLog, capacity: usize) -> anyhow::Result<Self> {
        let (queue, rx, queued) = Queue::new(capacity);
        let thread = std::thread::Builder::new().name("audit-log".into()).spawn(move || {
            loop {
                let result = match rx.recv_timeout(BATCH_SYNC) {
                    Ok(Message::Flow(record)) => {
                        queued.fetch_sub(1, Ordering::AcqRel);
                        log.append_flow(&record)
                    }
                    Ok(Message::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if let Err(e) = log.close() {
                            tracing::error!(error = %format!("{e:#}"), "closing the audit log");
                        }
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
                };
                if let Err(e) = result.and_then(|()| log.tick()) {
                    tracing::error!(error = %format!("{e:#}"), "audit log write failed");
                }
            }
        })?;
        Ok(Self { queue, thread: Mutex::new(Some(thread)) })
    }

    /// Writes what is queued, a final checkpoint, and waits for the disk.
    pub fn shutdown(&self) {
        // Blocks while the queue is full: everything queued before is written first.
        let _ = self.queue.tx.send(Message::Shutdown);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }

    /// The queue as a table: records waiting, its capacity, records dropped because it was full.
    pub fn table(&self) -> TableStat {
        self.queue.table()
    }
}

impl FlowObserver for AuditSink {
    fn closed(&self, record: &FlowRecord, _was_open: bool) {
        self.queue.push(record);
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use crate::audit::testutil::flow;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let (queue, rx, _) = Queue::new(3);
        for id in 0..5 {
            queue.push(&flow(id));
        }
        assert_eq!(queue.table(), TableStat::new(3, 3, 2));
        // The writer takes one: room for one more.
        assert!(matches!(rx.recv(), Ok(Message::Flow(_))));
        queue.queued.fetch_sub(1, Ordering::AcqRel);
        queue.push(&flow(9));
        assert_eq!(queue.table(), TableStat::new(3, 3, 2));
    }

    #[test]
    fn queued_records_are_written_and_the_queue_drains() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::audit::testutil::options(&dir.path().join("audit.log"));
        let key = crate::audit::NodeKey::load_or_create(dir.path()).unwrap();
        let sink = AuditSink::start_with_queue(AuditLog::open(options, key).unwrap(), 8).unwrap();
        for id in 0..4 {
            sink.closed(&flow(id), true);
        }
        sink.shutdown();
        assert_eq!(sink.table(), TableStat::new(0, 8, 0));
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        assert_eq!(text.lines().filter(|l| l.contains("\"flow\"")).count(), 4);
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
