//! Re-distillation jobs: requests (from alert rules or by hand), one job at a time with a
//! minimum interval between starts, the job's command run with a timeout, and the status kept
//! in `redistill_jobs` so that it survives a restart.
//!
//! A job is: export the teacher samples into `<work_dir>/job-<id>/dataset` with a held-out
//! share in `holdout/` that the command never sees, run the configured argv with its
//! placeholders filled in, its output appended to `job.log`, and check that the student it wrote
//! loads and takes the same inputs and gives the same output as the serving one. Whatever goes
//! wrong ends the job as `failed` or `timed_out` with the reason in `detail`; the serving
//! student is never touched by a job.
//!
//! After jobs fail in a row, the interval before the next one doubles per failure (up to
//! `max_backoff`), and the receivers hear once that re-distillation keeps failing
//! ([`super::streak`]).
//!
//! The command runs in a process group of its own, so a timeout kills everything it started.
//! If the sensei process that supervised a job dies, the next check (the daemon's task, or the
//! next `sensei redistill`) finds the job `running` under a process that no longer exists; it
//! kills the job's process group if it is still there and marks the job failed, saying so.
//! The command and everything it starts carry `SENSEI_JOB_DIR` in their environment, so the
//! check also finds them when their pid was never recorded (the supervisor died between starting
//! the command and writing its pid) or when the group's leader exited before its children.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::export::{ExportOptions, export};
use super::streak::{Backoff, announce};
use crate::config::Config;
use crate::store::{Enqueued, JobRequest, JobRow, Store};
use crate::time::{now_ms, rfc3339};

/// How often the daemon's task looks for requests and queued jobs.
const POLL: Duration = Duration::from_secs(1);

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobOutcome {
    pub job: i64,
    /// `succeeded`, `failed` or `timed_out`.
    pub status: String,
    pub detail: String,
    /// The candidate student, when the job succeeded.
    pub output: Option<PathBuf>,
    pub log: PathBuf,
}

impl JobOutcome {
    pub fn text(&self) -> String {
        format!(
            "job {} {}: {}\nlog: {}\n",
            self.job,
            self.status,
            self.detail,
            self.log.display()
        )
    }
}

/// Why a requested job did not start.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("re-distillation is off: [redistill] command is not set")]
    Off,
    #[error("job {0} is already queued or running; one job runs at a time")]
    Busy(i64),
    #[error("{reason} (--force overrides)")]
    TooSoon { last_job: i64, reason: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// `sensei redistill`: queues a job and runs it in this process.
pub fn run_by_hand(config: &Config, reason: &str, force: bool) -> Result<JobOutcome, RequestError> {
    if config.redistill.command.is_empty() {
        return Err(RequestError::Off);
    }
    let mut store = Store::open(&config.store.path).context("opening the database")?;
    recover(&mut store).context("checking earlier jobs")?;
    announce(&mut store, config, now_ms()).context("checking for a failure streak")?;
    let request = JobRequest {
        trigger: "manual".into(),
        reason: reason.into(),
        action_id: None,
    };
    let job = match enqueue(&mut store, config, &request, force)? {
        Enqueued::Queued { job } => job,
        Enqueued::Busy { job } => return Err(RequestError::Busy(job)),
        Enqueued::TooSoon {
            last_job,
            failures,
            next_allowed_ms,
        } => {
            return Err(RequestError::TooSoon {
                last_job,
                reason: too_soon(last_job, failures, next_allowed_ms),
            });
        }
    };
    let outcome = run_job(&mut store, config, job, &|| false)?.ok_or(RequestError::Busy(job))?;
    if let Err(e) = announce(&mut store, config, now_ms()) {
        tracing::error!(error = %format!("{e:#}"), "Checking for a failure streak of re-distillation failed.");
    }
    Ok(outcome)
}

/// Why a job may not start yet, in words: the interval since the last job's start, doubled
/// after consecutive failures.
pub fn too_soon(last_job: i64, failures: u32, next_allowed_ms: i64) -> String {
    let next = rfc3339(next_allowed_ms);
    match failures {
        0 => format!(
            "job {last_job} started less than [redistill] min_interval ago; next allowed at {next}"
        ),
        1 => format!(
            "job {last_job} failed and started less than [redistill] min_interval ago; next allowed at {next}"
        ),
        n => format!(
            "{n} jobs in a row failed (the latest is job {last_job}), so the wait after its start is [redistill] min_interval × 2^{}, at most max_backoff; next allowed at {next}",
            n - 1
        ),
    }
}

fn enqueue(
    store: &mut Store,
    config: &Config,
    request: &JobRequest,
    force: bool,
) -> anyhow::Result<Enqueued> {
    let backoff = Backoff::new(&config.redistill);
    Ok(store.enqueue_redistill_job(
        request,
        |at, failures| backoff.next_allowed_ms(at, failures),
        force,
        now_ms(),
    )?)
}

/// Whether `pid` is a running sensei process (Linux: `/proc/<pid>/comm`). Checking the name, not
/// just the pid, keeps a pid reused after a reboot from passing for the job's supervisor.
fn sensei_alive(pid: i64) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with("sensei"))
}

