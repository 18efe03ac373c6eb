//! Configuration: a TOML file parsed into raw serde structs that reject unknown keys
//! (`raw`), then validated into the typed [`Config`] below (`validate`). Validation reports every
//! problem at once, each with its key path, so an operator fixes a config in one round.
//!
//! Relative paths in the file are resolved against the directory of the config file, so a
//! config and its models can travel together.

pub mod alerts;
pub mod promoted;
mod raw;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{ConfigError, ConfigProblem, parse_duration, parse_false_alarms, show_duration};

/// The default config location used by every command.
pub const DEFAULT_PATH: &str = "/etc/sensei/sensei.toml";

/// The validated configuration of one sensei instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was read from (for messages and reload).
    pub source: PathBuf,
    pub state_dir: PathBuf,
    pub inbox: InboxConfig,
    pub onnxruntime: OnnxRuntimeConfig,
    pub student: ModelConfig,
    pub teacher: ModelConfig,
    pub sampling: SamplingConfig,
    pub compare: CompareConfig,
    pub segments: SegmentConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub detect: DetectConfig,
    pub http: HttpConfig,
    pub daemon: DaemonConfig,
    /// `[alerts]`, `[receivers.NAME]` and `[[rules]]` (see `crate::config::alerts`).
    pub alerts: alerts::AlertConfig,
    /// `[redistill]`: the distillation buffer and re-distillation jobs.
    pub redistill: RedistillConfig,
    /// `[shadow]`: the shadow models' verdict and whether a pending candidate runs in shadow.
    pub shadow: ShadowConfig,
    /// `[[challengers]]`: models run in shadow on the teacher-sampled records.
    pub challengers: Vec<ChallengerConfig>,
}

/// Shadow runs (`[shadow]`, docs/redistill.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// The verdict names the smallest model whose agreement with the teacher has a 95% lower
    /// bound at or above this.
    pub agreement_floor: f64,
    /// Run the latest re-distillation candidate awaiting a decision in shadow too.
    pub candidate: bool,
}

/// The name under which the serving student's shadow sums are kept beside the shadow models'
/// (no challenger may take it).
pub const STUDENT: &str = "student";
/// A re-distillation candidate's shadow name is this followed by its job id (no challenger name
/// may start with it).
pub const CANDIDATE_PREFIX: &str = "candidate-";

/// One challenger (`[[challengers]]`): a model run in shadow beside the teacher, from a local
/// file or on an inference server.
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengerConfig {
    /// Its name in the database, `sensei status` and `sensei report`.
    pub name: String,
    /// The `.onnx` file; empty when the challenger is on an inference server (`remote`).
    pub path: PathBuf,
    /// The challenger on an inference server (`url`, `model`, `version`, …), instead of a file.
    pub remote: Option<RemoteConfig>,
    /// The output compared with the teacher's (default `logits`).
    pub output: String,
    /// The optional attention output, compared with the teacher's attention.
    pub attention: Option<String>,
    /// Intra-op threads of its ONNX Runtime session (it runs on the teacher's thread).
    pub threads: usize,
}

impl ChallengerConfig {
    /// How to load it: fed what the teacher is fed, in batches of the teacher's size.
    pub fn model_config(&self, teacher: &ModelConfig) -> ModelConfig {
        ModelConfig {
            path: self.path.clone(),
            remote: self.remote.clone(),
            threads: self.threads,
            max_batch: teacher.max_batch,
            max_wait: teacher.max_wait,
            inputs: teacher.inputs.clone(),
            output: self.output.clone(),
            attention: self.attention.clone(),
        }
    }
}

