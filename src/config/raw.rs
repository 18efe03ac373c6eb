//! The config file as written: serde structs that mirror the TOML layout key for key and reject
//! unknown keys, and the structural parse that fills them.
//!
//! Nothing here judges values. Every field is optional (required keys are reported by
//! `validate`, together with every other problem), integers are kept as TOML's `i64` so that a
//! negative count gets a plain "must be at least 1" instead of a serde type error, and enums,
//! durations and sizes stay strings so their errors can list the allowed forms. The small
//! wrapper types exist for their type-error messages ("expected a whole number", not "i64").
//!
//! serde stops at the first error it meets. So that an operator still sees every misspelt key
//! in one round, a failing document is deserialized again one key at a time (each section key
//! in a table of its own), which names each offending key exactly.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigProblem;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<String>,
    #[serde(default)]
    pub inbox: RawInbox,
    #[serde(default)]
    pub onnxruntime: RawOnnxRuntime,
    #[serde(default)]
    pub student: RawModel,
    #[serde(default)]
    pub teacher: RawModel,
    #[serde(default)]
    pub sampling: RawSampling,
    #[serde(default)]
    pub compare: RawCompare,
    #[serde(default)]
    pub segments: RawSegments,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub detect: RawDetect,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub alerts: crate::config::alerts::RawAlerts,
    #[serde(default)]
    pub receivers: std::collections::BTreeMap<String, crate::config::alerts::RawReceiver>,
    #[serde(default)]
    pub rules: Vec<crate::config::alerts::RawRule>,
    #[serde(default)]
    pub redistill: RawRedistill,
    #[serde(default)]
    pub shadow: RawShadow,
    #[serde(default)]
    pub challengers: Vec<RawChallenger>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub agreement_floor: Option<f64>,
    pub candidate: Option<bool>,
}

/// One `[[challengers]]` entry: a local file (`path`) or a model on an inference server (`url`
/// and the other keys of [`RawRemote`], as for `[teacher]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChallenger {
    pub name: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub timeout: Option<RawDuration>,
    pub retries: Option<RawInt>,
    pub backoff: Option<RawDuration>,
    pub in_flight: Option<RawInt>,
    pub breaker_after: Option<RawInt>,
    pub breaker_open: Option<RawDuration>,
    pub tensors: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    pub token_file: Option<String>,
    pub token_credential: Option<String>,
    pub output: Option<String>,
    pub attention: Option<String>,
    pub threads: Option<RawInt>,
}

/// The keys of a model on an inference server, shared by `[teacher]` and `[[challengers]]`
/// (serde's `flatten` cannot be combined with `deny_unknown_fields`, so each section lists
/// them and hands them to validation in this form).
#[derive(Debug, Default, Clone)]
pub struct RawRemote {
    pub url: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub timeout: Option<RawDuration>,
    pub retries: Option<RawInt>,
    pub backoff: Option<RawDuration>,
    pub in_flight: Option<RawInt>,
    pub breaker_after: Option<RawInt>,
    pub breaker_open: Option<RawDuration>,
    pub tensors: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    pub token_file: Option<String>,
    pub token_credential: Option<String>,
}

/// Moves the inference-server keys of a section into a [`RawRemote`].
macro_rules! take_remote {
    ($raw:expr) => {
        RawRemote {
            url: $raw.url.take(),
            model: $raw.model.take(),
            version: $raw.version.take(),
            timeout: $raw.timeout.take(),
            retries: $raw.retries.take(),
            backoff: $raw.backoff.take(),
            in_flight: $raw.in_flight.take(),
            breaker_after: $raw.breaker_after.take(),
            breaker_open: $raw.breaker_open.take(),
            tensors: $raw.tensors.take(),
            ca_file: $raw.ca_file.take(),
            client_cert_file: $raw.client_cert_file.take(),
            client_key_file: $raw.client_key_file.take(),
            token_file: $raw.token_file.take(),
            token_credential: $raw.token_credential.take(),
        }
    };
}