/// Whether `pid` is still the leader of its own process group, as a job's command is (a reused
/// pid almost never is): only then is its group killed.
fn group_leader_alive(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // After the parenthesised command name: state, ppid, pgrp.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    fields.first().is_some_and(|state| *state != "Z")
        && fields.get(2).and_then(|g| g.parse::<i64>().ok()) == Some(pid)
}

/// The jobs this process is running (its pid may equal a dead supervisor's after a restart in
/// a fresh pid namespace, so the pid alone does not say a job is ours).
static RUNNING_HERE: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());

fn running_here(job: i64) -> bool {
    RUNNING_HERE.lock().is_ok_and(|jobs| jobs.contains(&job))
}

/// Kills a job's process group (the command and whatever it started).
fn kill_group(pid: i64) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The environment variable that marks a job's command and every process it starts: the job's
/// directory.
const JOB_DIR_ENV: &str = "SENSEI_JOB_DIR";

/// The live processes whose environment marks them as the job's (Linux: `/proc/<pid>/environ`,
/// readable for processes of the same user, as a job's are).
fn job_processes(dir: &str) -> Vec<i64> {
    let marker = format!("{JOB_DIR_ENV}={dir}");
    let me = i64::from(std::process::id());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<i64> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()))
        // A sensei run by a job's command (it may call `sensei export`) never kills itself.
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
                && !is_zombie(*pid)
        })
        .collect();
    found.sort_unstable();
    found
}

fn is_zombie(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z")
    })
}

