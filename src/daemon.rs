//! Wiring: loads the models, opens the store, starts the pipeline threads and the inbox watcher,
//! and stops them in order. [`run`] is the daemon (it returns when asked to stop through its
//! [`Control`] channel); [`replay`] is the same pipeline over given files, returning when they
//! are done.
//!
//! Shutdown drains: ingest stops taking files, then each stage finishes what it holds and closes
//! its output, so the writer commits every file whose records are all through and leaves the
//! rest in the inbox for the next start. The drain is bounded by `[daemon] drain_timeout`; a
//! second stop request cuts it short. A reload is a drain followed by a fresh start in the same
//! process. [`run`] also owns the service side: sd_notify READY/RELOADING/STOPPING, the watchdog
//! pings (only while the pipeline's heartbeat advances) and the HTTP server.

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::compare::Comparer;
use crate::config::SamplingPolicy;
use crate::config::{Config, ModelConfig};
use crate::drift::{DriftMonitor, Reference};
use crate::ingest::{Closed, Ingest, IngestEvent, Watch};
use crate::metrics::Metrics;
use crate::model::{Models, load_models};
use crate::monitor::UncertaintyPolicy;
use crate::pipeline::{
    Channels, Dispatcher, Disposition, FileCallback, InFlightPaths, StudentWorker, TeacherWorker,
    Writer, WriterReport,
};
use crate::sampler::Sampler;
use crate::shadow::ShadowSet;
use crate::store::{Reader, Store};

/// The running threads of one pipeline.
struct Threads {
    student: JoinHandle<crate::pipeline::StudentTime>,
    dispatcher: JoinHandle<()>,
    teacher: JoinHandle<()>,
    writer: JoinHandle<WriterReport>,
}

impl Threads {
    fn join(self) -> anyhow::Result<WriterReport> {
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
    let reference: Reference = match serde_json::from_str(&baseline.profile) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(version = baseline.version, error = %e, "The active baseline's profile is unreadable: drift detection is off.");
            return None;
        }
    };
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
fn start(
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
    let shadow = shadow_set(config, &models, &mut store);
    let known_segments = store.known_segments().unwrap_or_default();
    let specs = models.student.inputs.clone();
    let comparer = model_worker_parts(config);
    let (max_batch, max_wait) = batch_limits(&config.student);
    let monitor = drift_monitor(config, &store);
    let monitor_policy = monitor.as_ref().and_then(|m| m.reference().sampling_policy);
    let writer = Writer {
        monitor,
        store,
        student_sha: models.student.sha256[..12].to_string(),
        teacher_sha: models.teacher.sha256[..12].to_string(),
        window_ms: config.store.window.as_millis().max(1) as i64,
        retention_ms: config
            .store
            .record_retention
            .as_millis()
            .min(i64::MAX as u128) as i64,
        buffer: config.redistill.buffer,
        on_file,
        metrics: metrics.clone(),
    }
    .spawn(writer_rx)
    .context("starting the writer thread")?;
    let teacher = TeacherWorker {
        model: models.teacher,
        comparer: comparer.clone(),
        max_batch: config.teacher.max_batch.max(1),
        mask_input: config.compare.mask_input.clone(),
        metrics: metrics.clone(),
        shadow,
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

/// Loads the shadow models (challengers and the candidate awaiting a decision) and records
/// which run. Nothing here can stop the pipeline: a problem leaves a model out.
fn shadow_set(config: &Config, models: &Models, store: &mut Store) -> ShadowSet {
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
    let (set, rows) = ShadowSet::load(
        config,
        models.runtime,
        &models.teacher,
        &models.student.sha256,
        candidate,
    );
    if let Err(e) = store.register_shadow_models(&rows, crate::time::now_ms()) {
        tracing::error!(error = %e, "Recording the shadow models failed; they run all the same.");
    }
    set
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

/// What the daemon is asked to do: `main` turns signals into these; tests send them directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP: read the config file again and apply it if it is valid.
    Reload,
    /// SIGTERM, SIGINT: stop taking files, drain, exit.
    Shutdown,
    /// A second SIGTERM: give up draining now.
    Force,
}

/// Why the daemon stopped without draining cleanly. The files it did not finish stay in the
/// inbox and are processed, whole, at the next start.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("the pipeline did not drain within {0:?} ([daemon] drain_timeout); exiting anyway")]
    DrainTimeout(Duration),
    #[error("forced exit (second stop signal) while draining")]
    Forced,
}

/// One running pipeline: the inbox watcher, the ingest thread and the pipeline threads.
struct Running {
    watcher: Box<dyn notify::Watcher + Send>,
    events: mpsc::Sender<IngestEvent>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ingest: JoinHandle<Result<(), Closed>>,
    threads: Threads,
    in_flight: InFlightPaths,
    /// sha256 of the model files this pipeline serves, to notice a file replaced in place.
    serving: ServingModels,
}

/// The content hashes of the models a pipeline was started with, and the baseline version its
/// detectors were armed on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServingModels {
    student: String,
    teacher: String,
    baseline: Option<i64>,
}

