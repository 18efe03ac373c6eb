//! `[redistill]` (the distillation buffer and re-distillation jobs), `[shadow]` and
//! `[[challengers]]` (the models run in shadow beside the teacher).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::alerts::AlertConfig;
use super::super::raw;
use super::super::{ChallengerConfig, RedistillConfig, ShadowConfig};
use super::Check;
use super::values::{DAY, MINUTE, SECOND, show_duration};

impl Check<'_> {
    pub(super) fn redistill(
        &mut self,
        raw: raw::RawRedistill,
        state_dir: &Path,
        alerts: &AlertConfig,
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

    pub(super) fn shadow(&mut self, shadow: raw::RawShadow) -> ShadowConfig {
        ShadowConfig {
            agreement_floor: self.fraction("shadow.agreement_floor", shadow.agreement_floor, 0.95),
            candidate: shadow.candidate.unwrap_or(true),
        }
    }

    pub(super) fn challengers(&mut self, raw: Vec<raw::RawChallenger>) -> Vec<ChallengerConfig> {
        let challengers = raw
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
        challengers
    }

    /// One `[[challengers]]` entry; `None` when it lacks what it cannot do without. Every
    /// problem of the entry names the challenger (when it has a name) beside its key path.
    fn challenger(&mut self, index: usize, raw: raw::RawChallenger) -> Option<ChallengerConfig> {
        let before = self.problems.len();
        let name = raw.name.clone();
        let challenger = self.challenger_entry(index, raw);
        if let Some(name) = name {
            for problem in &mut self.problems[before..] {
                problem.message = format!("challenger \"{name}\": {}", problem.message);
            }
        }
        challenger
    }

    fn challenger_entry(
        &mut self,
        index: usize,
        mut raw: raw::RawChallenger,
    ) -> Option<ChallengerConfig> {
        let section = format!("challengers[{index}]");
        let key = |name: &str| format!("{section}.{name}");
        let raw_remote = raw.take_remote();
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
        // A local file or a model on an inference server, validated as the teacher's is.
        let has_url = raw_remote.url.is_some();
        let remote = self.remote(&section, &raw_remote);
        let path = match (raw.path, has_url) {
            (Some(_), true) => {
                self.problem(
                    &key("url"),
                    format!(
                        "{section}.path and {section}.url exclude each other: give the local .onnx file or the inference server, not both"
                    ),
                );
                None
            }
            (Some(path), false) => Some(self.path(&key("path"), path)),
            // The server's keys were checked above; a bad one is the problem to fix.
            (None, true) => remote.as_ref().map(|_| PathBuf::new()),
            (None, false) => {
                self.problem(
                    &key("path"),
                    format!(
                        "required: the challenger's .onnx file, or {section}.url and {section}.model for a challenger on an inference server"
                    ),
                );
                None
            }
        };
        if has_url && raw.threads.is_some() {
            self.problem(
                &key("threads"),
                "only applies to a challenger run here (path): the server runs the model",
            );
        }
        let threads = self.integer(&key("threads"), raw.threads, 1, 1, 1024);
        let (output, attention) = self.outputs(&section, raw.output, raw.attention);
        Some(ChallengerConfig {
            name: name?,
            path: path?,
            remote,
            output,
            attention,
            threads,
        })
    }
}

/// The receivers of the rules whose action is `redistill`, each once, in the order the rules
/// name them: the default audience of "re-distillation keeps failing".
fn redistill_rule_receivers(alerts: &AlertConfig) -> Vec<String> {
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