/// Re-distillation (`[redistill]`, docs/redistill.md).
#[derive(Debug, Clone, PartialEq)]
pub struct RedistillConfig {
    /// The job: argv with `{dataset}`, `{teacher}`, `{student}`, `{output}` placeholders. Empty
    /// means re-distillation is off (requests are recorded as skipped).
    pub command: Vec<String>,
    /// A job still running after this is killed and recorded as timed out.
    pub timeout: Duration,
    /// At least this long between the starts of two jobs (failed ones count too).
    pub min_interval: Duration,
    /// After consecutive failures the interval doubles per failure, up to this.
    pub max_backoff: Duration,
    /// Tell the `alert_receivers` once when this many jobs in a row failed; 0: never.
    pub alert_after_failures: u32,
    /// Who hears that re-distillation keeps failing (names of `[receivers.*]`): the configured
    /// list, or else the receivers of the rules whose action is `redistill`.
    pub alert_receivers: Vec<String>,
    /// Where each job gets its directory (dataset, held-out set, log, output).
    pub work_dir: PathBuf,
    /// Promote a job's candidate when the gate passes it (the daemon reloads to serve it).
    pub auto_promote: bool,
    /// Previous students kept after a promotion.
    pub keep_students: usize,
    /// Share of the exported records held out from the job (the gate's evidence).
    pub holdout: f64,
    /// A job needs at least this many teacher samples to train on.
    pub min_samples: usize,
    /// The gate: the candidate must beat the student's held-out agreement by this much...
    pub gate_margin: f64,
    /// ... with a one-sided p-value below this...
    pub gate_alpha: f64,
    /// ... and not regress on the lab set by more than this (disagreement and error rates).
    pub gate_lab_tolerance: f64,
    /// The distillation buffer's size cap and share.
    pub buffer: BufferPolicy,
}

/// The buffer's size cap and how it is shared (`[redistill] buffer_max_samples`,
/// `buffer_in_distribution_share`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BufferPolicy {
    /// Teacher samples kept at most.
    pub max_samples: usize,
    /// Share of the cap reserved for agreeing records, spread evenly over time.
    pub in_distribution_share: f64,
}

/// Drift detection settings (`[detect]`; the method is in docs/detection.md).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    /// The site's false-alarm budget: expected false drift events over a period, spread over
    /// every detector (`crate::drift::budget`).
    pub false_alarms: FalseAlarmBudget,
    /// Expert override of the budget: expected samples between false alarms of one detector
    /// (in-control average run length), for every sequential family or by family.
    pub arl0: Arl0Override,
    /// Bernoulli CUSUM on disagreement: p1 = p0 + this.
    pub min_shift_disagreement: f64,
    /// Bernoulli CUSUM on student/teacher error rates: p1 = p0 + this.
    pub min_shift_error: f64,
    /// Real-valued CUSUMs: the smallest shift worth an alert, in baseline standard deviations.
    pub min_shift_sd: f64,
    /// Windowed tests run every this many records of a segment.
    pub window_records: usize,
    /// Expert override of the budget's share for windowed rounds: the family-wise false-alarm
    /// level of one round (segments × signals).
    pub family_alpha: Option<f64>,
    /// Effect-size thresholds of the windowed tests.
    pub min_ks: f64,
    pub min_class_shift: f64,
    pub min_psi: f64,
    /// Seed of calibration simulations.
    pub seed: u64,
}

/// `[detect] false_alarms = "N per <duration>"`.
#[derive(Debug, Clone, PartialEq)]
pub struct FalseAlarmBudget {
    /// Expected false drift events per period (site-wide).
    pub events: f64,
    pub period: Duration,
    /// As written, for reports.
    pub text: String,
}

impl Default for FalseAlarmBudget {
    fn default() -> Self {
        FalseAlarmBudget {
            events: 1.0,
            period: Duration::from_secs(90 * 86_400),
            text: "1 per 90d".to_string(),
        }
    }
}

/// `[detect] arl0`: unset (the budget decides), one value for every sequential family, or a
/// value per family (`arl0 = { disagreement = 50000 }`); where set it wins over the budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Arl0Override {
    pub all: Option<u64>,
    pub by_family: std::collections::BTreeMap<String, u64>,
}