impl Running {
    /// Opens the store, starts the pipeline threads, registers the watcher and starts the
    /// ingest thread, whose first act is the catch-up scan.
    fn start(
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
            teacher: models.teacher.sha256.clone(),
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
        ingest.retry = Some(crate::pipeline::Retry::new(move |path| {
            let _ = retries.send(IngestEvent::Retry(path));
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
    fn drain(self) -> tokio::task::JoinHandle<anyhow::Result<WriterReport>> {
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

/// Loads the models of `config` and logs what was loaded.
fn load_models_logged(config: &Config) -> anyhow::Result<Models> {
    let models = load_models(config).map_err(|p| anyhow!("{}", p.join("\n")))?;
    tracing::info!(
        library = %models.runtime.library.display(),
        version = %models.runtime.version,
        student = %config.student.path.display(),
        teacher = %config.teacher.path.display(),
        "Models loaded."
    );
    Ok(models)
}

/// Waits for a drain, at most `limit`; a `Force` cuts it short. Other requests are ignored.
async fn drain_within(
    running: Running,
    limit: Duration,
    control: &mut tokio::sync::mpsc::Receiver<Control>,
) -> anyhow::Result<WriterReport> {
    let mut drain = running.drain();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut listening = true;
    loop {
        tokio::select! {
            joined = &mut drain => return joined.context("joining the pipeline")?,
            _ = &mut deadline => return Err(StopError::DrainTimeout(limit).into()),
            c = control.recv(), if listening => match c {
                Some(Control::Force) => return Err(StopError::Forced.into()),
                Some(other) => tracing::info!(request = ?other, "Ignored while draining."),
                None => listening = false,
            },
        }
    }
}

/// Pings the systemd watchdog at half its interval while the pipeline makes progress: its
/// heartbeat advanced within the last interval, or it holds no file (idle is healthy). A
/// pipeline stuck with work in hand stops the pings, and systemd restarts the daemon.
async fn watchdog(
    interval: Duration,
    metrics: Arc<Metrics>,
    in_flight: Arc<std::sync::Mutex<InFlightPaths>>,
) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = metrics.heartbeat();
    let mut last_progress = tokio::time::Instant::now();
    let mut stalled = false;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let beat = metrics.heartbeat();
        let idle = in_flight
            .lock()
            .map(|set| set.lock().map(|files| files.is_empty()).unwrap_or(false))
            .unwrap_or(false);
        if beat != last_beat || idle {
            last_beat = beat;
            last_progress = now;
        }
        if now.duration_since(last_progress) < interval {
            if stalled {
                tracing::info!("The pipeline progresses again; watchdog pings resumed.");
                stalled = false;
            }
            crate::notify::watchdog_ping();
        } else if !stalled {
            stalled = true;
            tracing::error!(
                seconds = now.duration_since(last_progress).as_secs(),
                "The pipeline holds files but has made no progress; watchdog pings stopped."
            );
        }
    }
}

/// Runs the daemon until a [`Control::Shutdown`] arrives (or `control` closes), then drains and
/// returns. A [`Control::Reload`] re-reads the config file: an invalid config, or models that do
/// not load, are rejected and logged and the running pipeline goes on; a valid one is applied by
/// draining the pipeline and starting it again in this process (the ONNX Runtime environment is
/// process-wide and reused). `[http]` changes apply at the next start.
///
/// READY is sent once the pipeline runs: migrations applied, models loaded, the watcher
/// registered and the catch-up scan under way.
pub async fn run(
    config: Config,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    on_file: Option<FileCallback>,
) -> anyhow::Result<WriterReport> {
    let metrics = Metrics::new(config.store.path.clone());
    let shared = Arc::new(std::sync::RwLock::new(Arc::new(config.clone())));
    let (http_stop, http_stopped) = tokio::sync::watch::channel(false);
    let http = crate::http::Server::new(&config.http, shared.clone(), metrics.clone())
        .map(|server| tokio::spawn(server.serve(http_stopped)));
    crate::notify::status("loading models");
    let mut config = config;
    let models = load_models_logged(&config)?;
    let mut running = Running::start(&config, models, &metrics, on_file)?;
    let in_flight = Arc::new(std::sync::Mutex::new(running.in_flight.clone()));
    let watchdog = crate::notify::watchdog_interval().map(|interval| {
        tracing::info!(
            seconds = interval.as_secs_f64(),
            "systemd watchdog enabled."
        );
        tokio::spawn(watchdog(interval, metrics.clone(), in_flight.clone()))
    });
    metrics.set_ready(true);
    crate::notify::ready("processing the inbox");
    let mut alerts = crate::alert::AlertTask::start(&config.alerts, &config.store.path);
    // A student promoted by the re-distillation task is applied the way SIGHUP applies it.
    let (promoted_tx, mut promoted) = tokio::sync::mpsc::channel::<()>(1);
    let redistill = crate::redistill::RedistillTask::start(shared.clone(), promoted_tx)?;

    let result = loop {
        let request = tokio::select! {
            request = control.recv() => request,
            Some(()) = promoted.recv() => Some(Control::Reload),
        };
        match request {
            Some(Control::Reload) => {
                crate::notify::reloading();
                match reload(config, running, &metrics, &mut control).await {
                    Ok((c, r)) => {
                        config = c;
                        running = r;
                        alerts = alerts.apply(&config.alerts, &config.store.path).await;
                        if let Ok(mut slot) = in_flight.lock() {
                            *slot = running.in_flight.clone();
                        }
                        if let Ok(mut slot) = shared.write() {
                            *slot = Arc::new(config.clone());
                        }
                        metrics.set_database(config.store.path.clone());
                        metrics.set_ready(true);
                        crate::notify::ready("processing the inbox");
                    }
                    Err(e) => {
                        metrics.set_ready(false);
                        break Err(e);
                    }
                }
            }
            Some(Control::Shutdown) | Some(Control::Force) | None => {
                crate::notify::stopping("draining the pipeline");
                metrics.set_ready(false);
                tracing::info!(
                    limit_seconds = config.daemon.drain_timeout.as_secs_f64(),
                    "Shutting down: no new files; draining the pipeline."
                );
                break drain_within(running, config.daemon.drain_timeout, &mut control).await;
            }
        }
    };
    if let Some(w) = watchdog {
        w.abort();
    }
    alerts.stop().await;
    let _ = tokio::task::spawn_blocking(move || redistill.stop()).await;
    let _ = http_stop.send(true);
    if let Some(task) = http {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let report = result?;
    tracing::info!(
        files = report.files_committed,
        records = report.records_committed,
        quarantined = report.files_quarantined,
        commit_errors = report.commit_errors,
        "Stopped."
    );
    Ok(report)
}

/// Applies a reload request; returns the config and pipeline now running. Only an error that
/// leaves no pipeline running is returned as `Err`.
async fn reload(
    old: Config,
    running: Running,
    metrics: &Arc<Metrics>,
    control: &mut tokio::sync::mpsc::Receiver<Control>,
) -> anyhow::Result<(Config, Running)> {
    tracing::info!(config = %old.source.display(), "SIGHUP: reloading the config.");
    let new = match Config::load(&old.source) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "The new config is invalid; keeping the running one.");
            metrics.reload(false);
            return Ok((old, running));
        }
    };
    let replaced = replaced_models(&new, &running.serving);
    let baseline = Reader::open(&new.store.path)
        .ok()
        .and_then(|r| active_baseline_version(&r));
    let new_baseline = baseline != running.serving.baseline;
    if new == old && replaced.is_empty() && !new_baseline {
        tracing::info!(
            "The config, the model files and the active baseline are unchanged; nothing to apply."
        );
        metrics.reload(true);
        return Ok((old, running));
    }
    for (role, path) in &replaced {
        tracing::info!(model = role, path = %path.display(), "The model file changed on disk; loading it.");
    }
    if new_baseline {
        tracing::info!(
            baseline = ?baseline,
            "Another baseline is active; the detectors re-arm on it."
        );
    }
    if new.http != old.http {
        tracing::warn!(
            "[http] changes apply at the next start; the HTTP server keeps its settings."
        );
    }
    // Load the new models beside the running ones: if they fail, nothing has stopped.
    let models = match load_models_logged(&new) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "The new config's models do not load; keeping the running config.");
            metrics.reload(false);
            return Ok((old, running));
        }
    };
    metrics.set_ready(false);
    let report = drain_within(running, old.daemon.drain_timeout, control).await?;
    tracing::info!(
        files = report.files_committed,
        records = report.records_committed,
        "Pipeline drained for the reload."
    );
    match Running::start(&new, models, metrics, None) {
        Ok(r) => {
            tracing::info!("The new config is applied.");
            metrics.reload(true);
            Ok((new, r))
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Starting with the new config failed; going back to the previous one.");
            metrics.reload(false);
            let models = load_models_logged(&old)?;
            let r = Running::start(&old, models, metrics, None)?;
            Ok((old, r))
        }
    }
}

