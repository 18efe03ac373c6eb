//! The one-shot commands behind the CLI: `check`, `status`, `replay`'s summary and `demo`.
//! Each returns what it prints, so tests read the same text an operator does.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::model::{compatibility_notes, load_models};
use crate::pipeline::WriterReport;
use crate::record::ALL_SEGMENTS;
use crate::stats::{Interval, weighted_rate_interval};
use crate::store::{Reader, SCHEMA_VERSION, SegmentSummary, Summary};

/// Exit code for a configuration problem (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

/// Result of `sensei check`: what was found and every problem.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            let _ = writeln!(s, "{l}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "OK: no problems found.");
        } else {
            let _ = writeln!(s, "{} problem(s):", self.problems.len());
            for p in &self.problems {
                let _ = writeln!(s, "  - {}", p.replace('\n', "\n    "));
            }
        }
        s
    }
}

/// Validates the config file, the ONNX Runtime library, both models and their compatibility,
/// the database and the directories. Leaves nothing behind (a writability probe is removed).
pub fn check(config_path: &Path) -> CheckReport {
    let mut r = CheckReport::default();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            r.lines.push(format!("config: {}", config_path.display()));
            r.problems.extend(e.problems.iter().map(|p| {
                if p.path.is_empty() {
                    p.message.clone()
                } else {
                    format!("{}: {}", p.path, p.message)
                }
            }));
            return r;
        }
    };
    r.lines
        .push(format!("config: {} (valid)", config_path.display()));
    match load_models(&config) {
        Ok(models) => {
            r.lines.push(format!(
                "onnxruntime: {} (version {})",
                models.runtime.library.display(),
                models.runtime.version
            ));
            for m in [&models.student, &models.teacher] {
                let inputs: Vec<String> = m
                    .inputs
                    .iter()
                    .map(|i| format!("{} {} {}", i.name, i.elem_type, i.shape_display()))
                    .collect();
                let att = m.attention.as_ref().map_or(String::from("none"), |a| {
                    format!("{} {}", a.name, crate::model::shape_display(&a.shape))
                });
                r.lines.push(format!(
                    "{}: {} (sha256 {}, {} bytes); inputs: {}; output: {} {}; attention: {}",
                    m.role,
                    m.path.display(),
                    &m.sha256[..12],
                    m.size_bytes,
                    inputs.join(", "),
                    m.output.name,
                    crate::model::shape_display(&m.output.shape),
                    att
                ));
            }
            for note in compatibility_notes(&models.student, &models.teacher) {
                r.lines.push(format!("note: {note}"));
            }
            check_challengers(&config, &models, &mut r);
        }
        Err(problems) => r.problems.extend(problems),
    }
    if let Some(problem) = redistill_program_problem(
        &config.redistill.command,
        std::env::var_os("PATH").as_deref(),
    ) {
        r.problems.push(format!("redistill.command: {problem}"));
    }
    let db = &config.store.path;
    if db.exists() {
        match Reader::open(db).and_then(|rd| rd.schema_version()) {
            Ok(v) if v > SCHEMA_VERSION => r.problems.push(format!(
                "database {}: schema version {v} is newer than this sensei ({SCHEMA_VERSION})",
                db.display()
            )),
            Ok(v) => r.lines.push(format!(
                "database: {} (schema version {v}{})",
                db.display(),
                if v < SCHEMA_VERSION {
                    ", will be migrated at start"
                } else {
                    ""
                }
            )),
            Err(e) => r.problems.push(format!("database {}: {e}", db.display())),
        }
    } else {
        r.lines
            .push(format!("database: {} (will be created)", db.display()));
        check_creatable(db.parent(), "database directory", &mut r);
    }
    for (what, dir) in [
        ("state_dir", &config.state_dir),
        ("inbox.dir", &config.inbox.dir),
        ("inbox.done_dir", &config.inbox.done_dir),
        ("inbox.quarantine_dir", &config.inbox.quarantine_dir),
    ] {
        if dir.is_dir() {
            if !writable(dir) {
                r.problems
                    .push(format!("{what} {}: not writable", dir.display()));
            }
        } else if dir.exists() {
            r.problems.push(format!(
                "{what} {}: exists but is not a directory",
                dir.display()
            ));
        } else {
            check_creatable(Some(dir), what, &mut r);
        }
    }
    r
}

