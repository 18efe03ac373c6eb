//! Monitoring overhead per record, excluding inference (criterion).
//!
//!     cargo bench --bench overhead
//!
//! Everything sensei does for a record between the models' answers and the committed row, on
//! the demo models' real outputs for 1000 field records (one file), with an active baseline so
//! that every detector runs:
//!
//! - the dispatcher: output statistics, input features, the sampling decision (rate 0.1);
//! - the teacher worker, for sampled records: every comparison metric and attention KL;
//! - the writer: the drift detectors (`pipeline::observe_records`) and the file's SQLite
//!   transaction (`Store::commit_file`: ledger row, record rows, teacher samples with their
//!   inputs and outputs, window sums, detector changes).
//!
//! The inference itself is done once, before timing. Each iteration is one new file of the same
//! 1000 records, into one database that grows through the run. What ingest makes for a record
//! (its id, segment and input tensors, owned) is made for each file outside the timing, and the
//! rows take it over, as the daemon's dispatcher and teacher worker do. Criterion reports the
//! time per file; divided by 1000 it is the time per record (the goal is ≤ 5 µs).
//!
//! The database lives in the temporary directory (`TMPDIR`, on disk) and, in a second run of the
//! same benchmark, in `/dev/shm` (memory): the difference is what the disk costs (WAL writes and
//! checkpoint fsyncs), which depends on the machine's disk more than on sensei. On disk it runs
//! once more with `[store] synchronous = "full"` (an fsync per file commit).
//!
//! The store runs as the daemon's does, with checkpoints on a thread of their own. Outside
//! criterion, each place also compares it, in the same run, with a store whose writer
//! checkpoints by itself (SQLite's default): the writer's path by the wall clock, and the CPU
//! time of all threads, the checkpointer's included.

mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sensei::compare::{Comparer, attention_kl, input_features};
use sensei::config::Config;
use sensei::drift::DriftMonitor;
use sensei::model::{BatchOutput, Model};
use sensei::record::{Origin, Record, Tensor};
use sensei::sampler::{Decision, Sampler};
use sensei::store::{FileCommit, RecordRow, Store, TeacherRow};

use support::*;

const RECORDS: usize = 1000;

struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    records: Vec<Record>,
    student: BatchOutput,
    teacher: BatchOutput,
    store: Store,
    monitor: DriftMonitor,
    comparer: Comparer,
    sampler: Sampler,
    /// Files made by [`Fixture::next_file`].
    made: u64,
    /// Files committed.
    files: u64,
}

/// What ingest hands on for one file: each record's id, segment and inputs, owned.
struct FileInput {
    ids: Vec<String>,
    segments: Vec<String>,
    records: Vec<Record>,
}

impl Fixture {
    /// `background`: checkpoints on a thread of their own, as the daemon does; otherwise the
    /// writer checkpoints by itself (SQLite's default), for comparison.
    fn new(root: &std::path::Path, background: bool) -> Fixture {
        let dir = tempfile::tempdir_in(root).expect("tempdir");
        let config = Config::from_toml(
            &config_toml(&dir.path().join("state"), 0.1, ""),
            &dir.path().join("bench.toml"),
        )
        .expect("config");
        sensei::baseline::measure(&config, &[demo_model("lab.npz")]).expect("baseline");
        let rows = field_rows();
        let records: Vec<Record> = (0..RECORDS)
            .map(|i| Record {
                id: None,
                ts: None,
                segment: Default::default(),
                inputs: [(
                    "x".to_string(),
                    Tensor::f32(vec![8, 8], row(&rows, i).to_vec()),
                )]
                .into(),
                label: None,
                origin: Origin::Index(i),
            })
            .collect();
        let rt = sensei::model::runtime(&config.onnxruntime).expect("ONNX Runtime");
        let refs: Vec<&Record> = records.iter().collect();
        let student = Model::load(rt, "student", &config.student)
            .expect("student")
            .run(&refs)
            .expect("student run");
        let teacher = Model::load(rt, "teacher", &config.teacher)
            .expect("teacher")
            .run(&refs)
            .expect("teacher run");
        let mut store = Store::open(&config.store.path).expect("store");
        if background {
            store
                .checkpoint_in_background(sensei::store::CHECKPOINT_INTERVAL)
                .expect("checkpointer");
        }
        let monitor = sensei::daemon::drift_monitor(&config, &store).expect("active baseline");
        let comparer = Comparer {
            task: config.compare.task,
            output_kind: config.compare.output_kind,
            pooling: config.compare.pooling,
        };
        let sampler = Sampler::new(&config.sampling, None);
        Fixture {
            _dir: dir,
            config,
            records,
            student,
            teacher,
            store,
            monitor,
            comparer,
            sampler,
            made: 0,
            files: 0,
        }
    }

