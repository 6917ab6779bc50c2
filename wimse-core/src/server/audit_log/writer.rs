//! The writer of an audit log: a thread of its own, fed through a bounded queue.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{AuditEvent, AuditRecord, CHECKPOINT_TYPE, CheckpointClaims, FORMAT_VERSION, RecordKind, line_hash};
use crate::error::{Error, ErrorKind, Result};
use crate::jose::{Backend, SigningKey, jws};

/// What [`AuditLog::record`] does when the writer is behind and its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// The record is dropped, counted ([`AuditLog::dropped`]) and logged; the request goes on.
    #[default]
    Drop,
    /// The record is refused: [`AuditLog::record`] fails with `audit_log_unavailable` (503), so
    /// nothing is decided without a record.
    Refuse,
}

/// How an [`AuditLog`] writes.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// A checkpoint after this many records (default 1 000).
    pub checkpoint_every: u64,
    /// A checkpoint at least this often while records are written (default 10 s).
    pub checkpoint_interval: Duration,
    /// Records waiting for the writer, at most (default 65 536).
    pub queue: usize,
    /// When the queue is full.
    pub when_full: WhenFull,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(10),
            queue: 65_536,
            when_full: WhenFull::Drop,
        }
    }
}

/// How often the writer takes what was queued. Records wait this long at most before they are
/// written; in exchange no request wakes the writer (a wake-up is a system call on the request
/// path).
const POLL: Duration = Duration::from_millis(5);

/// What the request path and the writer share.
#[derive(Debug, Default)]
struct Shared {
    /// Records handed over and not yet taken by the writer, with their time.
    queue: Mutex<Vec<(AuditEvent, u64)>>,
    /// A close asked for: where to answer.
    closing: Mutex<Option<Sender<Result<()>>>>,
    /// The writer is running.
    running: AtomicBool,
}

/// A tamper-evident audit log being written (see the [module](super)). Cheap to clone; every
/// clone writes into the same chain. When the last clone is dropped, the writer writes a closing
/// checkpoint and stops.
#[derive(Debug, Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    capacity: usize,
    when_full: WhenFull,
    dropped: Arc<AtomicU64>,
    writer: std::thread::Thread,
    service: Arc<str>,
}

/// A log open in this process, without keeping it open.
struct OpenLog {
    shared: Weak<Shared>,
    capacity: usize,
    when_full: WhenFull,
    dropped: Arc<AtomicU64>,
    writer: std::thread::Thread,
    service: Arc<str>,
}

impl OpenLog {
    fn upgrade(&self) -> Option<AuditLog> {
        let shared = self.shared.upgrade().filter(|s| s.running.load(Ordering::Acquire))?;
        Some(AuditLog {
            shared,
            capacity: self.capacity,
            when_full: self.when_full,
            dropped: self.dropped.clone(),
            writer: self.writer.clone(),
            service: self.service.clone(),
        })
    }
}