/// Kills every process of the job still running (it may fork while being killed: a few
/// rounds). Returns the pids found in the first round.
fn kill_job_processes(dir: &str) -> Vec<i64> {
    let first = job_processes(dir);
    let mut found = first.clone();
    for _ in 0..5 {
        if found.is_empty() {
            break;
        }
        for pid in &found {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        found = job_processes(dir);
    }
    first
}

fn pid_list(pids: &[i64]) -> String {
    pids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ends every `running` job whose supervising sensei process is gone, killing what is left of
/// its command. Returns the jobs it ended.
pub fn recover(store: &mut Store) -> anyhow::Result<Vec<i64>> {
    let me = i64::from(std::process::id());
    let mut ended = Vec::new();
    for job in store.active_redistill_jobs()? {
        let Some(owner) = job.owner_pid else {
            continue;
        };
        if job.status != "running" || running_here(job.id) || (owner != me && sensei_alive(owner)) {
            continue;
        }
        let leader = job.pid.filter(|&pid| group_leader_alive(pid));
        if let Some(pid) = leader {
            kill_group(pid);
        }
        // Whatever the group kill did not reach: a command whose pid was never recorded, or
        // processes left by a leader that exited.
        let strays = job
            .dir
            .as_deref()
            .map(kill_job_processes)
            .unwrap_or_default();
        let what = match (job.pid, leader) {
            (Some(pid), Some(_)) => {
                format!("its command (pid {pid}) was still running and was killed")
            }
            (Some(pid), None) if strays.is_empty() => {
                format!("its command (pid {pid}) is gone, with no exit status recorded")
            }
            (Some(pid), None) => format!(
                "its command (pid {pid}) is gone, with no exit status recorded; processes it started (pid {}) were still running and were killed",
                pid_list(&strays)
            ),
            (None, _) if strays.is_empty() => "before its command started".to_string(),
            (None, _) => format!(
                "its command was started but its pid not recorded; its processes (pid {}) were still running and were killed",
                pid_list(&strays)
            ),
        };
        let detail = format!("sensei (pid {owner}) that supervised the job exited; {what}");
        tracing::warn!(job = job.id, %detail, "Re-distillation job interrupted.");
        store.finish_redistill_job(job.id, "failed", None, &detail, now_ms())?;
        ended.push(job.id);
    }
    Ok(ended)
}

/// Turns re-distillation requests of alert rules into jobs, or records why not.
pub fn take_alert_actions(store: &mut Store, config: &Config) -> anyhow::Result<()> {
    for (id, rule, alert_id, drifts) in store.requested_redistill_actions()? {
        let now = now_ms();
        if config.redistill.command.is_empty() {
            store.update_alert_action(
                id,
                "skipped",
                "re-distillation is off: [redistill] command is not set",
                now,
            )?;
            continue;
        }
        let request = JobRequest {
            trigger: format!("alert:{rule}"),
            reason: format!("alert {alert_id}: {}", drift_summary(&drifts)),
            action_id: Some(id),
        };
        let enqueued = enqueue(store, config, &request, false)?;
        // Queuing the job and moving the request on are two commits: after a crash between
        // them, the job that keeps the request busy is its own.
        let own = match enqueued {
            Enqueued::Busy { job } => store
                .redistill_job(job)?
                .is_some_and(|j| j.action_id == Some(id)),
            _ => false,
        };
        let (status, detail) = match enqueued {
            Enqueued::Queued { job } => ("started", format!("job {job} queued")),
            Enqueued::Busy { job } if own => ("started", format!("job {job} queued")),
            Enqueued::Busy { job } => (
                "skipped",
                format!("job {job} is already queued or running; one job runs at a time"),
            ),
            Enqueued::TooSoon {
                last_job,
                failures,
                next_allowed_ms,
            } => (
                "skipped",
                format!(
                    "rate-limited: {}",
                    too_soon(last_job, failures, next_allowed_ms)
                ),
            ),
        };
        tracing::info!(action = id, rule = %rule, status, %detail, "Re-distillation requested by an alert rule.");
        store.update_alert_action(id, status, &detail, now)?;
    }
    Ok(())
}

/// `signal@segment` of each drift in the action's JSON array, for the job's reason.
fn drift_summary(drifts: &str) -> String {
    let parsed: Vec<serde_json::Value> = serde_json::from_str(drifts).unwrap_or_default();
    let parts: Vec<String> = parsed
        .iter()
        .map(|d| {
            let field = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
            format!("{} drift on {}", field("signal"), field("segment"))
        })
        .collect();
    if parts.is_empty() {
        "drift".into()
    } else {
        parts.join(", ")
    }
}

/// Runs a queued job to its end. `None` when the job was not queued any more (another process
/// took it).
pub fn run_job(
    store: &mut Store,
    config: &Config,
    job: i64,
    stopping: &dyn Fn() -> bool,
) -> anyhow::Result<Option<JobOutcome>> {
    let dir = config.redistill.work_dir.join(format!("job-{job}"));
    if !store.start_redistill_job(
        job,
        std::process::id(),
        &dir.display().to_string(),
        now_ms(),
    )? {
        return Ok(None);
    }
    let log = dir.join("job.log");
    if let Ok(mut jobs) = RUNNING_HERE.lock() {
        jobs.push(job);
    }
    let ended = execute(store, config, job, &dir, stopping);
    if let Ok(mut jobs) = RUNNING_HERE.lock() {
        jobs.retain(|&j| j != job);
    }
    let (status, exit_code, detail, output) = match ended {
        Ok(Ended::Succeeded(output, detail)) => ("succeeded", Some(0), detail, Some(output)),
        Ok(Ended::Failed(code, detail)) => ("failed", code, detail, None),
        Ok(Ended::TimedOut(detail)) => ("timed_out", None, detail, None),
        Err(e) => ("failed", None, format!("{e:#}"), None),
    };
    append_log(&log, &format!("sensei: job {job} {status}: {detail}"));
    store.finish_redistill_job(job, status, exit_code, &detail, now_ms())?;
    if status == "succeeded" {
        tracing::info!(job, %detail, "Re-distillation job succeeded.");
    } else {
        tracing::warn!(job, status, %detail, "Re-distillation job did not succeed; the serving student stays.");
    }
    Ok(Some(JobOutcome {
        job,
        status: status.into(),
        detail,
        output,
        log,
    }))
}

enum Ended {
    Succeeded(PathBuf, String),
    Failed(Option<i32>, String),
    TimedOut(String),
}

fn append_log(log: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The last lines of the job's log, for the failure reason.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("sensei: "))
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let tail: String = tail.chars().take(400).collect();
    if tail.is_empty() {
        "no output".into()
    } else {
        format!("last output: {tail}")
    }
}

/// The command's argv with its placeholders filled in (absolute paths: the command runs in the
/// job's directory).
pub fn argv(
    command: &[String],
    dataset: &Path,
    teacher: &Path,
    student: &Path,
    output: &Path,
) -> Vec<String> {
    let abs = |p: &Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    command
        .iter()
        .map(|a| {
            a.replace("{dataset}", &abs(dataset))
                .replace("{teacher}", &abs(teacher))
                .replace("{student}", &abs(student))
                .replace("{output}", &abs(output))
        })
        .collect()
}

fn execute(
    store: &mut Store,
    config: &Config,
    job: i64,
    dir: &Path,
    stopping: &dyn Fn() -> bool,
) -> anyhow::Result<Ended> {
    let rc = &config.redistill;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("job.log");
    let row = store.redistill_job(job)?;
    let reason = row
        .as_ref()
        .map_or("re-distillation", |r: &JobRow| r.reason.as_str());
    let dataset = dir.join("dataset");
    let holdout = dir.join("holdout");
    let exported = match export(
        config,
        &ExportOptions {
            out: dataset.clone(),
            since_ms: None,
            segment: None,
            reason: reason.to_string(),
            holdout: Some((rc.holdout, holdout.clone())),
        },
    ) {
        Ok(s) => s,
        Err(e) => return Ok(Ended::Failed(None, format!("export: {e:#}"))),
    };
    let output = dir.join("student.onnx");
    store.note_redistill_dataset(
        job,
        exported.count,
        exported.holdout,
        &output.display().to_string(),
        now_ms(),
    )?;
    if exported.count < rc.min_samples {
        return Ok(Ended::Failed(
            None,
            format!(
                "only {} teacher samples to train on ({} held out); [redistill] min_samples is {}",
                exported.count, exported.holdout, rc.min_samples
            ),
        ));
    }
    let args = argv(
        &rc.command,
        &dataset,
        &PathBuf::from(config.teacher.location()),
        &config.student.path,
        &output,
    );
    append_log(
        &log,
        &format!(
            "sensei: job {job}: {} training records, {} held out; running {:?}",
            exported.count, exported.holdout, args
        ),
    );
    let log_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .env(JOB_DIR_ENV, dir.display().to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ok(Ended::Failed(
                None,
                format!("cannot start {:?}: {e}", args[0]),
            ));
        }
    };
    let pid = child.id();
    store.note_redistill_pid(job, pid, now_ms())?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= rc.timeout {
            kill_group(i64::from(pid));
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ended::TimedOut(format!(
                "killed after the [redistill] timeout of {} s; {}",
                rc.timeout.as_secs(),
                log_tail(&log)
            )));
        }
        if stopping() {
            kill_group(i64::from(pid));
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ended::Failed(
                None,
                "sensei stopped while the job ran; the command was killed".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        let code = status.code();
        let how = match code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        };
        return Ok(Ended::Failed(
            code,
            format!("the command failed ({how}); {}", log_tail(&log)),
        ));
    }
    match check_candidate(config, &output) {
        Ok(sha) => {
            let verdict = judge(store, config, job, &output, &holdout, exported.holdout);
            Ok(Ended::Succeeded(
                output.clone(),
                format!(
                    "candidate student {} (sha256 {}) trained on {} records; gate: {verdict}",
                    output.display(),
                    &sha[..12],
                    exported.count,
                ),
            ))
        }
        Err(e) => Ok(Ended::Failed(
            Some(0),
            format!("the command succeeded but its output is not a usable student: {e:#}"),
        )),
    }
}

