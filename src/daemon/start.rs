//! Starting one pipeline: the store, the student, dispatcher, teacher and writer threads with the
//! drift detectors and shadow models they need, then the inbox watcher and the ingest thread.
//! A [`Running`] pipeline drains on request.

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use anyhow::{Context, anyhow};

use crate::compare::Comparer;
use crate::config::{Config, ModelConfig, SamplingPolicy};
use crate::drift::{DriftMonitor, Reference};
use crate::ingest::{Closed, Ingest, IngestEvent, Watch};
use crate::metrics::Metrics;
use crate::model::Models;
use crate::monitor::UncertaintyPolicy;
use crate::pipeline::{
    Channels, Dispatcher, Disposition, FileCallback, InFlightPaths, RemoteShadowQueue,
    RemoteShadowWorker, StudentWorker, TeacherWorker, Writer, WriterReport,
};
use crate::sampler::Sampler;
use crate::shadow::{RemoteShadows, ShadowSet};
use crate::store::{Reader, Store};

/// The running threads of one pipeline.
pub(super) struct Threads {
    student: JoinHandle<crate::pipeline::StudentTime>,
    dispatcher: JoinHandle<()>,
    teacher: JoinHandle<()>,
    /// The remote shadow worker, when challengers on inference servers run.
    remote_shadow: Option<JoinHandle<()>>,
    writer: JoinHandle<WriterReport>,
}

impl Threads {
    pub(super) fn join(self) -> anyhow::Result<WriterReport> {
        let student = self
            .student
            .join()
            .map_err(|_| anyhow!("student worker panicked"))?;
        self.dispatcher
            .join()
            .map_err(|_| anyhow!("dispatcher panicked"))?;
        self.teacher
            .join()
            .map_err(|_| anyhow!("teacher worker panicked"))?;
        if let Some(remote_shadow) = self.remote_shadow {
            remote_shadow
                .join()
                .map_err(|_| anyhow!("remote shadow worker panicked"))?;
        }
        let mut report = self.writer.join().map_err(|_| anyhow!("writer panicked"))?;
        report.student = student;
        Ok(report)
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

/// The detectors of the active baseline, with their persisted state; `None` (detection off,
/// said in the log) when no baseline has been made yet.
pub fn drift_monitor(config: &Config, store: &Store) -> Option<DriftMonitor> {
    let baseline = match store.active_baseline() {
        Ok(Some(b)) => b,
        Ok(None) => {
            tracing::warn!(
                "No active baseline: drift detection is off. Run `sensei baseline DATA…` on the lab reference set."
            );
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot read the active baseline: drift detection is off.");
            return None;
        }
    };
    let mut reference: Reference = match serde_json::from_str(&baseline.profile) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(version = baseline.version, error = %e, "The active baseline's profile is unreadable: drift detection is off.");
            return None;
        }
    };
    let recalibrated = reference.clip_tails(config);
    if !recalibrated.is_empty() {
        tracing::info!(
            version = baseline.version,
            signals = ?recalibrated,
            "The active baseline's profile predates clipped CUSUM increments: recalibrated these signals from its lab values (repeated at every start until `sensei baseline` stores a new profile)."
        );
    }
    let mut monitor = DriftMonitor::new(baseline.version, reference, config);
    match store.detector_states(baseline.version) {
        Ok(rows) => monitor.restore(rows),
        Err(e) => tracing::error!(error = %e, "Cannot read detector state; detectors start fresh."),
    }
    tracing::info!(
        version = baseline.version,
        records = baseline.records,
        "Drift detection armed on the active baseline."
    );
    Some(monitor)
}

/// The teacher sampling policy: uncertainty-weighted needs the scale fitted on the lab set.
fn sampling_policy(
    config: &Config,
    fitted: Option<UncertaintyPolicy>,
) -> Option<UncertaintyPolicy> {
    match config.sampling.policy {
        SamplingPolicy::Uniform => None,
        SamplingPolicy::Uncertainty if fitted.is_none() => {
            tracing::warn!(
                "sampling.policy = \"uncertainty\" needs a baseline fitted with that policy; sampling uniformly until `sensei baseline` has run."
            );
            None
        }
        SamplingPolicy::Uncertainty => fitted,
    }
}

