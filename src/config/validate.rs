//! From [`RawConfig`] to [`Config`]: defaults, ranges, enum values, durations, sizes and path
//! resolution.
//!
//! Validation never stops at the first problem: each check records what is wrong under its key
//! path and hands back a placeholder so the next check can run, and the caller gets either a
//! complete [`Config`] or the full list. Relative paths are resolved against the directory of
//! the config file, never the working directory, so the daemon reads the same files whoever
//! starts it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{self, RawConfig, RawDuration, RawInt, RawModel, RawSize};
use super::{ChallengerConfig, DaemonConfig, HttpConfig, RedistillConfig, Secret, ShadowConfig};
use super::{
    CompareConfig, Config, DetectConfig, InboxConfig, LogConfig, LogFormat, ModelConfig,
    NonFinitePolicy, OnDone, OnnxRuntimeConfig, OutputKind, Pooling, SamplingConfig,
    SamplingPolicy, SegmentConfig, StoreConfig, Synchronous, Task,
};

/// A config that cannot be used, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config {}:{}", .file.display(), ProblemLines(.problems))]
pub struct ConfigError {
    /// The config file the problems were found in.
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

/// Renders each problem on its own indented line.
struct ProblemLines<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path such as `student.threads`; empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The most a config file may hold; the commented example is about 20 KiB.
const MAX_CONFIG_FILE: u64 = 4 * 1024 * 1024;

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    use std::io::Read;
    let unreadable = |message: String| ConfigError {
        file: path.to_path_buf(),
        problems: vec![ConfigProblem {
            path: String::new(),
            message,
        }],
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| unreadable(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE {
        return Err(unreadable(format!(
            "{} is larger than {} MiB; is it the config file?",
            path.display(),
            MAX_CONFIG_FILE >> 20
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        unreadable(format!(
            "{} is not UTF-8 text (line {}, byte {})",
            path.display(),
            valid.iter().filter(|&&b| b == b'\n').count() + 1,
            valid.len()
        ))
    })?;
    from_toml(&text, path)
}

/// Parses and validates TOML text as if read from `source`.
pub fn from_toml(text: &str, source: &Path) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        file: source.to_path_buf(),
        problems,
    };
    let raw = raw::parse(text).map_err(fail)?;
    let base = source.parent().unwrap_or(Path::new(""));
    let mut check = Check {
        base,
        problems: Vec::new(),
    };
    let config = check.config(raw, source);
    if check.problems.is_empty() {
        Ok(config)
    } else {
        Err(fail(check.problems))
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

const DEFAULT_MAX_FILE_BYTES: u64 = 64 * MIB;
const DEFAULT_THREADS: i64 = 1;
const DEFAULT_MAX_BATCH: i64 = 32;
const MAX_BATCH_LIMIT: i64 = 4096;
const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(20);
const DEFAULT_OUTPUT: &str = "logits";
const DEFAULT_MAX_PER_MINUTE: i64 = 600;
const DEFAULT_QUEUE: i64 = 256;
const DEFAULT_MAX_SEGMENT_VALUES: i64 = 100;
const DEFAULT_LOG_FILTER: &str = "info,ort=warn";
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// Collects problems while building the typed config.
struct Check<'a> {
    /// Directory of the config file; relative paths are resolved against it.
    base: &'a Path,
    problems: Vec<ConfigProblem>,
}

impl Check<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: RawConfig, source: &Path) -> Config {
        let state_dir = match raw.state_dir {
            Some(dir) => self.path("state_dir", dir),
            None => {
                self.problem(
                    "state_dir",
                    "required: the directory for the database, inbox and done files",
                );
                self.base.to_path_buf()
            }
        };

        let inbox = raw.inbox;
        let inbox = InboxConfig {
            dir: self.path_or("inbox.dir", inbox.dir, || state_dir.join("inbox")),
            done_dir: self.path_or("inbox.done_dir", inbox.done_dir, || state_dir.join("done")),
            quarantine_dir: self.path_or("inbox.quarantine_dir", inbox.quarantine_dir, || {
                state_dir.join("quarantine")
            }),
            on_done: self.choice(
                "inbox.on_done",
                inbox.on_done,
                OnDone::Move,
                &[("move", OnDone::Move), ("delete", OnDone::Delete)],
            ),
            max_file_bytes: self.size("inbox.max_file_size", inbox.max_file_size),
            quiet: self.duration("inbox.quiet", inbox.quiet, 2 * SECOND, Duration::ZERO),
            rescan_interval: self.duration(
                "inbox.rescan_interval",
                inbox.rescan_interval,
                MINUTE,
                SECOND,
            ),
            poll: inbox.poll.unwrap_or(false),
        };

        let onnxruntime = OnnxRuntimeConfig {
            library: raw
                .onnxruntime
                .library
                .map(|library| self.path("onnxruntime.library", library)),
        };

        let student = self.model("student", raw.student);
        let teacher = self.model("teacher", raw.teacher);

        let sampling = raw.sampling;
        let rate = sampling.rate.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&rate) {
            self.problem("sampling.rate", format!("must be within 0..=1, got {rate}"));
        }
        let floor = sampling.floor.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&floor) {
            self.problem(
                "sampling.floor",
                format!("must be within 0..=1, got {floor}"),
            );
        }
        let sampling = SamplingConfig {
            policy: self.choice(
                "sampling.policy",
                sampling.policy,
                SamplingPolicy::Uniform,
                &[
                    ("uniform", SamplingPolicy::Uniform),
                    ("uncertainty", SamplingPolicy::Uncertainty),
                ],
            ),
            floor,
            rate,
            seed: self.integer("sampling.seed", sampling.seed, 0, 0, i64::MAX),
            max_per_minute: self.integer(
                "sampling.max_per_minute",
                sampling.max_per_minute,
                DEFAULT_MAX_PER_MINUTE,
                1,
                i64::from(u32::MAX),
            ),
            queue: self.integer("sampling.queue", sampling.queue, DEFAULT_QUEUE, 1, i64::MAX),
        };