/// Runs the gate on a job's candidate and records the verdict; returns it in words.
fn judge(
    store: &mut Store,
    config: &Config,
    job: i64,
    candidate: &Path,
    holdout: &Path,
    held: usize,
) -> String {
    let (passed, evidence, text) = if held == 0 {
        let reason = "no held-out records to judge the candidate on";
        (
            false,
            serde_json::json!({"passed": false, "reasons": [reason]}),
            reason.to_string(),
        )
    } else {
        match super::gate::evaluate(config, candidate, holdout) {
            Ok(e) => (
                e.passed,
                serde_json::to_value(&e).unwrap_or_default(),
                format!(
                    "{} — {}",
                    if e.passed { "passed" } else { "rejected" },
                    e.summary()
                ),
            ),
            Err(e) => {
                let reason = format!("the candidate could not be evaluated: {e:#}");
                (
                    false,
                    serde_json::json!({"passed": false, "reasons": [reason]}),
                    reason,
                )
            }
        }
    };
    if let Err(e) = store.note_redistill_gate(job, passed, &evidence.to_string(), now_ms()) {
        tracing::error!(job, error = %e, "Recording the gate's verdict failed.");
    }
    text
}

/// Loads the candidate as a student and checks it fits the teacher as the serving one does;
/// returns its sha256.
pub fn check_candidate(config: &Config, path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{} was not written", path.display()))?;
    if meta.len() == 0 {
        anyhow::bail!("{} is empty", path.display());
    }
    let runtime = crate::model::runtime(&config.onnxruntime)?;
    let mut candidate_config = config.student.clone();
    candidate_config.path = path.to_path_buf();
    let candidate = crate::model::Model::load(runtime, "candidate", &candidate_config)?;
    let teacher = crate::model::Teacher::load(runtime, &config.teacher)?;
    let problems = crate::model::compatibility_problems(config, &candidate, &teacher);
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(candidate.sha256.clone())
}