/// Starts student, teacher and writer; returns the ingest side and the threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    config: &Config,
    models: Models,
    mut store: Store,
    done: Disposition,
    quarantine_dir: Option<PathBuf>,
    ledger: Option<Reader>,
    on_file: Option<FileCallback>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Ingest, Threads)> {
    let Channels {
        work: (work_tx, work_rx),
        scored: (scored_tx, scored_rx),
        teacher: (teacher_tx, teacher_rx),
        writer: (writer_tx, writer_rx),
    } = Channels::new(config.sampling.queue);
    let (shadow, remote_shadows) = shadow_set(config, &models, &mut store);
    let known_segments = store.known_segments().unwrap_or_default();
    let specs = models.student.inputs.clone();
    let classes = match config.compare.task {
        crate::config::Task::Classification => {
            models.student.output.shape.last().copied().flatten()
        }
        _ => None,
    };
    let comparer = model_worker_parts(config);
    let (max_batch, max_wait) = batch_limits(&config.student);
    let monitor = drift_monitor(config, &store);
    let monitor_policy = monitor.as_ref().and_then(|m| m.reference().sampling_policy);
    let writer = Writer {
        monitor,
        store,
        student_sha: models.student.sha256[..12].to_string(),
        teacher_sha: models.teacher.sha256()[..12].to_string(),
        window_ms: config.store.window.as_millis().max(1) as i64,
        retention_ms: config
            .store
            .record_retention
            .as_millis()
            .min(i64::MAX as u128) as i64,
        max_bytes: config.store.max_bytes,
        buffer: config.redistill.buffer,
        on_file,
        metrics: metrics.clone(),
    }
    .spawn(writer_rx)
    .context("starting the writer thread")?;
    let (remote_shadow, remote_shadow_thread) = if remote_shadows.is_empty() {
        (None, None)
    } else {
        // As many samples wait for the challengers on servers as for the teacher.
        let capacity = config
            .sampling
            .queue
            .div_ceil(config.teacher.max_batch.max(1))
            .max(2 * remote_shadows.in_flight());
        let (queue, jobs) = mpsc::sync_channel(capacity);
        let busy = remote_shadows.skipped(crate::store::ShadowSkip::Busy);
        let thread = RemoteShadowWorker {
            shadows: remote_shadows,
        }
        .spawn(jobs, writer_tx.clone())
        .context("starting the remote shadow thread")?;
        (Some(RemoteShadowQueue { queue, busy }), Some(thread))
    };
    let teacher = TeacherWorker {
        model: models.teacher,
        comparer: comparer.clone(),
        max_batch: config.teacher.max_batch.max(1),
        mask_input: config.compare.mask_input.clone(),
        metrics: metrics.clone(),
        shadow,
        remote_shadow,
        failures: Default::default(),
    }
    .spawn(teacher_rx, writer_tx.clone())
    .context("starting the teacher thread")?;
    let dispatcher = Dispatcher {
        comparer,
        sampler: Sampler::new(&config.sampling, sampling_policy(config, monitor_policy)),
    }
    .spawn(scored_rx, Some(teacher_tx), writer_tx.clone())
    .context("starting the dispatch thread")?;
    let student = StudentWorker {
        model: models.student,
        max_batch,
        max_wait,
        metrics,
    }
    .spawn(work_rx, scored_tx)
    .context("starting the student thread")?;
    let mut ingest = Ingest::new(
        config,
        specs,
        known_segments,
        done,
        quarantine_dir,
        ledger,
        work_tx,
        writer_tx,
    );
    ingest.classes = classes;
    Ok((
        ingest,
        Threads {
            student,
            dispatcher,
            teacher,
            remote_shadow: remote_shadow_thread,
            writer,
        },
    ))
}