        let compare = self.compare(raw.compare);

        let segments = SegmentConfig {
            keys: self.names("segments.keys", raw.segments.keys.unwrap_or_default()),
            max_values: self.integer(
                "segments.max_values",
                raw.segments.max_values,
                DEFAULT_MAX_SEGMENT_VALUES,
                1,
                i64::MAX,
            ),
        };

        let store = raw.store;
        let store = StoreConfig {
            path: self.path_or("store.path", store.path, || state_dir.join("sensei.db")),
            record_retention: self.duration(
                "store.record_retention",
                store.record_retention,
                30 * DAY,
                SECOND,
            ),
            window: self.duration("store.window", store.window, 15 * MINUTE, SECOND),
            synchronous: self.choice(
                "store.synchronous",
                store.synchronous,
                Synchronous::Normal,
                &[("normal", Synchronous::Normal), ("full", Synchronous::Full)],
            ),
        };

        let log = LogConfig {
            format: self.choice(
                "log.format",
                raw.log.format,
                LogFormat::Auto,
                &[
                    ("auto", LogFormat::Auto),
                    ("text", LogFormat::Text),
                    ("json", LogFormat::Json),
                ],
            ),
            filter: self.name("log.filter", raw.log.filter, DEFAULT_LOG_FILTER),
        };

        let detect = self.detect(raw.detect);
        let http = self.http(raw.http);
        let alerts = crate::config::alerts::validate(
            raw.alerts,
            raw.receivers,
            raw.rules,
            self.base,
            &mut self.problems,
        );
        let daemon = DaemonConfig {
            drain_timeout: self.duration(
                "daemon.drain_timeout",
                raw.daemon.drain_timeout,
                30 * SECOND,
                SECOND,
            ),
        };

        let redistill = self.redistill(raw.redistill, &state_dir, &alerts);
        let shadow = ShadowConfig {
            agreement_floor: self.fraction(
                "shadow.agreement_floor",
                raw.shadow.agreement_floor,
                0.95,
            ),
            candidate: raw.shadow.candidate.unwrap_or(true),
        };
        let challengers = raw
            .challengers
            .into_iter()
            .enumerate()
            .filter_map(|(index, c)| self.challenger(index, c))
            .collect::<Vec<_>>();
        for (index, c) in challengers.iter().enumerate() {
            if challengers[..index].iter().any(|e| e.name == c.name) {
                self.problem(
                    &format!("challengers[{index}].name"),
                    format!("\"{}\" is used by an earlier challenger", c.name),
                );
            }
        }

