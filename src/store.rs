//! SQLite: the connection, migrations and every query. No other module writes SQL.
//!
//! One thread owns the writing [`Store`] (a `rusqlite::Connection` is not `Sync`); readers
//! (ingest's ledger check, `sensei status`) open their own connections, which WAL lets run beside
//! the writer. A file's records, teacher samples, window sums and ledger row commit in one
//! transaction, which is what makes "counted exactly once" hold across crashes.
//!
//! Migrations are `migrations/NNNN_*.sql`, applied in order inside one transaction and tracked
//! by `PRAGMA user_version` (append-only: never edit a released migration).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use serde::Serialize;

use crate::compare::Comparison;
use crate::drift::MonitorDelta;
use crate::record::{Tensor, TensorData};

/// The migrations, in order. `build.rs` makes cargo rebuild when the directory changes.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../migrations/0001_initial.sql"),
    ),
    ("0002_drift", include_str!("../migrations/0002_drift.sql")),
    ("0003_alerts", include_str!("../migrations/0003_alerts.sql")),
    (
        "0004_redistill",
        include_str!("../migrations/0004_redistill.sql"),
    ),
    ("0005_shadow", include_str!("../migrations/0005_shadow.sql")),
    (
        "0006_records_indexes",
        include_str!("../migrations/0006_records_indexes.sql"),
    ),
    (
        "0007_redistill_failures",
        include_str!("../migrations/0007_redistill_failures.sql"),
    ),
    (
        "0008_records_by_seq",
        include_str!("../migrations/0008_records_by_seq.sql"),
    ),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The segment name of the all-segments aggregate.
pub const ALL_SEGMENTS: &str = "*";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "database schema version {found} is newer than this sensei supports ({supported}); upgrade sensei"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("migration {name} failed: {source}")]
    Migration {
        name: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error("starting the checkpoint thread: {0}")]
    Thread(std::io::Error),
    #[error("a background checkpointer needs a database file, not an in-memory database")]
    InMemory,
    #[error(
        "the file's records were numbered from {got} instead of {expected}: something other than sensei's writer inserted records"
    )]
    Sequence { expected: i64, got: i64 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Retention: the sequence numbers of the records of files received before `?1`.
const RETENTION_OLD: &str = "SELECT r.seq FROM files f JOIN records r
         ON r.seq >= f.first_seq AND r.seq < f.first_seq + f.records
     WHERE f.processed_at < ?1 AND f.first_seq IS NOT NULL
       AND f.processed_at >= (SELECT processed_at FROM files WHERE id =
               (SELECT file_id FROM records ORDER BY seq LIMIT 1))";

/// The writing connection.
pub struct Store {
    // Stopped before the writer's connection closes, so that the writer's close, as the last
    // connection, still checkpoints and removes the log.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
}

/// The longest wait between two passes of the background checkpointer, which copy committed
/// pages from the write-ahead log into the database file; passes come sooner while the log grows
/// fast (see [`Store::checkpoint_in_background`]).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The log size, in pages, at which the writer checkpoints by itself after all: only when the
/// background checkpointer has fallen far behind (4096-byte pages: 40 MiB).
const BACKSTOP_CHECKPOINT_PAGES: i64 = 10_000;

/// The most log pages the background checkpointer lets one interval add (10 MiB): when the
/// writer commits faster, passes come more often, down to a sixteenth of the interval (see
/// [`next_wait`]).
const PASS_PAGES: i64 = 2_500;

/// The wait before the background checkpointer's next pass, after a pass that found
/// `log_pages` in the log. Passes come twice as often while the writer adds more than
/// [`PASS_PAGES`] between two of them (the log restarts after each pass once the writer
/// commits, so the log holds what it added since the last one), down to `every / 16`, and half
/// as often again, up to `every`, once it adds less than a quarter of that or has not
/// committed at all (`writer_idle`: the log then still holds what the last pass saw).
fn next_wait(wait: Duration, every: Duration, writer_idle: bool, log_pages: i64) -> Duration {
    if !writer_idle && log_pages > PASS_PAGES {
        (wait / 2).max(every / 16)
    } else if writer_idle || log_pages < PASS_PAGES / 4 {
        (wait * 2).min(every)
    } else {
        wait
    }
}

/// What one checkpoint did: `PRAGMA wal_checkpoint(PASSIVE)`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointResult {
    /// The checkpoint could not finish because another connection held a lock it needed.
    pub busy: bool,
    /// Pages in the write-ahead log.
    pub log_pages: i64,
    /// Of those, the pages now copied into the database file.
    pub checkpointed_pages: i64,
}

/// The background checkpointer: a thread with its own connection. Dropping it stops the thread.
///
/// Its passive checkpoints copy the log beside the writer, but frames the writer commits while
/// one runs stay behind, and SQLite starts the log over only once every frame is copied. So
/// after each background pass the writer copies that remainder itself, after its next commit
/// (a few pages); its next transaction then starts the log over, which keeps the log file at
/// about one interval's worth of commits, or [`PASS_PAGES`] when the writer commits faster than
/// that in an interval (passes then come more often, see [`next_wait`]).
struct Checkpointer {
    every: Duration,
    /// `None` once dropping: closing the channel ends the thread's wait.
    requests:
        Option<std::sync::mpsc::Sender<std::sync::mpsc::SyncSender<Result<CheckpointResult>>>>,
    remainder_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path, synchronous: i64, every: Duration) -> Result<Checkpointer> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        // The checkpoint's syncs follow the writer's `[store] synchronous`.
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(open_err)?;
        let (requests, rx) =
            std::sync::mpsc::channel::<std::sync::mpsc::SyncSender<Result<CheckpointResult>>>();
        let remainder_due = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let due = remainder_due.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                let mut wait = every;
                loop {
                    let reply = match rx.recv_timeout(wait) {
                        Ok(reply) => Some(reply),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    // Still set: the writer has not committed since the last pass.
                    let writer_idle = due.load(std::sync::atomic::Ordering::Acquire);
                    let result = checkpoint(&conn);
                    if let Ok(r) = &result {
                        wait = next_wait(wait, every, writer_idle, r.log_pages);
                        if r.log_pages > 0 {
                            due.store(true, std::sync::atomic::Ordering::Release);
                        }
                    }
                    match &result {
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "Checkpointing the write-ahead log failed; retrying every {wait:?}.");
                        }
                        Ok(_) if failing => {
                            failing = false;
                            tracing::info!("Checkpointing the write-ahead log works again.");
                        }
                        _ => {}
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Checkpointer {
            every,
            requests: Some(requests),
            remainder_due,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // A checkpoint under way finishes first.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One passive checkpoint: copies what it can without waiting for readers or the writer.
fn checkpoint(conn: &Connection) -> Result<CheckpointResult> {
    Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(CheckpointResult {
            busy: r.get::<_, i64>(0)? != 0,
            log_pages: r.get(1)?,
            checkpointed_pages: r.get(2)?,
        })
    })?)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Starts a transaction that will write. `IMMEDIATE` takes the write lock at `BEGIN`, where
/// SQLite waits for it up to the busy timeout. A deferred transaction that reads first and then
/// writes is refused `SQLITE_BUSY` at once when another connection holds the lock (the busy
/// handler is not consulted for a read-to-write upgrade), so one short write by anyone else (the
/// alert evaluator, `sensei promote`, an operator's script) would fail a file's commit.
fn write_transaction(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = write_transaction(conn)?;
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migration {
                name: (*name).to_string(),
                source,
            })?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

/// A file that finished ingest and inference, ready to commit.
#[derive(Debug)]
pub struct FileCommit {
    /// `records.seq` of the first record; the others follow in order.
    pub first_seq: i64,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub kind: &'static str,
    pub student: String,
    pub teacher: String,
    pub records: Vec<RecordRow>,
}

#[derive(Debug)]
pub struct RecordRow {
    pub record_id: String,
    /// The record's input summary (for the drift detectors; not stored).
    pub features: Vec<f64>,
    pub ts_ms: i64,
    pub segment: String,
    pub prediction: Option<i64>,
    pub confidence: Option<f64>,
    pub entropy: Option<f64>,
    pub value: Option<f64>,
    pub latency_us: i64,
    /// [`crate::sampler::Decision::code`].
    pub sampled: i64,
    pub label: Option<i64>,
    pub teacher: Option<TeacherRow>,
}

#[derive(Debug)]
pub struct TeacherRow {
    pub weight: f64,
    pub teacher_prediction: Option<i64>,
    pub teacher_confidence: Option<f64>,
    pub comparison: Comparison,
    pub latency_us: i64,
    pub output_shape: Vec<usize>,
    pub teacher_output: Vec<f32>,
    pub student_output: Vec<f32>,
    pub teacher_attention: Option<(Vec<usize>, Vec<f32>)>,
    pub inputs: Vec<(String, Tensor)>,
    /// The shadow models' answers on this record (`crate::shadow`), compared with the teacher.
    pub shadow: Vec<ShadowRow>,
}

/// One shadow model on one teacher-sampled record.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRow {
    /// `shadow_models.name`.
    pub model: String,
    /// The model file's sha256 (first 12 hex digits).
    pub sha256: String,
    pub kind: ShadowKind,
    /// The comparison with the teacher, or why the model could not answer.
    pub result: std::result::Result<ShadowMeasure, String>,
}

/// What a shadow model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowKind {
    Student,
    Challenger,
    Candidate,
}

impl ShadowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowKind::Student => "student",
            ShadowKind::Challenger => "challenger",
            ShadowKind::Candidate => "candidate",
        }
    }

    fn parse(s: &str) -> ShadowKind {
        match s {
            "student" => ShadowKind::Student,
            "candidate" => ShadowKind::Candidate,
            _ => ShadowKind::Challenger,
        }
    }
}

/// A shadow model's answer on one record, compared with the teacher's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowMeasure {
    pub comparison: Comparison,
    /// Its batch inference time / batch size.
    pub latency_us: i64,
}

/// A shadow model as loaded (or not) at pipeline start, for `shadow_models`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowModelRow {
    pub name: String,
    pub kind: ShadowKind,
    pub path: String,
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    pub parameters: Option<u64>,
    /// `None` when it runs; the reason when it does not.
    pub failure: Option<String>,
    pub job_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed {
        file_id: i64,
        records: usize,
    },
    /// A file with the same content was already counted.
    Duplicate {
        of_id: i64,
        of_name: String,
    },
}

/// Outcome of a late-labels file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelsOutcome {
    Committed {
        file_id: i64,
        labels: usize,
        matched: usize,
    },
    Duplicate {
        of_id: i64,
    },
}