    /// The next file's records as ingest hands them on (not timed).
    fn next_file(&mut self) -> FileInput {
        self.made += 1;
        let file = self.made;
        FileInput {
            // Producers' ids are unique and usually increase: `<file>-<record>`.
            ids: (0..RECORDS).map(|i| format!("{file:08}-{i:04}")).collect(),
            segments: (0..RECORDS)
                .map(|i| format!("line={}", if i % 2 == 0 { "A" } else { "B" }))
                .collect(),
            records: self.records.clone(),
        }
    }

    /// The dispatcher's and the teacher worker's work for every record of one file.
    fn rows(&mut self, input: FileInput) -> Vec<RecordRow> {
        let now = Instant::now();
        let now_ms = sensei::time::now_ms();
        input
            .ids
            .into_iter()
            .zip(input.segments)
            .zip(input.records)
            .enumerate()
            .map(|(i, ((id, segment), record))| {
                let out = self.student.output_of(i);
                let stats = self.comparer.stats(out);
                let features = input_features(&record);
                let decision = self
                    .sampler
                    .decide(&id, stats.confidence.map(|c| 1.0 - c), now);
                let teacher = match decision {
                    Decision::Sampled { weight } => Some(self.teacher_row(i, record, weight)),
                    _ => None,
                };
                RecordRow {
                    record_id: id,
                    features,
                    ts_ms: now_ms,
                    segment,
                    prediction: stats.prediction,
                    confidence: stats.confidence,
                    entropy: stats.entropy,
                    value: stats.value,
                    latency_us: 20,
                    sampled: decision.code(),
                    label: None,
                    teacher,
                }
            })
            .collect()
    }

    fn teacher_row(&self, i: usize, record: Record, weight: f64) -> TeacherRow {
        let (t, s) = (self.teacher.output_of(i), self.student.output_of(i));
        let shape = &self.teacher.output_shape;
        let mut comparison = self.comparer.compare(t, s, shape, None);
        let teacher_attention = self.teacher.attention.as_ref().map(|(shape, _)| {
            (
                shape.clone(),
                self.teacher.attention_of(i).unwrap().to_vec(),
            )
        });
        if let (Some((ts, td)), Some((ss, _)), Some(sd)) = (
            &teacher_attention,
            &self.student.attention,
            self.student.attention_of(i),
        ) {
            comparison.attention_kl = attention_kl(td, ts, sd, ss);
        }
        let stats = self.comparer.stats(t);
        TeacherRow {
            weight,
            teacher_prediction: stats.prediction,
            teacher_confidence: stats.confidence,
            comparison,
            latency_us: 130,
            output_shape: shape.clone(),
            teacher_output: t.to_vec(),
            student_output: s.to_vec(),
            teacher_attention,
            inputs: record.inputs.into_iter().collect(),
            shadow: Vec::new(),
        }
    }

    /// The writer's work for one file: the check for ids counted before, the detectors, then
    /// the file's transaction.
    fn commit(&mut self, records: Vec<RecordRow>) {
        self.files += 1;
        let now_ms = sensei::time::now_ms();
        let ids: Vec<&str> = records.iter().map(|r| r.record_id.as_str()).collect();
        let counted = self.store.counted_ids(&ids).expect("id check");
        assert!(!counted.contains(&true), "every id is new");
        drop(ids);
        let first_seq = self.store.next_seq().expect("seq");
        let delta =
            sensei::pipeline::observe_records(&mut self.monitor, first_seq, &records, now_ms);
        let file = FileCommit {
            first_seq,
            name: format!("part-{}.npz", self.files),
            sha256: format!("{:064x}", self.files),
            size: 1,
            kind: "npz",
            student: "student00000".into(),
            teacher: "teacher00000".into(),
            records,
            origin: Default::default(),
            duplicates: 0,
            conflicts: 0,
            labels_taken: Vec::new(),
            segment_values_cut: 0,
        };
        let window_ms = self.config.store.window.as_millis() as i64;
        self.store
            .commit_file(
                &file,
                window_ms,
                now_ms,
                Some((self.monitor.baseline_version, &delta)),
            )
            .expect("commit");
    }
}