/// The logs open in this process, by their canonical path.
static OPEN: Mutex<std::collections::BTreeMap<PathBuf, OpenLog>> = Mutex::new(std::collections::BTreeMap::new());

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::AuditLogUnavailable, detail)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The head file beside a log: its newest checkpoint line.
pub(super) fn head_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, written by `service` and checkpointed with `key`
    /// (its public key, given to [`check`](super::check), verifies the log). An existing log is
    /// continued: its last line must be a whole record, else the log was changed or cut, and
    /// opening fails rather than chaining onto it.
    pub fn open(path: impl AsRef<Path>, service: &str, key: SigningKey, options: AuditOptions) -> Result<Self> {
        let path = path.as_ref().to_owned();
        // One writer per file in a process: two would each chain onto their own last line.
        let mut open = lock(&OPEN);
        let file = open_append(&path)?;
        let canonical =
            std::fs::canonicalize(&path).map_err(|e| unavailable(format!("audit log {}: {e}", path.display())))?;
        open.retain(|_, log| log.upgrade().is_some());
        if let Some(log) = open.get(&canonical).and_then(OpenLog::upgrade) {
            if &*log.service != service {
                return Err(unavailable(format!("audit log {} is already written by {}", path.display(), log.service)));
            }
            return Ok(log.clone());
        }
        let (seq, prev) = resume(&path)?;
        let shared = Arc::new(Shared::default());
        shared.running.store(true, Ordering::Release);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            path,
            file,
            service: service.to_owned(),
            key,
            options: options.clone(),
            seq,
            prev,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            dropped: dropped.clone(),
            reported_drops: 0,
            pending: Vec::new(),
        };
        let weak = Arc::downgrade(&shared);
        let thread = std::thread::Builder::new()
            .name("wimse-audit".into())
            .spawn(move || writer.run(weak))
            .map_err(|e| unavailable(format!("audit writer thread: {e}")))?;
        let writer = thread.thread().clone();
        let log = Self {
            shared,
            capacity: options.queue.max(1),
            when_full: options.when_full,
            dropped,
            writer,
            service: service.into(),
        };
        let weak = OpenLog {
            shared: Arc::downgrade(&log.shared),
            capacity: log.capacity,
            when_full: log.when_full,
            dropped: log.dropped.clone(),
            writer: log.writer.clone(),
            service: log.service.clone(),
        };
        open.insert(canonical, weak);
        Ok(log)
    }

    /// Hands `event` to the writer, stamped now; never waits for I/O.
    pub fn record(&self, event: AuditEvent) -> Result<()> {
        if !self.shared.running.load(Ordering::Acquire) {
            return Err(unavailable("the audit writer stopped"));
        }
        let mut queue = lock(&self.shared.queue);
        if queue.len() >= self.capacity {
            drop(queue);
            return match self.when_full {
                WhenFull::Drop => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("wimse_audit_records_dropped_total").increment(1);
                    Ok(())
                }
                WhenFull::Refuse => Err(unavailable("the audit log's queue is full")),
            };
        }
        queue.push((event, now_ms()));
        Ok(())
    }

    /// Records dropped because the queue was full (with [`WhenFull::Drop`]).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes what is queued, a closing checkpoint, and stops the writer; waits for it (blocking:
    /// from async code, call it in `spawn_blocking`). Records handed over afterwards, by other
    /// clones, are refused.
    pub fn close(self) -> Result<()> {
        let (done, outcome) = std::sync::mpsc::channel();
        *lock(&self.shared.closing) = Some(done);
        self.writer.unpark();
        outcome.recv().map_err(|_| unavailable("the audit writer stopped"))?
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| unavailable(format!("audit log {}: {e}", path.display())))
}

/// The next sequence number and the hash of the last line of an existing log.
fn resume(path: &Path) -> Result<(u64, String)> {
    let Ok(mut file) = File::open(path) else { return Ok((0, String::new())) };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if length == 0 {
        return Ok((0, String::new()));
    }
    // The last line is within the last 1 MiB (a record is far smaller).
    let start = length.saturating_sub(1 << 20);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_end(&mut tail))
        .map_err(|e| unavailable(format!("audit log {}: {e}", path.display())))?;
    let cut = || {
        unavailable(format!(
            "audit log {}: its last line is not a whole record (changed or cut); move it away to start a new log",
            path.display()
        ))
    };
    let Some(body) = tail.strip_suffix(b"\n") else { return Err(cut()) };
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    let record: AuditRecord = serde_json::from_slice(last).map_err(|_| cut())?;
    Ok((record.seq + 1, line_hash(last)))
}

struct Writer {
    path: PathBuf,
    file: File,
    service: String,
    key: SigningKey,
    options: AuditOptions,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    dropped: Arc<AtomicU64>,
    reported_drops: u64,
    /// Lines appended and not yet written.
    pending: Vec<u8>,
}