fn f32_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn tensor_blob(t: &Tensor) -> (&'static str, Vec<u8>) {
    match &t.data {
        TensorData::F32(v) => ("float32", f32_blob(v)),
        TensorData::I64(v) => ("int64", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

fn shape_json(shape: &[usize]) -> String {
    serde_json::to_string(shape).unwrap_or_else(|_| "[]".into())
}

/// The shadow models' rows of one file, gathered while its records are inserted.
#[derive(Debug, Default)]
struct ShadowBatch {
    /// (seq, row, weight).
    samples: Vec<(i64, ShadowRow, f64)>,
    /// Per (model, sha256): its kind and sums.
    totals: BTreeMap<(String, String), (ShadowKind, crate::shadow::Totals)>,
    /// Models that failed on a record of this file, with the reason.
    failures: BTreeMap<String, String>,
}

impl ShadowBatch {
    /// Adds one teacher-sampled record: each shadow model's answer and, when any shadow model
    /// answered, the serving student's over the same record.
    fn add(&mut self, seq: i64, r: &RecordRow, t: &TeacherRow, student_sha: &str) {
        if t.shadow.is_empty() {
            return;
        }
        self.total(crate::shadow::STUDENT, student_sha, ShadowKind::Student)
            .add(seq, t.weight, &t.comparison, r.latency_us, t.latency_us);
        for s in &t.shadow {
            match &s.result {
                Ok(m) => {
                    self.total(&s.model, &s.sha256, s.kind).add(
                        seq,
                        t.weight,
                        &m.comparison,
                        m.latency_us,
                        t.latency_us,
                    );
                    self.samples.push((seq, s.clone(), t.weight));
                }
                Err(reason) => {
                    self.failures.insert(s.model.clone(), reason.clone());
                }
            }
        }
    }
}

impl ShadowBatch {
    fn total(&mut self, model: &str, sha: &str, kind: ShadowKind) -> &mut crate::shadow::Totals {
        &mut self
            .totals
            .entry((model.to_string(), sha.to_string()))
            .or_insert_with(|| (kind, crate::shadow::Totals::default()))
            .1
    }
}

fn write_shadow(tx: &Transaction<'_>, batch: &ShadowBatch, now_ms: i64) -> Result<()> {
    if batch.totals.is_empty() && batch.failures.is_empty() {
        return Ok(());
    }
    let mut ins = tx.prepare_cached(
        "INSERT INTO shadow_samples (seq, model, sha256, weight, disagreement, kl, attention_kl,
             cosine_distance, abs_error, latency_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for (seq, row, weight) in &batch.samples {
        let Ok(m) = &row.result else { continue };
        let c = &m.comparison;
        ins.execute(params![
            seq,
            row.model,
            row.sha256,
            weight,
            c.disagreement.map(i64::from),
            c.kl.filter(|x| x.is_finite()),
            c.attention_kl.filter(|x| x.is_finite()),
            c.cosine_distance.filter(|x| x.is_finite()),
            c.abs_error.filter(|x| x.is_finite()),
            m.latency_us,
        ])?;
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO shadow_totals (model, sha256, kind, samples, weight, weight_sq, agreement,
             agreement_weight, agreement_weight_sq, kl, kl_weight, attention_kl,
             attention_kl_weight, latency_us, teacher_latency_us, first_seq, last_seq, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
         ON CONFLICT (model, sha256) DO UPDATE SET
             samples = samples + excluded.samples,
             weight = weight + excluded.weight,
             weight_sq = weight_sq + excluded.weight_sq,
             agreement = agreement + excluded.agreement,
             agreement_weight = agreement_weight + excluded.agreement_weight,
             agreement_weight_sq = agreement_weight_sq + excluded.agreement_weight_sq,
             kl = kl + excluded.kl,
             kl_weight = kl_weight + excluded.kl_weight,
             attention_kl = attention_kl + excluded.attention_kl,
             attention_kl_weight = attention_kl_weight + excluded.attention_kl_weight,
             latency_us = latency_us + excluded.latency_us,
             teacher_latency_us = teacher_latency_us + excluded.teacher_latency_us,
             first_seq = MIN(first_seq, excluded.first_seq),
             last_seq = MAX(last_seq, excluded.last_seq),
             updated_at = excluded.updated_at",
    )?;
    for ((model, sha), (kind, t)) in &batch.totals {
        upsert.execute(params![
            model,
            sha,
            kind.as_str(),
            t.samples,
            finite(t.weight),
            finite(t.weight_sq),
            finite(t.agreement),
            finite(t.agreement_weight),
            finite(t.agreement_weight_sq),
            finite(t.kl),
            finite(t.kl_weight),
            finite(t.attention_kl),
            finite(t.attention_kl_weight),
            t.latency_us,
            t.teacher_latency_us,
            t.first_seq,
            t.last_seq,
            now_ms,
        ])?;
    }
    let mut failed = tx.prepare_cached(
        "UPDATE shadow_models SET status = 'failed', detail = ?2, updated_at = ?3 WHERE name = ?1",
    )?;
    for (model, reason) in &batch.failures {
        failed.execute(params![model, reason, now_ms])?;
    }
    Ok(())
}

/// Running sums for one (window, segment) cell.
#[derive(Debug, Default, Clone)]
struct WindowSums {
    records: i64,
    confidence: f64,
    entropy: f64,
    latency_us: i64,
    teacher_samples: i64,
    skipped_budget: i64,
    skipped_queue: i64,
    weight: f64,
    weight_sq: f64,
    disagreement: f64,
    kl: f64,
    total_variation: f64,
    attention_kl: f64,
    attention_kl_weight: f64,
    cosine_distance: f64,
    abs_error: f64,
    teacher_latency_us: i64,
}

impl WindowSums {
    fn add(&mut self, r: &RecordRow) {
        self.records += 1;
        self.confidence += r.confidence.unwrap_or(0.0);
        self.entropy += r.entropy.unwrap_or(0.0);
        self.latency_us += r.latency_us;
        match r.sampled {
            2 => self.skipped_budget += 1,
            3 => self.skipped_queue += 1,
            _ => {}
        }
        if let Some(t) = &r.teacher {
            let w = t.weight;
            let c = &t.comparison;
            self.teacher_samples += 1;
            self.weight += w;
            self.weight_sq += w * w;
            self.disagreement += w * c.disagreement.map_or(0.0, |d| d as u8 as f64);
            self.kl += w * c.kl.unwrap_or(0.0);
            self.total_variation += w * c.total_variation.unwrap_or(0.0);
            if let Some(a) = c.attention_kl {
                self.attention_kl += w * a;
                self.attention_kl_weight += w;
            }
            self.cosine_distance += w * c.cosine_distance.unwrap_or(0.0);
            self.abs_error += w * c.abs_error.unwrap_or(0.0);
            self.teacher_latency_us += t.latency_us;
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        migrate(&mut conn)?;
        // The writer keeps every statement it uses prepared (the record inserts alone are one
        // per size in `RECORD_CHUNKS`).
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Store {
            conn,
            checkpointer: None,
        })
    }

    /// Moves checkpoints off the writer. By default SQLite's committing connection copies the
    /// write-ahead log into the database file, and syncs it, whenever the log passes 1000
    /// pages, so about every dozenth file's commit waits for that. Here a thread with its own
    /// connection does it beside the writer every `every` ([`CHECKPOINT_INTERVAL`] in the
    /// daemon), or down to every `every / 16` while the log grows fast (`next_wait`); the
    /// writer still checkpoints by itself if the log grows past
    /// `BACKSTOP_CHECKPOINT_PAGES`, and copies the few pages a background pass leaves
    /// behind (see `Checkpointer`). Its checkpoints sync as the writer does, also after a
    /// later [`Store::set_synchronous`].
    pub fn checkpoint_in_background(&mut self, every: Duration) -> Result<()> {
        let path = match self.conn.path() {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => return Err(StoreError::InMemory),
        };
        // SQLite takes the level as the number it reports.
        let synchronous: i64 = self
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))?;
        self.checkpointer = None; // a second call replaces the first thread
        self.checkpointer = Some(Checkpointer::start(&path, synchronous, every)?);
        self.conn
            .pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
        Ok(())
    }

    /// After a commit: copies what the last background pass left behind (see [`Checkpointer`]).
    fn finish_checkpoint(&self) {
        let Some(checkpointer) = &self.checkpointer else {
            return;
        };
        if checkpointer
            .remainder_due
            .swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Err(e) = checkpoint(&self.conn)
        {
            tracing::warn!(error = %e, "Checkpointing the write-ahead log after a commit failed.");
        }
    }

    /// Asks the background checkpointer for a checkpoint now and waits for its answer; `None`
    /// when there is no background checkpointer.
    pub fn background_checkpoint_now(&self) -> Option<Result<CheckpointResult>> {
        let checkpointer = self.checkpointer.as_ref()?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        checkpointer.requests.as_ref()?.send(reply).ok()?;
        answer.recv().ok()
    }

    /// Sets when commits reach the disk (`[store] synchronous`), for the background
    /// checkpointer too.
    pub fn set_synchronous(&mut self, mode: crate::config::Synchronous) -> Result<()> {
        let value = match mode {
            crate::config::Synchronous::Normal => "NORMAL",
            crate::config::Synchronous::Full => "FULL",
        };
        self.conn.pragma_update(None, "synchronous", value)?;
        if let Some(every) = self.checkpointer.as_ref().map(|c| c.every) {
            self.checkpoint_in_background(every)?;
        }
        Ok(())
    }

    /// The current schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Commits one file: ledger row, records, teacher samples and window sums in one
    /// transaction. A file whose content was already counted is recorded as a duplicate instead.
    pub fn commit_file(
        &mut self,
        file: &FileCommit,
        window_ms: i64,
        now_ms: i64,
        drift: Option<(i64, &MonitorDelta)>,
    ) -> Result<CommitOutcome> {
        let tx = write_transaction(&mut self.conn)?;
        if let Some((of_id, of_name)) = done_file(&tx, &file.sha256)? {
            insert_file(
                &tx,
                &file.name,
                &file.sha256,
                file.size,
                file.kind,
                "duplicate",
                0,
                Some(&format!("same content as file #{of_id} ({of_name})")),
                now_ms,
            )?;
            tx.commit()?;
            return Ok(CommitOutcome::Duplicate { of_id, of_name });
        }
        let file_id = insert_file(
            &tx,
            &file.name,
            &file.sha256,
            file.size,
            file.kind,
            "done",
            file.records.len() as i64,
            None,
            now_ms,
        )?;
        if !file.records.is_empty() {
            tx.prepare_cached("UPDATE files SET first_seq = ?2 WHERE id = ?1")?
                .execute(params![file_id, file.first_seq])?;
        }
        insert_records(&tx, file, file_id)?;
        let mut windows = FileWindows::default();
        let mut shadow = ShadowBatch::default();
        {
            let mut ins_teacher = tx.prepare_cached(
                "INSERT INTO teacher_samples (seq, record_id, ts, segment, weight, teacher, student,
                    student_prediction, teacher_prediction, teacher_confidence, disagreement, kl,
                    total_variation, attention_kl, cosine_distance, abs_error, teacher_latency_us,
                    teacher_output, student_output, output_shape, teacher_attention, attention_shape, label)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                         ?18, ?19, ?20, ?21, ?22, ?23)",
            )?;
            let mut ins_input = tx.prepare_cached(
                "INSERT INTO teacher_sample_inputs (seq, name, dtype, shape, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (i, r) in file.records.iter().enumerate() {
                let seq = file.first_seq + i as i64;
                if let Some(t) = &r.teacher {
                    let c = &t.comparison;
                    let (att, att_shape) = match &t.teacher_attention {
                        Some((shape, data)) => (Some(f32_blob(data)), Some(shape_json(shape))),
                        None => (None, None),
                    };
                    ins_teacher.execute(params![
                        seq,
                        r.record_id,
                        r.ts_ms,
                        r.segment,
                        t.weight,
                        file.teacher,
                        file.student,
                        r.prediction,
                        t.teacher_prediction,
                        t.teacher_confidence,
                        c.disagreement.map(|d| d as i64),
                        c.kl,
                        c.total_variation,
                        c.attention_kl,
                        c.cosine_distance,
                        c.abs_error,
                        t.latency_us,
                        f32_blob(&t.teacher_output),
                        f32_blob(&t.student_output),
                        shape_json(&t.output_shape),
                        att,
                        att_shape,
                        r.label,
                    ])?;
                    for (name, tensor) in &t.inputs {
                        let (dtype, blob) = tensor_blob(tensor);
                        ins_input.execute(params![
                            seq,
                            name,
                            dtype,
                            shape_json(&tensor.shape),
                            blob
                        ])?;
                    }
                    shadow.add(seq, r, t, &file.student);
                }
                let start = r.ts_ms.div_euclid(window_ms) * window_ms;
                windows.sums(start, ALL_SEGMENTS).add(r);
                windows.sums(start, &r.segment).add(r);
            }
        }
        upsert_windows(&tx, &windows.into_sorted())?;
        write_shadow(&tx, &shadow, now_ms)?;
        if let Some((version, delta)) = drift {
            write_delta(&tx, version, delta, now_ms)?;
        }
        tx.commit()?;
        self.finish_checkpoint();
        Ok(CommitOutcome::Committed {
            file_id,
            records: file.records.len(),
        })
    }

    /// Records that a file with already-counted content arrived again. A file with the same name
    /// and content as the counted one is the counted file itself, left in the inbox by a crash
    /// between commit and move: nothing new is recorded. Returns the counted file's id.
    pub fn note_duplicate(
        &mut self,
        name: &str,
        sha256: &str,
        size: u64,
        kind: &str,
        now_ms: i64,
    ) -> Result<Option<i64>> {
        let tx = write_transaction(&mut self.conn)?;
        let Some((of_id, of_name)) = done_file(&tx, sha256)? else {
            return Ok(None);
        };
        if of_name != name {
            let reason = format!("same content as file #{of_id} ({of_name})");
            insert_file(
                &tx,
                name,
                sha256,
                size,
                kind,
                "duplicate",
                0,
                Some(&reason),
                now_ms,
            )?;
        }
        tx.commit()?;
        Ok(Some(of_id))
    }

    /// Records a quarantined file in the ledger.
    pub fn record_quarantine(
        &mut self,
        name: &str,
        sha256: &str,
        size: u64,
        kind: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<i64> {
        let tx = write_transaction(&mut self.conn)?;
        // The same file quarantined again (a crash between the ledger row and the move) keeps
        // its one row.
        let existing: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM files WHERE status = 'quarantined' AND name = ?1 AND sha256 = ?2 AND size = ?3",
            )?
            .query_row(params![name, sha256, size as i64], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = insert_file(
            &tx,
            name,
            sha256,
            size,
            kind,
            "quarantined",
            0,
            Some(reason),
            now_ms,
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Commits a late-labels file: stores each label and writes it onto the records (and teacher
    /// samples) with that id. Labels for ids not seen yet wait in `late_labels`; records arriving
    /// later pick them up in [`Store::commit_file`]'s caller via [`Store::pending_label`].
    ///
    /// `joined` is called for every record a label reaches, with what the drift detectors need
    /// (seq, segment, student prediction, teacher prediction when sampled, label); it returns
    /// the detectors' changes, which commit in the same transaction.
    pub fn commit_labels(
        &mut self,
        name: &str,
        sha256: &str,
        size: u64,
        labels: &[(String, i64)],
        now_ms: i64,
        joined: &mut LabelObserver<'_>,
    ) -> Result<LabelsOutcome> {
        let tx = write_transaction(&mut self.conn)?;
        if let Some((of_id, of_name)) = done_file(&tx, sha256)? {
            insert_file(
                &tx,
                name,
                sha256,
                size,
                "labels",
                "duplicate",
                0,
                Some(&format!("same content as file #{of_id} ({of_name})")),
                now_ms,
            )?;
            tx.commit()?;
            return Ok(LabelsOutcome::Duplicate { of_id });
        }
        let file_id = insert_file(
            &tx,
            name,
            sha256,
            size,
            "labels",
            "done",
            labels.len() as i64,
            None,
            now_ms,
        )?;
        let mut matched_total = 0;
        {
            let mut upd_records =
                tx.prepare_cached("UPDATE records SET label = ?2 WHERE record_id = ?1")?;
            let mut upd_samples =
                tx.prepare_cached("UPDATE teacher_samples SET label = ?2 WHERE record_id = ?1")?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO late_labels (record_id, label, file_id, received_at, matched)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (record_id) DO UPDATE SET label = excluded.label, file_id = excluded.file_id,
                     received_at = excluded.received_at, matched = excluded.matched",
            )?;
            let mut lookup = tx.prepare_cached(
                "SELECT r.seq, r.segment, r.prediction, t.teacher_prediction
                 FROM records r LEFT JOIN teacher_samples t ON t.seq = r.seq
                 WHERE r.record_id = ?1 ORDER BY r.seq",
            )?;
            let mut joins = Vec::new();
            for (id, label) in labels {
                let matched = upd_records.execute(params![id, label])?;
                upd_samples.execute(params![id, label])?;
                ins.execute(params![id, label, file_id, now_ms, matched as i64])?;
                matched_total += matched;
                if matched > 0 {
                    let rows = lookup.query_map([id], |r| {
                        Ok(LabelJoin {
                            seq: r.get(0)?,
                            segment: r.get(1)?,
                            prediction: r.get(2)?,
                            teacher_prediction: r.get(3)?,
                            label: *label,
                        })
                    })?;
                    for row in rows {
                        joins.push(row?);
                    }
                }
            }
            if let Some((version, delta)) = joined(&joins) {
                write_delta(&tx, version, &delta, now_ms)?;
            }
        }
        tx.commit()?;
        Ok(LabelsOutcome::Committed {
            file_id,
            labels: labels.len(),
            matched: matched_total,
        })
    }

    /// The `records.seq` the next record gets (sequence numbers are never reused, even after
    /// retention deleted the rows).
    pub fn next_seq(&self) -> Result<i64> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'records'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(last.unwrap_or(0) + 1)
    }

    /// Stores a new baseline version and makes it the active one.
    pub fn insert_baseline(
        &mut self,
        student: &str,
        teacher: &str,
        records: i64,
        sources: &str,
        profile: &str,
        now_ms: i64,
    ) -> Result<i64> {
        let tx = write_transaction(&mut self.conn)?;
        tx.execute("UPDATE baselines SET active = 0 WHERE active = 1", [])?;
        tx.execute(
            "INSERT INTO baselines (created_at, active, student, teacher, records, sources, profile)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6)",
            params![now_ms, student, teacher, records, sources, profile],
        )?;
        let version = tx.last_insert_rowid();
        tx.commit()?;
        Ok(version)
    }

    pub fn active_baseline(&self) -> Result<Option<BaselineRow>> {
        active_baseline(&self.conn)
    }

    /// Persisted detector states of a baseline version: (signal, segment, detector, json).
    pub fn detector_states(&self, version: i64) -> Result<Vec<(String, String, String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT signal, segment, detector, state FROM detector_state WHERE baseline_version = ?1",
        )?;
        let rows = stmt.query_map([version], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether any late label still waits for its record.
    pub fn has_waiting_labels(&self) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM late_labels WHERE matched = 0)")?
            .query_row([], |r| r.get(0))?)
    }

    /// A late label that arrived before its record.
    pub fn pending_label(&self, record_id: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT label FROM late_labels WHERE record_id = ?1")?
            .query_row([record_id], |r| r.get(0))
            .optional()?)
    }

    /// Deletes per-record rows of files processed before `cutoff_ms` (retention counts from
    /// when sensei received a record, not from the record's own timestamp, so a backfill of old
    /// data is kept as long as fresh data). Window sums and teacher samples stay.
    ///
    /// A file's records are the `records` consecutive sequence numbers from its `first_seq`, so
    /// each range is found through the primary key.
    ///
    /// The files it looks at start at the one that holds the oldest record left, so a run costs
    /// what it deletes and not every file ever received. (Should the clock have gone back, a
    /// file received "earlier" than that one waits for the next run after it.)
    pub fn apply_retention(&mut self, cutoff_ms: i64) -> Result<usize> {
        let tx = write_transaction(&mut self.conn)?;
        tx.execute(
            &format!("DELETE FROM shadow_samples WHERE seq IN ({RETENTION_OLD})"),
            [cutoff_ms],
        )?;
        let deleted = tx.execute(
            &format!("DELETE FROM records WHERE seq IN ({RETENTION_OLD})"),
            [cutoff_ms],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Records the shadow models of a pipeline start: each one's identity and whether it
    /// loaded. Models no longer configured leave `shadow_models` (their totals stay).
    pub fn register_shadow_models(&mut self, models: &[ShadowModelRow], now_ms: i64) -> Result<()> {
        // It reads before it writes: see `write_transaction`.
        let tx = write_transaction(&mut self.conn)?;
        {
            let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            let mut stmt = tx.prepare("SELECT name FROM shadow_models")?;
            let known: Vec<String> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for name in known.iter().filter(|n| !names.contains(&n.as_str())) {
                tx.execute("DELETE FROM shadow_models WHERE name = ?1", [name])?;
            }
            let mut upsert = tx.prepare_cached(
                "INSERT INTO shadow_models (name, kind, path, sha256, size_bytes, parameters,
                     status, detail, job_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, path = excluded.path,
                     sha256 = excluded.sha256, size_bytes = excluded.size_bytes,
                     parameters = excluded.parameters, status = excluded.status,
                     detail = excluded.detail, job_id = excluded.job_id,
                     updated_at = excluded.updated_at",
            )?;
            for m in models {
                upsert.execute(params![
                    m.name,
                    m.kind.as_str(),
                    m.path,
                    m.sha256,
                    m.size_bytes.map(|b| b as i64),
                    m.parameters.map(|p| p as i64),
                    if m.failure.is_some() {
                        "failed"
                    } else {
                        "running"
                    },
                    m.failure,
                    m.job_id,
                    now_ms
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The latest job's candidate when it still waits for a decision: the job succeeded, the
    /// gate passed it, and no promotion installed it. (id, output path).
    pub fn pending_candidate(&self) -> Result<Option<(i64, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT j.id, j.output, j.gate FROM redistill_jobs j
                 WHERE j.status = 'succeeded' AND j.output IS NOT NULL
                 ORDER BY j.id DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                },
            )
            .optional()?
            .filter(|(_, _, gate)| gate.as_deref() == Some("passed"))
            .map(|(id, output, _)| (id, output))
            .filter(|(id, _)| {
                !self
                    .conn
                    .prepare_cached("SELECT 1 FROM student_promotions WHERE job_id = ?1")
                    .and_then(|mut s| s.exists([id]))
                    .unwrap_or(false)
            }))
    }

    /// Whether a file with this content was already counted.
    pub fn is_done(&self, sha256: &str) -> Result<bool> {
        Ok(done_file(&self.conn, sha256)?.is_some())
    }

    /// The distinct segments seen so far (for the segment bound after a restart).
    pub fn known_segments(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT segment FROM windows WHERE segment != ?1")?;
        let rows = stmt.query_map([ALL_SEGMENTS], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    pub fn summary(&self) -> Result<Summary> {
        summary(&self.conn)
    }

    // --- Re-distillation: the distillation buffer and jobs (crate::redistill) ---

    /// Applies the distillation buffer's retention policy to `teacher_samples` (their inputs
    /// go with them); returns how many samples were deleted.
    pub fn prune_teacher_samples(
        &mut self,
        policy: &crate::redistill::BufferPolicy,
    ) -> Result<usize> {
        let count: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM teacher_samples", [], |r| r.get(0))?;
        if count as usize <= policy.max_samples {
            return Ok(0);
        }
        let entries = {
            let mut stmt = self.conn.prepare(
                "SELECT seq, disagreement, COALESCE(kl, total_variation, cosine_distance, abs_error)
                 FROM teacher_samples ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(crate::redistill::BufferEntry {
                    seq: r.get(0)?,
                    disagreement: r.get::<_, Option<i64>>(1)?.map(|d| d != 0),
                    divergence: r.get(2)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let doomed = crate::redistill::buffer::to_delete(&entries, policy);
        let tx = write_transaction(&mut self.conn)?;
        {
            let mut del = tx.prepare_cached("DELETE FROM teacher_samples WHERE seq = ?1")?;
            for seq in &doomed {
                del.execute([seq])?;
            }
        }
        tx.commit()?;
        Ok(doomed.len())
    }

    /// Queues a re-distillation job unless one is queued or running, or the last one started
    /// less than the back-off's interval ago (unless `force`): `min_interval`, doubled for each
    /// further job in the current failure streak, up to `max_backoff`.
    pub fn enqueue_redistill_job(
        &mut self,
        request: &JobRequest,
        backoff: &crate::redistill::streak::Backoff,
        force: bool,
        now_ms: i64,
    ) -> Result<Enqueued> {
        let tx = write_transaction(&mut self.conn)?;
        let active: Option<i64> = tx
            .query_row(
                "SELECT id FROM redistill_jobs WHERE status IN ('queued', 'running') ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = active {
            return Ok(Enqueued::Busy { job: id });
        }
        let last: Option<(i64, i64)> = tx
            .query_row(
                "SELECT id, COALESCE(started_at, requested_at) FROM redistill_jobs
                 ORDER BY COALESCE(started_at, requested_at) DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, at)) = last
            && !force
        {
            let failures = consecutive_failures(&tx)?;
            let next_allowed_ms = backoff.next_allowed_ms(at, failures);
            if now_ms < next_allowed_ms {
                return Ok(Enqueued::TooSoon {
                    last_job: id,
                    failures,
                    next_allowed_ms,
                });
            }
        }
        tx.execute(
            "INSERT INTO redistill_jobs (status, trigger, reason, action_id, requested_at, updated_at)
             VALUES ('queued', ?1, ?2, ?3, ?4, ?4)",
            params![request.trigger, request.reason, request.action_id, now_ms],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Enqueued::Queued { job: id })
    }

    /// Reads the jobs since the last success and the latest announced failure streak, lets
    /// `decide` say what to announce, and writes it in the same transaction: each notice's
    /// `redistill_failure_alerts` change and its outbox rows (one per receiver). A notice whose
    /// change was already made (by another process) writes nothing. Returns the receivers that
    /// got a notification.
    pub fn announce_redistill_failures(
        &mut self,
        now_ms: i64,
        decide: impl FnOnce(&FailureState) -> Vec<FailureNotice>,
    ) -> Result<Vec<String>> {
        let tx = write_transaction(&mut self.conn)?;
        let last_success: Option<i64> = tx.query_row(
            "SELECT MAX(id) FROM redistill_jobs WHERE status = 'succeeded'",
            [],
            |r| r.get(0),
        )?;
        let finished = {
            let mut stmt = tx.prepare(
                "SELECT id, status, COALESCE(started_at, requested_at), COALESCE(detail, ''), dir
                 FROM redistill_jobs
                 WHERE status IN ('succeeded', 'failed', 'timed_out') AND id >= ?1
                 ORDER BY id",
            )?;
            let rows = stmt.query_map([last_success.unwrap_or(0)], |r| {
                Ok(FinishedJob {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    started_at: r.get(2)?,
                    detail: r.get(3)?,
                    dir: r.get(4)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let alerted = tx
            .query_row(
                "SELECT first_job, last_job, failures, alerted_at, resolved_job
                 FROM redistill_failure_alerts ORDER BY first_job DESC LIMIT 1",
                [],
                |r| {
                    Ok(FailureAlertRow {
                        first_job: r.get(0)?,
                        last_job: r.get(1)?,
                        failures: r.get(2)?,
                        alerted_at: r.get(3)?,
                        resolved_job: r.get(4)?,
                    })
                },
            )
            .optional()?;
        let notices = decide(&FailureState {
            finished,
            last_success,
            alerted,
        });
        let mut receivers: Vec<String> = Vec::new();
        for notice in &notices {
            let (changed, kind, dedup_key, alert_id, payload, to) = match notice {
                FailureNotice::Failing {
                    first_job,
                    last_job,
                    failures,
                    dedup_key,
                    alert_id,
                    payload,
                    receivers,
                } => (
                    tx.execute(
                        "INSERT INTO redistill_failure_alerts (first_job, last_job, failures, alerted_at)
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (first_job) DO NOTHING",
                        params![first_job, last_job, failures, now_ms],
                    )?,
                    "firing",
                    dedup_key,
                    alert_id,
                    payload,
                    receivers,
                ),
                FailureNotice::Resolved {
                    first_job,
                    by_job,
                    dedup_key,
                    alert_id,
                    payload,
                    receivers,
                } => (
                    tx.execute(
                        "UPDATE redistill_failure_alerts SET resolved_job = ?2, resolved_at = ?3
                         WHERE first_job = ?1 AND resolved_job IS NULL",
                        params![first_job, by_job, now_ms],
                    )?,
                    "resolved",
                    dedup_key,
                    alert_id,
                    payload,
                    receivers,
                ),
            };
            if changed == 0 {
                continue;
            }
            let mut ins = tx.prepare_cached(
                "INSERT INTO alert_outbox (dedup_key, alert_id, receiver, rule, kind, payload,
                                           created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (dedup_key, receiver) DO NOTHING",
            )?;
            for receiver in to {
                ins.execute(params![
                    dedup_key,
                    alert_id,
                    receiver,
                    crate::redistill::streak::RULE,
                    kind,
                    payload,
                    now_ms
                ])?;
                if !receivers.contains(receiver) {
                    receivers.push(receiver.clone());
                }
            }
        }
        tx.commit()?;
        Ok(receivers)
    }

    /// Moves a queued job to running under this process; false when it is no longer queued.
    pub fn start_redistill_job(
        &mut self,
        job: i64,
        owner_pid: u32,
        dir: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE redistill_jobs SET status = 'running', owner_pid = ?2, dir = ?3,
                 started_at = ?4, updated_at = ?4
             WHERE id = ?1 AND status = 'queued'",
            params![job, owner_pid, dir, now_ms],
        )?;
        Ok(n == 1)
    }

    /// Records the exported dataset and the output the command is asked to write.
    pub fn note_redistill_dataset(
        &mut self,
        job: i64,
        records: usize,
        holdout: usize,
        output: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE redistill_jobs SET records = ?2, holdout = ?3, output = ?4, updated_at = ?5
             WHERE id = ?1",
            params![job, records as i64, holdout as i64, output, now_ms],
        )?;
        Ok(())
    }

    /// Records the pid of the job's command.
    pub fn note_redistill_pid(&mut self, job: i64, pid: u32, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE redistill_jobs SET pid = ?2, updated_at = ?3 WHERE id = ?1",
            params![job, pid, now_ms],
        )?;
        Ok(())
    }

    /// Ends a job (`succeeded`, `failed` or `timed_out`) with the reason in words, and moves the
    /// alert action that asked for it (if any) to `done` or `failed`.
    pub fn finish_redistill_job(
        &mut self,
        job: i64,
        status: &str,
        exit_code: Option<i32>,
        detail: &str,
        now_ms: i64,
    ) -> Result<()> {
        let tx = write_transaction(&mut self.conn)?;
        tx.execute(
            "UPDATE redistill_jobs SET status = ?2, exit_code = COALESCE(?3, exit_code),
                 detail = ?4, finished_at = ?5, updated_at = ?5
             WHERE id = ?1",
            params![job, status, exit_code, detail, now_ms],
        )?;
        let action_status = if status == "succeeded" {
            "done"
        } else {
            "failed"
        };
        tx.execute(
            "UPDATE alert_actions SET status = ?2, detail = ?3, updated_at = ?4
             WHERE id = (SELECT action_id FROM redistill_jobs WHERE id = ?1)",
            params![
                job,
                action_status,
                format!("job {job} {status}: {detail}"),
                now_ms
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Jobs that are queued or running.
    pub fn active_redistill_jobs(&self) -> Result<Vec<JobRow>> {
        jobs(
            &self.conn,
            "WHERE status IN ('queued', 'running') ORDER BY id",
            -1,
        )
    }

    /// One job.
    pub fn redistill_job(&self, job: i64) -> Result<Option<JobRow>> {
        Ok(jobs(&self.conn, &format!("WHERE id = {job}"), 1)?.pop())
    }

    /// Re-distillation requests from alert rules not yet taken: (id, rule, alert_id, drifts).
    pub fn requested_redistill_actions(&self) -> Result<Vec<(i64, String, String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, rule, alert_id, drifts FROM alert_actions
             WHERE action = 'redistill' AND status = 'requested' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records the gate's verdict on a job's candidate.
    pub fn note_redistill_gate(
        &mut self,
        job: i64,
        passed: bool,
        evidence: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE redistill_jobs SET gate = ?2, evidence = ?3, updated_at = ?4 WHERE id = ?1",
            params![
                job,
                if passed { "passed" } else { "rejected" },
                evidence,
                now_ms
            ],
        )?;
        Ok(())
    }

    /// The job whose candidate is `output`: (id, gate, evidence).
    pub fn job_for_output(&self, output: &str) -> Result<Option<JobVerdict>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, gate, evidence FROM redistill_jobs WHERE output = ?1 ORDER BY id DESC LIMIT 1",
                [output],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    /// Records a change of the serving student; returns its id.
    pub fn insert_promotion(&mut self, p: &Promotion, now_ms: i64) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO student_promotions (kind, promoted_at, model, sha256, previous,
                 previous_sha256, job_id, reason, evidence)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                p.kind,
                now_ms,
                p.model,
                p.sha256,
                p.previous,
                p.previous_sha256,
                p.job_id,
                p.reason,
                p.evidence
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The latest promotion that made `model` the serving student.
    pub fn promotion_of(&self, model: &str) -> Result<Option<Promotion>> {
        Ok(self
            .conn
            .query_row(
                "SELECT kind, model, sha256, previous, previous_sha256, job_id, reason, evidence
                 FROM student_promotions WHERE model = ?1 AND kind = 'promote'
                 ORDER BY id DESC LIMIT 1",
                [model],
                |r| {
                    Ok(Promotion {
                        kind: r.get(0)?,
                        model: r.get(1)?,
                        sha256: r.get(2)?,
                        previous: r.get(3)?,
                        previous_sha256: r.get(4)?,
                        job_id: r.get(5)?,
                        reason: r.get(6)?,
                        evidence: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    /// Moves an alert action on (`started`, `skipped`, `done`, `failed`) with a note.
    pub fn update_alert_action(
        &mut self,
        id: i64,
        status: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE alert_actions SET status = ?2, detail = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, status, detail, now_ms],
        )?;
        Ok(())
    }
}

/// Called with the records a labels file reached; returns the drift detectors' changes.
pub type LabelObserver<'a> = dyn FnMut(&[LabelJoin]) -> Option<(i64, MonitorDelta)> + 'a;

/// A label joined to a record it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelJoin {
    pub seq: i64,
    pub segment: String,
    pub prediction: Option<i64>,
    pub teacher_prediction: Option<i64>,
    pub label: i64,
}

/// Writes a drift monitor's changes: new events, resolutions, detector states.
fn write_delta(
    tx: &Transaction<'_>,
    version: i64,
    delta: &MonitorDelta,
    now_ms: i64,
) -> Result<()> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO drift_events (signal, segment, detector, detected_at, detected_at_record,
            estimated_change_record, statistic, threshold, baseline_value, current_value, current_low,
            current_high, p_value, effect_size, baseline_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for e in &delta.events {
        ins.execute(params![
            e.signal,
            e.segment,
            e.detector,
            e.detected_at_ms,
            e.detected_at_record,
            e.estimated_change_record,
            finite(e.statistic),
            finite(e.threshold),
            e.baseline_value.map(finite),
            e.current_value.map(finite),
            e.current_low.map(finite),
            e.current_high.map(finite),
            e.p_value.map(finite),
            e.effect_size.map(finite),
            version,
        ])?;
    }
    let mut resolve = tx.prepare_cached(
        "UPDATE drift_events SET resolved_at = ?4
         WHERE signal = ?1 AND segment = ?2 AND detector = ?3 AND resolved_at IS NULL",
    )?;
    for (signal, segment, detector) in &delta.resolved {
        resolve.execute(params![signal, segment, detector, now_ms])?;
    }
    let mut state = tx.prepare_cached(
        "INSERT INTO detector_state (signal, segment, detector, baseline_version, samples, statistic,
            threshold, state, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (signal, segment, detector) DO UPDATE SET baseline_version = excluded.baseline_version,
            samples = excluded.samples, statistic = excluded.statistic, threshold = excluded.threshold,
            state = excluded.state, updated_at = excluded.updated_at",
    )?;
    for ((signal, segment, detector), row) in &delta.states {
        state.execute(params![
            signal,
            segment,
            detector,
            version,
            row.samples as i64,
            finite(row.statistic),
            finite(row.threshold),
            row.json,
            now_ms
        ])?;
    }
    Ok(())
}

/// SQLite stores NaN as NULL, which a NOT NULL column refuses: never let one through.
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// One stored baseline version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineRow {
    pub version: i64,
    pub created_at: i64,
    pub active: bool,
    pub student: String,
    pub teacher: String,
    pub records: i64,
    #[serde(skip)]
    pub profile: String,
}

/// A drift event as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftEventRow {
    pub id: i64,
    pub signal: String,
    pub segment: String,
    pub detector: String,
    pub detected_at: i64,
    pub detected_at_record: i64,
    pub estimated_change_record: Option<i64>,
    pub statistic: f64,
    pub threshold: f64,
    pub baseline_value: Option<f64>,
    pub current_value: Option<f64>,
    pub current_low: Option<f64>,
    pub current_high: Option<f64>,
    pub p_value: Option<f64>,
    pub effect_size: Option<f64>,
    pub resolved_at: Option<i64>,
}

/// A detector's current standing, for status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorRow {
    pub signal: String,
    pub segment: String,
    pub detector: String,
    pub samples: i64,
    pub statistic: f64,
    pub threshold: f64,
}

fn active_baseline(conn: &Connection) -> Result<Option<BaselineRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT version, created_at, active, student, teacher, records, profile
             FROM baselines WHERE active = 1",
        )?
        .query_row([], |r| {
            Ok(BaselineRow {
                version: r.get(0)?,
                created_at: r.get(1)?,
                active: r.get::<_, i64>(2)? == 1,
                student: r.get(3)?,
                teacher: r.get(4)?,
                records: r.get(5)?,
                profile: r.get(6)?,
            })
        })
        .optional()?)
}

fn recent_events(conn: &Connection, limit: i64) -> Result<Vec<DriftEventRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, signal, segment, detector, detected_at, detected_at_record, estimated_change_record,
                statistic, threshold, baseline_value, current_value, current_low, current_high, p_value,
                effect_size, resolved_at
         FROM drift_events ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(DriftEventRow {
            id: r.get(0)?,
            signal: r.get(1)?,
            segment: r.get(2)?,
            detector: r.get(3)?,
            detected_at: r.get(4)?,
            detected_at_record: r.get(5)?,
            estimated_change_record: r.get(6)?,
            statistic: r.get(7)?,
            threshold: r.get(8)?,
            baseline_value: r.get(9)?,
            current_value: r.get(10)?,
            current_low: r.get(11)?,
            current_high: r.get(12)?,
            p_value: r.get(13)?,
            effect_size: r.get(14)?,
            resolved_at: r.get(15)?,
        })
    })?;
    let mut out: Vec<DriftEventRow> = rows.collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

fn detectors(conn: &Connection) -> Result<Vec<DetectorRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.signal, d.segment, d.detector, d.samples, d.statistic, d.threshold
         FROM detector_state d JOIN baselines b ON b.version = d.baseline_version AND b.active = 1
         WHERE d.detector NOT IN ('window')
         ORDER BY d.signal, d.segment, d.detector",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DetectorRow {
            signal: r.get(0)?,
            segment: r.get(1)?,
            detector: r.get(2)?,
            samples: r.get(3)?,
            statistic: r.get(4)?,
            threshold: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A read-only connection for readers beside the running writer.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        Ok(Reader { conn })
    }

    pub fn is_done(&self, sha256: &str) -> Result<bool> {
        Ok(done_file(&self.conn, sha256)?.is_some())
    }

    pub fn summary(&self) -> Result<Summary> {
        summary(&self.conn)
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn active_baseline(&self) -> Result<Option<BaselineRow>> {
        active_baseline(&self.conn)
    }

    /// The latest `limit` drift events, oldest first.
    pub fn recent_events(&self, limit: i64) -> Result<Vec<DriftEventRow>> {
        recent_events(&self.conn, limit)
    }

    /// Every detector of the active baseline with its statistic and threshold.
    pub fn detectors(&self) -> Result<Vec<DetectorRow>> {
        detectors(&self.conn)
    }

    /// Drift events not yet resolved.
    pub fn open_events(&self) -> Result<Vec<DriftEventRow>> {
        Ok(recent_events(&self.conn, i64::MAX)?
            .into_iter()
            .filter(|e| e.resolved_at.is_none())
            .collect())
    }

    // --- Queries for /metrics, the JSON API, the dashboard and `sensei report`. ---

    /// Whether a table exists (tables of later migrations, read before they are applied).
    pub fn table_exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([name])?)
    }

    /// `window_stats` rows, oldest first: one segment (or all when `None`), windows starting at
    /// or after `since_ms`, at most the latest `limit`.
    pub fn windows(
        &self,
        segment: Option<&str>,
        since_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<WindowRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT * FROM (
                SELECT start, segment, records, teacher_samples, skipped_budget, skipped_queue,
                       mean_confidence, mean_entropy, mean_latency_us, disagreement_rate, mean_kl,
                       mean_total_variation, mean_attention_kl, mean_teacher_latency_us
                FROM window_stats
                WHERE (?1 IS NULL OR segment = ?1) AND start >= ?2
                ORDER BY start DESC, segment LIMIT ?3)
             ORDER BY start, segment",
        )?;
        let rows = stmt.query_map(
            params![segment, since_ms.unwrap_or(i64::MIN), limit],
            window_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The latest window with teacher samples of every segment (what "now" looks like).
    pub fn latest_windows(&self) -> Result<Vec<WindowRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT w.start, w.segment, w.records, w.teacher_samples, w.skipped_budget,
                    w.skipped_queue, w.mean_confidence, w.mean_entropy, w.mean_latency_us,
                    w.disagreement_rate, w.mean_kl, w.mean_total_variation, w.mean_attention_kl,
                    w.mean_teacher_latency_us
             FROM window_stats w
             JOIN (SELECT segment, MAX(start) AS start FROM windows WHERE teacher_samples > 0
                   GROUP BY segment) l ON l.segment = w.segment AND l.start = w.start
             ORDER BY w.segment",
        )?;
        let rows = stmt.query_map([], window_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drift events per signal and segment: all, and those not yet resolved.
    pub fn drift_event_counts(&self) -> Result<Vec<DriftEventCount>> {
        if !self.table_exists("drift_events")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT signal, segment, COUNT(*), SUM(resolved_at IS NULL)
             FROM drift_events GROUP BY signal, segment ORDER BY signal, segment",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DriftEventCount {
                signal: r.get(0)?,
                segment: r.get(1)?,
                total: r.get(2)?,
                open: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drift events detected at or after `since_ms`, newest first, at most `limit`.
    pub fn drift_events_since(&self, since_ms: i64, limit: i64) -> Result<Vec<DriftEventRow>> {
        if !self.table_exists("drift_events")? {
            return Ok(Vec::new());
        }
        let mut events = self.recent_events(limit.max(0))?;
        events.retain(|e| e.detected_at >= since_ms);
        events.sort_by_key(|e| std::cmp::Reverse(e.id));
        Ok(events)
    }

    /// Alerts firing and the outbox backlog, once the alert tables exist (`None` before).
    pub fn alert_counts(&self) -> Option<AlertCounts> {
        if !self.table_exists("alert_state").ok()? {
            return None;
        }
        let firing = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM alert_state WHERE status = 'firing'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        let outbox_backlog = if self.table_exists("alert_outbox").ok()? {
            self.conn
                .query_row(
                    "SELECT COUNT(*) FROM alert_outbox WHERE status = 'pending'",
                    [],
                    |r| r.get(0),
                )
                .ok()
        } else {
            None
        };
        Some(AlertCounts {
            firing,
            outbox_backlog,
        })
    }

    /// Rows of a table added by a later migration (alerts, re-distillation jobs), newest first,
    /// as JSON objects; empty while the table does not exist.
    pub fn recent_rows(&self, table: &str, order_by: &str, limit: i64) -> Vec<serde_json::Value> {
        let known = matches!(table, "alert_state" | "alert_actions" | "redistill_jobs")
            && order_by
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !known || !self.table_exists(table).unwrap_or(false) {
            return Vec::new();
        }
        let sql = format!("SELECT * FROM {table} ORDER BY {order_by} DESC LIMIT ?1");
        let Ok(mut stmt) = self.conn.prepare(&sql) else {
            return Vec::new();
        };
        let names: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let rows = stmt.query_map([limit], |r| {
            let mut obj = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                use rusqlite::types::ValueRef;
                let v = match r.get_ref(i)? {
                    ValueRef::Null | ValueRef::Blob(_) => serde_json::Value::Null,
                    ValueRef::Integer(n) => n.into(),
                    ValueRef::Real(x) => serde_json::Number::from_f64(x)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                };
                obj.insert(name.clone(), v);
            }
            Ok(serde_json::Value::Object(obj))
        });
        match rows {
            Ok(rows) => rows.filter_map(|r| r.ok()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The model pairs that answered teacher samples, with their time span (newest first).
    pub fn model_versions(&self) -> Result<Vec<ModelVersion>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT student, teacher, COUNT(*), MIN(ts), MAX(ts), AVG(teacher_latency_us)
             FROM teacher_samples GROUP BY student, teacher ORDER BY MAX(ts) DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ModelVersion {
                student: r.get(0)?,
                teacher: r.get(1)?,
                teacher_samples: r.get(2)?,
                first_ts: r.get(3)?,
                last_ts: r.get(4)?,
                mean_teacher_latency_us: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The shadow models of the latest pipeline start, by name.
    pub fn shadow_models(&self) -> Result<Vec<ShadowModelStatus>> {
        if !self.table_exists("shadow_models")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, kind, path, sha256, size_bytes, parameters, status, detail, job_id,
                    updated_at
             FROM shadow_models ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ShadowModelStatus {
                name: r.get(0)?,
                kind: ShadowKind::parse(&r.get::<_, String>(1)?),
                path: r.get(2)?,
                sha256: r.get(3)?,
                size_bytes: r.get::<_, Option<i64>>(4)?.map(|b| b as u64),
                parameters: r.get::<_, Option<i64>>(5)?.map(|p| p as u64),
                status: r.get(6)?,
                detail: r.get(7)?,
                job_id: r.get(8)?,
                updated_at: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The shadow sums of one model version.
    pub fn shadow_totals(
        &self,
        model: &str,
        sha256: &str,
    ) -> Result<Option<crate::shadow::Totals>> {
        if !self.table_exists("shadow_totals")? {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT samples, weight, weight_sq, agreement, agreement_weight,
                        agreement_weight_sq, kl, kl_weight, attention_kl, attention_kl_weight,
                        latency_us, teacher_latency_us, first_seq, last_seq
                 FROM shadow_totals WHERE model = ?1 AND sha256 = ?2",
                [model, sha256],
                |r| {
                    Ok(crate::shadow::Totals {
                        samples: r.get(0)?,
                        weight: r.get(1)?,
                        weight_sq: r.get(2)?,
                        agreement: r.get(3)?,
                        agreement_weight: r.get(4)?,
                        agreement_weight_sq: r.get(5)?,
                        kl: r.get(6)?,
                        kl_weight: r.get(7)?,
                        attention_kl: r.get(8)?,
                        attention_kl_weight: r.get(9)?,
                        latency_us: r.get(10)?,
                        teacher_latency_us: r.get(11)?,
                        first_seq: r.get(12)?,
                        last_seq: r.get(13)?,
                    })
                },
            )
            .optional()?)
    }

    /// The serving student's shadow sums: those of `sha256` when given, otherwise the most
    /// recently updated student version. (sha256, totals).
    pub fn student_shadow_totals(
        &self,
        sha256: Option<&str>,
    ) -> Result<Option<(String, crate::shadow::Totals)>> {
        if !self.table_exists("shadow_totals")? {
            return Ok(None);
        }
        let sha: Option<String> = match sha256 {
            Some(s) => Some(s.to_string()),
            None => self
                .conn
                .query_row(
                    "SELECT sha256 FROM shadow_totals WHERE kind = 'student'
                     ORDER BY updated_at DESC, last_seq DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?,
        };
        let Some(sha) = sha else { return Ok(None) };
        Ok(self
            .shadow_totals(crate::shadow::STUDENT, &sha)?
            .map(|t| (sha, t)))
    }

    /// Mean student latency per record over all windows (µs).
    pub fn mean_student_latency_us(&self) -> Result<Option<f64>> {
        Ok(self.conn.query_row(
            "SELECT SUM(latency_us_sum) * 1.0 / NULLIF(SUM(records), 0) FROM windows WHERE segment = ?1",
            [ALL_SEGMENTS],
            |r| r.get(0),
        )?)
    }

    // --- Re-distillation (crate::redistill) ---

    /// Teacher samples answered by `teacher` (a sha256 prefix), received at or after `since_ms`,
    /// in `seq` order, with their inputs; labels include late labels.
    pub fn export_samples(
        &self,
        teacher: &str,
        since_ms: Option<i64>,
    ) -> Result<Vec<ExportSample>> {
        // One read transaction: the samples and their inputs come from one snapshot. Read in
        // separate statements, a buffer cap or retention the writer applies in between (the
        // daemon applies them at start, while its re-distillation task may be exporting) would
        // leave samples whose inputs are gone.
        let tx = self.conn.unchecked_transaction()?;
        let mut stmt = tx.prepare(
            "SELECT t.seq, t.record_id, t.ts, t.segment, t.weight, t.student,
                    COALESCE(t.label, l.label), t.output_shape, t.teacher_output, t.student_output,
                    t.attention_shape, t.teacher_attention
             FROM teacher_samples t LEFT JOIN late_labels l ON l.record_id = t.record_id
             WHERE t.teacher = ?1 AND t.ts >= ?2 ORDER BY t.seq",
        )?;
        let rows = stmt.query_map(params![teacher, since_ms.unwrap_or(i64::MIN)], |r| {
            Ok(ExportSample {
                seq: r.get(0)?,
                record_id: r.get(1)?,
                ts_ms: r.get(2)?,
                segment: r.get(3)?,
                weight: r.get(4)?,
                student: r.get(5)?,
                label: r.get(6)?,
                output_shape: r.get(7)?,
                teacher_output: r.get(8)?,
                student_output: r.get(9)?,
                attention_shape: r.get(10)?,
                teacher_attention: r.get(11)?,
                inputs: Vec::new(),
            })
        })?;
        let mut samples = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        {
            let mut inputs = tx.prepare_cached(
                "SELECT name, dtype, shape, data FROM teacher_sample_inputs WHERE seq = ?1 ORDER BY name",
            )?;
            for s in &mut samples {
                let rows = inputs.query_map([s.seq], |r| {
                    Ok(ExportInput {
                        name: r.get(0)?,
                        dtype: r.get(1)?,
                        shape: r.get(2)?,
                        data: r.get(3)?,
                    })
                })?;
                s.inputs = rows.collect::<rusqlite::Result<_>>()?;
            }
        }
        tx.commit()?;
        Ok(samples)
    }

    /// The data files of the active baseline (the lab set), if there is one.
    pub fn baseline_sources(&self) -> Result<Option<Vec<String>>> {
        let sources: Option<String> = self
            .conn
            .query_row("SELECT sources FROM baselines WHERE active = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(sources.map(|s| serde_json::from_str(&s).unwrap_or_default()))
    }

    /// The newest re-distillation jobs, newest first.
    pub fn redistill_jobs(&self, limit: i64) -> Result<Vec<JobRow>> {
        if !self.table_exists("redistill_jobs")? {
            return Ok(Vec::new());
        }
        jobs(&self.conn, "ORDER BY id DESC", limit)
    }

    /// How many rows of `table` have each value of `column` (one of the re-distillation tables:
    /// jobs by status, promotions by kind); empty while the table does not exist.
    pub fn counts_by(&self, table: CountedTable) -> Result<Vec<(String, i64)>> {
        let (table, column) = match table {
            CountedTable::JobsByStatus => ("redistill_jobs", "status"),
            CountedTable::PromotionsByKind => ("student_promotions", "kind"),
        };
        if !self.table_exists(table)? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {column}, COUNT(*) FROM {table} GROUP BY {column} ORDER BY {column}"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The tables [`Reader::counts_by`] counts.
#[derive(Debug, Clone, Copy)]
pub enum CountedTable {
    JobsByStatus,
    PromotionsByKind,
}

/// A teacher sample as the re-distillation export reads it (blobs as stored).
#[derive(Debug, Clone)]
pub struct ExportSample {
    pub seq: i64,
    pub record_id: String,
    pub ts_ms: i64,
    pub segment: String,
    pub weight: f64,
    /// The student's sha256 prefix.
    pub student: String,
    pub label: Option<i64>,
    pub output_shape: String,
    pub teacher_output: Vec<u8>,
    pub student_output: Vec<u8>,
    pub attention_shape: Option<String>,
    pub teacher_attention: Option<Vec<u8>>,
    pub inputs: Vec<ExportInput>,
}

/// One input tensor of a teacher sample.
#[derive(Debug, Clone)]
pub struct ExportInput {
    pub name: String,
    pub dtype: String,
    pub shape: String,
    pub data: Vec<u8>,
}

/// A job's id, its gate verdict and the evidence (JSON).
pub type JobVerdict = (i64, Option<String>, Option<String>);

/// A `student_promotions` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    /// `promote` or `rollback`.
    pub kind: String,
    pub model: String,
    pub sha256: String,
    pub previous: String,
    pub previous_sha256: String,
    pub job_id: Option<i64>,
    pub reason: String,
    pub evidence: Option<String>,
}

/// Who asks for a re-distillation job, and why.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// `manual`, or `alert:<rule>`.
    pub trigger: String,
    pub reason: String,
    pub action_id: Option<i64>,
}

/// What became of a job request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued {
        job: i64,
    },
    /// Another job is queued or running.
    Busy {
        job: i64,
    },
    /// The minimum interval since the last job (longer after failures) has not passed.
    TooSoon {
        last_job: i64,
        /// Jobs in a row that failed (the back-off doubles the interval for each after the
        /// first).
        failures: u32,
        next_allowed_ms: i64,
    },
}

/// Jobs that ended `failed` or `timed_out` since the last one that `succeeded`.
fn consecutive_failures(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COUNT(*) FROM redistill_jobs
         WHERE status IN ('failed', 'timed_out')
           AND id > COALESCE((SELECT MAX(id) FROM redistill_jobs WHERE status = 'succeeded'), 0)",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A job that ended, as the failure streak sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedJob {
    pub id: i64,
    /// `succeeded`, `failed` or `timed_out`.
    pub status: String,
    /// When it started (when it was requested, if it never started).
    pub started_at: i64,
    pub detail: String,
    /// The job's directory (its `job.log` is there).
    pub dir: Option<String>,
}

/// A `redistill_failure_alerts` row: a failure streak that was announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureAlertRow {
    pub first_job: i64,
    pub last_job: i64,
    pub failures: u32,
    pub alerted_at: i64,
    pub resolved_job: Option<i64>,
}

/// What the failure-streak announcement decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureState {
    /// Finished jobs from the last success on (or all of them), oldest first.
    pub finished: Vec<FinishedJob>,
    pub last_success: Option<i64>,
    /// The latest streak announced.
    pub alerted: Option<FailureAlertRow>,
}

/// A notification about a failure streak, with the rows that record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureNotice {
    Failing {
        first_job: i64,
        last_job: i64,
        failures: u32,
        dedup_key: String,
        alert_id: String,
        /// The notification document (JSON).
        payload: String,
        receivers: Vec<String>,
    },
    Resolved {
        first_job: i64,
        by_job: i64,
        dedup_key: String,
        alert_id: String,
        payload: String,
        receivers: Vec<String>,
    },
}

/// A `shadow_models` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowModelStatus {
    pub name: String,
    pub kind: ShadowKind,
    pub path: String,
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    pub parameters: Option<u64>,
    /// `running` or `failed`.
    pub status: String,
    pub detail: Option<String>,
    pub job_id: Option<i64>,
    pub updated_at: i64,
}

/// A `redistill_jobs` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub status: String,
    pub trigger: String,
    pub reason: String,
    pub action_id: Option<i64>,
    pub requested_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub owner_pid: Option<i64>,
    pub pid: Option<i64>,
    pub dir: Option<String>,
    pub records: Option<i64>,
    pub holdout: Option<i64>,
    pub output: Option<String>,
    pub exit_code: Option<i64>,
    pub detail: Option<String>,
    pub gate: Option<String>,
    pub evidence: Option<String>,
}

fn jobs(conn: &Connection, tail: &str, limit: i64) -> Result<Vec<JobRow>> {
    let sql = format!(
        "SELECT id, status, trigger, reason, action_id, requested_at, started_at, finished_at,
                owner_pid, pid, dir, records, holdout, output, exit_code, detail, gate, evidence
         FROM redistill_jobs {tail} LIMIT ?1"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([limit], |r| {
        Ok(JobRow {
            id: r.get(0)?,
            status: r.get(1)?,
            trigger: r.get(2)?,
            reason: r.get(3)?,
            action_id: r.get(4)?,
            requested_at: r.get(5)?,
            started_at: r.get(6)?,
            finished_at: r.get(7)?,
            owner_pid: r.get(8)?,
            pid: r.get(9)?,
            dir: r.get(10)?,
            records: r.get(11)?,
            holdout: r.get(12)?,
            output: r.get(13)?,
            exit_code: r.get(14)?,
            detail: r.get(15)?,
            gate: r.get(16)?,
            evidence: r.get(17)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A `window_stats` row (rates and means of one window and segment).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowRow {
    pub start: i64,
    pub segment: String,
    pub records: i64,
    pub teacher_samples: i64,
    pub skipped_budget: i64,
    pub skipped_queue: i64,
    pub mean_confidence: Option<f64>,
    pub mean_entropy: Option<f64>,
    pub mean_latency_us: Option<f64>,
    pub disagreement_rate: Option<f64>,
    pub mean_kl: Option<f64>,
    pub mean_total_variation: Option<f64>,
    pub mean_attention_kl: Option<f64>,
    pub mean_teacher_latency_us: Option<f64>,
}

fn window_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WindowRow> {
    Ok(WindowRow {
        start: r.get(0)?,
        segment: r.get(1)?,
        records: r.get(2)?,
        teacher_samples: r.get(3)?,
        skipped_budget: r.get(4)?,
        skipped_queue: r.get(5)?,
        mean_confidence: r.get(6)?,
        mean_entropy: r.get(7)?,
        mean_latency_us: r.get(8)?,
        disagreement_rate: r.get(9)?,
        mean_kl: r.get(10)?,
        mean_total_variation: r.get(11)?,
        mean_attention_kl: r.get(12)?,
        mean_teacher_latency_us: r.get(13)?,
    })
}

/// Drift events of one signal and segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftEventCount {
    pub signal: String,
    pub segment: String,
    pub total: i64,
    pub open: i64,
}

/// Alert state, once the alert tables exist.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertCounts {
    pub firing: i64,
    /// Notifications not yet delivered (`None` while the outbox table does not exist).
    pub outbox_backlog: Option<i64>,
}

/// A student/teacher pair seen in the teacher samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersion {
    pub student: String,
    pub teacher: String,
    pub teacher_samples: i64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub mean_teacher_latency_us: Option<f64>,
}

fn done_file(conn: &Connection, sha256: &str) -> Result<Option<(i64, String)>> {
    Ok(conn
        .prepare_cached("SELECT id, name FROM files WHERE sha256 = ?1 AND status = 'done'")?
        .query_row([sha256], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

#[allow(clippy::too_many_arguments)]
fn insert_file(
    tx: &Transaction<'_>,
    name: &str,
    sha256: &str,
    size: u64,
    kind: &str,
    status: &str,
    records: i64,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO files (name, sha256, size, kind, status, records, reason, processed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        name,
        sha256,
        size as i64,
        kind,
        status,
        records,
        reason,
        now_ms
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Record rows per `INSERT` statement, largest first: a file's rows go in as few statements as
/// these sizes allow (1000 rows take 15 × 64 + 32 + 8), because each statement costs SQLite a
/// fixed amount of work (compile-free, but bind, step, halt and reset) on top of its rows.
const RECORD_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Parameters of one `records` row in [`insert_records`]; the file's id (`?1`) and its student
/// (`?2`) are bound once per statement and shared by its rows. The rows' `seq` is not among
/// them: SQLite numbers them, see [`insert_records`].
const RECORD_COLUMNS: usize = 10;

/// `INSERT INTO records … VALUES (…), (…), …` for `rows` rows, built once per size.
fn records_insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        RECORD_CHUNKS
            .iter()
            .map(|&n| {
                let mut sql = String::from(
                    "INSERT INTO records (file_id, student, record_id, ts, segment, prediction, \
                     confidence, entropy, value, latency_us, sampled, label) VALUES ",
                );
                for row in 0..n {
                    if row > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str("(?1, ?2");
                    for col in 0..RECORD_COLUMNS {
                        sql.push_str(&format!(", ?{}", 3 + row * RECORD_COLUMNS + col));
                    }
                    sql.push(')');
                }
                sql
            })
            .collect()
    });
    let at = RECORD_CHUNKS
        .iter()
        .position(|&n| n == rows)
        .expect("rows is one of RECORD_CHUNKS");
    &all[at]
}

/// Inserts a file's record rows. SQLite numbers them itself, which spares it a search of the
/// table for each row: the next number of an `AUTOINCREMENT` key is the one after the largest
/// ever used, which is `file.first_seq` ([`Store::next_seq`]) when this is the only writer. The
/// last number given is checked against it, and a mismatch fails the file's transaction.
fn insert_records(tx: &Transaction<'_>, file: &FileCommit, file_id: i64) -> Result<()> {
    let mut rest: &[RecordRow] = &file.records;
    for &chunk in &RECORD_CHUNKS {
        if rest.len() < chunk {
            continue;
        }
        let mut stmt = tx.prepare_cached(records_insert_sql(chunk))?;
        stmt.raw_bind_parameter(1, file_id)?;
        stmt.raw_bind_parameter(2, &file.student)?;
        while rest.len() >= chunk {
            let (rows, tail) = rest.split_at(chunk);
            for (j, r) in rows.iter().enumerate() {
                let at = 2 + j * RECORD_COLUMNS;
                stmt.raw_bind_parameter(at + 1, &r.record_id)?;
                stmt.raw_bind_parameter(at + 2, r.ts_ms)?;
                stmt.raw_bind_parameter(at + 3, &r.segment)?;
                stmt.raw_bind_parameter(at + 4, r.prediction)?;
                stmt.raw_bind_parameter(at + 5, r.confidence)?;
                stmt.raw_bind_parameter(at + 6, r.entropy)?;
                stmt.raw_bind_parameter(at + 7, r.value)?;
                stmt.raw_bind_parameter(at + 8, r.latency_us)?;
                stmt.raw_bind_parameter(at + 9, r.sampled)?;
                stmt.raw_bind_parameter(at + 10, r.label)?;
            }
            stmt.raw_execute()?;
            rest = tail;
        }
    }
    let count = file.records.len() as i64;
    let last = tx.last_insert_rowid();
    if count > 0 && last != file.first_seq + count - 1 {
        return Err(StoreError::Sequence {
            expected: file.first_seq,
            got: last - count + 1,
        });
    }
    Ok(())
}

/// A file's window sums by window start, then segment: found without allocating a key per
/// record (a window holds one entry per segment seen, a bounded number).
#[derive(Default)]
struct FileWindows {
    by_start: BTreeMap<i64, Vec<(String, WindowSums)>>,
}

impl FileWindows {
    fn sums(&mut self, start: i64, segment: &str) -> &mut WindowSums {
        let segments = self.by_start.entry(start).or_default();
        let at = match segments.iter().position(|(s, _)| s == segment) {
            Some(at) => at,
            None => {
                segments.push((segment.to_string(), WindowSums::default()));
                segments.len() - 1
            }
        };
        &mut segments[at].1
    }

    fn into_sorted(self) -> BTreeMap<(i64, String), WindowSums> {
        self.by_start
            .into_iter()
            .flat_map(|(start, segments)| segments.into_iter().map(move |(s, w)| ((start, s), w)))
            .collect()
    }
}

fn upsert_windows(
    tx: &Transaction<'_>,
    windows: &BTreeMap<(i64, String), WindowSums>,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO windows (start, segment, records, confidence_sum, entropy_sum, latency_us_sum,
            teacher_samples, skipped_budget, skipped_queue, weight_sum, disagreement_wsum, kl_wsum,
            total_variation_wsum, attention_kl_wsum, attention_kl_weight, cosine_distance_wsum,
            abs_error_wsum, teacher_latency_us_sum, weight_sq_sum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
         ON CONFLICT (start, segment) DO UPDATE SET
            records = records + excluded.records,
            confidence_sum = confidence_sum + excluded.confidence_sum,
            entropy_sum = entropy_sum + excluded.entropy_sum,
            latency_us_sum = latency_us_sum + excluded.latency_us_sum,
            teacher_samples = teacher_samples + excluded.teacher_samples,
            skipped_budget = skipped_budget + excluded.skipped_budget,
            skipped_queue = skipped_queue + excluded.skipped_queue,
            weight_sum = weight_sum + excluded.weight_sum,
            disagreement_wsum = disagreement_wsum + excluded.disagreement_wsum,
            kl_wsum = kl_wsum + excluded.kl_wsum,
            total_variation_wsum = total_variation_wsum + excluded.total_variation_wsum,
            attention_kl_wsum = attention_kl_wsum + excluded.attention_kl_wsum,
            attention_kl_weight = attention_kl_weight + excluded.attention_kl_weight,
            cosine_distance_wsum = cosine_distance_wsum + excluded.cosine_distance_wsum,
            abs_error_wsum = abs_error_wsum + excluded.abs_error_wsum,
            teacher_latency_us_sum = teacher_latency_us_sum + excluded.teacher_latency_us_sum,
            weight_sq_sum = weight_sq_sum + excluded.weight_sq_sum",
    )?;
    for ((start, segment), w) in windows {
        stmt.execute(params![
            start,
            segment,
            w.records,
            w.confidence,
            w.entropy,
            w.latency_us,
            w.teacher_samples,
            w.skipped_budget,
            w.skipped_queue,
            w.weight,
            w.disagreement,
            w.kl,
            w.total_variation,
            w.attention_kl,
            w.attention_kl_weight,
            w.cosine_distance,
            w.abs_error,
            w.teacher_latency_us,
            w.weight_sq,
        ])?;
    }
    Ok(())
}

/// Totals for `sensei status`, `replay` and `demo`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub files_done: i64,
    pub files_quarantined: i64,
    pub files_duplicate: i64,
    pub records: i64,
    pub teacher_samples: i64,
    pub skipped_budget: i64,
    pub skipped_queue: i64,
    pub segments: Vec<SegmentSummary>,
}

/// Teacher-comparison totals of one segment (or `*` for all).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SegmentSummary {
    pub segment: String,
    pub records: i64,
    pub teacher_samples: i64,
    /// Sum of the samples' inverse-probability weights.
    pub weight_sum: f64,
    /// Sum of squared weights (for the effective sample size of weighted estimates).
    pub weight_sq_sum: f64,
    /// Weighted disagreement rate (classification).
    pub disagreement: Option<f64>,
    pub kl_mean: Option<f64>,
    pub attention_kl_mean: Option<f64>,
    pub mean_confidence: Option<f64>,
}

fn summary(conn: &Connection) -> Result<Summary> {
    let mut s = Summary::default();
    {
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM files GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (status, n) = row?;
            match status.as_str() {
                "done" => s.files_done = n,
                "quarantined" => s.files_quarantined = n,
                "duplicate" => s.files_duplicate = n,
                _ => {}
            }
        }
    }
    // Totals come from the window sums, which retention never deletes.
    let (records, samples, budget, queue): (i64, i64, i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(records), 0), COALESCE(SUM(teacher_samples), 0),
                COALESCE(SUM(skipped_budget), 0), COALESCE(SUM(skipped_queue), 0)
         FROM windows WHERE segment = ?1",
        [ALL_SEGMENTS],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    s.records = records;
    s.teacher_samples = samples;
    s.skipped_budget = budget;
    s.skipped_queue = queue;
    let mut stmt = conn.prepare(
        "SELECT w.segment, SUM(w.records), SUM(w.teacher_samples), SUM(w.weight_sum),
                SUM(w.disagreement_wsum) / NULLIF(SUM(w.weight_sum), 0),
                SUM(w.kl_wsum) / NULLIF(SUM(w.weight_sum), 0),
                SUM(w.attention_kl_wsum) / NULLIF(SUM(w.attention_kl_weight), 0),
                SUM(w.confidence_sum) / NULLIF(SUM(w.records), 0),
                SUM(w.weight_sq_sum)
         FROM windows w GROUP BY w.segment ORDER BY w.segment",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SegmentSummary {
            segment: r.get(0)?,
            records: r.get(1)?,
            teacher_samples: r.get(2)?,
            weight_sum: r.get(3)?,
            disagreement: r.get(4)?,
            kl_mean: r.get(5)?,
            attention_kl_mean: r.get(6)?,
            mean_confidence: r.get(7)?,
            weight_sq_sum: r.get::<_, Option<f64>>(8)?.unwrap_or(0.0),
        })
    })?;
    for row in rows {
        s.segments.push(row?);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, segment: &str, ts_ms: i64, teacher: Option<TeacherRow>) -> RecordRow {
        RecordRow {
            features: Vec::new(),
            record_id: id.into(),
            ts_ms,
            segment: segment.into(),
            prediction: Some(1),
            confidence: Some(0.9),
            entropy: Some(0.2),
            value: None,
            latency_us: 100,
            sampled: if teacher.is_some() { 1 } else { 0 },
            label: None,
            teacher,
        }
    }

    fn sample(disagree: bool, weight: f64) -> TeacherRow {
        TeacherRow {
            weight,
            teacher_prediction: Some(if disagree { 0 } else { 1 }),
            teacher_confidence: Some(0.8),
            comparison: Comparison {
                disagreement: Some(disagree),
                kl: Some(0.5),
                total_variation: Some(0.1),
                attention_kl: Some(0.2),
                ..Comparison::default()
            },
            latency_us: 1000,
            output_shape: vec![2],
            teacher_output: vec![0.1, 0.9],
            student_output: vec![0.2, 0.8],
            teacher_attention: None,
            inputs: vec![("x".into(), Tensor::f32(vec![2], vec![1.0, 2.0]))],
            shadow: Vec::new(),
        }
    }

    /// Commits with the next free sequence numbers, as the writer does.
    fn commit(
        store: &mut Store,
        mut file: FileCommit,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<CommitOutcome> {
        file.first_seq = store.next_seq()?;
        store.commit_file(&file, window_ms, now_ms, None)
    }

    fn file(name: &str, sha: &str, records: Vec<RecordRow>) -> FileCommit {
        FileCommit {
            first_seq: 0,
            name: name.into(),
            sha256: sha.into(),
            size: 10,
            kind: "jsonl",
            student: "s".into(),
            teacher: "t".into(),
            records,
        }
    }

    /// Records in the database file itself, without its write-ahead log: a copy of the file
    /// alone, opened on its own.
    fn records_in_main_file(path: &Path) -> i64 {
        let copy = path.with_file_name("copy.db");
        std::fs::copy(path, &copy).unwrap();
        let conn = Connection::open(&copy).unwrap();
        let n = conn
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
            .unwrap();
        drop(conn);
        std::fs::remove_file(&copy).unwrap();
        n
    }

    /// A writer adding more than `PASS_PAGES` per interval brings passes closer, down to a
    /// sixteenth of the interval; a slower or idle writer lets them drift back to the interval.
    #[test]
    fn checkpoint_passes_come_sooner_while_the_log_grows_fast_and_relax_when_it_does_not() {
        let every = Duration::from_secs(1);
        let mut wait = every;
        let mut waits = Vec::new();
        for _ in 0..6 {
            wait = next_wait(wait, every, false, PASS_PAGES + 1);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [500, 250, 125, 62, 62, 62]);
        // Between a quarter and all of PASS_PAGES per pass: the pace holds.
        assert_eq!(next_wait(wait, every, false, PASS_PAGES), wait);
        assert_eq!(next_wait(wait, every, false, PASS_PAGES / 4), wait);
        // A big log the writer has not added to since the last pass is no reason to hurry.
        assert_eq!(next_wait(wait, every, true, 3 * PASS_PAGES), wait * 2);
        let mut waits = Vec::new();
        for _ in 0..6 {
            wait = next_wait(wait, every, false, PASS_PAGES / 4 - 1);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [125, 250, 500, 1000, 1000, 1000]);
    }

    /// A store in `dir` whose background checkpointer runs only when asked: its interval
    /// never comes during a test.
    fn checkpointing_when_asked(dir: &Path) -> (PathBuf, Store) {
        let path = dir.join("s.db");
        let mut store = Store::open(&path).unwrap();
        store
            .checkpoint_in_background(Duration::from_secs(3600))
            .unwrap();
        (path, store)
    }

    /// Frames a pass cannot copy (here a reader's snapshot holds them back) are copied by the
    /// writer after its next commit, once the reader is gone.
    #[test]
    fn frames_a_pass_leaves_behind_are_copied_by_the_writer_after_its_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = checkpointing_when_asked(dir.path());
        let one = |name: &str| file(name, name, vec![record(name, "line=A", 0, None)]);
        commit(&mut store, one("a"), 60_000, 0).unwrap();
        store.background_checkpoint_now().unwrap().unwrap();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 1);
        commit(&mut store, one("b"), 60_000, 0).unwrap();
        let pass = store.background_checkpoint_now().unwrap().unwrap();
        assert!(pass.checkpointed_pages < pass.log_pages, "{pass:?}");
        assert_eq!(records_in_main_file(&path), 1);
        reader.execute_batch("COMMIT").unwrap();
        commit(&mut store, one("c"), 60_000, 0).unwrap();
        assert_eq!(
            records_in_main_file(&path),
            3,
            "the writer left the remainder"
        );
    }

    #[test]
    fn the_background_checkpointer_and_not_the_writer_copies_the_log_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut store) = checkpointing_when_asked(dir.path());
        // The schema goes into the file first; the writer copies the remainder, its
        // first file, after that file's commit.
        store.background_checkpoint_now().unwrap().unwrap();
        let rows = vec![record("first", "line=A", 0, None)];
        commit(&mut store, file("first.jsonl", "first", rows), 60_000, 0).unwrap();
        assert_eq!(records_in_main_file(&path), 1);
        // Past SQLite's default threshold of 1000 pages, where the writer used to checkpoint
        // by itself, and short of the backstop.
        for f in 0..6 {
            let rows = (0..10_000)
                .map(|i| record(&format!("{f}-{i:05}"), "line=A", i, None))
                .collect();
            commit(
                &mut store,
                file(&format!("{f}.jsonl"), &format!("{f}"), rows),
                60_000,
                0,
            )
            .unwrap();
        }
        assert_eq!(records_in_main_file(&path), 1, "the writer checkpointed");

        let done = store.background_checkpoint_now().unwrap().unwrap();
        assert!(!done.busy, "{done:?}");
        assert!(
            (1000..BACKSTOP_CHECKPOINT_PAGES).contains(&done.log_pages),
            "{done:?}"
        );
        assert_eq!(done.checkpointed_pages, done.log_pages);
        assert_eq!(records_in_main_file(&path), 60_001);

        // The writer copies what the pass left behind after its next commit, and its
        // transaction after that starts the log over: the log holds that file alone.
        for f in 6..8 {
            let rows = vec![record(&format!("{f}"), "line=A", 0, None)];
            commit(
                &mut store,
                file(&format!("{f}.jsonl"), &format!("{f}"), rows),
                60_000,
                0,
            )
            .unwrap();
        }
        let again = store.background_checkpoint_now().unwrap().unwrap();
        assert!(
            again.log_pages < 50,
            "the log did not start over: {again:?}"
        );

        // Closing stops the thread; the writer, last to close, removes the log.
        drop(store);
        assert!(!dir.path().join("s.db-wal").exists());
    }

    #[test]
    fn an_in_memory_database_has_no_background_checkpointer() {
        let mut store = Store::open(Path::new(":memory:")).unwrap();
        assert!(matches!(
            store.checkpoint_in_background(Duration::from_secs(1)),
            Err(StoreError::InMemory)
        ));
        assert!(store.background_checkpoint_now().is_none());
    }

    /// Another connection takes the write lock and holds it a while, well inside the busy
    /// timeout; returns once it holds it.
    fn hold_write_lock(path: &Path) -> std::thread::JoinHandle<()> {
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        let holder = std::thread::spawn(move || {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            conn.execute_batch("COMMIT").unwrap();
        });
        locked.recv().unwrap();
        holder
    }

    #[test]
    fn registering_shadow_models_waits_for_a_write_lock_held_by_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        let model = ShadowModelRow {
            name: "lite".into(),
            kind: ShadowKind::Challenger,
            path: "/m/lite.onnx".into(),
            sha256: Some("c0ffee".into()),
            size_bytes: Some(100),
            parameters: Some(10),
            failure: None,
            job_id: None,
        };
        let holder = hold_write_lock(&path);
        let outcome = store.register_shadow_models(&[model], 1);
        holder.join().unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }

    #[test]
    fn a_commit_waits_for_a_write_lock_held_by_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        let holder = hold_write_lock(&path);
        let outcome = commit(
            &mut store,
            file("a.jsonl", "abc", vec![record("r1", "line=A", 1_000, None)]),
            60_000,
            0,
        );
        holder.join().unwrap();
        assert!(
            matches!(outcome, Ok(CommitOutcome::Committed { records: 1, .. })),
            "{outcome:?}"
        );
    }

    #[test]
    fn every_record_row_lands_once_with_its_own_values_whatever_the_file_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        // 203 = 3 × 64 + 8 + 2 + 1 rows: full chunks, then every smaller statement in turn;
        // then files of one row and of exactly one chunk.
        let mut expected = Vec::new();
        for (f, n) in [(0, 203usize), (1, 1), (2, 64)] {
            let rows: Vec<RecordRow> = (0..n)
                .map(|i| {
                    let mut r = record(
                        &format!("f{f}-{i}"),
                        &format!("k={}", i % 3),
                        i as i64,
                        None,
                    );
                    r.prediction = Some((i % 7) as i64);
                    r.latency_us = (f * 1000 + i) as i64;
                    r.label = (i % 2 == 0).then_some(i as i64);
                    r
                })
                .collect();
            let first = store.next_seq().unwrap();
            expected.extend(rows.iter().enumerate().map(|(i, r)| {
                (
                    first + i as i64,
                    r.record_id.clone(),
                    r.segment.clone(),
                    r.prediction,
                    r.latency_us,
                    r.label,
                )
            }));
            commit(
                &mut store,
                file(&format!("{f}.jsonl"), &format!("sha{f}"), rows),
                60_000,
                0,
            )
            .unwrap();
        }
        let mut stmt = store
            .conn
            .prepare("SELECT seq, record_id, segment, prediction, latency_us, label FROM records ORDER BY seq")
            .unwrap();
        type Row = (i64, String, String, Option<i64>, i64, Option<i64>);
        let stored: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(stored.len(), 268);
        assert_eq!(stored, expected);
        let s = store.summary().unwrap();
        let all = s.segments.iter().find(|x| x.segment == "*").unwrap();
        assert_eq!(all.records, 268);
        let k0 = s.segments.iter().find(|x| x.segment == "k=0").unwrap();
        assert_eq!(k0.records, 68 + 1 + 22);
    }

    #[test]
    fn synchronous_full_makes_every_commit_sync_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let mode = |s: &Store| -> i64 {
            s.conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(mode(&store), 1, "NORMAL by default");
        store
            .set_synchronous(crate::config::Synchronous::Full)
            .unwrap();
        assert_eq!(mode(&store), 2, "FULL");
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { .. })));
    }

    #[test]
    fn same_content_counts_once_and_windows_sum_per_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let a = file(
            "a.jsonl",
            "abc",
            vec![
                record("r1", "line=A", 1_000, Some(sample(true, 2.0))),
                record("r2", "line=B", 2_000, Some(sample(false, 2.0))),
                record("r3", "line=A", 3_000, None),
            ],
        );
        assert_eq!(
            commit(&mut store, a, 60_000, 0).unwrap(),
            CommitOutcome::Committed {
                file_id: 1,
                records: 3
            }
        );
        let again = file(
            "a-copy.jsonl",
            "abc",
            vec![record("r1", "line=A", 1_000, None)],
        );
        assert!(matches!(
            commit(&mut store, again, 60_000, 0).unwrap(),
            CommitOutcome::Duplicate { of_id: 1, .. }
        ));
        let s = store.summary().unwrap();
        assert_eq!(
            (
                s.files_done,
                s.files_duplicate,
                s.records,
                s.teacher_samples
            ),
            (1, 1, 3, 2)
        );
        let all = s.segments.iter().find(|x| x.segment == "*").unwrap();
        assert_eq!(all.disagreement, Some(0.5));
        assert_eq!(all.weight_sq_sum, 8.0);
        let a_seg = s.segments.iter().find(|x| x.segment == "line=A").unwrap();
        assert_eq!(
            (a_seg.records, a_seg.teacher_samples, a_seg.disagreement),
            (2, 1, Some(1.0))
        );
        assert_eq!(a_seg.weight_sq_sum, 4.0);
    }

    #[test]
    fn files_of_an_older_schema_get_their_first_seq_and_retention_finds_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            // A database of schema 7, with the records of two files and a labels file.
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for (_, sql) in &MIGRATIONS[..7] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 7).unwrap();
            tx.execute_batch(
                "INSERT INTO files (id, name, sha256, size, kind, status, records, processed_at)
                 VALUES (1, 'a', 'a', 1, 'jsonl', 'done', 2, 1000),
                        (2, 'l', 'l', 1, 'labels', 'done', 5, 1500),
                        (3, 'b', 'b', 1, 'jsonl', 'done', 3, 5000);
                 INSERT INTO records (seq, file_id, record_id, ts, segment, student, latency_us, sampled)
                 VALUES (1, 1, 'r1', 0, '', 's', 1, 0), (2, 1, 'r2', 0, '', 's', 1, 0),
                        (3, 3, 'r3', 0, '', 's', 1, 0), (4, 3, 'r4', 0, '', 's', 1, 0),
                        (5, 3, 'r5', 0, '', 's', 1, 0);",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let count = |store: &Store, sql: &str| -> i64 {
            store.conn.query_row(sql, [], |r| r.get(0)).unwrap()
        };
        let first: Vec<Option<i64>> = store
            .conn
            .prepare("SELECT first_seq FROM files ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(first, [Some(1), None, Some(3)]);
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'records_file_id'"
            ),
            0
        );
        // A file committed now records its own first_seq; retention takes the old file's
        // records only, then the next one's.
        let c = file("c.jsonl", "c", vec![record("r6", "", 0, None)]);
        commit(&mut store, c, 60_000, 9_000).unwrap();
        assert_eq!(
            count(&store, "SELECT first_seq FROM files WHERE name = 'c.jsonl'"),
            6
        );
        assert_eq!(store.apply_retention(2_000).unwrap(), 2);
        assert_eq!(store.apply_retention(6_000).unwrap(), 3);
        assert_eq!(store.apply_retention(6_000).unwrap(), 0);
        assert_eq!(count(&store, "SELECT MIN(seq) FROM records"), 6);
    }

    /// SQLite numbers a file's records from `first_seq` on; a file that expected other numbers
    /// (something else inserted records since `next_seq`) fails whole and leaves no trace.
    #[test]
    fn records_are_numbered_from_first_seq_and_a_mismatch_fails_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let count = |store: &Store, sql: &str| -> i64 {
            store.conn.query_row(sql, [], |r| r.get(0)).unwrap()
        };
        let rows = || -> Vec<RecordRow> {
            (0..150)
                .map(|i| record(&format!("r{i}"), "", 0, None))
                .collect()
        };
        commit(&mut store, file("a.jsonl", "a", rows()), 60_000, 0).unwrap();
        assert_eq!(count(&store, "SELECT MIN(seq) FROM records"), 1);
        assert_eq!(count(&store, "SELECT MAX(seq) FROM records"), 150);
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM records WHERE record_id = 'r' || (seq - 1)"
            ),
            150
        );
        let mut stale = file("b.jsonl", "b", rows());
        stale.first_seq = store.next_seq().unwrap();
        store
            .conn
            .execute(
                "INSERT INTO records (file_id, record_id, ts, segment, student, latency_us, sampled)
                 VALUES (1, 'intruder', 0, '', 's', 0, 0)",
                [],
            )
            .unwrap();
        let err = store.commit_file(&stale, 60_000, 0, None).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Sequence {
                    expected: 151,
                    got: 152
                }
            ),
            "{err}"
        );
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM files WHERE name = 'b.jsonl'"),
            0
        );
        assert_eq!(count(&store, "SELECT COUNT(*) FROM records"), 151);
    }

    #[test]
    fn retention_deletes_records_by_receipt_time_and_keeps_windows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        // An old record (ts 0) received at t=1000, a fresh one received at t=5000.
        let old = file("old.jsonl", "a", vec![record("r1", "", 0, None)]);
        commit(&mut store, old, 60_000, 1_000).unwrap();
        let new = file("new.jsonl", "b", vec![record("r2", "", 0, None)]);
        commit(&mut store, new, 60_000, 5_000).unwrap();
        // Sequence numbers are never reused, even once the rows are gone.
        assert_eq!(store.apply_retention(2_000).unwrap(), 1);
        store.conn.execute("DELETE FROM records", []).unwrap();
        assert_eq!(store.next_seq().unwrap(), 3);
        let again = file("again.jsonl", "c", vec![record("r2", "", 0, None)]);
        commit(&mut store, again, 60_000, 5_000).unwrap();
        let (left, seq): (String, i64) = store
            .conn
            .query_row("SELECT record_id, seq FROM records", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((left.as_str(), seq), ("r2", 3));
        assert_eq!(
            store.summary().unwrap().records,
            3,
            "window sums keep the history"
        );
    }

    #[test]
    fn retention_starts_at_the_oldest_record_left_and_catches_up_after_a_clock_step_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        // Received at t=1000, 3000, then 2000: the clock stepped back before the third.
        for (name, at) in [("a", 1_000), ("b", 3_000), ("c", 2_000)] {
            let rows = vec![
                record(name, "", 0, None),
                record(&format!("{name}2"), "", 0, None),
            ];
            commit(&mut store, file(name, name, rows), 60_000, at).unwrap();
        }
        let left = |store: &Store| -> Vec<String> {
            let mut stmt = store
                .conn
                .prepare("SELECT record_id FROM records ORDER BY seq")
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(store.apply_retention(1_500).unwrap(), 2);
        assert_eq!(left(&store), ["b", "b2", "c", "c2"]);
        // The oldest record left is b's (received at 3000): c, "received" at 2000, waits.
        assert_eq!(store.apply_retention(3_500).unwrap(), 2);
        assert_eq!(left(&store), ["c", "c2"]);
        assert_eq!(store.apply_retention(3_500).unwrap(), 2);
        assert!(left(&store).is_empty());
        assert_eq!(store.apply_retention(10_000).unwrap(), 0);

        // The ledger is read from the oldest record's receipt time on, not from its start.
        let plan: Vec<String> = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {RETENTION_OLD}"))
            .unwrap()
            .query_map([0], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("files_processed_at (processed_at>? AND processed_at<?)")),
            "{plan:?}"
        );
    }

    fn shadow_row(model: &str, agrees: bool) -> ShadowRow {
        ShadowRow {
            model: model.into(),
            sha256: "c0ffee".into(),
            kind: ShadowKind::Challenger,
            result: Ok(ShadowMeasure {
                comparison: Comparison {
                    disagreement: Some(!agrees),
                    kl: Some(0.25),
                    ..Comparison::default()
                },
                latency_us: 40,
            }),
        }
    }

    #[test]
    fn shadow_rows_commit_with_their_file_once_and_leave_with_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let model = |name: &str| ShadowModelRow {
            name: name.into(),
            kind: ShadowKind::Challenger,
            path: format!("/m/{name}.onnx"),
            sha256: Some("c0ffee".into()),
            size_bytes: Some(100),
            parameters: Some(10),
            failure: None,
            job_id: None,
        };
        store
            .register_shadow_models(&[model("lite"), model("gone")], 1)
            .unwrap();
        store.register_shadow_models(&[model("lite")], 2).unwrap();
        let with_shadow = |id: &str, agrees: bool| {
            let mut t = sample(false, 2.0);
            t.shadow = vec![shadow_row("lite", agrees)];
            record(id, "", 0, Some(t))
        };
        let mut failing = sample(false, 2.0);
        failing.shadow = vec![ShadowRow {
            result: Err("inference failed".into()),
            ..shadow_row("lite", true)
        }];
        let records = vec![
            with_shadow("r1", true),
            with_shadow("r2", false),
            record("r3", "", 0, None),
            with_shadow("r4", true),
        ];
        commit(&mut store, file("a.jsonl", "a", records), 60_000, 1_000).unwrap();
        // The same content again is a duplicate: nothing is counted twice.
        let again = vec![with_shadow("r1", true)];
        let outcome = commit(&mut store, file("b.jsonl", "a", again), 60_000, 2_000).unwrap();
        assert!(matches!(outcome, CommitOutcome::Duplicate { .. }));
        let count = |store: &Store, sql: &str| -> i64 {
            store.conn.query_row(sql, [], |r| r.get(0)).unwrap()
        };
        assert_eq!(count(&store, "SELECT COUNT(*) FROM shadow_samples"), 3);
        let (samples, agreement, weight, kl): (i64, f64, f64, f64) = store
            .conn
            .query_row(
                "SELECT samples, agreement, agreement_weight, kl FROM shadow_totals
                 WHERE model = 'lite'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!((samples, agreement, weight), (3, 4.0, 6.0));
        assert!((kl - 1.5).abs() < 1e-12);
        // The student's sums cover the same three records.
        assert_eq!(
            count(
                &store,
                "SELECT samples FROM shadow_totals WHERE model = 'student' AND sha256 = 's'"
            ),
            3
        );
        assert_eq!(count(&store, "SELECT COUNT(*) FROM shadow_models"), 1);

        // A failure on a later file marks the model failed, in the same commit.
        let later = vec![record("r5", "", 0, Some(failing))];
        commit(&mut store, file("c.jsonl", "c", later), 60_000, 9_000).unwrap();
        let (status, detail): (String, String) = store
            .conn
            .query_row(
                "SELECT status, detail FROM shadow_models WHERE name = 'lite'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (status.as_str(), detail.as_str()),
            ("failed", "inference failed")
        );

        // Retention takes the per-record rows with their records; the totals stay.
        store.apply_retention(5_000).unwrap();
        assert_eq!(count(&store, "SELECT COUNT(*) FROM shadow_samples"), 0);
        assert_eq!(
            count(
                &store,
                "SELECT samples FROM shadow_totals WHERE model = 'lite'"
            ),
            3
        );
    }

    #[test]
    fn late_labels_join_records_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let a = file(
            "a.jsonl",
            "abc",
            vec![record("r1", "", 0, Some(sample(false, 1.0)))],
        );
        commit(&mut store, a, 60_000, 0).unwrap();
        let out = store
            .commit_labels(
                "a.labels.jsonl",
                "def",
                5,
                &[("r1".into(), 3), ("r9".into(), 4)],
                0,
                &mut |joins| {
                    assert_eq!(joins.len(), 1);
                    assert_eq!(
                        (
                            joins[0].prediction,
                            joins[0].teacher_prediction,
                            joins[0].label
                        ),
                        (Some(1), Some(1), 3)
                    );
                    None
                },
            )
            .unwrap();
        assert_eq!(
            out,
            LabelsOutcome::Committed {
                file_id: 2,
                labels: 2,
                matched: 1
            }
        );
        let label: Option<i64> = store
            .conn
            .query_row(
                "SELECT label FROM teacher_samples WHERE record_id = 'r1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(label, Some(3));
        assert_eq!(store.pending_label("r9").unwrap(), Some(4));
    }
}