        Config {
            redistill,
            shadow,
            challengers,
            detect,
            source: source.to_path_buf(),
            state_dir,
            inbox,
            onnxruntime,
            student,
            teacher,
            sampling,
            compare,
            segments,
            store,
            log,
            http,
            daemon,
            alerts,
        }
    }

    fn redistill(
        &mut self,
        raw: raw::RawRedistill,
        state_dir: &Path,
        alerts: &super::alerts::AlertConfig,
    ) -> RedistillConfig {
        const PLACEHOLDERS: [&str; 4] = ["{dataset}", "{teacher}", "{student}", "{output}"];
        let command = raw.command.unwrap_or_default();
        if let Some(program) = command.first()
            && program.is_empty()
        {
            self.problem("redistill.command", "the program (first element) is empty");
        }
        if !command.is_empty() {
            for needed in ["{dataset}", "{output}"] {
                if !command.iter().any(|a| a.contains(needed)) {
                    self.problem(
                        "redistill.command",
                        format!(
                            "must pass {needed} to the job (placeholders: {})",
                            PLACEHOLDERS.join(", ")
                        ),
                    );
                }
            }
        }
        for arg in &command {
            let mut rest = arg.as_str();
            while let Some(start) = rest.find('{') {
                let end = rest[start..]
                    .find('}')
                    .map_or(rest.len(), |e| start + e + 1);
                let word = &rest[start..end];
                if !PLACEHOLDERS.contains(&word) {
                    self.problem(
                        "redistill.command",
                        format!(
                            "unknown placeholder {word:?} (known: {})",
                            PLACEHOLDERS.join(", ")
                        ),
                    );
                }
                rest = &rest[end..];
            }
        }
        let holdout = raw.holdout.unwrap_or(0.2);
        if !(0.05..=0.5).contains(&holdout) {
            self.problem(
                "redistill.holdout",
                format!("must be within 0.05..=0.5, got {holdout}"),
            );
        }
        let share = raw.buffer_in_distribution_share.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&share) {
            self.problem(
                "redistill.buffer_in_distribution_share",
                format!("must be within 0..=1, got {share}"),
            );
        }
        let min_interval = self.duration(
            "redistill.min_interval",
            raw.min_interval,
            360 * MINUTE,
            Duration::ZERO,
        );
        let max_backoff = self.duration(
            "redistill.max_backoff",
            raw.max_backoff,
            7 * DAY,
            Duration::ZERO,
        );
        if max_backoff < min_interval {
            self.problem(
                "redistill.max_backoff",
                format!(
                    "must be at least redistill.min_interval ({}), got {}",
                    show_duration(min_interval),
                    show_duration(max_backoff)
                ),
            );
        }
        let alert_receivers = match raw.alert_receivers {
            Some(names) => {
                let names = self.names("redistill.alert_receivers", names);
                for (index, name) in names.iter().enumerate() {
                    if !name.trim().is_empty() && !alerts.receivers.contains_key(name) {
                        let known: Vec<&str> =
                            alerts.receivers.keys().map(String::as_str).collect();
                        self.problem(
                            &format!("redistill.alert_receivers[{index}]"),
                            format!(
                                "no receiver \"{name}\" in [receivers] (configured: {})",
                                if known.is_empty() {
                                    "none".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                }
                names
            }
            None => redistill_rule_receivers(alerts),
        };
        RedistillConfig {
            command,
            timeout: self.duration("redistill.timeout", raw.timeout, 120 * MINUTE, SECOND),
            min_interval,
            max_backoff,
            alert_after_failures: self.integer(
                "redistill.alert_after_failures",
                raw.alert_after_failures,
                2,
                0,
                1000,
            ),
            alert_receivers,
            work_dir: self.path_or("redistill.work_dir", raw.work_dir, || {
                state_dir.join("redistill")
            }),
            auto_promote: raw.auto_promote.unwrap_or(false),
            keep_students: self.integer("redistill.keep_students", raw.keep_students, 3, 1, 1000),
            holdout,
            min_samples: self.integer("redistill.min_samples", raw.min_samples, 100, 2, i64::MAX),
            gate_margin: self.fraction("redistill.gate_margin", raw.gate_margin, 0.01),
            gate_alpha: self.fraction("redistill.gate_alpha", raw.gate_alpha, 0.05),
            gate_lab_tolerance: self.fraction(
                "redistill.gate_lab_tolerance",
                raw.gate_lab_tolerance,
                0.02,
            ),
            buffer: crate::config::BufferPolicy {
                max_samples: self.integer(
                    "redistill.buffer_max_samples",
                    raw.buffer_max_samples,
                    50_000,
                    10,
                    i64::MAX,
                ),
                in_distribution_share: share,
            },
        }
    }

    /// One `[[challengers]]` entry; `None` when it lacks what it cannot do without.
    fn challenger(&mut self, index: usize, raw: raw::RawChallenger) -> Option<ChallengerConfig> {
        let key = |name: &str| format!("challengers[{index}].{name}");
        let name = match raw.name {
            None => {
                self.problem(&key("name"), "required: how reports name this challenger");
                None
            }
            Some(name) => {
                let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
                if name.is_empty() || !name.chars().all(allowed) {
                    self.problem(
                        &key("name"),
                        format!(
                            "\"{name}\" must be letters, digits, '-', '_' or '.' (at least one)"
                        ),
                    );
                    None
                } else if name == crate::config::STUDENT
                    || name == "teacher"
                    || name.starts_with(crate::config::CANDIDATE_PREFIX)
                {
                    self.problem(
                        &key("name"),
                        format!(
                            "\"{name}\" is reserved (student, teacher and {}<job> name other models)",
                            crate::config::CANDIDATE_PREFIX
                        ),
                    );
                    None
                } else {
                    Some(name)
                }
            }
        };
        let path = match raw.path {
            Some(path) => Some(self.path(&key("path"), path)),
            None => {
                self.problem(&key("path"), "required: the challenger's .onnx file");
                None
            }
        };
        let threads = self.integer(&key("threads"), raw.threads, 1, 1, 1024);
        let (output, attention) =
            self.outputs(&format!("challengers[{index}]"), raw.output, raw.attention);
        Some(ChallengerConfig {
            name: name?,
            path: path?,
            output,
            attention,
            threads,
        })
    }

    fn detect(&mut self, raw: raw::RawDetect) -> DetectConfig {
        DetectConfig {
            arl0: self.integer("detect.arl0", raw.arl0, 10_000, 100, 10_000_000),
            min_shift_disagreement: self.fraction(
                "detect.min_shift_disagreement",
                raw.min_shift_disagreement,
                0.05,
            ),
            min_shift_error: self.fraction("detect.min_shift_error", raw.min_shift_error, 0.05),
            min_shift_sd: self.positive("detect.min_shift_sd", raw.min_shift_sd, 1.0),
            window_records: self.integer(
                "detect.window_records",
                raw.window_records,
                200,
                20,
                1_000_000,
            ),
            family_alpha: self.fraction("detect.family_alpha", raw.family_alpha, 0.01),
            min_ks: self.fraction("detect.min_ks", raw.min_ks, 0.15),
            min_class_shift: self.fraction("detect.min_class_shift", raw.min_class_shift, 0.1),
            min_psi: self.positive("detect.min_psi", raw.min_psi, 0.2),
            seed: self.integer("detect.seed", raw.seed, 1, 0, i64::MAX),
        }
    }

    /// A number strictly between 0 and 1; `default` when absent.
    fn fraction(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        let value = value.unwrap_or(default);
        if !(value > 0.0 && value < 1.0) {
            self.problem(
                key,
                format!("must be strictly between 0 and 1, got {value}"),
            );
            return default;
        }
        value
    }

    /// A finite number above 0; `default` when absent.
    fn positive(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        let value = value.unwrap_or(default);
        if !(value.is_finite() && value > 0.0) {
            self.problem(key, format!("must be a positive number, got {value}"));
            return default;
        }
        value
    }

    fn model(&mut self, section: &str, raw: RawModel) -> ModelConfig {
        let key = |name: &str| format!("{section}.{name}");
        let path = match raw.path {
            Some(path) => self.path(&key("path"), path),
            None => {
                self.problem(
                    &key("path"),
                    format!("required: the {section} model's .onnx file"),
                );
                PathBuf::new()
            }
        };
        let threads = self.integer(&key("threads"), raw.threads, DEFAULT_THREADS, 1, 1024);
        let max_batch = self.integer(
            &key("max_batch"),
            raw.max_batch,
            DEFAULT_MAX_BATCH,
            1,
            MAX_BATCH_LIMIT,
        );
        let max_wait = self.duration(
            &key("max_wait"),
            raw.max_wait,
            DEFAULT_MAX_WAIT,
            Duration::ZERO,
        );
        let inputs = self.names(&key("inputs"), raw.inputs.unwrap_or_default());
        let (output, attention) = self.outputs(section, raw.output, raw.attention);
        ModelConfig {
            path,
            threads,
            max_batch,
            max_wait,
            inputs,
            output,
            attention,
        }
    }

    fn compare(&mut self, raw: raw::RawCompare) -> CompareConfig {
        let task = self.choice(
            "compare.task",
            raw.task,
            Task::Classification,
            &[
                ("classification", Task::Classification),
                ("embedding", Task::Embedding),
                ("regression", Task::Regression),
            ],
        );
        let output_kind = self.choice(
            "compare.output_kind",
            raw.output_kind,
            OutputKind::Logits,
            &[
                ("logits", OutputKind::Logits),
                ("probabilities", OutputKind::Probabilities),
            ],
        );
        if output_kind != OutputKind::Logits && task != Task::Classification {
            self.problem(
                "compare.output_kind",
                "only applies to compare.task = \"classification\"",
            );
        }
        let pooling = self.choice(
            "compare.pooling",
            raw.pooling,
            Pooling::None,
            &[("none", Pooling::None), ("mean", Pooling::Mean)],
        );
        if pooling != Pooling::None && task != Task::Embedding {
            self.problem(
                "compare.pooling",
                "only applies to compare.task = \"embedding\"",
            );
        }
        let mask_input = raw
            .mask_input
            .map(|mask| self.name("compare.mask_input", Some(mask), ""));
        if mask_input.is_some() && pooling != Pooling::Mean {
            self.problem("compare.mask_input", "requires compare.pooling = \"mean\"");
        }
        let non_finite = self.choice(
            "compare.non_finite",
            raw.non_finite,
            NonFinitePolicy::Reject,
            &[
                ("reject", NonFinitePolicy::Reject),
                ("allow", NonFinitePolicy::Allow),
            ],
        );
        CompareConfig {
            task,
            output_kind,
            pooling,
            mask_input,
            non_finite,
        }
    }

    /// A path, resolved against the config file's directory when relative.
    fn path(&mut self, key: &str, value: String) -> PathBuf {
        if value.is_empty() {
            self.problem(key, "must not be empty");
        }
        let path = PathBuf::from(value);
        if path.is_absolute() {
            path
        } else {
            self.base.join(path)
        }
    }

    fn path_or(
        &mut self,
        key: &str,
        value: Option<String>,
        default: impl FnOnce() -> PathBuf,
    ) -> PathBuf {
        match value {
            Some(value) => self.path(key, value),
            None => default(),
        }
    }

    /// An integer within `min..=max`, converted to the config's type; `default` when absent.
    fn integer<T: TryFrom<i64> + Default>(
        &mut self,
        key: &str,
        value: Option<RawInt>,
        default: i64,
        min: i64,
        max: i64,
    ) -> T {
        let value = value.map_or(default, |RawInt(value)| value);
        if value < min {
            self.problem(key, format!("must be at least {min}, got {value}"));
        } else if value > max {
            self.problem(key, format!("must be at most {max}, got {value}"));
        }
        T::try_from(value).unwrap_or_default()
    }

    /// One of a fixed set of strings; the first option is the default.
    fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<String>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if let Some(&(_, chosen)) = options.iter().find(|(name, _)| *name == value) {
            return chosen;
        }
        let allowed: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        self.problem(
            key,
            format!(
                "unknown value \"{value}\", expected one of {}",
                allowed.join(", ")
            ),
        );
        default
    }

    fn duration(
        &mut self,
        key: &str,
        value: Option<RawDuration>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(RawDuration(text)) = value else {
            return default;
        };
        match parse_duration(&text) {
            Ok(duration) if duration < min => {
                self.problem(
                    key,
                    format!("must be at least {}, got \"{text}\"", show_duration(min)),
                );
                default
            }
            Ok(duration) => duration,
            Err(message) => {
                self.problem(key, format!("cannot parse \"{text}\": {message}"));
                default
            }
        }
    }

    fn size(&mut self, key: &str, value: Option<RawSize>) -> u64 {
        let bytes = match value {
            None => return DEFAULT_MAX_FILE_BYTES,
            Some(RawSize::Bytes(bytes)) => u64::try_from(bytes)
                .map_err(|_| format!("must be a positive number of bytes, got {bytes}")),
            Some(RawSize::Text(text)) => {
                parse_size(&text).map_err(|message| format!("cannot parse \"{text}\": {message}"))
            }
        };
        match bytes {
            Ok(0) => {
                self.problem(key, "must be at least 1 byte, got 0");
                DEFAULT_MAX_FILE_BYTES
            }
            Ok(bytes) => bytes,
            Err(message) => {
                self.problem(key, message);
                DEFAULT_MAX_FILE_BYTES
            }
        }
    }

    /// A non-empty name; `default` when absent.
    /// A model's compared output and optional attention output, under `section`; the two must
    /// differ.
    fn outputs(
        &mut self,
        section: &str,
        output: Option<String>,
        attention: Option<String>,
    ) -> (String, Option<String>) {
        let output = self.name(&format!("{section}.output"), output, DEFAULT_OUTPUT);
        let attention_key = format!("{section}.attention");
        let attention = attention.map(|attention| self.name(&attention_key, Some(attention), ""));
        if attention.as_deref() == Some(output.as_str()) && !output.is_empty() {
            self.problem(
                &attention_key,
                format!("must differ from {section}.output (both are \"{output}\")"),
            );
        }
        (output, attention)
    }

    fn name(&mut self, key: &str, value: Option<String>, default: &str) -> String {
        match value {
            None => default.to_owned(),
            Some(value) if value.trim().is_empty() => {
                self.problem(key, "must not be empty");
                value
            }
            Some(value) => value,
        }
    }

    /// A list of names: none empty, none twice.
    fn names(&mut self, key: &str, values: Vec<String>) -> Vec<String> {
        for (index, value) in values.iter().enumerate() {
            if value.trim().is_empty() {
                self.problem(&format!("{key}[{index}]"), "must not be empty");
            } else if values[..index].contains(value) {
                self.problem(
                    &format!("{key}[{index}]"),
                    format!("\"{value}\" is listed twice"),
                );
            }
        }
        values
    }
}

/// The receivers of the rules whose action is `redistill`, each once, in the order the rules
/// name them: the default audience of "re-distillation keeps failing".
fn redistill_rule_receivers(alerts: &super::alerts::AlertConfig) -> Vec<String> {
    let mut receivers: Vec<String> = Vec::new();
    for rule in alerts
        .rules
        .iter()
        .filter(|r| r.action == Some(crate::config::alerts::Action::Redistill))
    {
        for name in &rule.receivers {
            if !receivers.contains(name) {
                receivers.push(name.clone());
            }
        }
    }
    receivers
}

/// Parses a duration such as `500ms`, `2s`, `15m`, `1h` or `30d`: a whole number and a unit,
/// optionally separated by spaces.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a whole number and a unit: ms, s, m, h or d (e.g. \"15m\")";
    let (number, unit) = split_number(text).ok_or_else(|| EXPECTED.to_owned())?;
    let seconds_per_unit: u64 = match unit {
        "ms" => {
            let millis = parse_count(number)?;
            return Ok(Duration::from_millis(millis));
        }
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("missing unit: {EXPECTED}")),
        other => return Err(format!("unknown unit \"{other}\": {EXPECTED}")),
    };
    let seconds = parse_count(number)?
        .checked_mul(seconds_per_unit)
        .ok_or_else(|| "too large".to_owned())?;
    Ok(Duration::from_secs(seconds))
}

