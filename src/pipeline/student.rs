//! The student worker: runs the student on every record, in batches of the same input shape,
//! and hands the answered batches to the dispatcher.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{FileMeta, FileWork, Prepared, StudentTime};
use crate::model::{BatchOutput, Model};
use crate::record::Record;

/// Runs the student on every record. It does nothing but batch and call ONNX Runtime: all
/// per-record work after inference happens on the [`Dispatcher`](super::Dispatcher)'s thread, so the student's
/// core is spent on the model (the throughput benchmark compares it with a bare inference loop).
pub struct StudentWorker {
    pub model: Model,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A batch the student has answered, on its way to the dispatcher.
pub struct Scored {
    pub(super) batch: Vec<Pending>,
    pub(super) result: Result<BatchOutput, String>,
}

/// A record waiting for (or in) a student batch: its file and its index there.
pub struct Pending {
    pub(super) meta: Arc<FileMeta>,
    pub(super) index: usize,
    pub(super) prepared: Prepared,
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::mpsc;

    use super::super::{Disposition, FILE_QUEUE, InFlightPaths, SCORED_QUEUE};
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
            origin: Default::default(),
            stamp: None,
            segment_values_cut: 0,
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
            remote: None,
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