/// Loads every challenger and checks it can be compared with the teacher. A challenger that
/// cannot is a warning, not a problem: the daemon runs without it (and `check` guards its start).
fn check_challengers(config: &Config, models: &crate::model::Models, r: &mut CheckReport) {
    for c in &config.challengers {
        let role = format!("challenger '{}'", c.name);
        let loaded =
            crate::model::Model::load(models.runtime, &role, &c.model_config(&config.teacher))
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    let problems = crate::model::model_problems(config, &role, &m, &models.teacher);
                    if problems.is_empty() {
                        Ok(m)
                    } else {
                        Err(format!(
                            "{role} cannot be compared with the teacher: {}",
                            problems.join("; ")
                        ))
                    }
                });
        match loaded {
            Ok(m) => {
                r.lines.push(format!(
                    "{role}: {} (sha256 {}, {} bytes); output: {} {}; attention: {}",
                    m.path.display(),
                    &m.sha256[..12],
                    m.size_bytes,
                    m.output.name,
                    crate::model::shape_display(&m.output.shape),
                    m.attention.as_ref().map_or(String::from("none"), |a| {
                        format!("{} {}", a.name, crate::model::shape_display(&a.shape))
                    })
                ));
                if let (Some(a), Some(t)) = (&m.attention, &models.teacher.attention)
                    && a.shape != t.shape
                {
                    r.lines.push(format!(
                        "note: {role}: attention shapes differ ({} vs the teacher's {}): attention KL is not computed",
                        crate::model::shape_display(&a.shape),
                        crate::model::shape_display(&t.shape)
                    ));
                }
            }
            Err(e) => r.lines.push(format!(
                "warning: {e} (it will not run in shadow; the student and the teacher are unaffected)"
            )),
        }
    }
}

/// Why the re-distillation job's program (`command[0]`) could not be started, if it could not:
/// it does not exist, is not an executable file, or is a relative path (the job runs in its own
/// directory, so a relative path would not name the file the operator means). A bare name is
/// looked up in `path` as the job's start would.
fn redistill_program_problem(command: &[String], path: Option<&std::ffi::OsStr>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let program = command.first()?;
    if program.is_empty() || program.contains('{') {
        return None; // validation reports an empty program; a placeholder is known only later
    }
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let given = Path::new(program);
    if given.is_absolute() {
        return match std::fs::metadata(given) {
            Err(e) => Some(format!("the program {program} cannot be used: {e}")),
            Ok(m) if !m.is_file() => Some(format!("the program {program} is not a file")),
            Ok(_) if !executable(given) => Some(format!("the program {program} is not executable")),
            Ok(_) => None,
        };
    }
    if program.contains('/') {
        return Some(format!(
            "the program {program} is a relative path, but the job runs in its own directory              under [redistill] work_dir: give an absolute path"
        ));
    }
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    if dirs.iter().any(|d| executable(&d.join(program))) {
        return None;
    }
    Some(format!(
        "the program '{program}' is not an executable file in any directory of PATH ({})",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    ))
}

/// A missing directory is fine when its nearest existing ancestor is writable.
fn check_creatable(dir: Option<&Path>, what: &str, r: &mut CheckReport) {
    let Some(dir) = dir else { return };
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            if !writable(d) {
                r.problems.push(format!(
                    "{what} {}: cannot be created ({} is not writable)",
                    dir.display(),
                    d.display()
                ));
            }
            return;
        }
        p = d.parent();
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".sensei-check-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// One segment's figures as printed by `status`, `replay` and `demo`.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub segment: String,
    pub records: i64,
    pub teacher_samples: i64,
    pub disagreement: Option<Interval>,
    pub kl_mean: Option<f64>,
    pub attention_kl_mean: Option<f64>,
    pub mean_confidence: Option<f64>,
}

impl From<&SegmentSummary> for SegmentReport {
    fn from(s: &SegmentSummary) -> Self {
        SegmentReport {
            segment: s.segment.clone(),
            records: s.records,
            teacher_samples: s.teacher_samples,
            disagreement: s
                .disagreement
                .and_then(|d| weighted_rate_interval(d, s.weight_sum, s.weight_sq_sum, 0.05)),
            kl_mean: s.kl_mean,
            attention_kl_mean: s.attention_kl_mean,
            mean_confidence: s.mean_confidence,
        }
    }
}

