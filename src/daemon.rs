//! Wiring: loads the models, opens the store, starts the pipeline threads and the inbox watcher,
//! and stops them in order. [`run`] is the daemon (it returns when the shutdown future
//! completes); [`replay`] is the same pipeline over given files, returning when they are done.
//!
//! Shutdown drains: ingest stops taking files, then each stage finishes what it holds and closes
//! its output, so the writer commits every file whose records are all through and leaves the
//! rest in the inbox for the next start.

use std::future::Future;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context, anyhow};

use crate::compare::Comparer;
use crate::config::{Config, ModelConfig, Task};
use crate::ingest::{Closed, Ingest, IngestEvent, Watch};
use crate::model::{Model, Runtime};
use crate::pipeline::{
    Channels, Dispatcher, Disposition, FileCallback, StudentWorker, TeacherWorker, Writer,
    WriterReport,
};
use crate::record::InputSpec;
use crate::sampler::Sampler;
use crate::store::{Reader, Store};

/// The loaded runtime and both models.
pub struct Models {
    pub runtime: &'static Runtime,
    pub student: Model,
    pub teacher: Model,
}

/// Loads ONNX Runtime and both models; the error lists every problem found.
pub fn load_models(config: &Config) -> Result<Models, Vec<String>> {
    let runtime = crate::model::runtime(&config.onnxruntime).map_err(|e| vec![e.to_string()])?;
    let student = Model::load(runtime, "student", &config.student);
    let teacher = Model::load(runtime, "teacher", &config.teacher);
    match (student, teacher) {
        (Ok(student), Ok(teacher)) => {
            let problems = compatibility_problems(config, &student, &teacher);
            if problems.is_empty() {
                Ok(Models {
                    runtime,
                    student,
                    teacher,
                })
            } else {
                Err(problems)
            }
        }
        (s, t) => Err([s.err(), t.err()]
            .into_iter()
            .flatten()
            .map(|e| e.to_string())
            .collect()),
    }
}

/// What makes a teacher and a student impossible to compare under this config.
pub fn compatibility_problems(config: &Config, student: &Model, teacher: &Model) -> Vec<String> {
    let mut problems = Vec::new();
    for t in &teacher.inputs {
        match student.inputs.iter().find(|s| s.name == t.name) {
            None => problems.push(format!(
                "teacher input '{}' is not a student input: both models must take the same inputs",
                t.name
            )),
            Some(s) if s.elem_type != t.elem_type || !shapes_compatible(&s.shape, &t.shape) => {
                problems.push(format!(
                    "input '{}': student takes {} {}, teacher takes {} {}",
                    t.name,
                    s.elem_type,
                    s.shape_display(),
                    t.elem_type,
                    t.shape_display()
                ))
            }
            Some(_) => {}
        }
    }
    for s in &student.inputs {
        if !teacher.inputs.iter().any(|t| t.name == s.name) {
            problems.push(format!(
                "student input '{}' is not a teacher input: both models must take the same inputs",
                s.name
            ));
        }
    }
    let (so, to) = (&student.output.shape, &teacher.output.shape);
    match config.compare.task {
        Task::Classification | Task::Regression => {
            if so.len() != to.len() || !shapes_compatible(so, to) {
                problems.push(format!(
                    "outputs are not comparable: student '{}' is {}, teacher '{}' is {}",
                    student.output.name,
                    dims(so),
                    teacher.output.name,
                    dims(to)
                ));
            }
        }
        Task::Embedding => {
            // Pooled embeddings compare on the last axis only.
            if so.last() != to.last()
                && so.last().copied().flatten().is_some()
                && to.last().copied().flatten().is_some()
            {
                problems.push(format!(
                    "embeddings are not comparable: student dimension {}, teacher dimension {}",
                    dims(so),
                    dims(to)
                ));
            }
        }
    }
    if let Some(mask) = &config.compare.mask_input
        && !student.inputs.iter().any(|i| &i.name == mask)
    {
        problems.push(format!(
            "compare.mask_input '{mask}' is not an input of the models"
        ));
    }
    problems
}

