//! The record pipeline behind ingest: the student worker (every record, batched), the teacher
//! worker (sampled records, budgeted) and the writer (the one SQLite connection).
//!
//! ```text
//! ingest ──files──▶ student ──rows──────────────────▶ writer ──▶ SQLite, then done/ or quarantine/
//!                      └──sampled (try_send)──▶ teacher ──rows──▶ ┘
//! ```
//!
//! Channels are bounded, so a slow writer or student pushes back on ingest. The teacher's queue is
//! the exception: the student never waits for it; a sample it cannot take is counted as skipped.
//! A file commits only when every one of its records has its student row and every queued teacher
//! sample has come back, in one transaction with its ledger row: a crash at any point before that
//! commit leaves the file in the inbox to be processed again, whole.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::compare::{Comparer, attention_kl};
use crate::drift::{DriftMonitor, Observation};
use crate::model::{BatchOutput, Model};
use crate::record::Record;
use crate::sampler::{Decision, Sampler};
use crate::store::MonitorDelta;
use crate::store::{
    CommitOutcome, FileCommit, LabelJoin, LabelsOutcome, RecordRow, Store, TeacherRow,
};
use crate::time::now_ms;

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
    pub retry: Option<std::sync::mpsc::Sender<crate::ingest::IngestEvent>>,
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
    Teacher {
        meta: Arc<FileMeta>,
        rows: Vec<(usize, Option<TeacherRow>)>,
    },
    Labels {
        meta: Arc<FileMeta>,
        labels: Vec<(String, i64)>,
    },
    /// A file whose content the ledger already counted.
    AlreadyCounted { meta: Arc<FileMeta> },
    /// A file rejected before inference (its move to quarantine already happened).
    Quarantined { meta: Arc<FileMeta>, reason: String },
}

/// The student's result for one record, plus whether a teacher result will follow.
pub struct StudentRow {
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
    pub labels_committed: u64,
    /// Commits the database refused (disk full, locked past the busy timeout, I/O error). The
    /// file stays in the inbox; the daemon takes it again after a back-off.
    pub commit_errors: u64,
    /// Where the student's thread spent its time (filled in when the pipeline is joined).
    pub student: StudentTime,
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

// ---------------------------------------------------------------------------------------------
// Student worker

/// Runs the student on every record. It does nothing but batch and call ONNX Runtime: all
/// per-record work after inference happens on the [`Dispatcher`]'s thread, so the student's
/// core is spent on the model (the throughput benchmark compares it with a bare inference loop).
pub struct StudentWorker {
    pub model: Model,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A batch the student has answered, on its way to the dispatcher.
pub struct Scored {
    batch: Vec<Pending>,
    result: Result<BatchOutput, String>,
}

/// Turns student outputs into rows: per-record statistics, the sampling decision, the hand-off
/// of sampled records to the teacher, and the rows for the writer.
pub struct Dispatcher {
    pub comparer: Comparer,
    pub sampler: Sampler,
}

pub struct Pending {
    meta: Arc<FileMeta>,
    index: usize,
    prepared: Prepared,
}

impl StudentWorker {
    /// Runs until `input` is closed and drained.
    pub fn spawn(
        mut self,
        input: Receiver<FileWork>,
        output: SyncSender<Vec<Scored>>,
    ) -> std::io::Result<JoinHandle<StudentTime>> {
        std::thread::Builder::new()
            .name("student".into())
            .spawn(move || {
                let mut time = Clock::default();
                self.run(input, output, &mut time);
                time.report
            })
    }