/// Loads the shadow models (challengers and the candidate awaiting a decision) and records
/// which run. Nothing here can stop the pipeline: a problem leaves a model out.
fn shadow_set(config: &Config, models: &Models, store: &mut Store) -> (ShadowSet, RemoteShadows) {
    let candidate = if config.shadow.candidate {
        match store.pending_candidate() {
            Ok(Some((job, output))) => {
                let path = PathBuf::from(output);
                if path.is_file() {
                    Some((job, path))
                } else {
                    tracing::warn!(job, path = %path.display(), "The pending candidate's file is gone; it does not run in shadow.");
                    None
                }
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "Looking up the pending candidate failed; it does not run in shadow.");
                None
            }
        }
    } else {
        None
    };
    let (set, remote, rows) = ShadowSet::load(
        config,
        models.runtime,
        &models.teacher,
        &models.student.sha256,
        candidate,
    );
    if let Err(e) = store.register_shadow_models(&rows, crate::time::now_ms()) {
        tracing::error!(error = %e, "Recording the shadow models failed; they run all the same.");
    }
    (set, remote)
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

/// One running pipeline: the inbox watcher, the ingest thread and the pipeline threads.
pub(super) struct Running {
    pub(super) watcher: Box<dyn notify::Watcher + Send>,
    pub(super) events: mpsc::Sender<IngestEvent>,
    pub(super) stop: Arc<std::sync::atomic::AtomicBool>,
    pub(super) ingest: JoinHandle<Result<(), Closed>>,
    pub(super) threads: Threads,
    pub(super) in_flight: InFlightPaths,
    /// sha256 of the model files this pipeline serves, to notice a file replaced in place.
    pub(super) serving: ServingModels,
}

/// The content hashes of the models a pipeline was started with, and the baseline version its
/// detectors were armed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServingModels {
    pub(super) student: String,
    pub(super) teacher: String,
    pub(super) baseline: Option<i64>,
}

impl Running {
    /// Opens the store, starts the pipeline threads, registers the watcher and starts the
    /// ingest thread, whose first act is the catch-up scan.
    pub(super) fn start(
        config: &Config,
        models: Models,
        metrics: &Arc<Metrics>,
        on_file: Option<FileCallback>,
    ) -> anyhow::Result<Running> {
        prepare_dirs(config)?;
        let mut store = Store::open(&config.store.path)?;
        store.set_synchronous(config.store.synchronous)?;
        store.checkpoint_in_background(crate::store::CHECKPOINT_INTERVAL)?;
        let ledger = Reader::open(&config.store.path)?;
        let serving = ServingModels {
            student: models.student.sha256.clone(),
            teacher: models.teacher.sha256().to_owned(),
            baseline: active_baseline_version(&ledger),
        };
        let (mut ingest, threads) = start(
            config,
            models,
            store,
            Ingest::done_disposition(config),
            Some(config.inbox.quarantine_dir.clone()),
            Some(ledger),
            on_file,
            metrics.clone(),
        )?;
        let in_flight = ingest.in_flight.clone();
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
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let stop = watch.stop.clone();
        let (events, events_rx) = mpsc::channel();
        let retries = events.clone();
        ingest.retry = Some(crate::pipeline::Retry::new(move |path, when| {
            let _ = retries.send(IngestEvent::Retry(path, when));
        }));
        let watcher = watch
            .start(events.clone())
            .with_context(|| format!("watching {}", inbox.display()))?;
        tracing::info!(inbox = %inbox.display(), "Watching the inbox.");
        let ingest = std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || {
                let result = watch.run(&mut ingest, events_rx);
                drop(ingest); // closes the pipeline's input
                result
            })
            .context("starting the ingest thread")?;
        Ok(Running {
            watcher,
            events,
            stop,
            ingest,
            threads,
            in_flight,
            serving,
        })
    }

    /// Stops taking files and waits (on a blocking thread) until every stage has finished what
    /// it holds.
    pub(super) fn drain(self) -> tokio::task::JoinHandle<anyhow::Result<WriterReport>> {
        let Running {
            watcher,
            events,
            stop,
            ingest,
            threads,
            ..
        } = self;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(watcher);
        let _ = events.send(IngestEvent::Stop);
        tokio::task::spawn_blocking(move || {
            match ingest.join() {
                Ok(Ok(())) | Ok(Err(Closed)) => {}
                Err(_) => return Err(anyhow!("ingest thread panicked")),
            }
            threads.join()
        })
    }
}

/// The version of the active baseline, if there is one and it can be read.
pub(super) fn active_baseline_version(reader: &Reader) -> Option<i64> {
    reader.active_baseline().ok().flatten().map(|b| b.version)
}
