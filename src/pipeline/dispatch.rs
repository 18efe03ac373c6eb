//! The dispatcher: turns the student's answers into rows (per-record statistics, the sampling
//! decision), hands sampled records to the teacher without ever waiting for it, and sends the
//! rows to the writer.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::student::{Pending, Scored};
use super::{ByFile, FileMeta, StudentRow, TeacherJob, WriterMsg, attention_of};
use crate::compare::Comparer;
use crate::model::BatchOutput;
use crate::sampler::{Decision, Sampler};
use crate::store::RecordRow;

/// Turns student outputs into rows: per-record statistics, the sampling decision, the hand-off
/// of sampled records to the teacher, and the rows for the writer.
pub struct Dispatcher {
    pub comparer: Comparer,
    pub sampler: Sampler,
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
                tracing::error!(error = %e, records = batch.len(), "Student inference failed; the files involved stay in the inbox and are taken again after a back-off.");
                for p in &batch {
                    let row = StudentRow {
                        row: Err(e.to_string()),
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