/// Notes that are not errors: attention present on one side only or with different shapes.
pub fn compatibility_notes(student: &Model, teacher: &Model) -> Vec<String> {
    match (&student.attention, &teacher.attention) {
        (Some(s), Some(t)) if !shapes_compatible(&s.shape, &t.shape) => vec![format!(
            "attention shapes differ (student {}, teacher {}): attention KL is not computed",
            dims(&s.shape),
            dims(&t.shape)
        )],
        (Some(_), None) | (None, Some(_)) => {
            vec!["only one model exposes attention: attention KL is not computed".into()]
        }
        _ => Vec::new(),
    }
}

fn shapes_compatible(a: &[Option<usize>], b: &[Option<usize>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.is_none() || y.is_none() || x == y)
}

/// `[4, 8, 8]` or `[?, 10]`.
pub fn dims(shape: &[Option<usize>]) -> String {
    InputSpec {
        name: String::new(),
        elem_type: crate::record::ElemType::F32,
        shape: shape.to_vec(),
    }
    .shape_display()
}

/// The running threads of one pipeline.
struct Threads {
    student: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    teacher: JoinHandle<()>,
    writer: JoinHandle<WriterReport>,
}

impl Threads {
    fn join(self) -> anyhow::Result<WriterReport> {
        self.student
            .join()
            .map_err(|_| anyhow!("student worker panicked"))?;
        self.dispatcher
            .join()
            .map_err(|_| anyhow!("dispatcher panicked"))?;
        self.teacher
            .join()
            .map_err(|_| anyhow!("teacher worker panicked"))?;
        self.writer.join().map_err(|_| anyhow!("writer panicked"))
    }
}

fn model_worker_parts(config: &Config) -> Comparer {
    Comparer {
        task: config.compare.task,
        output_kind: config.compare.output_kind,
        pooling: config.compare.pooling,
    }
}

fn batch_limits(m: &ModelConfig) -> (usize, std::time::Duration) {
    (m.max_batch.max(1), m.max_wait)
}

/// Starts student, teacher and writer; returns the ingest side and the threads.
fn start(
    config: &Config,
    models: Models,
    store: Store,
    done: Disposition,
    quarantine_dir: Option<PathBuf>,
    ledger: Option<Reader>,
    on_file: Option<FileCallback>,
) -> anyhow::Result<(Ingest, Threads)> {
    let Channels {
        work: (work_tx, work_rx),
        scored: (scored_tx, scored_rx),
        teacher: (teacher_tx, teacher_rx),
        writer: (writer_tx, writer_rx),
    } = Channels::new(config.sampling.queue);
    let known_segments = store.known_segments().unwrap_or_default();
    let specs = models.student.inputs.clone();
    let comparer = model_worker_parts(config);
    let (max_batch, max_wait) = batch_limits(&config.student);
    let writer = Writer {
        store,
        student_sha: models.student.sha256[..12].to_string(),
        teacher_sha: models.teacher.sha256[..12].to_string(),
        window_ms: config.store.window.as_millis().max(1) as i64,
        retention_ms: config
            .store
            .record_retention
            .as_millis()
            .min(i64::MAX as u128) as i64,
        on_file,
    }
    .spawn(writer_rx)
    .context("starting the writer thread")?;
    let teacher = TeacherWorker {
        model: models.teacher,
        comparer: comparer.clone(),
        max_batch: config.teacher.max_batch.max(1),
        mask_input: config.compare.mask_input.clone(),
    }
    .spawn(teacher_rx, writer_tx.clone())
    .context("starting the teacher thread")?;
    let dispatcher = Dispatcher {
        comparer,
        sampler: Sampler::new(&config.sampling),
    }
    .spawn(scored_rx, Some(teacher_tx), writer_tx.clone())
    .context("starting the dispatch thread")?;
    let student = StudentWorker {
        model: models.student,
        max_batch,
        max_wait,
    }
    .spawn(work_rx, scored_tx)
    .context("starting the student thread")?;
    let ingest = Ingest::new(
        config,
        specs,
        known_segments,
        done,
        quarantine_dir,
        ledger,
        work_tx,
        writer_tx,
    );
    Ok((
        ingest,
        Threads {
            student,
            dispatcher,
            teacher,
            writer,
        },
    ))
}