    fn run(
        &mut self,
        input: Receiver<FileWork>,
        output: SyncSender<Vec<Scored>>,
        time: &mut Clock,
    ) {
        let mut pending: VecDeque<Pending> = VecDeque::new();
        // Answered batches not yet handed over.
        let mut ready: Vec<Scored> = Vec::new();
        let mut closed = false;
        let mut deadline = Instant::now();
        loop {
            if pending.is_empty() {
                if closed {
                    return;
                }
                match input.recv() {
                    Ok(work) => push_work(&mut pending, work),
                    Err(_) => return,
                }
                let now = Instant::now();
                time.first.get_or_insert(now);
                deadline = now + self.max_wait;
            }
            // Gather more until a full batch, the wait is over, or ingest is done.
            while !closed && pending.len() < self.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match input.recv_timeout(left) {
                    Ok(work) => push_work(&mut pending, work),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => closed = true,
                }
            }
            // Run full batches; a partial one only when its wait is over or input closed.
            while !pending.is_empty() {
                let n = top_up(&mut pending, &input, self.max_batch, &mut closed);
                if n < self.max_batch && !closed && Instant::now() < deadline && n == pending.len()
                {
                    break;
                }
                let batch: Vec<Pending> = pending.drain(..n).collect();
                let records: Vec<&Record> = batch.iter().map(|p| &p.prepared.record).collect();
                let started = Instant::now();
                let result = self.model.run(&records).map_err(|e| e.to_string());
                let elapsed = started.elapsed();
                self.metrics.batch("student", elapsed, records.len());
                time.batch(elapsed, records.len());
                drop(records);
                ready.push(Scored { batch, result });
                let answered: usize = ready.iter().map(|s| s.batch.len()).sum();
                if answered >= HANDOFF_RECORDS && !hand_over(&output, &mut ready, time) {
                    return; // the dispatcher is gone: shutting down
                }
            }
            // Nothing more to run until input comes: hand over what is answered.
            if !ready.is_empty() && !hand_over(&output, &mut ready, time) {
                return;
            }
            deadline = Instant::now() + self.max_wait;
        }
    }
}

impl Dispatcher {
    pub fn spawn(
        mut self,
        input: Receiver<Vec<Scored>>,
        teacher: Option<SyncSender<TeacherJob>>,
        writer: SyncSender<WriterMsg>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("dispatch".into())
            .spawn(move || {
                while let Ok(scored) = input.recv() {
                    for Scored { batch, result } in scored {
                        if self
                            .dispatch(batch, result, teacher.as_ref(), &writer)
                            .is_err()
                        {
                            return; // the writer is gone: shutting down
                        }
                    }
                }
            })
    }

    fn dispatch(
        &mut self,
        batch: Vec<Pending>,
        result: Result<BatchOutput, String>,
        teacher: Option<&SyncSender<TeacherJob>>,
        writer: &SyncSender<WriterMsg>,
    ) -> Result<(), ()> {
        let mut by_file = ByFile::new();
        let mut push =
            |meta: &Arc<FileMeta>, index: usize, row: StudentRow| by_file.push(meta, index, row);
        match result {
            Err(e) => {
                tracing::error!(error = %e, records = batch.len(), "Student inference failed; the files involved go to quarantine.");
                for p in &batch {
                    let row = StudentRow {
                        row: Err(format!("student inference failed: {e}")),
                        teacher_pending: false,
                    };
                    push(&p.meta, p.index, row);
                }
            }
            Ok(out) => {
                let per_record_us = (out.elapsed.as_micros() as i64) / (out.batch.max(1) as i64);
                let now = Instant::now();
                for (i, p) in batch.into_iter().enumerate() {
                    let student_output = out.output_of(i);
                    let stats = self.comparer.stats(student_output);
                    let features = crate::compare::input_features(&p.prepared.record);
                    let mut decision = self.sampler.decide(
                        &p.prepared.record_id,
                        stats.confidence.map(|c| 1.0 - c),
                        now,
                    );
                    let mut teacher_pending = false;
                    if let Decision::Sampled { weight } = decision {
                        match teacher {
                            None => decision = self.sampler.queue_refused(),
                            Some(tx) => {
                                let job = TeacherJob {
                                    meta: p.meta.clone(),
                                    index: p.index,
                                    weight,
                                    student_output: student_output.to_vec(),
                                    output_shape: out.output_shape.clone(),
                                    student_attention: attention_of(&out, i),
                                    record: p.prepared.record,
                                };
                                match tx.try_send(job) {
                                    Ok(()) => teacher_pending = true,
                                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                                        decision = self.sampler.queue_refused();
                                    }
                                }
                            }
                        }
                    }
                    let row = RecordRow {
                        features,
                        record_id: p.prepared.record_id,
                        ts_ms: p.prepared.ts_ms,
                        segment: p.prepared.segment,
                        prediction: stats.prediction,
                        confidence: stats.confidence,
                        entropy: stats.entropy,
                        value: stats.value,
                        latency_us: per_record_us,
                        sampled: decision.code(),
                        label: p.prepared.label,
                        teacher: None,
                    };
                    push(
                        &p.meta,
                        p.index,
                        StudentRow {
                            row: Ok(row),
                            teacher_pending,
                        },
                    );
                }
            }
        }
        for (meta, rows) in by_file.0 {
            writer
                .send(WriterMsg::Student { meta, rows })
                .map_err(|_| ())?;
        }
        Ok(())
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

/// Records the student answers before it hands them to the dispatcher, while more are waiting.
/// Each hand-off wakes the dispatcher (a system call and a context switch: 11–16 µs on the
/// two-core machine of docs/performance.md), so one per batch of 32 cost the student's thread
/// 1–2% of its time. While the student has nothing queued, it hands over every batch at once.
const HANDOFF_RECORDS: usize = 256;

/// Sends the answered batches to the dispatcher; false when it is gone.
fn hand_over(output: &SyncSender<Vec<Scored>>, ready: &mut Vec<Scored>, time: &mut Clock) -> bool {
    let sent = output.send(std::mem::take(ready)).is_ok();
    time.handed_over();
    sent
}

/// Accumulates [`StudentTime`] on the student's thread.
#[derive(Default)]
struct Clock {
    report: StudentTime,
    first: Option<Instant>,
}

impl Clock {
    fn batch(&mut self, elapsed: Duration, records: usize) {
        self.report.batches += 1;
        self.report.records += records as u64;
        self.report.model += elapsed;
    }

