//! The record pipeline behind ingest: the student worker (every record, batched), the teacher
//! worker (sampled records, budgeted) and the writer (the one SQLite connection).
//!
//! ```text
//! ingest ──files──▶ student ──rows──────────────────▶ writer ──▶ SQLite, then done/ or quarantine/
//!                      └──sampled (try_send)──▶ teacher ──rows──▶ ┘
//!                                                  └─(try_send)─▶ remote shadow ──rows──▶ writer
//! ```
//!
//! Channels are bounded, so a slow writer or student pushes back on ingest. The teacher's queue is
//! the exception: the student never waits for it; a sample it cannot take is counted as skipped.
//! So is the remote shadow worker's queue: the teacher never waits for it; a batch it cannot
//! take goes to the writer with the remote challengers' comparisons skipped (counted).
//! A file commits only when every one of its records has its student row and every queued teacher
//! sample has come back, in one transaction with its ledger row: a crash at any point before that
//! commit leaves the file in the inbox to be processed again, whole.
//!
//! One file per stage: [`student`] (batching and the model), [`dispatch`] (per-record
//! statistics, the sampling decision, the hand-off to the teacher), [`teacher`] (the sampled
//! records and the shadow models run here), [`shadow`] (challengers on inference servers),
//! [`writer`] (commits, detectors, retention), and [`disposal`]
//! (where a finished file goes: done/, quarantine/ with its note, or nowhere).

pub mod dispatch;
pub mod disposal;
pub mod shadow;
pub mod student;
pub mod teacher;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use crate::model::BatchOutput;
use crate::record::Record;
use crate::store::{RecordRow, TeacherRow};

pub use dispatch::Dispatcher;
pub use disposal::{FileStamp, PathNow};
pub use shadow::{RemoteShadowWorker, ShadowJob};
pub use student::{Scored, StudentWorker};
pub use teacher::{RemoteShadowQueue, TeacherJob, TeacherWorker};
pub use writer::{FileCallback, FileOutcome, Writer, observe_records};

/// What happens to a file in the inbox once sensei is done with it.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Move to this directory (`done/`).
    MoveTo(PathBuf),
    Delete,
    /// Leave the file where it is (replay of the operator's own files).
    Keep,
}

/// Paths sent into the pipeline and not yet finished, shared by ingest (which skips them when a
/// rescan finds them again) and the writer (which removes them once the file is disposed of).
pub type InFlightPaths = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>;

/// A file on its way through the pipeline.
#[derive(Debug)]
pub struct FileMeta {
    /// In-process sequence number of the file (not stored).
    pub key: u64,
    pub path: PathBuf,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub kind: &'static str,
    pub records: usize,
    pub on_done: Disposition,
    pub quarantine_dir: Option<PathBuf>,
    pub in_flight: InFlightPaths,
    /// Where the writer asks for the file to be taken again after a failed commit (the
    /// daemon's ingest loop; `None` in a replay, which reports the failure and moves on).
    pub retry: Option<Retry>,
    /// When the file was written and which file it is (labels are ordered by arrival; a file
    /// left in the inbox by a crash is told from a copy sent again).
    pub origin: crate::store::FileOrigin,
    /// The version of the file that was read (`None` when it was not read): the writer commits
    /// and moves the file only while the inbox path still holds that version.
    pub stamp: Option<FileStamp>,
    /// Segment values of its records cut to `[segments] max_value_bytes`.
    pub segment_values_cut: usize,
}

/// Asks for a file to be taken again (ingest's loop holds the other end): after a back-off once
/// its commit failed, once it is quiet when it changed after it was read, or at once when
/// another file took its name while the first was in the pipeline.
#[derive(Clone)]
pub struct Retry(Arc<dyn Fn(PathBuf, Retake) + Send + Sync>);

/// When a file handed back to ingest is taken again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retake {
    /// Its commit failed: after a back-off that grows with each failure of the file.
    AfterFailure,
    /// It changed after it was read (still being written): once it has been closed and left
    /// unmodified for the quiet time, like any file written in place.
    WhenQuiet,
    /// The name now holds another file than the one read: take that one now.
    Now,
}

impl Retry {
    pub fn new(ask: impl Fn(PathBuf, Retake) + Send + Sync + 'static) -> Retry {
        Retry(Arc::new(ask))
    }

    pub fn ask(&self, path: PathBuf, when: Retake) {
        (self.0)(path, when)
    }
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Retry")
    }
}

/// A record ready for the models: validated, with its final id, time and segment.
#[derive(Debug)]
pub struct Prepared {
    pub record_id: String,
    pub ts_ms: i64,
    pub segment: String,
    pub label: Option<i64>,
    pub record: Record,
}

/// Work for the student worker.
pub struct FileWork {
    pub meta: Arc<FileMeta>,
    pub records: Vec<Prepared>,
}

