//! The writer: the one thread with the writing SQLite connection. It gathers each file's
//! student and teacher rows, feeds them to the drift detectors in order, commits the file in
//! one transaction, disposes of it, and applies the retention of records and of the
//! distillation buffer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::disposal::{PathNow, dispose, path_now, quarantine};
use super::{FileMeta, Retake, WriterMsg, WriterReport};
use crate::drift::{DriftMonitor, Observation};
use crate::record::segment_label;
use crate::stats::four_digits;
use crate::store::{
    CommitOutcome, EventChange, FileCommit, LabelJoin, LabelsOutcome, MonitorDelta, RecordRow,
    Store, TeacherRow,
};
use crate::time::now_ms;

/// Per-file state while its rows come in.
struct InFlight {
    meta: Arc<FileMeta>,
    /// Each record's student row, or why the student failed on it.
    rows: Vec<Option<Result<RecordRow, String>>>,
    student_done: usize,
    /// Teacher rows still expected (may dip below zero when a teacher row overtakes its student row).
    teacher_outstanding: i64,
    teacher_rows: HashMap<usize, Result<TeacherRow, i64>>,
}

pub struct Writer {
    pub store: Store,
    pub student_sha: String,
    pub teacher_sha: String,
    pub window_ms: i64,
    /// Per-record rows are kept this long after they were received.
    pub retention_ms: i64,
    /// `[store] max_size`: past it, the oldest per-record rows go.
    pub max_bytes: Option<u64>,
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
        /// Records left out: their id was counted before.
        duplicates: usize,
        /// Labels the file's own records carried (`label` in the record).
        labels: usize,
    },
    Labels {
        labels: usize,
        /// Records that got their first label.
        matched: usize,
        /// Labels that replaced an older, different label.
        corrected: usize,
        /// Labels that changed nothing.
        unchanged: usize,
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
    /// The file was written to after it was read (its writer had not finished): nothing of it
    /// is counted; it stays in the inbox and is taken again once it is quiet.
    Changed,
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
            FileOutcome::Changed => "changed",
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
        let mut retention = Retention::default();
        let mut next_check = Instant::now();
        let mut next_prune = Instant::now();
        let mut blind = BTreeSet::new();
        let mut next_sightline = Instant::now() + SIGHTLINE_CHECK;
        loop {
            // While retention has more to delete, one step runs between two messages; otherwise
            // the writer waits for a message or the next check.
            let wait = if retention.more {
                Duration::ZERO
            } else {
                next_check.saturating_duration_since(Instant::now())
            };
            let msg = match input.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if retention.more || Instant::now() >= next_check {
                next_check = Instant::now() + RETENTION_CHECK;
                self.retention_step(&mut retention);
            }
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + BUFFER_PRUNE_EVERY;
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
            if Instant::now() >= next_sightline {
                next_sightline = Instant::now() + SIGHTLINE_CHECK;
                self.check_sightlines(&mut blind);
            }
            let Some(msg) = msg else { continue };
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
                    let outcome = if changed_since_read(&meta) {
                        FileOutcome::Changed
                    } else {
                        self.commit_labels(&meta, &labels)
                    };
                    self.finish(&meta, outcome, &mut report);
                    continue;
                }
                WriterMsg::TeacherReach(change) => {
                    if let Err(e) = self.store.teacher_reach(
                        change.out_of_reach,
                        change.failures,
                        change.breaker_after,
                        change.at_ms,
                    ) {
                        tracing::error!(error = %e, "Recording the teacher's reach failed.");
                    }
                    continue;
                }
                WriterMsg::AlreadyCounted { meta } if changed_since_read(&meta) => {
                    self.finish(&meta, FileOutcome::Changed, &mut report);
                    continue;
                }
                WriterMsg::AlreadyCounted { meta } => {
                    let outcome = match self.store.note_duplicate(
                        &meta.name,
                        &meta.sha256,
                        meta.size,
                        meta.kind,
                        meta.origin,
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
                    // A file that fails its checks half-written is judged once it is whole.
                    let outcome = if changed_since_read(&meta) {
                        FileOutcome::Changed
                    } else {
                        FileOutcome::Quarantined { reason }
                    };
                    self.finish(&meta, outcome, &mut report);
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
                    let outcome = if changed_since_read(&meta) {
                        FileOutcome::Changed
                    } else {
                        self.commit(f)
                    };
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
        // Once more at the end, so that a replay says so too.
        self.check_sightlines(&mut blind);
        report
    }

    /// Warns once when sequential detectors become blind (their expected delay at the minimum
    /// shift exceeds a day at the observed rate) and says when they see again, one line for all
    /// the detectors that changed; `blind` holds the (signal, segment) pairs already warned about.
    fn check_sightlines(&self, blind: &mut BTreeSet<(String, String)>) {
        if self.monitor.is_none() {
            return;
        }
        let Ok(sightlines) = self.store.sightlines(self.window_ms) else {
            return;
        };
        let mut now_blind = Vec::new();
        let mut seeing = Vec::new();
        for d in sightlines {
            let key = (d.signal.clone(), d.segment.clone());
            if d.sightline.blind && !blind.contains(&key) {
                blind.insert(key);
                now_blind.push(d);
            } else if !d.sightline.blind && blind.remove(&key) {
                seeing.push(key);
            }
        }
        if let Some(first) = now_blind.first() {
            let s = &first.sightline;
            tracing::warn!(
                detectors = now_blind.len(),
                signals = %few(now_blind.iter().map(|d| d.signal.as_str())),
                segments = %few(now_blind.iter().map(|d| segment_label(&d.segment))),
                signal = %first.signal,
                segment = segment_label(&first.segment),
                expected_delay_samples = four_digits(s.expected_delay_samples),
                samples_per_record = four_digits(s.samples_per_record),
                expected_delay_records = four_digits(s.expected_delay_records),
                expected_delay_days = s.expected_delay_seconds.map(|x| four_digits(x / 86_400.0)),
                "Drift detectors blind: at the observed rate they need more than a day to see the minimum shift (the first is named here, all in `sensei status`); raise the teacher budget ([sampling] max_per_minute, queue, rate)."
            );
        }
        if !seeing.is_empty() {
            tracing::info!(
                detectors = seeing.len(),
                signals = %few(seeing.iter().map(|(signal, _)| signal.as_str())),
                segments = %few(seeing.iter().map(|(_, segment)| segment_label(segment))),
                "Drift detectors see again: their expected delay at the minimum shift is within a day."
            );
        }
    }

    fn commit(&mut self, f: InFlight) -> FileOutcome {
        let InFlight {
            meta,
            rows,
            mut teacher_rows,
            ..
        } = f;
        let mut records = Vec::with_capacity(rows.len());
        for (index, row) in rows.into_iter().enumerate() {
            match row {
                Some(Ok(mut r)) => {
                    if let Some(t) = teacher_rows.remove(&index) {
                        match t {
                            Ok(t) => r.teacher = Some(t),
                            Err(code) => r.sampled = code,
                        }
                    }
                    records.push(r);
                }
                // A model that fails is not the file's fault: the file stays in the inbox.
                Some(Err(reason)) => {
                    return FileOutcome::Failed {
                        error: format!("record {index}: {reason}"),
                    };
                }
                None => {
                    return FileOutcome::Failed {
                        error: format!("record {index} has no student result"),
                    };
                }
            }
        }
        // A producer's id identifies a record: one counted before (in an earlier file) is left
        // out, before the detectors see it.
        let ids: Vec<&str> = records.iter().map(|r| r.record_id.as_str()).collect();
        let counted = match self.store.counted_ids(&ids) {
            Ok(counted) => counted,
            Err(e) => {
                return FileOutcome::Failed {
                    error: e.to_string(),
                };
            }
        };
        drop(ids);
        let duplicates = counted.iter().filter(|&&c| c).count();
        if duplicates > 0 {
            let first = records
                .iter()
                .zip(&counted)
                .find(|(_, c)| **c)
                .map(|(r, _)| r.record_id.clone())
                .unwrap_or_default();
            tracing::warn!(file = %meta.name, records = duplicates, first_id = %first, "Records whose id was counted before are left out: the first arrival of an id counts.");
            let mut keep = counted.iter();
            records.retain(|_| !keep.next().copied().unwrap_or(false));
        }
        let inline_labels = records.iter().filter(|r| r.label.is_some()).count();
        let (labels_taken, conflicts) = match self.take_waiting_labels(&meta, &mut records) {
            Ok(taken) => taken,
            Err(e) => {
                return FileOutcome::Failed {
                    error: e.to_string(),
                };
            }
        };
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
            origin: meta.origin,
            duplicates: duplicates as i64,
            conflicts,
            labels_taken,
            segment_values_cut: meta.segment_values_cut as i64,
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
                    log_drift(d, &meta.name, |seq| {
                        let i = usize::try_from(seq - first_seq).ok()?;
                        commit.records.get(i).map(|r| r.record_id.clone())
                    });
                }
                FileOutcome::Committed {
                    records,
                    duplicates,
                    labels: inline_labels,
                }
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
            log_drift(&delta, &meta.name, |seq| {
                joins
                    .iter()
                    .find(|j| j.seq == seq)
                    .map(|j| j.record_id.clone())
            });
            Some((m.baseline_version, delta))
        };
        let result = self.store.commit_labels(
            &meta.name,
            &meta.sha256,
            meta.size,
            labels,
            meta.origin,
            now,
            &mut joined,
        );
        if !matches!(result, Ok(LabelsOutcome::Committed { .. })) {
            self.monitor = snapshot;
        }
        match result {
            Ok(LabelsOutcome::Committed {
                labels,
                matched,
                corrected,
                unchanged,
                ..
            }) => FileOutcome::Labels {
                labels,
                matched,
                corrected,
                unchanged,
            },
            Ok(LabelsOutcome::Duplicate { .. }) => FileOutcome::Duplicate,
            Err(e) => FileOutcome::Failed {
                error: e.to_string(),
            },
        }
    }

    /// Moves the file where it belongs after the database has the truth, and reports.
    fn finish(&mut self, meta: &FileMeta, mut outcome: FileOutcome, report: &mut WriterReport) {
        self.metrics.file_finished(&meta.path, outcome.label());
        // Another file under the same name, left in the inbox to be taken now.
        let mut other = false;
        match &outcome {
            FileOutcome::Committed {
                records,
                duplicates,
                labels,
            } => {
                report.files_committed += 1;
                report.records_committed += *records as u64;
                report.records_duplicate += *duplicates as u64;
                report.labels_committed += *labels as u64;
                tracing::info!(file = %meta.name, records, duplicates, labels, "File committed.");
                other = dispose(meta);
            }
            FileOutcome::Labels {
                labels,
                matched,
                corrected,
                unchanged,
            } => {
                report.files_committed += 1;
                report.labels_committed += *labels as u64;
                tracing::info!(file = %meta.name, labels, matched, corrected, unchanged, "Late labels committed.");
                other = dispose(meta);
            }
            FileOutcome::Duplicate => {
                report.files_duplicate += 1;
                tracing::info!(file = %meta.name, sha256 = %meta.sha256, "Same content was already counted; not counted again.");
                other = dispose(meta);
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
                other = quarantine(meta, reason);
                report.files_quarantined += 1;
                if report.quarantined.len() < super::QUARANTINE_LIST_MAX {
                    report.quarantined.push(super::QuarantinedFile {
                        name: meta.name.clone(),
                        reason: reason.clone(),
                    });
                }
            }
            FileOutcome::Changed => {
                report.files_changed += 1;
                tracing::warn!(file = %meta.name, "The file was written to after it was read; nothing of it is counted, it is taken again once it is closed and quiet.");
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
        if let Some(retry) = &meta.retry {
            match &outcome {
                FileOutcome::Failed { .. } => retry.ask(meta.path.clone(), Retake::AfterFailure),
                FileOutcome::Changed => retry.ask(meta.path.clone(), Retake::WhenQuiet),
                _ if other => retry.ask(meta.path.clone(), Retake::Now),
                _ => {}
            }
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
                ts_ms: Some(r.ts_ms),
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

/// Says in one line what one file's observations changed in the drift events: how many opened,
/// alarmed again and resolved, which signals and segments the new ones are on, and the first new
/// event with the file and the record that raised it. Every event is in `sensei status`; one
/// line per (signal, segment, detector) would bury the log when a drift reaches many features.
fn log_drift(delta: &MonitorDelta, file: &str, record_id: impl Fn(i64) -> Option<String>) {
    let mut opened = Vec::new();
    let mut again = 0usize;
    let mut resolved = Vec::new();
    for change in &delta.changes {
        match change {
            EventChange::Open(e) => opened.push(e),
            EventChange::Repeat(_) => again += 1,
            EventChange::Resolve {
                signal, segment, ..
            } => resolved.push((signal.as_str(), segment.as_str())),
        }
    }
    if let Some(first) = opened.first() {
        tracing::warn!(
            file,
            opened = opened.len(),
            alarms_again = again,
            resolved = resolved.len(),
            signals = %few(opened.iter().map(|e| e.signal.as_str())),
            segments = %few(opened.iter().map(|e| segment_label(&e.segment))),
            signal = %first.signal,
            segment = segment_label(&first.segment),
            detector = first.detector,
            record = record_id(first.detected_at_record).as_deref().unwrap_or("-"),
            seq = first.detected_at_record,
            change_seq = first.estimated_change_record,
            baseline = first.baseline_value.map(four_digits),
            current = first.current_value.map(four_digits),
            "Drift detected: new drift events opened; the first is named here, all of them in `sensei status`."
        );
    } else if again > 0 || !resolved.is_empty() {
        tracing::info!(
            file,
            alarms_again = again,
            resolved = resolved.len(),
            resolved_signals = %few(resolved.iter().map(|(signal, _)| *signal)),
            resolved_segments = %few(resolved.iter().map(|(_, segment)| segment_label(segment))),
            "Drift events updated: alarms again on open events are counted on them; resolved ones are back in control."
        );
    }
}

/// At most eight distinct names in their first order, joined by commas, and how many more.
fn few<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut seen = BTreeSet::new();
    let mut shown = Vec::new();
    for n in names {
        if seen.insert(n) && shown.len() < 8 {
            shown.push(n);
        }
    }
    let mut text = shown.join(",");
    if seen.len() > shown.len() {
        text.push_str(&format!(" and {} more", seen.len() - shown.len()));
    }
    text
}

/// How often the writer asks whether per-record rows are due for deletion (by age or by size).
const RETENTION_CHECK: Duration = Duration::from_secs(10);

/// How often the writer asks whether a detector has become blind.
const SIGHTLINE_CHECK: Duration = Duration::from_secs(60);

/// Per-record rows one retention step deletes at most: a step is one short transaction between
/// two files, so the writer's latency holds while a large backlog is deleted.
pub const RETENTION_STEP_ROWS: usize = 5_000;

/// How often the distillation buffer is pruned to its cap.
const BUFFER_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Retention in progress: whether another step is due, and what the steps so far deleted (said
/// in one log line when it is done).
#[derive(Debug, Default)]
struct Retention {
    more: bool,
    /// reason → (records, through seq).
    deleted: std::collections::BTreeMap<&'static str, (usize, i64)>,
}

impl Writer {
    /// One retention step, and the log line once a run of steps is over.
    fn retention_step(&mut self, retention: &mut Retention) {
        let cutoff = now_ms().saturating_sub(self.retention_ms);
        match self
            .store
            .retention_step(cutoff, self.max_bytes, RETENTION_STEP_ROWS, now_ms())
        {
            Ok(Some(step)) => {
                let entry = retention.deleted.entry(step.reason).or_default();
                entry.0 += step.records;
                entry.1 = step.through_seq;
                retention.more = step.more;
            }
            Ok(None) => retention.more = false,
            Err(e) => {
                retention.more = false;
                tracing::error!(error = %e, "Deleting per-record rows past their retention failed; tried again at the next check.");
            }
        }
        if retention.more {
            return;
        }
        for (reason, (records, through_seq)) in std::mem::take(&mut retention.deleted) {
            match reason {
                "size" => tracing::warn!(
                    records,
                    through_seq,
                    max_bytes = self.max_bytes,
                    "Deleted the oldest per-record rows to keep the database under [store] max_size; windows, drift events and the distillation buffer stay."
                ),
                _ => tracing::info!(
                    records,
                    through_seq,
                    "Deleted per-record rows past [store] record_retention; windows, drift events and the distillation buffer stay."
                ),
            }
        }
        if self.max_bytes.is_some() && self.store.retention_stuck() {
            tracing::warn!(
                max_bytes = self.max_bytes,
                "The database is over [store] max_size with no per-record rows left to delete: the rest (windows, drift events, alerts, jobs, the distillation buffer) is kept; raise max_size or lower [redistill] buffer_max_samples."
            );
        }
    }

    /// Gives records without a label the late label that waits for them, and settles a record's
    /// own label against a waiting one by arrival (the later one is kept). Returns the ids whose
    /// waiting label was taken and how many records had a label that differed from it.
    fn take_waiting_labels(
        &mut self,
        meta: &FileMeta,
        records: &mut [RecordRow],
    ) -> crate::store::Result<(Vec<String>, i64)> {
        let mut taken = Vec::new();
        let mut conflicts = 0;
        // One query per file instead of one per record when no label is waiting for its record.
        if !self.store.has_waiting_labels()? {
            return Ok((taken, conflicts));
        }
        for r in records.iter_mut() {
            let Some(waiting) = self.store.waiting_label(&r.record_id)? else {
                continue;
            };
            match r.label {
                None => r.label = Some(waiting.label),
                Some(own) if own != waiting.label => {
                    conflicts += 1;
                    if waiting.arrived_ms > meta.origin.arrived_ms {
                        r.label = Some(waiting.label);
                    }
                }
                Some(_) => {}
            }
            taken.push(r.record_id.clone());
        }
        Ok((taken, conflicts))
    }
}

/// Whether the file read was written to since: its records are not those of the whole file.
/// (A file replaced or removed since was read whole: it counts.)
fn changed_since_read(meta: &FileMeta) -> bool {
    meta.stamp
        .is_some_and(|stamp| path_now(&meta.path, &stamp) == PathNow::Changed)
}