    fn handed_over(&mut self) {
        if let Some(first) = self.first {
            self.report.active = first.elapsed();
        }
    }
}

/// The size of the next batch: the longest same-shape prefix of `pending`, up to `max`. When
/// that is all of `pending` and short of `max` (the tail of a file), the next files already
/// queued in `input` are taken first, so that a file boundary does not cost a partial batch.
/// Sets `closed` when `input` turns out to be closed.
fn top_up(
    pending: &mut VecDeque<Pending>,
    input: &Receiver<FileWork>,
    max: usize,
    closed: &mut bool,
) -> usize {
    let mut n = same_shape_prefix(pending, max);
    while n == pending.len() && n < max && !*closed {
        match input.try_recv() {
            Ok(work) => {
                push_work(pending, work);
                n = same_shape_prefix(pending, max);
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => *closed = true,
        }
    }
    n
}

fn push_work(pending: &mut VecDeque<Pending>, work: FileWork) {
    let meta = work.meta;
    for (index, prepared) in work.records.into_iter().enumerate() {
        pending.push_back(Pending {
            meta: meta.clone(),
            index,
            prepared,
        });
    }
}

/// Length of the longest prefix (≤ `max`) whose records have identical input shapes: one ONNX
/// Runtime call needs one shape per input.
fn same_shape_prefix(pending: &VecDeque<Pending>, max: usize) -> usize {
    let Some(first) = pending.front() else {
        return 0;
    };
    let shapes = |p: &Pending| -> Vec<Vec<usize>> {
        p.prepared
            .record
            .inputs
            .values()
            .map(|t| t.shape.clone())
            .collect()
    };
    let reference = shapes(first);
    pending
        .iter()
        .take(max)
        .take_while(|p| {
            p.prepared
                .record
                .inputs
                .values()
                .zip(&reference)
                .all(|(t, s)| &t.shape == s)
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// Teacher worker

/// A sampled record on its way to the teacher.
pub struct TeacherJob {
    pub meta: Arc<FileMeta>,
    pub index: usize,
    pub weight: f64,
    pub record: Record,
    pub student_output: Vec<f32>,
    pub output_shape: Vec<usize>,
    pub student_attention: Option<(Vec<usize>, Vec<f32>)>,
}

pub struct TeacherWorker {
    pub model: Model,
    pub comparer: Comparer,
    pub max_batch: usize,
    /// Name of the int64 mask input used for embedding pooling, if any.
    pub mask_input: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Challengers and a pending candidate, run on the teacher's batches after the teacher.
    pub shadow: crate::shadow::ShadowSet,
}

impl TeacherWorker {
    pub fn spawn(
        mut self,
        input: Receiver<TeacherJob>,
        writer: SyncSender<WriterMsg>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("teacher".into())
            .spawn(move || self.run(input, writer))
    }

    fn run(&mut self, input: Receiver<TeacherJob>, writer: SyncSender<WriterMsg>) {
        while let Ok(first) = input.recv() {
            // Take what is already queued, up to a batch; never wait for more: the samples are
            // already late by design and the student does not depend on them.
            let mut jobs = vec![first];
            while jobs.len() < self.max_batch {
                match input.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            // Batch only equal shapes; run the rest one group at a time.
            while !jobs.is_empty() {
                let n = jobs
                    .iter()
                    .take_while(|j| {
                        j.record
                            .inputs
                            .values()
                            .zip(jobs[0].record.inputs.values())
                            .all(|(a, b)| a.shape == b.shape)
                    })
                    .count();
                let group: Vec<TeacherJob> = jobs.drain(..n).collect();
                if self.run_group(group, &writer).is_err() {
                    return;
                }
            }
        }
    }

    fn run_group(
        &mut self,
        group: Vec<TeacherJob>,
        writer: &SyncSender<WriterMsg>,
    ) -> Result<(), ()> {
        let records: Vec<&Record> = group.iter().map(|j| &j.record).collect();
        let started = Instant::now();
        let result = self.model.run(&records);
        self.metrics
            .batch("teacher", started.elapsed(), records.len());
        let mut shadow = match &result {
            Ok(out) => self.shadow.run(&records, out),
            Err(_) => Vec::new(),
        };
        drop(records);
        let mut by_file = ByFile::new();
        let out = match result {
            Ok(out) => Some(out),
            Err(e) => {
                tracing::error!(error = %e, samples = group.len(), "Teacher inference failed; these samples are recorded as teacher errors.");
                None
            }
        };
        let per_record_us = out
            .as_ref()
            .map_or(0, |o| o.elapsed.as_micros() as i64 / o.batch.max(1) as i64);
        for (i, job) in group.into_iter().enumerate() {
            let row = out.as_ref().map(|out| {
                let teacher_output = out.output_of(i);
                let mask = self.mask_input.as_ref().and_then(|name| {
                    match &job.record.inputs.get(name)?.data {
                        crate::record::TensorData::I64(v) => Some(v.clone()),
                        _ => None,
                    }
                });
                let mut comparison = self.comparer.compare(
                    teacher_output,
                    &job.student_output,
                    &job.output_shape,
                    mask.as_deref(),
                );
                let teacher_attention = attention_of(out, i);
                if let (Some((ts, td)), Some((ss, sd))) =
                    (&teacher_attention, &job.student_attention)
                {
                    comparison.attention_kl = attention_kl(td, ts, sd, ss);
                }
                let stats = self.comparer.stats(teacher_output);
                TeacherRow {
                    weight: job.weight,
                    teacher_prediction: stats.prediction,
                    teacher_confidence: stats.confidence,
                    comparison,
                    latency_us: per_record_us,
                    output_shape: out.output_shape.clone(),
                    teacher_output: teacher_output.to_vec(),
                    student_output: job.student_output.clone(),
                    teacher_attention,
                    inputs: job.record.inputs.into_iter().collect(),
                    shadow: shadow.get_mut(i).map(std::mem::take).unwrap_or_default(),
                }
            });
            by_file.push(&job.meta, job.index, row);
        }
        for (meta, rows) in by_file.0 {
            writer
                .send(WriterMsg::Teacher { meta, rows })
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

/// Per-file state while its rows come in.
struct InFlight {
    meta: Arc<FileMeta>,
    rows: Vec<Option<Result<RecordRow, String>>>,
    student_done: usize,
    /// Teacher rows still expected (may dip below zero when a teacher row overtakes its student row).
    teacher_outstanding: i64,
    teacher_rows: HashMap<usize, Option<TeacherRow>>,
}

pub struct Writer {
    pub store: Store,
    pub student_sha: String,
    pub teacher_sha: String,
    pub window_ms: i64,
    /// Per-record rows are kept this long after they were received.
    pub retention_ms: i64,
    /// The distillation buffer's cap, applied with the record retention.
    pub buffer: crate::config::BufferPolicy,
    /// Called after each file is committed or quarantined (tests and `replay` count with it).
    pub on_file: Option<FileCallback>,
    /// The drift detectors of the active baseline (none until `sensei baseline` has run).
    pub monitor: Option<DriftMonitor>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Called by the writer for every finished file.
pub type FileCallback = Box<dyn FnMut(&FileMeta, &FileOutcome) + Send>;

/// What became of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOutcome {
    Committed {
        records: usize,
    },
    Labels {
        labels: usize,
        matched: usize,
    },
    Duplicate,
    Quarantined {
        reason: String,
    },
    /// The database refused the commit; the file stays in the inbox and is taken again (see
    /// [`FileMeta::retry`]).
    Failed {
        error: String,
    },
}

impl Writer {
    pub fn spawn(
        mut self,
        input: Receiver<WriterMsg>,
    ) -> std::io::Result<JoinHandle<WriterReport>> {
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || self.run(input))
    }

    fn run(&mut self, input: Receiver<WriterMsg>) -> WriterReport {
        let mut report = WriterReport::default();
        let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
        let mut next_retention = Instant::now();
        while let Ok(msg) = input.recv() {
            if Instant::now() >= next_retention {
                next_retention = Instant::now() + RETENTION_EVERY;
                match self.store.apply_retention(now_ms() - self.retention_ms) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(records = n, "Deleted per-record rows past their retention.")
                    }
                    Err(e) => tracing::error!(error = %e, "Applying record retention failed."),
                }
                match crate::redistill::buffer::prune(&mut self.store, &self.buffer) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(samples = n, "Pruned the distillation buffer to its cap.")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Pruning the distillation buffer failed.")
                    }
                }
            }
            match msg {
                WriterMsg::Student { meta, rows } => {
                    let f = in_flight
                        .entry(meta.key)
                        .or_insert_with(|| InFlight::new(meta.clone()));
                    for (index, row) in rows {
                        if row.teacher_pending {
                            f.teacher_outstanding += 1;
                        }
                        if let Some(slot) = f.rows.get_mut(index) {
                            *slot = Some(row.row);
                            f.student_done += 1;
                        }
                    }
                }
                WriterMsg::Teacher { meta, rows } => {
                    let f = in_flight
                        .entry(meta.key)
                        .or_insert_with(|| InFlight::new(meta.clone()));
                    for (index, row) in rows {
                        f.teacher_outstanding -= 1;
                        f.teacher_rows.insert(index, row);
                    }
                }
                WriterMsg::Labels { meta, labels } => {
                    let outcome = self.commit_labels(&meta, &labels);
                    self.finish(&meta, outcome, &mut report);
                    continue;
                }
                WriterMsg::AlreadyCounted { meta } => {
                    let outcome = match self.store.note_duplicate(
                        &meta.name,
                        &meta.sha256,
                        meta.size,
                        meta.kind,
                        now_ms(),
                    ) {
                        Ok(_) => FileOutcome::Duplicate,
                        Err(e) => FileOutcome::Failed {
                            error: e.to_string(),
                        },
                    };
                    self.finish(&meta, outcome, &mut report);
                    continue;
                }
                WriterMsg::Quarantined { meta, reason } => {
                    self.finish(&meta, FileOutcome::Quarantined { reason }, &mut report);
                    continue;
                }
            }
            let complete: Vec<u64> = in_flight
                .iter()
                .filter(|(_, f)| f.student_done == f.rows.len() && f.teacher_outstanding == 0)
                .map(|(k, _)| *k)
                .collect();
            for key in complete {
                if let Some(f) = in_flight.remove(&key) {
                    let meta = f.meta.clone();
                    let outcome = self.commit(f);
                    self.finish(&meta, outcome, &mut report);
                }
            }
        }
        if !in_flight.is_empty() {
            tracing::warn!(
                files = in_flight.len(),
                "Stopped with files in flight; they stay in the inbox and are processed at the next start."
            );
        }
        report
    }

    fn commit(&mut self, f: InFlight) -> FileOutcome {
        let InFlight {
            meta,
            rows,
            mut teacher_rows,
            ..
        } = f;
        let mut records = Vec::with_capacity(rows.len());
        // One query per file instead of one per record when no label is waiting for its record.
        let waiting_labels = self.store.has_waiting_labels().unwrap_or(true);
        for (index, row) in rows.into_iter().enumerate() {
            match row {
                Some(Ok(mut r)) => {
                    if let Some(t) = teacher_rows.remove(&index) {
                        match t {
                            Some(t) => r.teacher = Some(t),
                            None => r.sampled = crate::sampler::TEACHER_FAILED,
                        }
                    }
                    if r.label.is_none() && waiting_labels {
                        r.label = self.store.pending_label(&r.record_id).ok().flatten();
                    }
                    records.push(r);
                }
                Some(Err(reason)) => {
                    return FileOutcome::Quarantined {
                        reason: format!("record {index}: {reason}"),
                    };
                }
                None => {
                    return FileOutcome::Failed {
                        error: format!("record {index} has no student result"),
                    };
                }
            }
        }
        let first_seq = match self.store.next_seq() {
            Ok(seq) => seq,
            Err(e) => {
                return FileOutcome::Failed {
                    error: e.to_string(),
                };
            }
        };
        // Detectors see the file's records in order; their changes commit with the records. A
        // failed commit puts the detectors back as they were, so nothing is observed twice.
        let snapshot = self.monitor.clone();
        let now = now_ms();
        let delta = self.monitor.as_mut().map(|m| {
            (
                m.baseline_version,
                observe_records(m, first_seq, &records, now),
            )
        });
        let commit = FileCommit {
            first_seq,
            name: meta.name.clone(),
            sha256: meta.sha256.clone(),
            size: meta.size,
            kind: meta.kind,
            student: self.student_sha.clone(),
            teacher: self.teacher_sha.clone(),
            records,
        };
        let result = self.store.commit_file(
            &commit,
            self.window_ms,
            now,
            delta.as_ref().map(|(v, d)| (*v, d)),
        );
        match result {
            Ok(CommitOutcome::Committed { records, .. }) => {
                if let Some((_, d)) = &delta {
                    log_drift(d);
                }
                FileOutcome::Committed { records }
            }
            Ok(CommitOutcome::Duplicate { .. }) => {
                self.monitor = snapshot;
                FileOutcome::Duplicate
            }
            Err(e) => {
                self.monitor = snapshot;
                FileOutcome::Failed {
                    error: e.to_string(),
                }
            }
        }
    }

    fn commit_labels(&mut self, meta: &FileMeta, labels: &[(String, i64)]) -> FileOutcome {
        let snapshot = self.monitor.clone();
        let now = now_ms();
        let monitor = &mut self.monitor;
        let mut joined = |joins: &[LabelJoin]| {
            let m = monitor.as_mut()?;
            let mut delta = MonitorDelta::default();
            for j in joins {
                if let Some(p) = j.prediction {
                    let teacher_wrong = j.teacher_prediction.map(|t| t != j.label);
                    m.observe_label(
                        j.seq,
                        &j.segment,
                        p != j.label,
                        teacher_wrong,
                        now,
                        &mut delta,
                    );
                }
            }
            m.collect_states(&mut delta);
            log_drift(&delta);
            Some((m.baseline_version, delta))
        };
        let result = self.store.commit_labels(
            &meta.name,
            &meta.sha256,
            meta.size,
            labels,
            now,
            &mut joined,
        );
        if !matches!(result, Ok(LabelsOutcome::Committed { .. })) {
            self.monitor = snapshot;
        }
        match result {
            Ok(LabelsOutcome::Committed {
                labels, matched, ..
            }) => FileOutcome::Labels { labels, matched },
            Ok(LabelsOutcome::Duplicate { .. }) => FileOutcome::Duplicate,
            Err(e) => FileOutcome::Failed {
                error: e.to_string(),
            },
        }
    }

    /// Moves the file where it belongs after the database has the truth, and reports.
    fn finish(&mut self, meta: &FileMeta, mut outcome: FileOutcome, report: &mut WriterReport) {
        self.metrics.file_finished(meta, &outcome);
        match &outcome {
            FileOutcome::Committed { records } => {
                report.files_committed += 1;
                report.records_committed += *records as u64;
                tracing::info!(file = %meta.name, records, "File committed.");
                crate::ingest::dispose(meta);
            }
            FileOutcome::Labels { labels, matched } => {
                report.files_committed += 1;
                report.labels_committed += *labels as u64;
                tracing::info!(file = %meta.name, labels, matched, "Late labels committed.");
                crate::ingest::dispose(meta);
            }
            FileOutcome::Duplicate => {
                report.files_duplicate += 1;
                tracing::info!(file = %meta.name, sha256 = %meta.sha256, "Same content was already counted; not counted again.");
                crate::ingest::dispose(meta);
            }
            FileOutcome::Quarantined { reason } => {
                // Ledger first, then the move: a crash in between leaves the file in the inbox,
                // where the next start quarantines it again without a second ledger row.
                if let Err(e) = self.store.record_quarantine(
                    &meta.name,
                    &meta.sha256,
                    meta.size,
                    meta.kind,
                    reason,
                    now_ms(),
                ) {
                    tracing::error!(file = %meta.name, error = %e, "Could not record the quarantined file in the ledger.");
                }
                crate::ingest::quarantine(meta, reason);
                report.files_quarantined += 1;
            }
            FileOutcome::Failed { error } => {
                report.commit_errors += 1;
                if meta.retry.is_some() {
                    tracing::error!(file = %meta.name, error = %error, commit_errors = report.commit_errors, "Commit failed; the file stays in the inbox and is taken again after a back-off.");
                } else {
                    tracing::error!(file = %meta.name, error = %error, commit_errors = report.commit_errors, "Commit failed; the file is not counted.");
                }
                outcome = FileOutcome::Failed {
                    error: error.clone(),
                };
            }
        }
        if let Ok(mut set) = meta.in_flight.lock() {
            set.remove(&meta.path);
        }
        // Only once the path is out of the in-flight set, so the retry is not taken for a
        // rescan's duplicate and skipped.
        if let (FileOutcome::Failed { .. }, Some(retry)) = (&outcome, &meta.retry) {
            let _ = retry.send(crate::ingest::IngestEvent::Retry(meta.path.clone()));
        }
        if let Some(cb) = self.on_file.as_mut() {
            cb(meta, &outcome);
        }
    }
}

impl InFlight {
    fn new(meta: Arc<FileMeta>) -> InFlight {
        let n = meta.records;
        InFlight {
            meta,
            rows: (0..n).map(|_| None).collect(),
            student_done: 0,
            teacher_outstanding: 0,
            teacher_rows: HashMap::new(),
        }
    }
}

/// Feeds a file's rows, in order, to the drift detectors (records numbered from `first_seq`).
/// The caller commits the returned changes with the rows.
pub fn observe_records(
    monitor: &mut DriftMonitor,
    first_seq: i64,
    records: &[RecordRow],
    now_ms: i64,
) -> MonitorDelta {
    let mut delta = MonitorDelta::default();
    for (i, r) in records.iter().enumerate() {
        let seq = first_seq + i as i64;
        let c = r.teacher.as_ref().map(|t| &t.comparison);
        monitor.observe(
            &Observation {
                seq,
                segment: &r.segment,
                confidence: r.confidence,
                prediction: r.prediction,
                features: &r.features,
                disagreement: c.and_then(|c| c.disagreement),
                kl: c.and_then(|c| c.kl),
                attention_kl: c.and_then(|c| c.attention_kl),
            },
            now_ms,
            &mut delta,
        );
        if let (Some(label), Some(p)) = (r.label, r.prediction) {
            let teacher_wrong = r
                .teacher
                .as_ref()
                .and_then(|t| t.teacher_prediction)
                .map(|t| t != label);
            monitor.observe_label(
                seq,
                &r.segment,
                p != label,
                teacher_wrong,
                now_ms,
                &mut delta,
            );
        }
    }
    monitor.collect_states(&mut delta);
    delta
}

fn log_drift(delta: &MonitorDelta) {
    for e in &delta.events {
        tracing::warn!(
            signal = %e.signal,
            segment = %e.segment,
            detector = e.detector,
            record = e.detected_at_record,
            baseline = e.baseline_value,
            current = e.current_value,
            "Drift detected."
        );
    }
    for (signal, segment, detector) in &delta.resolved {
        tracing::info!(%signal, %segment, detector, "Drift resolved: the signal is back in control.");
    }
}

/// How often the writer deletes per-record rows past their retention.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Origin, Record, Tensor};

    /// A file's work of `records` records of input shape `[width]`.
    fn work(key: u64, records: usize, width: usize) -> FileWork {
        shaped_work(key, records, &[width])
    }

    /// A file's work of `records` zero records of input `x` of the given shape.
    fn shaped_work(key: u64, records: usize, shape: &[usize]) -> FileWork {
        let meta = Arc::new(FileMeta {
            key,
            path: PathBuf::from(format!("f{key}.jsonl")),
            name: format!("f{key}.jsonl"),
            sha256: String::new(),
            size: 0,
            kind: "jsonl",
            records,
            on_done: Disposition::Keep,
            quarantine_dir: None,
            in_flight: InFlightPaths::default(),
            retry: None,
        });
        let records = (0..records)
            .map(|i| Prepared {
                record_id: format!("f{key}-{i}"),
                ts_ms: 0,
                segment: String::new(),
                label: None,
                record: Record {
                    id: None,
                    ts: None,
                    segment: Default::default(),
                    inputs: [(
                        "x".to_string(),
                        Tensor::f32(shape.to_vec(), vec![0.0; shape.iter().product()]),
                    )]
                    .into(),
                    label: None,
                    origin: Origin::Line(i + 1),
                },
            })
            .collect();
        FileWork { meta, records }
    }

    /// The batch sizes the student runs over `pending` and whatever `input` holds, taking a
    /// batch at a time the way the worker does once the wait is over.
    fn batches(pending: &mut VecDeque<Pending>, input: &Receiver<FileWork>) -> Vec<usize> {
        let mut closed = false;
        let mut sizes = Vec::new();
        loop {
            if pending.is_empty() {
                match input.try_recv() {
                    Ok(w) => push_work(pending, w),
                    Err(_) => return sizes,
                }
            }
            let n = top_up(pending, input, 32, &mut closed);
            pending.drain(..n);
            sizes.push(n);
        }
    }

    #[test]
    fn a_file_tail_is_topped_up_from_the_next_queued_file() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut pending = VecDeque::new();
        push_work(&mut pending, work(1, 40, 4));
        tx.send(work(2, 40, 4)).unwrap();
        tx.send(work(3, 10, 4)).unwrap();
        drop(tx);
        // 90 records: three full batches across the two boundaries, then the last 26.
        assert_eq!(batches(&mut pending, &rx), [32, 32, 26]);
    }

    #[test]
    fn a_tail_is_not_topped_up_across_a_shape_change_or_from_an_empty_queue() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut pending = VecDeque::new();
        push_work(&mut pending, work(1, 40, 4));
        // Nothing queued: the tail of 8 stays short, and the queue is still open.
        let mut closed = false;
        assert_eq!(top_up(&mut pending, &rx, 32, &mut closed), 32);
        pending.drain(..32);
        assert_eq!(top_up(&mut pending, &rx, 32, &mut closed), 8);
        assert!(!closed);
        // The next file has another shape: it is taken, but one batch holds one shape.
        tx.send(work(2, 40, 6)).unwrap();
        assert_eq!(top_up(&mut pending, &rx, 32, &mut closed), 8);
        assert_eq!(pending.len(), 48);
        drop(tx);
        pending.drain(..8);
        assert_eq!(top_up(&mut pending, &rx, 32, &mut closed), 32);
        pending.drain(..32);
        assert_eq!(top_up(&mut pending, &rx, 32, &mut closed), 8);
        assert!(closed);
    }

    /// The demo student (input `x` of shape [8, 8]) on the ONNX Runtime that
    /// `scripts/setup-onnxruntime.sh` installs (the runtime's own search goes on to
    /// `ORT_DYLIB_PATH` when it is not there), in a worker whose partial batches wait an hour:
    /// only the end of its input makes it run one.
    fn demo_student_worker() -> StudentWorker {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let runtime = crate::model::runtime(&crate::config::OnnxRuntimeConfig {
            library: Some(root.join(".ort/libonnxruntime.so.1.32.0")),
        })
        .expect("ONNX Runtime (scripts/setup-onnxruntime.sh)");
        let max_wait = Duration::from_secs(3600);
        let config = crate::config::ModelConfig {
            path: root.join("models/demo/student.onnx"),
            threads: 1,
            max_batch: 32,
            max_wait,
            inputs: Vec::new(),
            output: "logits".into(),
            attention: None,
        };
        StudentWorker {
            model: Model::load(runtime, "student", &config).expect("the demo student"),
            max_batch: 32,
            max_wait,
            metrics: crate::metrics::Metrics::new(PathBuf::from("unused.db")),
        }
    }

    /// The records of each batch in one hand-off.
    fn handoff(scored: &[Scored]) -> Vec<usize> {
        scored.iter().map(|s| s.batch.len()).collect()
    }

    /// The next hand-off. The bound only turns a worker that holds batches back into a failure
    /// instead of a hang; a working one hands over within milliseconds.
    fn next(scored: &Receiver<Vec<Scored>>) -> Vec<Scored> {
        scored
            .recv_timeout(Duration::from_secs(60))
            .expect("a hand-off within a minute")
    }

    #[test]
    fn answered_batches_are_handed_over_together_while_more_records_wait() {
        let (files, input) = mpsc::sync_channel(FILE_QUEUE);
        let (output, scored) = mpsc::sync_channel(SCORED_QUEUE);
        files.send(shaped_work(1, 1000, &[8, 8])).unwrap();
        let worker = demo_student_worker().spawn(input, output).unwrap();
        // Eight batches of 32 per hand-off while more are queued; then the seven full batches
        // left, at once, while the last 8 records wait for more input.
        for expected in [vec![32; 8], vec![32; 8], vec![32; 8], vec![32; 7]] {
            let got = next(&scored);
            assert!(got.iter().all(|s| s.result.is_ok()));
            assert_eq!(handoff(&got), expected);
        }
        // The end of the input runs the partial batch.
        drop(files);
        assert_eq!(handoff(&next(&scored)), [8]);
        assert!(scored.recv().is_err(), "the worker has finished");
        let time = worker.join().unwrap();
        assert_eq!((time.batches, time.records), (32, 1000));
        assert!(time.model <= time.active && !time.model.is_zero());
    }

    #[test]
    fn with_nothing_else_queued_a_batch_is_handed_over_at_once() {
        let (files, input) = mpsc::sync_channel(FILE_QUEUE);
        let (output, scored) = mpsc::sync_channel(SCORED_QUEUE);
        let worker = demo_student_worker().spawn(input, output).unwrap();
        // One full batch from a 40-record file arrives while the input is open and the other
        // 8 records wait; it is not held back for more.
        files.send(shaped_work(1, 40, &[8, 8])).unwrap();
        assert_eq!(handoff(&next(&scored)), [32]);
        // A later small file tops up the waiting 8 to a full batch, handed over at once too.
        files.send(shaped_work(2, 24, &[8, 8])).unwrap();
        assert_eq!(handoff(&next(&scored)), [32]);
        drop(files);
        assert!(scored.recv().is_err(), "nothing was left");
        assert_eq!(worker.join().unwrap().records, 64);
    }
}
