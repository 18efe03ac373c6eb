//! The teacher worker: runs the teacher on the sampled records (what is queued, up to a batch;
//! never waiting for more), compares it with the student, runs the shadow models on the same
//! batch, and sends the rows to the writer — through the remote shadow worker ([`super::shadow`])
//! when challengers on inference servers are to see them too. A teacher on an inference server
//! takes up to its `in_flight` batches at once; a sample it could not answer is sent as skipped
//! (its `records.sampled` code), never dropped.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::shadow::ShadowJob;
use super::{ByFile, FileMeta, WriterMsg, attention_of};
use crate::compare::{Comparer, attention_kl};
use crate::model::{BatchOutput, ModelError, Teacher};
use crate::record::Record;
use crate::sampler::{TEACHER_FAILED, TEACHER_UNREACHABLE};
use crate::store::{ShadowRow, TeacherRow};

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
    pub model: Teacher,
    pub comparer: Comparer,
    pub max_batch: usize,
    /// Name of the int64 mask input used for embedding pooling, if any.
    pub mask_input: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Challengers and a pending candidate, run on the teacher's batches after the teacher.
    pub shadow: crate::shadow::ShadowSet,
    /// Challengers on inference servers: the remote shadow worker's queue, and each one's row
    /// for a batch that finds the queue full.
    pub remote_shadow: Option<RemoteShadowQueue>,
    /// Failed teacher batches since the last line that said so.
    pub failures: FailureLog,
}

/// How often a teacher that keeps failing (wrong answers, HTTP 4xx/500, a model that errs) is
/// logged: the first failure at once, then one line per interval with what the interval held,
/// so a server that refuses every request cannot flood the journal at the sampling rate.
pub const FAILURE_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Teacher failures not yet logged (see [`FAILURE_LOG_INTERVAL`]).
#[derive(Debug, Default)]
pub struct FailureLog {
    logged_at: Option<Instant>,
    batches: u64,
    samples: u64,
}

impl FailureLog {
    /// Counts a failed batch; says whether to log it now, with the batches and samples that
    /// failed since the last line (this one included).
    pub fn failed(&mut self, samples: usize, now: Instant) -> Option<(u64, u64)> {
        self.batches += 1;
        self.samples += samples as u64;
        let due = self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= FAILURE_LOG_INTERVAL);
        if !due {
            return None;
        }
        self.logged_at = Some(now);
        let counts = (self.batches, self.samples);
        self.batches = 0;
        self.samples = 0;
        Some(counts)
    }
}

/// The way to the remote shadow worker ([`super::shadow`]).
pub struct RemoteShadowQueue {
    pub queue: SyncSender<ShadowJob>,
    /// Each challenger on a server skipped as `busy`.
    pub busy: Vec<ShadowRow>,
}

