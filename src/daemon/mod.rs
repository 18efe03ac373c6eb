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
//!
//! `lock`: one pipeline per state directory; `start`: the pipeline's threads, the inbox watcher and ingest wired together; `replay`:
//! the same pipeline over given files; `watchdog`: the systemd watchdog's pings.

mod lock;
mod replay;
mod start;
mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{Models, load_models};
use crate::pipeline::{FileCallback, WriterReport};
use crate::store::Reader;

pub use replay::replay;
pub use start::drift_monitor;
use start::{Running, ServingModels, active_baseline_version};
use watchdog::watchdog;

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

/// Loads the models of `config` and logs what was loaded.
fn load_models_logged(config: &Config) -> anyhow::Result<Models> {
    let models = load_models(config).map_err(|p| anyhow!("{}", p.join("\n")))?;
    tracing::info!(
        library = %models.runtime.library.display(),
        version = %models.runtime.version,
        student = %config.student.path.display(),
        teacher = %config.teacher.location(),
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
    // Before anything else: a second daemon on this state directory must not take a file.
    let _lock = lock::acquire(&config)?;
    let metrics = Metrics::new(config.store.path.clone());
    metrics.set_window(config.store.window);
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
    if new.state_dir != old.state_dir || new.store.path != old.store.path {
        // The lock this process holds is on the old ones (`lock`).
        tracing::error!(
            state_dir = %new.state_dir.display(),
            database = %new.store.path.display(),
            "state_dir and [store] path change only at a restart; keeping the running config."
        );
        metrics.reload(false);
        return Ok((old, running));
    }
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
    let mut models = match load_models_logged(&new) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "The new config's models do not load; keeping the running config.");
            metrics.reload(false);
            return Ok((old, running));
        }
    };
    // A model can load and still fail at inference: it answers lab records before it serves.
    let trial = trial_records(&new, &models.student.inputs);
    match crate::model::trial_run(&mut models, &trial, new.student.max_batch) {
        Ok(n) => tracing::info!(records = n, "The new models answered their trial run."),
        Err(e) => {
            tracing::error!(error = %e, records = trial.len(), "The new config's models fail on the trial records; keeping the running config.");
            metrics.reload(false);
            return Ok((old, running));
        }
    }
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

/// The most records a trial run of new models takes from the lab set.
const TRIAL_RECORDS: usize = 64;

/// Records for the trial run of new models: the first [`TRIAL_RECORDS`] of the active
/// baseline's lab files that can be read; none without a baseline (the trial then runs on a
/// record of zeros).
fn trial_records(
    config: &Config,
    inputs: &[crate::record::InputSpec],
) -> Vec<crate::record::Record> {
    let sources = Reader::open(&config.store.path)
        .ok()
        .and_then(|r| r.baseline_sources().ok().flatten())
        .unwrap_or_default();
    let options = crate::format::FormatOptions {
        non_finite: config.compare.non_finite,
        max_uncompressed_bytes: config.inbox.max_file_bytes.saturating_mul(4),
    };
    let mut records = Vec::new();
    for source in sources {
        let path = PathBuf::from(source);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if let Ok(crate::record::FileContent::Records(r)) =
            crate::format::read_file(&name, &bytes, inputs, &options)
        {
            records.extend(r.into_iter().take(TRIAL_RECORDS - records.len()));
        }
        if records.len() >= TRIAL_RECORDS {
            break;
        }
    }
    records
}

/// The models of `config` whose file content differs from what the pipeline serves (or cannot
/// be read: loading it will say why), as (role, path). A teacher on an inference server has no
/// file here: a change of its address is a change of the config.
fn replaced_models(config: &Config, serving: &ServingModels) -> Vec<(&'static str, PathBuf)> {
    let teacher = config.teacher.remote.is_none().then_some((
        "teacher",
        &config.teacher.path,
        &serving.teacher,
    ));
    [
        Some(("student", &config.student.path, &serving.student)),
        teacher,
    ]
    .into_iter()
    .flatten()
    .filter(|(_, path, sha)| file_sha256(path).ok().as_ref() != Some(*sha))
    .map(|(role, path, _)| (role, path.clone()))
    .collect()
}

fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path)?;
    Ok(crate::model::hex(&sha2::Sha256::digest(&bytes)))
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