/// The state of a database, for `sensei status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub database: PathBuf,
    pub files_done: i64,
    pub files_quarantined: i64,
    pub files_duplicate: i64,
    pub records: i64,
    pub teacher_samples: i64,
    pub skipped_budget: i64,
    pub skipped_queue: i64,
    pub segments: Vec<SegmentReport>,
    /// The active baseline, if `sensei baseline` has run.
    pub baseline: Option<crate::store::BaselineRow>,
    /// Every monitored signal per segment: baseline value, current value, detector standing.
    pub signals: Vec<SignalStatus>,
    /// The latest drift events, oldest first.
    pub recent_events: Vec<crate::store::DriftEventRow>,
    /// Alert notifications per receiver: sent, pending, failing (undelivered stay visible).
    pub outbox: Option<crate::alert::OutboxSummary>,
    /// The shadow models of the latest pipeline start, with the samples each has answered.
    pub shadow_models: Vec<ShadowStatus>,
    /// The latest re-distillation jobs, newest first.
    pub redistill_jobs: Vec<crate::store::JobRow>,
}

/// One shadow model, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowStatus {
    #[serde(flatten)]
    pub model: crate::store::ShadowModelStatus,
    /// Teacher-sampled records this version of it answered.
    pub samples: i64,
}

/// One signal of one segment, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SignalStatus {
    pub signal: String,
    pub segment: String,
    pub baseline_value: Option<f64>,
    pub current: Option<Interval>,
    pub detector: Option<String>,
    pub statistic: Option<f64>,
    pub threshold: Option<f64>,
    pub samples: Option<i64>,
    /// An unresolved drift event exists for this signal and segment.
    pub drifting: bool,
}

/// How many recent drift events `status` lists.
pub const RECENT_EVENTS: i64 = 20;
/// How many recent re-distillation jobs `status` lists.
pub const RECENT_JOBS: i64 = 5;

pub fn status(config: &Config) -> anyhow::Result<StatusReport> {
    let reader = Reader::open(&config.store.path)?;
    let s = reader.summary()?;
    let mut report = status_of(&config.store.path, &s);
    report.baseline = reader.active_baseline()?;
    report.recent_events = reader.recent_events(RECENT_EVENTS)?;
    report.outbox = crate::alert::outbox_summary(&config.store.path).ok();
    report.redistill_jobs = reader.redistill_jobs(RECENT_JOBS)?;
    for model in reader.shadow_models()? {
        let samples = match &model.sha256 {
            Some(sha) => reader
                .shadow_totals(&model.name, sha)?
                .map_or(0, |t| t.samples),
            None => 0,
        };
        report.shadow_models.push(ShadowStatus { model, samples });
    }
    let reference: Option<crate::drift::Reference> = report
        .baseline
        .as_ref()
        .and_then(|b| serde_json::from_str(&b.profile).ok());
    let detectors = reader.detectors()?;
    let open: Vec<(String, String)> = reader
        .open_events()?
        .into_iter()
        .map(|e| (e.signal, e.segment))
        .collect();
    for seg in &report.segments {
        let r = reference.as_ref();
        let rows: [(&str, Option<f64>, Option<Interval>); 4] = [
            (
                "disagreement",
                r.and_then(|r| r.disagreement.as_ref().map(|d| d.rate)),
                seg.disagreement,
            ),
            (
                "kl",
                r.and_then(|r| r.kl.as_ref().map(|d| d.mean)),
                point(seg.kl_mean),
            ),
            (
                "attention_kl",
                r.and_then(|r| r.attention_kl.as_ref().map(|d| d.mean)),
                point(seg.attention_kl_mean),
            ),
            (
                "confidence",
                r.and_then(|r| r.uncertainty.as_ref().map(|d| 1.0 - d.mean)),
                point(seg.mean_confidence),
            ),
        ];
        for (signal, baseline_value, current) in rows {
            let det = detectors
                .iter()
                .find(|d| d.signal == signal && d.segment == seg.segment);
            report.signals.push(SignalStatus {
                signal: signal.to_string(),
                segment: seg.segment.clone(),
                baseline_value,
                current,
                detector: det.map(|d| d.detector.clone()),
                statistic: det.map(|d| d.statistic),
                threshold: det.map(|d| d.threshold),
                samples: det.map(|d| d.samples),
                drifting: open.iter().any(|(s, g)| s == signal && g == &seg.segment),
            });
        }
    }
    // Error-rate detectors only exist once labels arrived.
    for det in detectors.iter().filter(|d| d.signal.ends_with("_error")) {
        let baseline_value = reference.as_ref().and_then(|r| match det.signal.as_str() {
            "student_error" => r.student_error.as_ref().map(|e| e.rate),
            _ => r.teacher_error.as_ref().map(|e| e.rate),
        });
        report.signals.push(SignalStatus {
            signal: det.signal.clone(),
            segment: det.segment.clone(),
            baseline_value,
            current: None,
            detector: Some(det.detector.clone()),
            statistic: Some(det.statistic),
            threshold: Some(det.threshold),
            samples: Some(det.samples),
            drifting: open
                .iter()
                .any(|(s, g)| s == &det.signal && g == &det.segment),
        });
    }
    Ok(report)
}