/// Parses a size such as `1048576`, `512 KiB`, `64 MiB` or `1 GB`: a whole number of bytes with
/// an optional binary (KiB, MiB, GiB) or decimal (KB, MB, GB) unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a whole number and an optional unit: B, KiB, MiB, GiB, KB, MB or GB (e.g. \"64 MiB\")";
    let (number, unit) = split_number(text).ok_or_else(|| EXPECTED.to_owned())?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => GIB,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit \"{other}\": {EXPECTED}")),
    };
    parse_count(number)?
        .checked_mul(multiplier)
        .ok_or_else(|| "too large".to_owned())
}

/// Splits `" 15 m "` into `("15", "m")`; `None` when it does not start with a digit.
fn split_number(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let (number, unit) = text.split_at(digits);
    Some((number, unit.trim_start()))
}

fn parse_count(digits: &str) -> Result<u64, String> {
    digits.parse::<u64>().map_err(|_| "too large".to_owned())
}

/// Renders a duration the way the config writes it, for messages.
fn show_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() != 0 || seconds == 0 {
        format!("{}ms", duration.as_millis())
    } else if seconds.is_multiple_of(86_400) {
        format!("{}d", seconds / 86_400)
    } else if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// The default `[http] listen` address: loopback only.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9477";

impl Check<'_> {
    /// `[http]`: the address, the optional bearer token (read now, so a missing file is a config
    /// problem like any other) and the rule that a non-loopback address needs a token.
    fn http(&mut self, raw: raw::RawHttp) -> HttpConfig {
        let listen_text = raw.listen.unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_owned());
        let listen = if listen_text.is_empty() {
            None
        } else {
            match listen_text.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.problem(
                        "http.listen",
                        format!(
                            "cannot parse \"{listen_text}\": expected an IP address and port such as \"{DEFAULT_HTTP_LISTEN}\" or \"[::1]:9477\", or \"\" to turn HTTP off"
                        ),
                    );
                    None
                }
            }
        };
        let token = match (raw.token_file, raw.token_credential) {
            (Some(_), Some(_)) => {
                self.problem(
                    "http.token_credential",
                    "set either http.token_file or http.token_credential, not both",
                );
                None
            }
            (Some(file), None) => {
                let path = self.path("http.token_file", file);
                self.token("http.token_file", &path)
            }
            (None, Some(name)) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) if !name.is_empty() && !name.contains('/') => {
                    self.token("http.token_credential", &PathBuf::from(dir).join(name))
                }
                Some(_) => {
                    self.problem(
                        "http.token_credential",
                        format!("\"{name}\" is not a credential name (no slashes, not empty)"),
                    );
                    None
                }
                None => {
                    self.problem(
                        "http.token_credential",
                        format!(
                            "credential \"{name}\" is set but $CREDENTIALS_DIRECTORY is not (it is set by systemd's LoadCredential=)"
                        ),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        let allow_open = raw.allow_non_loopback_without_token.unwrap_or(false);
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && token.is_none()
            && !allow_open
        {
            self.problem(
                "http.listen",
                format!(
                    "{addr} is not a loopback address and no token is set: set http.token_file (or http.token_credential), or http.allow_non_loopback_without_token = true to serve the API to the network unauthenticated"
                ),
            );
        }
        HttpConfig {
            listen,
            token,
            allow_non_loopback_without_token: allow_open,
        }
    }

    /// Reads a bearer token: the first line of the file, which must not be empty.
    fn token(&mut self, key: &str, path: &Path) -> Option<Secret> {
        super::read_secret(path)
            .map_err(|message| self.problem(key, message))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
state_dir = "/var/lib/sensei"
[student]
path = "/models/student.onnx"
[teacher]
path = "/models/teacher.onnx"
"#;

    fn problems(text: &str) -> Vec<ConfigProblem> {
        from_toml(text, Path::new("/etc/sensei/sensei.toml"))
            .expect_err("config should be rejected")
            .problems
    }

    fn paths(problems: &[ConfigProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config/sensei.toml");
        let config = from_toml(text, Path::new("/etc/sensei/sensei.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.state_dir, Path::new("/var/lib/sensei"));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = from_toml(MINIMAL, Path::new("/etc/sensei/sensei.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        let state = Path::new("/var/lib/sensei");
        assert_eq!(config.source, Path::new("/etc/sensei/sensei.toml"));
        assert_eq!(
            config.inbox,
            InboxConfig {
                dir: state.join("inbox"),
                done_dir: state.join("done"),
                quarantine_dir: state.join("quarantine"),
                on_done: OnDone::Move,
                max_file_bytes: 64 * 1024 * 1024,
                quiet: Duration::from_secs(2),
                rescan_interval: Duration::from_secs(60),
                poll: false,
            }
        );
        assert_eq!(config.onnxruntime.library, None);
        for (model, path) in [
            (&config.student, "/models/student.onnx"),
            (&config.teacher, "/models/teacher.onnx"),
        ] {
            assert_eq!(
                *model,
                ModelConfig {
                    path: PathBuf::from(path),
                    threads: 1,
                    max_batch: 32,
                    max_wait: Duration::from_millis(20),
                    inputs: Vec::new(),
                    output: "logits".to_owned(),
                    attention: None,
                }
            );
        }
        assert_eq!(
            config.sampling,
            SamplingConfig {
                policy: SamplingPolicy::Uniform,
                floor: 0.2,
                rate: 0.1,
                seed: 0,
                max_per_minute: 600,
                queue: 256,
            }
        );
        assert_eq!(
            config.compare,
            CompareConfig {
                task: Task::Classification,
                output_kind: OutputKind::Logits,
                pooling: Pooling::None,
                mask_input: None,
                non_finite: NonFinitePolicy::Reject,
            }
        );
        assert_eq!(
            config.segments,
            SegmentConfig {
                keys: Vec::new(),
                max_values: 100,
            }
        );
        assert_eq!(
            config.store,
            StoreConfig {
                path: state.join("sensei.db"),
                record_retention: Duration::from_secs(30 * 86_400),
                window: Duration::from_secs(15 * 60),
                synchronous: Synchronous::Normal,
            }
        );
        assert_eq!(
            config.log,
            LogConfig {
                format: LogFormat::Auto,
                filter: "info,ort=warn".to_owned(),
            }
        );
    }

    #[test]
    fn the_failure_back_off_and_its_receivers_are_validated() {
        let config = from_toml(MINIMAL, Path::new("/etc/sensei/sensei.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.redistill.max_backoff, 7 * DAY);
        assert_eq!(config.redistill.alert_after_failures, 2);
        assert!(config.redistill.alert_receivers.is_empty());
        let text = format!(
            "{MINIMAL}[receivers.ops]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\
             [redistill]\nmin_interval = \"2h\"\nmax_backoff = \"1h\"\n\
             alert_receivers = [\"ops\", \"pager\"]\nalert_after_failures = -1\n"
        );
        let found = problems(&text);
        assert_eq!(
            paths(&found),
            [
                "redistill.max_backoff",
                "redistill.alert_receivers[1]",
                "redistill.alert_after_failures"
            ],
            "{found:?}"
        );
        assert!(
            found[0].message.contains("at least redistill.min_interval"),
            "{found:?}"
        );
        assert!(
            found[1].message.contains("no receiver \"pager\""),
            "{found:?}"
        );
    }

    #[test]
    fn challengers_are_validated_with_their_key_paths() {
        let text = format!(
            "{MINIMAL}[shadow]\nagreement_floor = 1.5\n\
             [[challengers]]\nname = \"int8\"\npath = \"int8.onnx\"\nthreads = 0\n\
             [[challengers]]\nname = \"int8\"\npath = \"other.onnx\"\nattention = \"logits\"\n\
             [[challengers]]\nname = \"candidate-3\"\n\
             [[challengers]]\nname = \"a b\"\npath = \"x.onnx\"\n"
        );
        let problems = problems(&text);
        assert_eq!(
            paths(&problems),
            [
                "shadow.agreement_floor",
                "challengers[0].threads",
                "challengers[1].attention",
                "challengers[2].name",
                "challengers[2].path",
                "challengers[3].name",
                "challengers[1].name",
            ],
            "{problems:?}"
        );
        let good = format!("{MINIMAL}[[challengers]]\nname = \"int8\"\npath = \"int8.onnx\"\n");
        let config = Config::from_toml(&good, Path::new("/srv/line4/sensei.toml")).unwrap();
        assert_eq!(config.challengers.len(), 1);
        let c = &config.challengers[0];
        assert_eq!(c.path, Path::new("/srv/line4/int8.onnx"));
        assert_eq!(
            (c.output.as_str(), c.attention.as_deref(), c.threads),
            ("logits", None, 1)
        );
        assert_eq!(config.shadow.agreement_floor, 0.95);
        assert!(config.shadow.candidate);
        let unknown = format!("{MINIMAL}[[challengers]]\nname = \"a\"\npth = \"x\"\n");
        let found = super::tests::problems(&unknown);
        assert_eq!(paths(&found), ["challengers"], "{found:?}");
        assert!(found[0].message.contains("pth"), "{found:?}");
    }

    #[test]
    fn store_synchronous_is_normal_or_full() {
        let full = Config::from_toml(
            &format!("{MINIMAL}[store]\nsynchronous = \"full\"\n"),
            Path::new("/etc/sensei/sensei.toml"),
        )
        .unwrap();
        assert_eq!(full.store.synchronous, Synchronous::Full);
        let found = problems(&format!("{MINIMAL}[store]\nsynchronous = \"off\"\n"));
        assert_eq!(paths(&found), ["store.synchronous"], "{found:?}");
        assert!(found[0].message.contains("\"full\""), "{found:?}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let text = format!("{MINIMAL}threds = 4\n");
        let problems = problems(&text);
        assert_eq!(paths(&problems), ["teacher.threds"]);
        assert!(problems[0].message.contains("unknown field `threds`"));
        assert!(problems[0].message.contains("line 7, column 1"));
    }

    #[test]
    fn wrong_type_is_reported_with_its_path() {
        let text = MINIMAL.replace("[teacher]", "[teacher]\nthreads = \"four\"");
        let problems = problems(&text);
        assert_eq!(paths(&problems), ["teacher.threads"]);
        assert!(problems[0].message.contains("invalid type"));
    }

    #[test]
    fn every_semantic_problem_is_reported_together() {
        let text = r#"
[inbox]
on_done = "archive"
max_file_size = "12 XB"
quiet = "5"
[student]
threads = 0
max_batch = 5000
inputs = ["x", "mask", "x", ""]
output = ""
[teacher]
path = "teacher.onnx"
max_wait = "-5ms"
[sampling]
rate = 1.5
queue = -1
[compare]
task = "embedding"
mask_input = "attention_mask"
[segments]
keys = ["line", "line"]
max_values = 0
[store]
window = "500ms"
[log]
format = "xml"
"#;
        let problems = problems(text);
        assert_eq!(
            paths(&problems),
            [
                "state_dir",
                "inbox.on_done",
                "inbox.max_file_size",
                "inbox.quiet",
                "student.path",
                "student.threads",
                "student.max_batch",
                "student.inputs[2]",
                "student.inputs[3]",
                "student.output",
                "teacher.max_wait",
                "sampling.rate",
                "sampling.queue",
                "compare.mask_input",
                "segments.keys[1]",
                "segments.max_values",
                "store.window",
                "log.format",
            ],
            "{problems:#?}"
        );
        let message = |path: &str| {
            problems
                .iter()
                .find(|p| p.path == path)
                .map(|p| p.message.as_str())
                .unwrap_or_default()
        };
        assert_eq!(message("student.threads"), "must be at least 1, got 0");
        assert_eq!(message("sampling.rate"), "must be within 0..=1, got 1.5");
        assert_eq!(
            message("compare.mask_input"),
            "requires compare.pooling = \"mean\""
        );
        assert!(
            message("inbox.max_file_size").starts_with("cannot parse \"12 XB\": unknown unit"),
            "{problems:#?}"
        );
        assert_eq!(
            message("inbox.on_done"),
            "unknown value \"archive\", expected one of \"move\", \"delete\""
        );
        assert_eq!(
            message("store.window"),
            "must be at least 1s, got \"500ms\""
        );
    }

    #[test]
    fn error_display_lists_every_problem() {
        let error = from_toml("[sampling]\nrate = -0.5\n", Path::new("/etc/sensei.toml"))
            .expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "invalid config /etc/sensei.toml:\n  \
             state_dir: required: the directory for the database, inbox and done files\n  \
             student.path: required: the student model's .onnx file\n  \
             teacher.path: required: the teacher model's .onnx file\n  \
             sampling.rate: must be within 0..=1, got -0.5"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = r#"
state_dir = "state"
[inbox]
dir = "../drop"
[onnxruntime]
library = "lib/libonnxruntime.so"
[student]
path = "models/student.onnx"
[teacher]
path = "/opt/models/teacher.onnx"
"#;
        let config = from_toml(text, Path::new("/srv/line4/sensei.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.state_dir, Path::new("/srv/line4/state"));
        assert_eq!(config.inbox.dir, Path::new("/srv/line4/../drop"));
        assert_eq!(config.inbox.done_dir, Path::new("/srv/line4/state/done"));
        assert_eq!(config.store.path, Path::new("/srv/line4/state/sensei.db"));
        assert_eq!(
            config.onnxruntime.library.as_deref(),
            Some(Path::new("/srv/line4/lib/libonnxruntime.so"))
        );
        assert_eq!(
            config.student.path,
            Path::new("/srv/line4/models/student.onnx")
        );
        assert_eq!(config.teacher.path, Path::new("/opt/models/teacher.onnx"));
    }

    #[test]
    fn task_specific_keys_are_checked() {
        let text = format!(
            "{MINIMAL}[compare]\ntask = \"regression\"\noutput_kind = \"probabilities\"\npooling = \"mean\"\n"
        );
        assert_eq!(
            paths(&problems(&text)),
            ["compare.output_kind", "compare.pooling"]
        );
        let text = format!(
            "{MINIMAL}[compare]\ntask = \"embedding\"\npooling = \"mean\"\nmask_input = \"attention_mask\"\n"
        );
        let config = from_toml(&text, Path::new("/etc/sensei/sensei.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.compare.mask_input.as_deref(), Some("attention_mask"));
    }

    #[test]
    fn sampling_rate_accepts_both_ends() {
        for rate in ["0.0", "1", "1.0"] {
            let text = format!("{MINIMAL}[sampling]\nrate = {rate}\n");
            from_toml(&text, Path::new("/etc/sensei/sensei.toml"))
                .unwrap_or_else(|error| panic!("rate {rate}: {error}"));
        }
        let text = format!("{MINIMAL}[sampling]\nrate = nan\n");
        assert_eq!(paths(&problems(&text)), ["sampling.rate"]);
    }

    #[test]
    fn load_reports_unreadable_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing.toml");
        let error = load(&path).expect_err("missing file");
        assert_eq!(error.problems.len(), 1);
        assert_eq!(error.problems[0].path, "");
        assert!(error.problems[0].message.contains("missing.toml"));

        let path = dir.path().join("sensei.toml");
        std::fs::write(&path, MINIMAL.replace("/models/", "models/")).expect("write");
        let config = load(&path).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.student.path, dir.path().join("models/student.onnx"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration(" 15 m "), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_rejected() {
        let error = |text: &str| parse_duration(text).expect_err(text);
        assert!(error("15").starts_with("missing unit"));
        assert!(error("15 weeks").starts_with("unknown unit \"weeks\""));
        assert!(error("15M").starts_with("unknown unit \"M\""));
        assert!(error("-5s").starts_with("expected a whole number"));
        assert!(error("1.5s").starts_with("unknown unit \".5s\""));
        assert!(error("").starts_with("expected a whole number"));
        assert!(error("s").starts_with("expected a whole number"));
        assert_eq!(error("99999999999999999999s"), "too large");
        assert_eq!(error("18446744073709551615d"), "too large");
        assert_eq!(
            parse_duration("18446744073709551615ms"),
            Ok(Duration::from_millis(u64::MAX))
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("10 B"), Ok(10));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("64 MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("2 GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("3 KB"), Ok(3_000));
        assert_eq!(parse_size("5 MB"), Ok(5_000_000));
        assert_eq!(parse_size("1 GB"), Ok(1_000_000_000));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        let error = |text: &str| parse_size(text).expect_err(text);
        assert!(error("12 XB").starts_with("unknown unit \"XB\""));
        assert!(error("12 mib").starts_with("unknown unit \"mib\""));
        assert!(error("-1 MiB").starts_with("expected a whole number"));
        assert!(error("MiB").starts_with("expected a whole number"));
        assert!(error("1.5 GiB").starts_with("unknown unit \".5 GiB\""));
        assert_eq!(error("18446744073709551616"), "too large");
        assert_eq!(error("17179869184 GiB"), "too large");
    }

    #[test]
    fn integer_sizes_are_bytes() {
        let text = MINIMAL.replace("[student]", "[inbox]\nmax_file_size = 4096\n[student]");
        let config = from_toml(&text, Path::new("/etc/sensei/sensei.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.inbox.max_file_bytes, 4096);
        for bad in ["-1", "0", "\"0 MiB\""] {
            let text = MINIMAL.replace(
                "[student]",
                &format!("[inbox]\nmax_file_size = {bad}\n[student]"),
            );
            assert_eq!(paths(&problems(&text)), ["inbox.max_file_size"], "{bad}");
        }
    }

    #[test]
    fn secret_files_are_one_line_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        let ok = file("ok", b"  s3cret \nignored\n");
        assert_eq!(super::super::read_secret(&ok).unwrap().expose(), "s3cret");
        let error = |p: &Path| super::super::read_secret(p).expect_err("refused");
        let big = file("big", &vec![b'a'; 64 * 1024 + 1]);
        assert!(error(&big).ends_with("is larger than 64 KiB; a secret file holds one line"));
        // A device that never ends costs 64 KiB, not the machine.
        assert!(error(Path::new("/dev/zero")).contains("is larger than 64 KiB"));
        assert!(error(&file("empty", b"\n  \n")).ends_with("is empty"));
        let latin1 = error(&file("latin1", b"p\xe4ss\n"));
        assert!(latin1.ends_with("is not UTF-8 text"), "{latin1}");
        assert!(!latin1.contains("p\u{fffd}ss"), "{latin1}");
        assert!(error(&dir.path().join("missing")).starts_with("cannot read"));

        // Through the config: the problem carries the key path.
        let text = format!(
            "{MINIMAL}[http]\nlisten = \"127.0.0.1:9477\"\ntoken_file = {:?}\n",
            big.display().to_string()
        );
        let found = problems(&text);
        assert_eq!(paths(&found), ["http.token_file"]);
    }

    #[test]
    fn a_config_file_that_is_not_text_or_is_huge_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let message = |content: &[u8]| {
            let p = dir.path().join("sensei.toml");
            std::fs::write(&p, content).unwrap();
            let e = load(&p).expect_err("refused");
            assert_eq!(e.problems.len(), 1);
            e.problems[0].message.clone()
        };
        let m = message(b"state_dir = \"/x\"\n\xff\xfe");
        assert!(m.ends_with("is not UTF-8 text (line 2, byte 17)"), "{m}");
        let m = message(&vec![b'#'; 4 * 1024 * 1024 + 1]);
        assert!(
            m.ends_with("is larger than 4 MiB; is it the config file?"),
            "{m}"
        );
        let e = load(Path::new("/dev/zero")).expect_err("refused");
        assert!(e.problems[0].message.contains("larger than 4 MiB"));
    }
}