/// CPU time of every thread of this process so far, in nanoseconds
/// (`/proc/self/task/*/schedstat`).
fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Outside criterion: `files` files through the writer's path, timed by the wall clock (that
/// path's time) and by the CPU time of all threads (which adds the background checkpointer's);
/// µs per record.
fn writer_and_cpu_time(fx: &mut Fixture, files: usize) -> (f64, f64) {
    let inputs: Vec<FileInput> = (0..files).map(|_| fx.next_file()).collect();
    let (wall, cpu) = (Instant::now(), process_cpu_ns());
    for input in inputs {
        let rows = fx.rows(input);
        fx.commit(rows);
    }
    let wall = wall.elapsed();
    // The background checkpointer copies what is left of these files now, so that its work
    // counts here and not in the next round, which may be the other fixture's.
    if let Some(done) = fx.store.background_checkpoint_now() {
        done.expect("checkpoint");
    }
    let per_record = |ns: f64| ns / (files * RECORDS) as f64 / 1000.0;
    (
        per_record(wall.as_nanos() as f64),
        per_record((process_cpu_ns() - cpu) as f64),
    )
}

/// The daemon's background checkpointer against SQLite's default (the writer checkpoints at
/// 1000 pages of log), alternately, `rounds` rounds of `files` files each; prints the medians.
fn checkpoint_comparison(daemon: &mut Fixture, root: &std::path::Path, place: &str) {
    let (rounds, files) = (3, 100);
    let mut writer = Fixture::new(root, false);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(writer_and_cpu_time(daemon, files));
        theirs.push(writer_and_cpu_time(&mut writer, files));
    }
    for (name, runs) in [
        ("background checkpointer", ours),
        ("writer checkpoints (SQLite default)", theirs),
    ] {
        let wall = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        println!(
            "database {place}, {name}: {wall:.2} µs per record on the writer's path, \
             {cpu:.2} µs of CPU per record in all threads ({rounds} × {files} files, medians)"
        );
    }
}

/// `work` on `n` new files, timed without what ingest makes for them (see
/// [`Fixture::next_file`]).
fn timed(fx: &mut Fixture, n: u64, mut work: impl FnMut(&mut Fixture, FileInput)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let input = fx.next_file();
        let start = Instant::now();
        work(fx, input);
        total += start.elapsed();
    }
    total
}

/// The dispatcher's, the teacher worker's and the writer's work on `n` files.
fn monitor(fx: &mut Fixture, n: u64) -> Duration {
    timed(fx, n, |fx, input| {
        let rows = fx.rows(input);
        fx.commit(rows);
    })
}

fn overhead(c: &mut Criterion) {
    let mut places = vec![("on disk", std::env::temp_dir())];
    let shm = std::path::PathBuf::from("/dev/shm");
    if shm.is_dir() {
        places.push(("in memory", shm));
    }
    for (place, root) in places {
        let mut fx = Fixture::new(&root, true);
        let mut group = c.benchmark_group(format!("1000 records, database {place}"));
        group.throughput(Throughput::Elements(RECORDS as u64));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(10));
        group.bench_function("all monitoring", |b| b.iter_custom(|n| monitor(&mut fx, n)));
        checkpoint_comparison(&mut fx, &root, place);
        if place == "on disk" {
            // `[store] synchronous = "full"`: one fsync of the log per file commit.
            fx.store
                .set_synchronous(sensei::config::Synchronous::Full)
                .expect("synchronous");
            group.bench_function("all monitoring, synchronous = full", |b| {
                b.iter_custom(|n| monitor(&mut fx, n))
            });
        }
        if place == "in memory" {
            // The parts, to see where the time goes.
            group.bench_function("dispatch and comparisons", |b| {
                b.iter_custom(|n| {
                    timed(&mut fx, n, |fx, input| {
                        drop(std::hint::black_box(fx.rows(input)))
                    })
                })
            });
            let input = fx.next_file();
            let rows = fx.rows(input);
            group.bench_function("drift detectors", |b| {
                b.iter(|| {
                    let now_ms = sensei::time::now_ms();
                    let first_seq = fx.store.next_seq().expect("seq");
                    std::hint::black_box(sensei::pipeline::observe_records(
                        &mut fx.monitor,
                        first_seq,
                        &rows,
                        now_ms,
                    ))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);

// The same allocator as the `sensei` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