/// The daemon's re-distillation task: a thread that ends interrupted jobs, takes requests of
/// alert rules and runs queued jobs, one at a time.
pub struct RedistillTask {
    stop: Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl RedistillTask {
    /// Starts the task on the daemon's current config (re-read at every step, so a reload that
    /// changes `[redistill]` or the models applies to the next job).
    /// `promoted` is told when the task has promoted a candidate (`auto_promote`): the daemon
    /// reloads to serve it.
    pub fn start(
        config: SharedConfig,
        promoted: tokio::sync::mpsc::Sender<()>,
    ) -> anyhow::Result<RedistillTask> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("redistill".into())
            .spawn(move || task(&config, &stopped, &promoted))
            .context("starting the re-distillation thread")?;
        Ok(RedistillTask { stop, thread })
    }

    /// Stops the task; a running job's command is killed and the job recorded as failed.
    pub fn stop(self) {
        // Dropping the sender is the signal: both the poll and a running job see it.
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// The daemon's config, replaced on reload.
pub type SharedConfig = std::sync::Arc<std::sync::RwLock<std::sync::Arc<Config>>>;

fn task(shared: &SharedConfig, stopped: &Receiver<()>, promoted: &tokio::sync::mpsc::Sender<()>) {
    let current = || shared.read().map(|c| c.clone()).ok();
    let Some(config) = current() else {
        return;
    };
    let mut store = match Store::open(&config.store.path) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Re-distillation is unavailable: cannot open the database.");
            return;
        }
    };
    let stopping = || !matches!(stopped.try_recv(), Err(TryRecvError::Empty));
    loop {
        if let Some(config) = current() {
            match step(&mut store, &config, &stopping) {
                Ok(Some(outcome)) if config.redistill.auto_promote => {
                    auto_promote(&config, &outcome, promoted);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "Re-distillation step failed.")
                }
            }
        }
        match stopped.recv_timeout(POLL) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// One round: end interrupted jobs, announce a failure streak (or its end), take requests,
/// run the next queued job and announce again (returns how the job ended).
fn step(
    store: &mut Store,
    config: &Config,
    stopping: &dyn Fn() -> bool,
) -> anyhow::Result<Option<JobOutcome>> {
    recover(store)?;
    announce(store, config, now_ms())?;
    take_alert_actions(store, config)?;
    let queued = store
        .active_redistill_jobs()?
        .into_iter()
        .find(|j| j.status == "queued");
    let Some(job) = queued else {
        return Ok(None);
    };
    let outcome = run_job(store, config, job.id, stopping)?;
    announce(store, config, now_ms())?;
    Ok(outcome)
}

/// `auto_promote`: promotes a job's candidate the gate passed, and asks the daemon to reload.
fn auto_promote(config: &Config, outcome: &JobOutcome, promoted: &tokio::sync::mpsc::Sender<()>) {
    let Some(output) = &outcome.output else {
        return;
    };
    let passed = Store::open(&config.store.path)
        .ok()
        .and_then(|s| s.redistill_job(outcome.job).ok().flatten())
        .is_some_and(|j| j.gate.as_deref() == Some("passed"));
    if !passed {
        return;
    }
    let reason = format!(
        "auto_promote: the gate passed job {}'s candidate",
        outcome.job
    );
    match super::promote::promote(config, output, &reason, false) {
        Ok(changed) => {
            tracing::info!(job = outcome.job, model = %changed.model.display(), "Promoted the candidate; reloading to serve it.");
            let _ = promoted.try_send(());
        }
        Err(e) => {
            tracing::error!(job = outcome.job, error = %format!("{e:#}"), "Promoting the candidate failed; the student stays.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redistill::streak::Backoff;

    /// No minimum interval: jobs may start back to back.
    const NO_BACKOFF: Backoff = Backoff {
        min_interval_ms: 0,
        max_backoff_ms: 0,
    };

    #[test]
    fn a_job_command_is_recognised_as_its_group_leader_until_it_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let pid = i64::from(child.id());
        assert!(group_leader_alive(pid));
        // This test process is not the leader of its own group.
        assert!(!group_leader_alive(i64::from(std::process::id())) || test_is_group_leader());
        kill_group(pid);
        let _ = child.wait();
        assert!(!group_leader_alive(pid));
        assert!(!sensei_alive(pid));
        assert!(!sensei_alive(0));
    }

    /// Whether the test runner made this process a group leader (then the check above is moot).
    fn test_is_group_leader() -> bool {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(std::process::id())
    }

    #[test]
    fn recovery_kills_a_command_whose_pid_was_never_recorded() {
        use crate::store::{Enqueued, JobRequest};
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(&tmp.path().join("sensei.db")).unwrap();
        let dir = tmp.path().join("job-1").display().to_string();
        // The supervisor is gone: a process that exited and was reaped.
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let request = JobRequest {
            trigger: "manual".into(),
            reason: "test".into(),
            action_id: None,
        };
        let Enqueued::Queued { job } = store
            .enqueue_redistill_job(
                &request,
                |at, failures| NO_BACKOFF.next_allowed_ms(at, failures),
                true,
                1,
            )
            .unwrap()
        else {
            panic!("the job was not queued");
        };
        assert!(store.start_redistill_job(job, gone.id(), &dir, 2).unwrap());
        // Its command, started as a job's is, with a child of its own; no pid recorded.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & wait"]).env(JOB_DIR_ENV, &dir);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut command = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while job_processes(&dir).len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the command's child did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Another job's processes are not touched.
        let mut other = Command::new("sleep")
            .arg("60")
            .env(JOB_DIR_ENV, format!("{dir}0"))
            .spawn()
            .unwrap();

        assert_eq!(recover(&mut store).unwrap(), vec![job]);
        let _ = command.wait();
        assert_eq!(job_processes(&dir), Vec::<i64>::new());
        assert!(
            other.try_wait().unwrap().is_none(),
            "another job's process was killed"
        );
        let _ = other.kill();
        let _ = other.wait();
        let row = store.redistill_job(job).unwrap().unwrap();
        let detail = row.detail.unwrap_or_default();
        assert_eq!(row.status, "failed");
        assert!(
            detail.starts_with(&format!(
                "sensei (pid {}) that supervised the job exited; its command was started but its pid not recorded; its processes (pid ",
                gone.id()
            )) && detail.ends_with(") were still running and were killed"),
            "{detail}"
        );
    }

    #[test]
    fn a_request_whose_job_was_queued_before_a_crash_is_started_not_skipped() {
        use crate::store::JobRequest;
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::from_toml(
            "state_dir = \"state\"\n[student]\npath = \"s.onnx\"\n[teacher]\npath = \"t.onnx\"\n\
             [redistill]\ncommand = [\"true\", \"{dataset}\", \"{output}\"]\n",
            &tmp.path().join("sensei.toml"),
        )
        .unwrap();
        let mut store = Store::open(&config.store.path).unwrap();
        let db = rusqlite::Connection::open(&config.store.path).unwrap();
        db.execute(
            "INSERT INTO alert_actions (action, rule, alert_id, requested_at, drifts, updated_at)
             VALUES ('redistill', 'r', 'r.1', 1, '[]', 1)",
            [],
        )
        .unwrap();
        let action = db.last_insert_rowid();
        // The job was queued for the request; the crash came before the request was moved on.
        let request = JobRequest {
            trigger: "alert:r".into(),
            reason: "alert r.1: drift".into(),
            action_id: Some(action),
        };
        let Enqueued::Queued { job } = store
            .enqueue_redistill_job(
                &request,
                |at, failures| NO_BACKOFF.next_allowed_ms(at, failures),
                false,
                2,
            )
            .unwrap()
        else {
            panic!("the job was not queued");
        };
        take_alert_actions(&mut store, &config).unwrap();
        let (status, detail): (String, String) = db
            .query_row(
                "SELECT status, detail FROM alert_actions WHERE id = ?1",
                [action],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (status.as_str(), detail),
            ("started", format!("job {job} queued"))
        );

        // Another request while that job is queued is skipped, saying why.
        db.execute(
            "INSERT INTO alert_actions (action, rule, alert_id, requested_at, drifts, updated_at)
             VALUES ('redistill', 'r', 'r.2', 3, '[]', 3)",
            [],
        )
        .unwrap();
        let other = db.last_insert_rowid();
        take_alert_actions(&mut store, &config).unwrap();
        let status: String = db
            .query_row(
                "SELECT status FROM alert_actions WHERE id = ?1",
                [other],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(status, "skipped");
    }

    #[test]
    fn placeholders_become_absolute_paths() {
        let command: Vec<String> = ["x", "--in={dataset}", "{teacher}", "{student}", "{output}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let args = argv(
            &command,
            Path::new("/d"),
            Path::new("t.onnx"),
            Path::new("/s.onnx"),
            Path::new("/o.onnx"),
        );
        assert_eq!(args[1], "--in=/d");
        assert!(Path::new(&args[2]).is_absolute() && args[2].ends_with("t.onnx"));
        assert_eq!(&args[3..], ["/s.onnx", "/o.onnx"]);
    }
}