impl RemoteShadowQueue {
    /// Offers a batch the teacher answered to the remote shadow worker without waiting.
    /// `None`: the worker has it. Otherwise the batch is handed back, every challenger on a
    /// server skipped as `busy` on each record, for the writer.
    pub fn hand_off(&self, job: ShadowJob) -> Option<ShadowJob> {
        let mut job = match self.queue.try_send(job) {
            Ok(()) => return None,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
        };
        tracing::debug!(
            samples = job.rows.len(),
            "The challengers on inference servers are busy; their comparisons of these samples are skipped."
        );
        for (_, _, row) in &mut job.rows {
            row.shadow.extend(self.busy.iter().cloned());
        }
        Some(job)
    }
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
            // Take what is already queued, up to a batch per request the teacher takes at once;
            // never wait for more: the samples are already late by design and the student does
            // not depend on them.
            let (max_batch, batches) = (self.max_batch, self.model.in_flight());
            let mut jobs = vec![first];
            while jobs.len() < max_batch * batches {
                match input.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            // Batch only equal shapes, at most max_batch records each.
            let mut groups = Vec::new();
            while !jobs.is_empty() {
                let n = jobs
                    .iter()
                    .take(max_batch)
                    .take_while(|j| {
                        j.record
                            .inputs
                            .values()
                            .zip(jobs[0].record.inputs.values())
                            .all(|(a, b)| a.shape == b.shape)
                    })
                    .count();
                groups.push(jobs.drain(..n).collect::<Vec<TeacherJob>>());
            }
            if self.run_groups(groups, &writer).is_err() {
                return;
            }
        }
    }

    fn run_groups(
        &mut self,
        groups: Vec<Vec<TeacherJob>>,
        writer: &SyncSender<WriterMsg>,
    ) -> Result<(), ()> {
        let batches: Vec<Vec<&Record>> = groups
            .iter()
            .map(|g| g.iter().map(|j| &j.record).collect())
            .collect();
        let started = Instant::now();
        let results = self.model.run_many(&batches);
        if let Some(change) = self.model.take_reach_change() {
            writer
                .send(WriterMsg::TeacherReach(change))
                .map_err(|_| ())?;
        }
        let records = batches.iter().map(Vec::len).sum();
        self.metrics.batch("teacher", started.elapsed(), records);
        drop(batches);
        for (group, result) in groups.into_iter().zip(results) {
            self.finish_group(group, result, writer)?;
        }
        Ok(())
    }

    fn finish_group(
        &mut self,
        group: Vec<TeacherJob>,
        result: Result<BatchOutput, ModelError>,
        writer: &SyncSender<WriterMsg>,
    ) -> Result<(), ()> {
        let mut shadow = match &result {
            Ok(out) => {
                let records: Vec<&Record> = group.iter().map(|j| &j.record).collect();
                self.shadow.run(&records, out)
            }
            Err(_) => Vec::new(),
        };
        let (out, skipped) = match result {
            Ok(out) => (Some(out), TEACHER_FAILED),
            Err(e) if e.is_unreachable() => {
                // The model logs when its server goes out of reach and comes back; one line per
                // batch would flood the journal while it is down.
                tracing::debug!(error = %e, samples = group.len(), "The teacher could not be reached; these samples are recorded as skipped.");
                (None, TEACHER_UNREACHABLE)
            }
            Err(e) => {
                if let Some((batches, samples)) = self.failures.failed(group.len(), Instant::now())
                {
                    tracing::error!(error = %e, batches, samples, "Teacher inference failed; these samples are skipped as failed (records.sampled = 4), never compared. Further failures are logged at most once a minute, with their counts.");
                }
                (None, TEACHER_FAILED)
            }
        };
        let per_record_us = out
            .as_ref()
            .map_or(0, |o| o.elapsed.as_micros() as i64 / o.batch.max(1) as i64);
        let mut rows = Vec::with_capacity(group.len());
        for (i, job) in group.into_iter().enumerate() {
            let row = out.as_ref().ok_or(skipped).map(|out| {
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
            rows.push((job.meta, job.index, row));
        }
        // A batch the teacher answered goes on to the challengers on servers, when there is room.
        if let Some(remote) = &self.remote_shadow
            && out.is_some()
        {
            let answered = rows
                .into_iter()
                .filter_map(|(meta, index, row)| row.ok().map(|row| (meta, index, row)))
                .collect();
            return match remote.hand_off(ShadowJob { rows: answered }) {
                None => Ok(()),
                Some(job) => super::shadow::send(job, writer),
            };
        }
        let mut by_file = ByFile::new();
        for (meta, index, row) in rows {
            by_file.push(&meta, index, row);
        }
        for (meta, rows) in by_file.0 {
            writer
                .send(WriterMsg::Teacher { meta, rows })
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ShadowKind, ShadowResult, ShadowSkip};

    #[test]
    fn a_teacher_that_keeps_failing_is_logged_once_a_minute_with_counts() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.failed(3, t0), Some((1, 3)));
        let second = std::time::Duration::from_secs(1);
        for i in 1..60 {
            assert_eq!(log.failed(2, t0 + second * i), None, "{i}");
        }
        // The line after the interval counts what the interval held, itself included.
        assert_eq!(
            log.failed(4, t0 + FAILURE_LOG_INTERVAL),
            Some((60, 59 * 2 + 4))
        );
        assert_eq!(log.failed(1, t0 + FAILURE_LOG_INTERVAL + second), None);
    }

    fn row() -> TeacherRow {
        TeacherRow {
            weight: 1.0,
            teacher_prediction: Some(1),
            teacher_confidence: Some(0.9),
            comparison: Default::default(),
            latency_us: 5,
            output_shape: vec![2],
            teacher_output: vec![0.0, 1.0],
            student_output: vec![0.0, 1.0],
            teacher_attention: None,
            inputs: Vec::new(),
            shadow: Vec::new(),
        }
    }

    fn meta() -> Arc<FileMeta> {
        Arc::new(FileMeta {
            key: 1,
            path: "/inbox/a.jsonl".into(),
            name: "a.jsonl".into(),
            sha256: String::new(),
            size: 0,
            kind: "jsonl",
            records: 2,
            on_done: super::super::Disposition::Keep,
            quarantine_dir: None,
            in_flight: Default::default(),
            retry: None,
            origin: Default::default(),
            stamp: None,
            segment_values_cut: 0,
        })
    }

    #[test]
    fn a_full_remote_shadow_queue_hands_the_batch_back_with_the_challengers_skipped_as_busy() {
        let (queue, worker) = std::sync::mpsc::sync_channel(1);
        let busy = ShadowRow {
            model: "far".into(),
            sha256: "beef".into(),
            kind: ShadowKind::Challenger,
            result: ShadowResult::Skipped(ShadowSkip::Busy),
        };
        let remote = RemoteShadowQueue {
            queue,
            busy: vec![busy.clone()],
        };
        let job = || ShadowJob {
            rows: vec![(meta(), 0, row()), (meta(), 1, row())],
        };
        // The worker takes the first batch; the second finds no room and comes straight back,
        // without waiting for the worker.
        assert!(remote.hand_off(job()).is_none());
        let back = remote.hand_off(job()).expect("handed back");
        assert_eq!(back.rows.len(), 2);
        assert!(
            back.rows
                .iter()
                .all(|(_, _, r)| r.shadow == vec![busy.clone()])
        );
        let queued = worker.try_recv().expect("the first batch is queued");
        assert!(queued.rows.iter().all(|(_, _, r)| r.shadow.is_empty()));
        // A worker that is gone hands every batch back too.
        drop(worker);
        assert!(remote.hand_off(job()).is_some());
    }
}