impl Arl0Override {
    /// The explicit ARL0 of a family's detectors, if any.
    pub fn for_family(&self, family: &str) -> Option<u64> {
        self.by_family.get(family).copied().or(self.all)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InboxConfig {
    /// The watched directory (flat, non-recursive).
    pub dir: PathBuf,
    /// Where processed files go when `on_done` is `Move`.
    pub done_dir: PathBuf,
    /// Where bad files go, each with `<name>.error.txt`.
    pub quarantine_dir: PathBuf,
    pub on_done: OnDone,
    /// Files larger than this are quarantined without being read.
    pub max_file_bytes: u64,
    /// A file written in place is taken once it is closed and unmodified for this long.
    pub quiet: Duration,
    /// Full rescan of the inbox at this interval (belt and braces for lost events).
    pub rescan_interval: Duration,
    /// Use a polling watcher (NFS/CIFS mounts deliver no inotify events).
    pub poll: bool,
    /// A record whose `ts` is further than this ahead of the time it is read makes its file
    /// quarantined.
    pub ts_max_future: Duration,
    /// A record whose `ts` is further than this behind the time it is read makes its file
    /// quarantined; `None`: no bound (backfills of old data are welcome).
    pub ts_max_past: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDone {
    Move,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct OnnxRuntimeConfig {
    /// Explicit path of `libonnxruntime.so*`; searched first when set.
    pub library: Option<PathBuf>,
}

/// One model (student or teacher) and how to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The `.onnx` file; empty when the model is served by an inference server (`remote`).
    pub path: PathBuf,
    /// The model on an inference server (`[teacher] url`, `model`, `version`, or a
    /// challenger's), instead of a local file. Always `None` for the student, which runs on
    /// this machine.
    pub remote: Option<RemoteConfig>,
    /// Intra-op threads of this model's ONNX Runtime session.
    pub threads: usize,
    /// Largest batch handed to one `run`.
    pub max_batch: usize,
    /// Longest time a partial batch waits for more records.
    pub max_wait: Duration,
    /// Input names to feed; empty means all of the model's inputs.
    pub inputs: Vec<String>,
    /// The output compared between teacher and student (logits, probabilities, embedding or
    /// regression value).
    pub output: String,
    /// The optional attention-probabilities output, `[batch, heads, seq, seq]`.
    pub attention: Option<String>,
}

/// A model served by an inference server speaking the Open Inference Protocol (KServe v2:
/// Triton, KServe, MLServer).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// The config section it was read from (`teacher`, `challengers[2]`), for messages.
    pub section: String,
    /// The server's base URL (`http://` or `https://`), without a trailing slash.
    pub url: String,
    /// The model's name on the server.
    pub model: String,
    /// The model's version on the server; `None`: the server's default.
    pub version: Option<String>,
    /// Longest wait for one request's answer.
    pub timeout: Duration,
    /// Tries after the first for a transient error (no connection, HTTP 429, 502, 503, 504).
    pub retries: u32,
    /// The wait before the first retry; it doubles for each next one, with random jitter.
    pub backoff: Duration,
    /// Requests (batches) in flight at once.
    pub in_flight: usize,
    /// This many batches in a row out of reach open the circuit breaker: no requests for
    /// `breaker_open`, then one batch probes the server.
    pub breaker_after: u32,
    pub breaker_open: Duration,
    /// How tensors travel in inference requests and answers.
    pub tensors: TensorEncoding,
    /// PEM certificates trusted beside the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key (PEM), for servers that ask for one (mutual TLS).
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Sent as `Authorization: Bearer …`; read from `token_file` or the systemd credential
    /// `token_credential` when the config is loaded.
    pub token: Option<Secret>,
}

/// How a model on an inference server is sent its inputs and answers its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorEncoding {
    /// Binary when the server's metadata (`GET /v2`) lists the `binary_tensor_data`
    /// extension (Triton), JSON otherwise.
    Auto,
    /// Triton's binary tensor extension: a JSON header, then the raw little-endian tensors.
    Binary,
    /// Numbers in the JSON body.
    Json,
}

impl RemoteConfig {
    /// The model's path on the server: `/v2/models/NAME` or `/v2/models/NAME/versions/V`.
    pub fn model_url(&self) -> String {
        match &self.version {
            Some(v) => format!("{}/v2/models/{}/versions/{v}", self.url, self.model),
            None => format!("{}/v2/models/{}", self.url, self.model),
        }
    }
}

impl ModelConfig {
    /// Where the model comes from, for messages: its file or its address on the server.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(r) => r.model_url(),
            None => self.path.display().to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingPolicy {
    /// Every record has the same inclusion probability, `rate`.
    Uniform,
    /// Inclusion probability rises with the student's uncertainty, never below `floor`, with
    /// `rate` the expected share on lab data (docs/detection.md).
    Uncertainty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub policy: SamplingPolicy,
    /// Uncertainty policy: the smallest inclusion probability, as a fraction of `rate`.
    pub floor: f64,
    /// Probability that a record is also sent to the teacher.
    pub rate: f64,
    /// Seed of the sampling decision (a hash of seed and record id: restart-stable).
    pub seed: u64,
    /// Budget: at most this many teacher records per minute; excess samples are counted as skipped.
    pub max_per_minute: u32,
    /// Bounded queue in front of the teacher; when full, samples are skipped (counted).
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Classification,
    Embedding,
    Regression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Unnormalised scores; softmax is applied.
    Logits,
    /// Already probabilities.
    Probabilities,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    None,
    /// Mean over the sequence axis (axis 1), masked by `mask_input` when given.
    Mean,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompareConfig {
    pub task: Task,
    /// Classification only.
    pub output_kind: OutputKind,
    /// Embedding only.
    pub pooling: Pooling,
    /// Embedding only: an int64 input (e.g. `attention_mask`) whose zeros are left out of pooling.
    pub mask_input: Option<String>,
    /// What to do with NaN/Inf in inputs.
    pub non_finite: NonFinitePolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFinitePolicy {
    /// Quarantine the file.
    Reject,
    /// Pass them to the model.
    Allow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentConfig {
    /// Segment keys kept from each record's `segment` object (others are ignored).
    pub keys: Vec<String>,
    /// Distinct segment values tracked; further new values are pooled as `(other)`.
    pub max_values: usize,
    /// The longest segment value kept, in bytes as stored (escaped); a longer one is cut.
    pub max_value_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// The SQLite database file.
    pub path: PathBuf,
    /// Per-record rows older than this are deleted (window aggregates are kept).
    pub record_retention: Duration,
    /// Length of the per-segment aggregate windows.
    pub window: Duration,
    /// `[store] max_size`: when the database's pages in use pass it, the oldest per-record rows
    /// are deleted (windows, drift events, alerts, jobs and the distillation buffer stay).
    pub max_bytes: Option<u64>,
    /// When a file's commit reaches the disk (SQLite `synchronous` of the writer).
    pub synchronous: Synchronous,
}

/// SQLite's `synchronous` setting for the writer's connection (WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// The WAL is synced at checkpoints only: a commit survives a crash of the process, but a
    /// power cut may roll back the last commits after their files were moved, leaving those
    /// records uncounted (docs/crash.md).
    Normal,
    /// The WAL is synced at every commit, before the file is moved: a commit survives a power
    /// cut too. Costs an fsync per file.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `sensei=debug,ort=warn`.
    pub filter: String,
}

/// The HTTP server (`[http]`): metrics, health, the JSON API and the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Where to listen; `None` turns HTTP off (`listen = ""`).
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer token required on every endpoint but `/healthz` and `/readyz`.
    pub token: Option<Secret>,
    /// Serve a non-loopback address without a token (validation refuses it otherwise).
    pub allow_non_loopback_without_token: bool,
    /// How long a connection may take to send a request's headers (idle keep-alive
    /// connections included) before it is closed.
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue, holding no
    /// descriptor of the daemon's.
    pub max_connections: usize,
}

/// The daemon's own settings (`[daemon]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// How long SIGTERM waits for the pipeline to drain before giving up (exit non-zero; the
    /// unfinished files stay in the inbox and are processed again at the next start).
    pub drain_timeout: Duration,
}

/// A secret from the config (a token): never shown by `Debug` and never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The most a secret file (a token, a password) may hold: it is one line.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a secret: the first line of the file at `path`, trimmed, which must not be empty. A
/// file over [`MAX_SECRET_FILE`] (or a device that never ends) is refused before it is read
/// whole. The error says what is wrong with the file, naming it; it never quotes the content.
pub fn read_secret(path: &Path) -> Result<Secret, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "{} is larger than {} KiB; a secret file holds one line",
            path.display(),
            MAX_SECRET_FILE / 1024
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(secret.to_owned()))
}

impl Config {
    /// Reads and validates a config file; on failure the error lists every problem.
    /// A student promoted by `sensei promote` serves in place of `[student] path`
    /// (`promoted`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut config = validate::load(path)?;
        promoted::apply_promoted_student(&mut config);
        Ok(config)
    }

    /// Parses and validates TOML text as if read from `source` (relative paths resolve against
    /// `source`'s directory).
    pub fn from_toml(text: &str, source: &Path) -> Result<Config, ConfigError> {
        validate::from_toml(text, source)
    }
}