impl RawModel {
    /// Takes the inference-server keys out of the section.
    pub fn take_remote(&mut self) -> RawRemote {
        take_remote!(self)
    }
}

impl RawChallenger {
    /// Takes the inference-server keys out of the entry.
    pub fn take_remote(&mut self) -> RawRemote {
        take_remote!(self)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedistill {
    pub command: Option<Vec<String>>,
    pub timeout: Option<RawDuration>,
    pub min_interval: Option<RawDuration>,
    pub max_backoff: Option<RawDuration>,
    pub alert_after_failures: Option<RawInt>,
    pub alert_receivers: Option<Vec<String>>,
    pub work_dir: Option<String>,
    pub keep_students: Option<RawInt>,
    pub auto_promote: Option<bool>,
    pub holdout: Option<f64>,
    pub min_samples: Option<RawInt>,
    pub gate_margin: Option<f64>,
    pub gate_alpha: Option<f64>,
    pub gate_lab_tolerance: Option<f64>,
    pub buffer_max_samples: Option<RawInt>,
    pub buffer_in_distribution_share: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbox {
    pub dir: Option<String>,
    pub done_dir: Option<String>,
    pub quarantine_dir: Option<String>,
    pub on_done: Option<String>,
    pub max_file_size: Option<RawSize>,
    pub quiet: Option<RawDuration>,
    pub rescan_interval: Option<RawDuration>,
    pub poll: Option<bool>,
    pub ts_max_future: Option<RawDuration>,
    pub ts_max_past: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnnxRuntime {
    pub library: Option<String>,
}

/// `[student]` and `[teacher]` share this shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub path: Option<String>,
    /// `[teacher]` only: the inference server, instead of `path`.
    pub url: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub timeout: Option<RawDuration>,
    pub retries: Option<RawInt>,
    pub backoff: Option<RawDuration>,
    pub in_flight: Option<RawInt>,
    pub breaker_after: Option<RawInt>,
    pub breaker_open: Option<RawDuration>,
    pub tensors: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    pub token_file: Option<String>,
    pub token_credential: Option<String>,
    pub threads: Option<RawInt>,
    pub max_batch: Option<RawInt>,
    pub max_wait: Option<RawDuration>,
    pub inputs: Option<Vec<String>>,
    pub output: Option<String>,
    pub attention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDetect {
    pub false_alarms: Option<String>,
    pub arl0: Option<RawArl0>,
    pub min_shift_disagreement: Option<f64>,
    pub min_shift_error: Option<f64>,
    pub min_shift_sd: Option<f64>,
    pub window_records: Option<RawInt>,
    pub family_alpha: Option<f64>,
    pub min_ks: Option<f64>,
    pub min_class_shift: Option<f64>,
    pub min_psi: Option<f64>,
    pub seed: Option<RawInt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSampling {
    pub policy: Option<String>,
    pub floor: Option<f64>,
    pub rate: Option<f64>,
    pub seed: Option<RawInt>,
    pub max_per_minute: Option<RawInt>,
    pub queue: Option<RawInt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    pub task: Option<String>,
    pub output_kind: Option<String>,
    pub pooling: Option<String>,
    pub mask_input: Option<String>,
    pub non_finite: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegments {
    pub keys: Option<Vec<String>>,
    pub max_values: Option<RawInt>,
    pub max_value_bytes: Option<RawInt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: Option<String>,
    pub record_retention: Option<RawDuration>,
    pub window: Option<RawDuration>,
    pub synchronous: Option<String>,
    pub max_size: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub filter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
    pub token_file: Option<String>,
    pub token_credential: Option<String>,
    pub allow_non_loopback_without_token: Option<bool>,
    pub header_timeout: Option<RawDuration>,
    pub max_connections: Option<RawInt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub drain_timeout: Option<RawDuration>,
}

/// `[detect] arl0`: one ARL0 for every sequential detector, or a table of them by signal family.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawArl0 {
    All(RawInt),
    ByFamily(std::collections::BTreeMap<String, RawInt>),
}

/// A duration as written, such as `"15m"`; parsed by `validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDuration(pub String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration string such as \"500ms\", \"2s\", \"15m\", \"1h\" or \"30d\"",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(value.to_owned()))
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A whole number as written; its range is checked by `validate`, so that a negative count
/// reads "must be at least 1" rather than a type error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawInt(pub i64);

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = RawInt;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawInt, E> {
                Ok(RawInt(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawInt, E> {
                i64::try_from(value)
                    .map(RawInt)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
            }
        }

        deserializer.deserialize_i64(IntVisitor)
    }
}

/// A size as written: a bare TOML integer (bytes) or a string such as `"64 MiB"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64 MiB\" or a number of bytes")
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawSize, E> {
                i64::try_from(value)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(value.to_owned()))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Parses TOML text into [`RawConfig`]; on failure returns every syntax or structural problem
/// (unknown key, wrong type), each with its key path and line/column.
#[cfg(test)]
pub fn parse(text: &str) -> Result<RawConfig, Vec<ConfigProblem>> {
    match parse_lenient(text) {
        (Some(raw), problems) if problems.is_empty() => Ok(raw),
        (_, problems) => Err(problems),
    }
}

/// Parses TOML text into [`RawConfig`] as far as it goes: every syntax or structural problem,
/// and the config without the keys that have one (`None` when the text is not TOML, or when
/// the document fails only as a whole). Validation runs on what is left, so that an unknown
/// key does not hide a bad value elsewhere.
pub fn parse_lenient(text: &str) -> (Option<RawConfig>, Vec<ConfigProblem>) {
    let document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(error) => {
            let problem = ConfigProblem {
                path: String::new(),
                message: with_position(text, error.message(), error.span()),
            };
            return (None, vec![problem]);
        }
    };
    match RawConfig::deserialize(toml::de::Deserializer::from(document.clone())) {
        Ok(raw) => (Some(raw), Vec::new()),
        Err(whole) => {
            let (mut problems, pruned) = isolate_problems(text, &document);
            if problems.is_empty() {
                // Every key passes on its own, so the document fails as a whole; say so.
                problems.push(ConfigProblem {
                    path: String::new(),
                    message: with_position(text, whole.message(), whole.span()),
                });
                return (None, problems);
            }
            let rest = RawConfig::deserialize(toml::de::Deserializer::from(pruned)).ok();
            (rest, problems)
        }
    }
}

/// Deserializes each top-level key, and each key of each section, on its own, so every
/// structural problem is found and its key path is known by construction. Problems come back
/// in file order, with the document less the keys that have them.
fn isolate_problems<'i>(
    text: &str,
    document: &Spanned<DeTable<'i>>,
) -> (Vec<ConfigProblem>, Spanned<DeTable<'i>>) {
    let mut found: Vec<(usize, ConfigProblem)> = Vec::new();
    let mut report = |path: &str, message: &str, at: Range<usize>| {
        found.push((at.start, problem(text, path, message, at)));
    };
    let mut pruned = DeTable::new();
    for (key, value) in document.get_ref() {
        let Err(error) = try_alone(document.span(), key, value.clone()) else {
            pruned.insert(key.clone(), value.clone());
            continue;
        };
        // The key itself may be the problem (`[studnet]`): test it with an empty table first.
        let empty = Spanned::new(value.span(), DeValue::Table(DeTable::new()));
        let is_section = try_alone(document.span(), key, empty).is_ok();
        let section = match value.get_ref() {
            DeValue::Table(section) if is_section => section,
            // serde reads a struct from a sequence too, and then complains about the first
            // element; `[[inbox]]` deserves a plainer word.
            other if is_section => {
                let message = format!("must be a table, found {}", other.type_str());
                report(key.get_ref(), &message, value.span());
                continue;
            }
            _ => {
                report(
                    key.get_ref(),
                    error.message(),
                    error.span().unwrap_or(key.span()),
                );
                continue;
            }
        };
        let mut kept = DeTable::new();
        for (inner_key, inner_value) in section {
            let mut inner = DeTable::new();
            inner.insert(inner_key.clone(), inner_value.clone());
            let wrapped = Spanned::new(value.span(), DeValue::Table(inner));
            if let Err(error) = try_alone(document.span(), key, wrapped) {
                let path = format!("{}.{}", key.get_ref(), inner_key.get_ref());
                report(
                    &path,
                    error.message(),
                    error.span().unwrap_or(inner_key.span()),
                );
            } else {
                kept.insert(inner_key.clone(), inner_value.clone());
            }
        }
        pruned.insert(
            key.clone(),
            Spanned::new(value.span(), DeValue::Table(kept)),
        );
    }
    found.sort_by_key(|(start, _)| *start);
    let problems = found.into_iter().map(|(_, problem)| problem).collect();
    (problems, Spanned::new(document.span(), pruned))
}

/// Deserializes a document holding only `key = value`.
fn try_alone<'i>(
    span: Range<usize>,
    key: &Spanned<std::borrow::Cow<'i, str>>,
    value: Spanned<DeValue<'i>>,
) -> Result<RawConfig, toml::de::Error> {
    let mut table = DeTable::new();
    table.insert(key.clone(), value);
    RawConfig::deserialize(toml::de::Deserializer::from(Spanned::new(span, table)))
}

fn problem(text: &str, path: &str, message: &str, span: Range<usize>) -> ConfigProblem {
    ConfigProblem {
        path: path.to_owned(),
        message: with_position(text, message, Some(span)),
    }
}

/// Appends ` (line L, column C)` when the error has a position in `text`.
fn with_position(text: &str, message: &str, span: Option<Range<usize>>) -> String {
    let message = message.trim_end();
    match span.and_then(|span| line_column(text, span.start)) {
        Some((line, column)) => format!("{message} (line {line}, column {column})"),
        None => message.to_owned(),
    }
}

/// One-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset.min(text.len()))?;
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before.get(line_start..)?.chars().count() + 1;
    Some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), Some((1, 1)));
        assert_eq!(line_column(text, 6), Some((2, 1)));
        // `é` is two bytes but one column.
        assert_eq!(line_column(text, 9), Some((2, 3)));
        assert_eq!(line_column(text, 100), Some((3, 1)));
    }

    #[test]
    fn size_accepts_integer_or_string() {
        let raw = parse("[inbox]\nmax_file_size = 1024\n").expect("valid");
        assert_eq!(raw.inbox.max_file_size, Some(RawSize::Bytes(1024)));
        let raw = parse("[inbox]\nmax_file_size = \"1 KiB\"\n").expect("valid");
        assert_eq!(
            raw.inbox.max_file_size,
            Some(RawSize::Text("1 KiB".to_owned()))
        );
    }

    #[test]
    fn every_structural_problem_is_reported() {
        let text =
            "state_dir = 1\n[studnet]\npath = \"a\"\n[teacher]\nthreads = \"4\"\nbatch = 2\n";
        let problems = parse(text).expect_err("invalid");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["state_dir", "studnet", "teacher.threads", "teacher.batch"]
        );
        assert!(problems[1].message.contains("(line 2, column 2)"));
        assert!(problems[2].message.contains("(line 5, column 11)"));
        assert!(problems[3].message.contains("unknown field `batch`"));
        assert!(problems[3].message.contains("(line 6, column 1)"));
    }

    #[test]
    fn what_parses_is_kept_beside_the_structural_problems() {
        let text = "[detect2]\nx = 1\n[sampling]\nrate = 1.5\nratee = 2\n";
        let (raw, problems) = parse_lenient(text);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["detect2", "sampling.ratee"]);
        let raw = raw.expect("the rest parses");
        assert_eq!(raw.sampling.rate, Some(1.5));
    }

    #[test]
    fn array_of_tables_is_not_a_section() {
        let problems = parse("[[segments]]\nkeys = []\n").expect_err("invalid");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "segments");
        assert!(
            problems[0]
                .message
                .starts_with("must be a table, found array"),
            "{problems:?}"
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let problems = parse("state_dir = \"/x\"\n[inbox\n").expect_err("invalid");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "");
        assert!(problems[0].message.contains("line 2"), "{problems:?}");
    }
}
