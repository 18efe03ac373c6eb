//! The writer: the one thread with the writing SQLite connection. It gathers each file's
//! student and teacher rows, feeds them to the drift detectors in order, commits the file in
//! one transaction, disposes of it, and applies the retention of records and of the
//! distillation buffer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::disposal::{dispose, quarantine};
use super::{FileMeta, WriterMsg, WriterReport};
use crate::drift::{DriftMonitor, Observation};
use crate::store::{
    CommitOutcome, FileCommit, LabelJoin, LabelsOutcome, MonitorDelta, RecordRow, Store, TeacherRow,
};
use crate::time::now_ms;

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

impl FileOutcome {
    /// The outcome's name in metrics (`sensei_files_finished_total{outcome}`).
    pub fn label(&self) -> &'static str {
        match self {
            FileOutcome::Committed { .. } => "committed",
            FileOutcome::Labels { .. } => "labels",
            FileOutcome::Duplicate => "duplicate",
            FileOutcome::Quarantined { .. } => "quarantined",
            FileOutcome::Failed { .. } => "failed",
        }
    }
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
        self.metrics.file_finished(&meta.path, outcome.label());
        match &outcome {
            FileOutcome::Committed { records } => {
                report.files_committed += 1;
                report.records_committed += *records as u64;
                tracing::info!(file = %meta.name, records, "File committed.");
                dispose(meta);
            }
            FileOutcome::Labels { labels, matched } => {
                report.files_committed += 1;
                report.labels_committed += *labels as u64;
                tracing::info!(file = %meta.name, labels, matched, "Late labels committed.");
                dispose(meta);
            }
            FileOutcome::Duplicate => {
                report.files_duplicate += 1;
                tracing::info!(file = %meta.name, sha256 = %meta.sha256, "Same content was already counted; not counted again.");
                dispose(meta);
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
                quarantine(meta, reason);
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
            retry.ask(meta.path.clone());
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