fn prepare_dirs(config: &Config) -> anyhow::Result<()> {
    for dir in [
        &config.state_dir,
        &config.inbox.dir,
        &config.inbox.done_dir,
        &config.inbox.quarantine_dir,
    ] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Runs the daemon until `shutdown` completes, then drains and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_file: Option<FileCallback>,
) -> anyhow::Result<WriterReport> {
    prepare_dirs(&config)?;
    let store = Store::open(&config.store.path)?;
    let models = load_models(&config).map_err(|p| anyhow!("{}", p.join("\n")))?;
    tracing::info!(
        library = %models.runtime.library.display(),
        version = %models.runtime.version,
        student = %config.student.path.display(),
        teacher = %config.teacher.path.display(),
        "Models loaded."
    );
    let ledger = Reader::open(&config.store.path)?;
    let (mut ingest, threads) = start(
        &config,
        models,
        store,
        Ingest::done_disposition(&config),
        Some(config.inbox.quarantine_dir.clone()),
        Some(ledger),
        on_file,
    )?;
    let inbox = config
        .inbox
        .dir
        .canonicalize()
        .with_context(|| format!("inbox {}", config.inbox.dir.display()))?;
    let watch = Watch {
        dir: inbox.clone(),
        quiet: config.inbox.quiet,
        rescan_interval: config.inbox.rescan_interval,
        poll: config.inbox.poll,
    };
    let (events_tx, events_rx) = mpsc::channel();
    let watcher = watch
        .start(events_tx.clone())
        .with_context(|| format!("watching {}", inbox.display()))?;
    tracing::info!(inbox = %inbox.display(), "Watching the inbox.");
    let ingest_thread = std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || {
            let result = watch.run(&mut ingest, events_rx);
            drop(ingest); // closes the pipeline's input
            result
        })
        .context("starting the ingest thread")?;

    shutdown.await;
    tracing::info!("Shutting down: no new files; draining the pipeline.");
    drop(watcher);
    let _ = events_tx.send(IngestEvent::Stop);
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<WriterReport> {
        match ingest_thread.join() {
            Ok(Ok(())) | Ok(Err(Closed)) => {}
            Err(_) => return Err(anyhow!("ingest thread panicked")),
        }
        threads.join()
    })
    .await
    .context("joining the pipeline")??;
    tracing::info!(
        files = report.files_committed,
        records = report.records_committed,
        quarantined = report.files_quarantined,
        "Stopped."
    );
    Ok(report)
}

/// Runs the daemon's pipeline over the given files (directories: their files, sorted), then
/// returns. Files are left where they are; bad ones are reported, not moved.
pub fn replay(
    config: &Config,
    paths: &[PathBuf],
    on_file: Option<FileCallback>,
) -> anyhow::Result<WriterReport> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let store = Store::open(&config.store.path)?;
    let models = load_models(config).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let ledger = Reader::open(&config.store.path)?;
    let (mut ingest, threads) = start(
        config,
        models,
        store,
        Disposition::Keep,
        None,
        Some(ledger),
        on_file,
    )?;
    let files = expand(paths)?;
    for file in &files {
        if ingest.process(file).is_err() {
            break;
        }
    }
    drop(ingest);
    threads.join()
}

/// Files named directly, plus the regular files of named directories (sorted, hidden and
/// temporary names skipped).
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|f| f.is_file())
                .filter(|f| {
                    f.file_name()
                        .is_some_and(|n| !crate::ingest::is_ignored_name(&n.to_string_lossy()))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}