/// Messages to the writer.
pub enum WriterMsg {
    Student {
        meta: Arc<FileMeta>,
        rows: Vec<(usize, StudentRow)>,
    },
    /// The teacher's rows; a sample it did not answer carries its `records.sampled` code
    /// instead (teacher failed, teacher out of reach).
    Teacher {
        meta: Arc<FileMeta>,
        rows: Vec<(usize, Result<TeacherRow, i64>)>,
    },
    Labels {
        meta: Arc<FileMeta>,
        labels: Vec<(String, i64)>,
    },
    /// The teacher's inference server went out of reach or answered again.
    TeacherReach(crate::model::ReachChange),
    /// A file whose content the ledger already counted.
    AlreadyCounted { meta: Arc<FileMeta> },
    /// A file rejected before inference (its move to quarantine already happened).
    Quarantined { meta: Arc<FileMeta>, reason: String },
}

/// The student's result for one record, plus whether a teacher result will follow.
pub struct StudentRow {
    /// The row, or the student's failure on the record (the model's fault, not the file's).
    pub row: Result<RecordRow, String>,
    pub teacher_pending: bool,
}

/// Counters the pipeline shares with `status`, tests and the demo summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriterReport {
    pub files_committed: u64,
    pub files_quarantined: u64,
    pub files_duplicate: u64,
    pub records_committed: u64,
    /// Records left out because their id was counted before.
    pub records_duplicate: u64,
    /// Labels counted: those of label files and those the committed records carried.
    pub labels_committed: u64,
    /// Files that changed after they were read (still being written): not counted, taken again
    /// once they are quiet.
    pub files_changed: u64,
    /// Commits the database refused (disk full, locked past the busy timeout, I/O error). The
    /// file stays in the inbox; the daemon takes it again after a back-off.
    pub commit_errors: u64,
    /// The first [`QUARANTINE_LIST_MAX`] quarantined files with their reasons, in the order
    /// they were quarantined (`sensei replay` prints them; the count is `files_quarantined`).
    pub quarantined: Vec<QuarantinedFile>,
    /// Where the student's thread spent its time (filled in when the pipeline is joined).
    pub student: StudentTime,
}

/// How many quarantined files a [`WriterReport`] names; the daemon's report lives as long as
/// the daemon, so the list is bounded (the ledger and `quarantine/` hold every one).
pub const QUARANTINE_LIST_MAX: usize = 100;

/// A file the pipeline quarantined, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedFile {
    pub name: String,
    pub reason: String,
}

/// The student thread's time: how much of it went to the model. `sensei replay` prints it, so
/// that the time of a slow replay can be split into the model's and the pipeline's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StudentTime {
    pub batches: u64,
    pub records: u64,
    /// Inside `Model::run`: stacking the inputs, ONNX Runtime, copying the outputs.
    pub model: Duration,
    /// From the arrival of the first file to the hand-off of the last batch; zero before any.
    pub active: Duration,
}

impl StudentTime {
    /// The share of the active time spent in the model (0 when there was none).
    pub fn model_share(&self) -> f64 {
        if self.active.is_zero() {
            0.0
        } else {
            self.model.as_secs_f64() / self.active.as_secs_f64()
        }
    }
}

/// Rows grouped by file in arrival order, so the writer gets one message per file per batch.
struct ByFile<T>(Vec<FileRows<T>>);

/// One file's rows: (record index in the file, row).
type FileRows<T> = (Arc<FileMeta>, Vec<(usize, T)>);

impl<T> ByFile<T> {
    fn new() -> Self {
        ByFile(Vec::new())
    }

    fn push(&mut self, meta: &Arc<FileMeta>, index: usize, row: T) {
        match self.0.last_mut() {
            Some((m, rows)) if m.key == meta.key => rows.push((index, row)),
            _ => self.0.push((meta.clone(), vec![(index, row)])),
        }
    }
}

fn attention_of(out: &BatchOutput, i: usize) -> Option<(Vec<usize>, Vec<f32>)> {
    let (shape, _) = out.attention.as_ref()?;
    Some((shape.clone(), out.attention_of(i)?.to_vec()))
}

/// Bounded channel capacities. Files are big units, so few are buffered; rows are small.
pub const FILE_QUEUE: usize = 2;
pub const WRITER_QUEUE: usize = 1024;
/// Hand-offs of student batches waiting for the dispatcher (each up to about
/// `HANDOFF_RECORDS` records).
pub const SCORED_QUEUE: usize = 8;

/// The bounded channels of one pipeline.
pub struct Channels {
    pub work: (SyncSender<FileWork>, Receiver<FileWork>),
    pub scored: (SyncSender<Vec<Scored>>, Receiver<Vec<Scored>>),
    pub teacher: (SyncSender<TeacherJob>, Receiver<TeacherJob>),
    pub writer: (SyncSender<WriterMsg>, Receiver<WriterMsg>),
}

impl Channels {
    pub fn new(teacher_queue: usize) -> Channels {
        Channels {
            work: mpsc::sync_channel(FILE_QUEUE),
            scored: mpsc::sync_channel(SCORED_QUEUE),
            teacher: mpsc::sync_channel(teacher_queue.max(1)),
            writer: mpsc::sync_channel(WRITER_QUEUE),
        }
    }
}
