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
    /// Records waiting for the writer, at most (default 65 536; 0 keeps none: every record is
    /// dropped or refused, as `when_full` says).
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
    /// The writer thread has ended (its closing checkpoint is written).
    finished: Arc<AtomicBool>,
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
        let options = AuditOptions { checkpoint_every: options.checkpoint_every.max(1), ..options };
        // One writer per file in a process: two would each chain onto their own last line.
        let mut open = lock(&OPEN);
        let file = open_append(&path)?;
        let canonical =
            std::fs::canonicalize(&path).map_err(|e| unavailable(format!("audit log {}: {e}", path.display())))?;
        open.retain(|_, log| !log.finished.load(Ordering::Acquire));
        if let Some(existing) = open.get(&canonical) {
            if let Some(log) = existing.upgrade() {
                if &*log.service != service {
                    let detail = format!("audit log {} is already written by {}", path.display(), log.service);
                    return Err(unavailable(detail));
                }
                return Ok(log);
            }
            // Closing: its last checkpoint is not written yet. Continuing before it is would
            // fork the chain.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !existing.finished.load(Ordering::Acquire) {
                if Instant::now() > deadline {
                    return Err(unavailable(format!(
                        "audit log {}: its previous writer does not finish",
                        path.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
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
        let owned = shared.clone();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let thread = std::thread::Builder::new()
            .name("wimse-audit".into())
            .spawn(move || {
                writer.run(owned);
                done.store(true, Ordering::Release);
            })
            .map_err(|e| unavailable(format!("audit writer thread: {e}")))?;
        let writer = thread.thread().clone();
        let log = Self {
            shared,
            capacity: options.queue,
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
            finished,
        };
        open.insert(canonical, weak);
        Ok(log)
    }

    /// Hands `event` to the writer, stamped now; never waits for I/O.
    pub fn record(&self, event: AuditEvent) -> Result<()> {
        let mut queue = lock(&self.shared.queue);
        if !self.shared.running.load(Ordering::Acquire) {
            return Err(unavailable("the audit writer stopped"));
        }
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
        {
            let mut closing = lock(&self.shared.closing);
            // Checked under the lock the writer takes a close under: a second close does not
            // wait for a writer that is gone.
            if !self.shared.running.load(Ordering::Acquire) {
                return Err(unavailable("the audit writer stopped"));
            }
            *closing = Some(done);
        }
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
    let head = std::fs::read(head_path(path)).ok();
    let Ok(mut file) = File::open(path) else {
        return match head {
            // The log is gone but its head is not: a rotated-away log whose chain goes on
            // here, from the head (the records after it, if any, are in the moved file).
            Some(head) => resume_from_head(path, &head),
            None => Ok((0, String::new())),
        };
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if length == 0 {
        return match head {
            Some(head) => resume_from_head(path, &head),
            None => Ok((0, String::new())),
        };
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
    if let Some(head) = &head {
        contains_head(path, head)?;
    }
    Ok((record.seq.checked_add(1).ok_or_else(cut)?, line_hash(last)))
}

/// Continues a chain from its head checkpoint alone (the log file was moved away).
fn resume_from_head(path: &Path, head: &[u8]) -> Result<(u64, String)> {
    let head = head.strip_suffix(b"\n").unwrap_or(head);
    let record: AuditRecord = serde_json::from_slice(head)
        .map_err(|_| unavailable(format!("audit head {}: not a checkpoint", head_path(path).display())))?;
    Ok((record.seq.saturating_add(1), line_hash(head)))
}

/// A log continued must still hold its newest checkpoint (the head file's line): a log cut
/// before it, or changed at it, is not continued (the next checkpoint would hide the cut).
fn contains_head(path: &Path, head: &[u8]) -> Result<()> {
    use std::io::BufRead as _;
    let head = head.strip_suffix(b"\n").unwrap_or(head);
    let file = File::open(path).map_err(|e| unavailable(format!("audit log {}: {e}", path.display())))?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) if line.strip_suffix(b"\n") == Some(head) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(unavailable(format!("audit log {}: {e}", path.display()))),
        }
    }
    Err(unavailable(format!(
        "audit log {}: it does not hold its newest checkpoint (the head file's): it was cut or changed; move both away to start a new log",
        path.display()
    )))
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
    fn run(&mut self, live: Arc<Shared>) {
        let mut batch = Vec::new();
        loop {
            std::thread::park_timeout(POLL);
            // Every handle gone (the registry holds none): the log ends in order, after what
            // they handed over.
            let orphaned = Arc::strong_count(&live) == 1;
            // A close asked for before the batch is taken: every record handed over before it
            // is written, and none after (decided under the queue's lock).
            let closing = lock(&live.closing).take();
            {
                let mut queue = lock(&live.queue);
                std::mem::swap(&mut *queue, &mut batch);
                if closing.is_some() || orphaned {
                    live.running.store(false, Ordering::Release);
                }
            }
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
            if orphaned {
                if let Err(error) = self.close() {
                    tracing::error!(%error, "wimse: closing the audit log failed");
                }
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
        let written = self
            .current_file()
            .and_then(|file| file.write_all(&pending).map_err(|e| unavailable(format!("audit log {path}: {e}"))));
        self.pending = pending;
        // Kept on failure (a full disk): written with the next flush, the chain unbroken.
        if written.is_ok() {
            self.pending.clear();
        }
        written
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
        self.seq = self.seq.saturating_add(1);
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
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut file = File::create(tmp)?;
            file.write_all(&line)?;
            file.sync_all()
        };
        write(Path::new(&tmp))
            .and_then(|()| std::fs::rename(&tmp, &head))
            .map_err(|e| unavailable(format!("audit head {}: {e}", head.display())))
    }
}