impl Writer {
    fn run(&mut self, shared: Weak<Shared>) {
        let mut batch = Vec::new();
        loop {
            std::thread::park_timeout(POLL);
            let Some(live) = shared.upgrade() else {
                // Every handle is gone: the log ends in order.
                if let Err(error) = self.close() {
                    tracing::error!(%error, "wimse: closing the audit log failed");
                }
                return;
            };
            // A close asked for before the batch is taken: every record handed over before it
            // is written.
            let closing = lock(&live.closing).take();
            std::mem::swap(&mut *lock(&live.queue), &mut batch);
            if closing.is_some() {
                live.running.store(false, Ordering::Release);
            }
            drop(live);
            for (event, ts_ms) in batch.drain(..) {
                let appended = self.append(RecordKind::Decision, Some(event), ts_ms).map(drop);
                if let Err(error) = appended.and_then(|()| self.checkpoint_if_due()) {
                    tracing::error!(%error, "wimse: writing the audit log failed");
                }
            }
            if let Some(done) = closing {
                let _ = done.send(self.close());
                return;
            }
            if let Err(error) = self.flush().and_then(|()| self.checkpoint_if_due()) {
                tracing::error!(%error, "wimse: writing the audit log failed");
            }
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > self.reported_drops {
                tracing::warn!(dropped, "wimse: audit records dropped: the writer is behind (AuditOptions::queue)");
                self.reported_drops = dropped;
            }
        }
    }

    /// Writes a checkpoint when enough records, or enough time, passed since the last.
    fn checkpoint_if_due(&mut self) -> Result<()> {
        let due = self.since_checkpoint >= self.options.checkpoint_every
            || (self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.options.checkpoint_interval);
        if due { self.checkpoint(RecordKind::Checkpoint) } else { Ok(()) }
    }

    /// Writes what is pending and the closing checkpoint.
    fn close(&mut self) -> Result<()> {
        self.checkpoint(RecordKind::Close)
    }

    /// Writes the pending lines to the file.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.path.display().to_string();
        let pending = std::mem::take(&mut self.pending);
        let written = self.current_file()?.write_all(&pending);
        self.pending = pending;
        self.pending.clear();
        written.map_err(|e| unavailable(format!("audit log {path}: {e}")))
    }

    /// The file at the log's path: reopened when the log was rotated (moved or removed).
    fn current_file(&mut self) -> Result<&mut File> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            let ours = self.file.metadata().map(|m| (m.dev(), m.ino())).ok();
            let at_path = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino())).ok();
            if ours.is_none() || ours != at_path {
                // The chain goes on in the new file: its first record names the old one's last.
                self.file = open_append(&self.path)?;
            }
        }
        Ok(&mut self.file)
    }

    /// Writes one record; returns its line (without the newline).
    fn append(&mut self, kind: RecordKind, event: Option<AuditEvent>, ts_ms: u64) -> Result<Vec<u8>> {
        let record = AuditRecord {
            v: FORMAT_VERSION,
            seq: self.seq,
            ts_ms,
            service: self.service.clone(),
            kind,
            event,
            signature: None,
            prev: std::mem::take(&mut self.prev),
        };
        let signed = match kind {
            RecordKind::Decision => record,
            RecordKind::Checkpoint | RecordKind::Close => {
                let claims = CheckpointClaims {
                    service: record.service.clone(),
                    seq: record.seq,
                    prev: record.prev.clone(),
                    ts_ms,
                };
                let kid = self.key.public_key().thumbprint().to_owned();
                let signature = jws::sign(CHECKPOINT_TYPE, Some(&kid), &claims, &self.key, Backend::default())?;
                AuditRecord { signature: Some(signature), ..record }
            }
        };
        let line = serde_json::to_vec(&signed).map_err(|e| unavailable(format!("audit record: {e}")))?;
        self.prev = line_hash(&line);
        self.seq += 1;
        self.pending.extend_from_slice(&line);
        self.pending.push(b'\n');
        if kind == RecordKind::Decision {
            self.since_checkpoint += 1;
        }
        Ok(line)
    }

    /// Writes a signed checkpoint, makes the log durable, and replaces the head file with it.
    fn checkpoint(&mut self, kind: RecordKind) -> Result<()> {
        let line = self.append(kind, None, now_ms())?;
        self.flush()?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let path = self.path.display().to_string();
        self.file.sync_data().map_err(|e| unavailable(format!("audit log {path}: {e}")))?;
        let head = head_path(&self.path);
        let mut tmp = head.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, line)
            .and_then(|()| std::fs::rename(&tmp, &head))
            .map_err(|e| unavailable(format!("audit head {}: {e}", head.display())))
    }
}