fn point(v: Option<f64>) -> Option<Interval> {
    v.map(|x| Interval {
        estimate: x,
        low: x,
        high: x,
    })
}

fn status_of(db: &Path, s: &Summary) -> StatusReport {
    StatusReport {
        database: db.to_path_buf(),
        files_done: s.files_done,
        files_quarantined: s.files_quarantined,
        files_duplicate: s.files_duplicate,
        records: s.records,
        teacher_samples: s.teacher_samples,
        skipped_budget: s.skipped_budget,
        skipped_queue: s.skipped_queue,
        segments: s.segments.iter().map(SegmentReport::from).collect(),
        baseline: None,
        signals: Vec::new(),
        recent_events: Vec::new(),
        outbox: None,
        shadow_models: Vec::new(),
        redistill_jobs: Vec::new(),
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn fmt_interval(i: &Option<Interval>) -> String {
    match i {
        Some(i) => format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.low, i.high),
        None => "-".into(),
    }
}

/// The segment table printed by `status` and `replay`.
pub fn segment_table(segments: &[SegmentReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<20} {:>9} {:>8} {:>26} {:>9} {:>9} {:>10}",
        "segment", "records", "teacher", "disagreement [95% CI]", "KL", "attn KL", "confidence"
    );
    for seg in segments {
        let name = if seg.segment == ALL_SEGMENTS {
            "(all)".to_string()
        } else if seg.segment.is_empty() {
            "(none)".to_string()
        } else {
            seg.segment.clone()
        };
        let _ = writeln!(
            s,
            "  {:<20} {:>9} {:>8} {:>26} {:>9} {:>9} {:>10}",
            name,
            seg.records,
            seg.teacher_samples,
            fmt_interval(&seg.disagreement),
            fmt_opt(seg.kl_mean, 4),
            fmt_opt(seg.attention_kl_mean, 4),
            fmt_opt(seg.mean_confidence, 3)
        );
    }
    s
}