/// The models of `config` whose file content differs from what the pipeline serves (or cannot
/// be read: loading it will say why), as (role, path).
fn replaced_models(config: &Config, serving: &ServingModels) -> Vec<(&'static str, PathBuf)> {
    [
        ("student", &config.student.path, &serving.student),
        ("teacher", &config.teacher.path, &serving.teacher),
    ]
    .into_iter()
    .filter(|(_, path, sha)| file_sha256(path).ok().as_ref() != Some(*sha))
    .map(|(role, path, _)| (role, path.clone()))
    .collect()
}

/// The version of the active baseline, if there is one and it can be read.
fn active_baseline_version(reader: &Reader) -> Option<i64> {
    reader.active_baseline().ok().flatten().map(|b| b.version)
}

fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path)?;
    Ok(crate::model::hex(&sha2::Sha256::digest(&bytes)))
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
    let mut store = Store::open(&config.store.path)?;
    store.set_synchronous(config.store.synchronous)?;
    store.checkpoint_in_background(crate::store::CHECKPOINT_INTERVAL)?;
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
        Metrics::new(config.store.path.clone()),
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
                        .is_some_and(|n| !crate::format::is_ignored_name(&n.to_string_lossy()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_file_replaced_in_place_is_noticed_at_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (student, teacher) = (dir.path().join("s.onnx"), dir.path().join("t.onnx"));
        std::fs::write(&student, b"student v1").unwrap();
        std::fs::write(&teacher, b"teacher v1").unwrap();
        let config = Config::from_toml(
            "state_dir = \"state\"\n[student]\npath = \"s.onnx\"\n[teacher]\npath = \"t.onnx\"\n",
            &dir.path().join("sensei.toml"),
        )
        .unwrap();
        let serving = ServingModels {
            student: file_sha256(&student).unwrap(),
            teacher: file_sha256(&teacher).unwrap(),
            baseline: None,
        };
        assert!(replaced_models(&config, &serving).is_empty());

        std::fs::write(&student, b"not a model").unwrap();
        assert_eq!(replaced_models(&config, &serving), [("student", student)]);

        std::fs::remove_file(&teacher).unwrap();
        let replaced: Vec<&str> = replaced_models(&config, &serving)
            .into_iter()
            .map(|(role, _)| role)
            .collect();
        assert_eq!(replaced, ["student", "teacher"]);
    }
}
