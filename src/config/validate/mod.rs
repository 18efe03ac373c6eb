//! From [`RawConfig`] to [`Config`]: defaults, ranges, enum values, durations, sizes and path
//! resolution.
//!
//! Validation never stops at the first problem: each check records what is wrong under its key
//! path and hands back a placeholder so the next check can run, and the caller gets either a
//! complete [`Config`] or the full list. Relative paths are resolved against the directory of
//! the config file, never the working directory, so the daemon reads the same files whoever
//! starts it.
//!
//! One file per part of the config: [`values`] (paths, integers, choices, durations and sizes,
//! shared by every section), [`inbox`], [`models`] (`[onnxruntime]`, `[student]`, `[teacher]`,
//! `[compare]`), [`sampling`] (`[sampling]`, `[segments]`), [`storage`] (`[store]`),
//! [`detect`], [`service`] (`[log]`, `[http]`, `[daemon]`) and [`redistill`] (`[redistill]`,
//! `[shadow]`, `[[challengers]]`); the alert sections are `super::alerts`.

mod detect;
mod inbox;
mod models;
mod redistill;
mod sampling;
mod service;
mod storage;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use super::Config;
use super::raw::{self, RawConfig};

pub use detect::parse_false_alarms;
pub use values::{parse_duration, show_duration};

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
    // Unknown keys and wrong types first, then what validation finds in the rest: every
    // problem in one round. A value validation misses because its key was dropped (a required
    // key of the wrong type) is already named by its structural problem.
    let (raw, mut problems) = raw::parse_lenient(text);
    let Some(raw) = raw else {
        return Err(fail(problems));
    };
    let base = source.parent().unwrap_or(Path::new(""));
    let mut check = Check {
        base,
        problems: Vec::new(),
    };
    let config = check.config(raw, source);
    let structural: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
    let named_already = |path: &str| {
        structural.iter().any(|s| {
            !s.is_empty()
                && (path == s
                    || path
                        .strip_prefix(s.as_str())
                        .is_some_and(|r| r.starts_with('.')))
        })
    };
    problems.extend(
        check
            .problems
            .into_iter()
            .filter(|p| !named_already(&p.path)),
    );
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(fail(problems))
    }
}

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
        let inbox = self.inbox(raw.inbox, &state_dir);
        let onnxruntime = self.onnxruntime(raw.onnxruntime);
        let student = self.model("student", raw.student);
        let teacher = self.model("teacher", raw.teacher);
        let sampling = self.sampling(raw.sampling);
        let compare = self.compare(raw.compare);
        let segments = self.segments(raw.segments);
        let store = self.store(raw.store, &state_dir);
        let log = self.log(raw.log);
        let detect = self.detect(raw.detect);
        let http = self.http(raw.http);
        let alerts = super::alerts::validate(
            raw.alerts,
            raw.receivers,
            raw.rules,
            self.base,
            &mut self.problems,
        );
        let daemon = self.daemon(raw.daemon);
        let redistill = self.redistill(raw.redistill, &state_dir, &alerts);
        let shadow = self.shadow(raw.shadow);
        let challengers = self.challengers(raw.challengers);
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
}

#[cfg(test)]
mod tests;