impl StatusReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "database: {}", self.database.display());
        let _ = writeln!(
            s,
            "files: {} done, {} quarantined, {} duplicates",
            self.files_done, self.files_quarantined, self.files_duplicate
        );
        let _ = writeln!(
            s,
            "records: {}; teacher samples: {}; skipped for budget: {}; skipped, teacher queue full: {}",
            self.records, self.teacher_samples, self.skipped_budget, self.skipped_queue
        );
        s.push_str(&segment_table(&self.segments));
        match &self.baseline {
            None => {
                let _ = writeln!(
                    s,
                    "\nbaseline: none — drift detection is off; run `sensei baseline DATA…` on the lab set"
                );
            }
            Some(b) => {
                let _ = writeln!(
                    s,
                    "\nbaseline: version {} ({} lab records, student {}, teacher {})",
                    b.version, b.records, b.student, b.teacher
                );
                let _ = writeln!(
                    s,
                    "  {:<14} {:<12} {:>9} {:>26} {:>16} {:>18}",
                    "signal",
                    "segment",
                    "baseline",
                    "current [95% CI]",
                    "detector",
                    "statistic/limit"
                );
                for sig in &self.signals {
                    let current = match sig.current {
                        Some(i) if i.low != i.high => {
                            format!("{:.4} [{:.4}, {:.4}]", i.estimate, i.low, i.high)
                        }
                        Some(i) => format!("{:.4}", i.estimate),
                        None => "-".into(),
                    };
                    let standing = match (sig.statistic, sig.threshold) {
                        (Some(st), Some(th)) => format!("{st:.2}/{th:.2}"),
                        _ => "-".into(),
                    };
                    let _ = writeln!(
                        s,
                        "  {:<14} {:<12} {:>9} {:>26} {:>16} {:>18}{}",
                        sig.signal,
                        segment_name(&sig.segment),
                        fmt_opt(sig.baseline_value, 4),
                        current,
                        sig.detector.as_deref().unwrap_or("-"),
                        standing,
                        if sig.drifting { "  DRIFT" } else { "" }
                    );
                }
            }
        }
        if !self.shadow_models.is_empty() {
            let _ = writeln!(s, "\nshadow models (on teacher-sampled records):");
            for m in &self.shadow_models {
                let what = match (m.model.status.as_str(), &m.model.detail) {
                    ("failed", Some(detail)) => format!("FAILED: {detail}"),
                    (status, _) => format!("{status}, {} samples", m.samples),
                };
                let _ = writeln!(
                    s,
                    "  {} ({}, {}): {what}",
                    m.model.name,
                    m.model.kind.as_str(),
                    m.model.path
                );
            }
        }
        if !self.redistill_jobs.is_empty() {
            let _ = writeln!(s, "\nre-distillation jobs (latest first):");
            for j in &self.redistill_jobs {
                let when = crate::time::rfc3339(j.finished_at.unwrap_or(j.requested_at));
                let gate = j
                    .gate
                    .as_deref()
                    .map_or(String::new(), |g| format!(", gate {g}"));
                let detail = j
                    .detail
                    .as_deref()
                    .map_or(String::new(), |d| format!(": {}", first_line(d)));
                let _ = writeln!(
                    s,
                    "  #{} {} {when} ({}){gate}{detail}",
                    j.id, j.status, j.trigger
                );
            }
        }
        if self.recent_events.is_empty() {
            let _ = writeln!(s, "\ndrift events: none");
        } else {
            let _ = writeln!(s, "\nrecent drift events:");
            for e in &self.recent_events {
                let when = time::OffsetDateTime::from_unix_timestamp(e.detected_at / 1000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  #{} {when} {} on {} ({}) at record {}{}: baseline {} → current {}{}",
                    e.id,
                    e.signal,
                    segment_name(&e.segment),
                    e.detector,
                    e.detected_at_record,
                    e.estimated_change_record
                        .map_or(String::new(), |c| format!(", change from ~{c}")),
                    fmt_opt(e.baseline_value, 4),
                    fmt_opt(e.current_value, 4),
                    if e.resolved_at.is_some() {
                        " (resolved)"
                    } else {
                        ""
                    }
                );
            }
        }
        s
    }
}

/// The first line of a possibly long text, for one-line listings.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn segment_name(segment: &str) -> String {
    match segment {
        ALL_SEGMENTS => "(all)".into(),
        "" => "(none)".into(),
        s => s.into(),
    }
}

/// Summary printed by `sensei replay`.
pub fn replay_text(report: &WriterReport, status: &StatusReport) -> String {
    let mut s = format!(
        "replayed: {} files committed ({} records, {} labels), {} quarantined, {} duplicates, {} failed\n",
        report.files_committed,
        report.records_committed,
        report.labels_committed,
        report.files_quarantined,
        report.files_duplicate,
        report.commit_errors
    );
    let student = &report.student;
    if student.batches > 0 {
        s.push_str(&format!(
            "student: {} records in {} batches; {:.3} s in the model, {:.0}% of the {:.3} s from the first file to the last batch\n",
            student.records,
            student.batches,
            student.model.as_secs_f64(),
            100.0 * student.model_share(),
            student.active.as_secs_f64()
        ));
    }
    s.push_str(&status.text());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn argv(program: &str) -> Vec<String> {
        vec![program.into(), "{dataset}".into(), "{output}".into()]
    }

    #[test]
    fn the_redistill_program_must_be_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("distill.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let path = std::ffi::OsString::from(dir.path());
        let problem = |program: &str| redistill_program_problem(&argv(program), Some(&path));

        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let abs = script.to_str().unwrap();
        assert!(problem(abs).unwrap().ends_with("is not executable"));
        assert!(
            problem("distill.sh")
                .unwrap()
                .contains("not an executable file in any directory of PATH")
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(problem(abs), None);
        assert_eq!(problem("distill.sh"), None, "found on PATH");

        let missing = dir.path().join("missing");
        assert!(
            problem(missing.to_str().unwrap())
                .unwrap()
                .contains("cannot be used")
        );
        assert!(
            problem(dir.path().to_str().unwrap())
                .unwrap()
                .ends_with("is not a file")
        );
        assert!(problem("./distill.sh").unwrap().contains("relative path"));
        assert_eq!(redistill_program_problem(&[], Some(&path)), None, "off");
        assert!(
            redistill_program_problem(&argv("sh"), None).is_some(),
            "no PATH"
        );
    }
}
