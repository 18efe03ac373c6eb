//! `sensei status`: files, records and teacher samples; per segment the disagreement with its
//! interval, KL and attention KL; every monitored signal against its baseline with its detector;
//! recent drift events, the alert outbox, re-distillation jobs and the shadow models. The JSON API
//! and the dashboard serve the same report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::alert::notification::number;
use crate::config::Config;
use crate::record::ALL_SEGMENTS;
use crate::stats::{Interval, weighted_rate_interval};
use crate::store::{Reader, SegmentSummary, Summary};

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
    /// Sampled records the teacher on an inference server could not answer.
    pub skipped_unreachable: i64,
    /// Sampled records the teacher failed on: a local run's error, or an inference server's
    /// error answer or one sensei refused.
    pub skipped_failed: i64,
    /// Records left out because their id was counted before.
    pub records_duplicate: i64,
    /// Late labels that changed nothing, and those that replaced a different label.
    pub labels_unchanged: i64,
    pub labels_corrected: i64,
    /// Segment values cut to `[segments] max_value_bytes`.
    pub segment_values_cut: i64,
    /// What retention deleted, by reason (`age`, `size`).
    pub dropped: Vec<crate::store::Dropped>,
    /// The database's pages in use, in bytes, and `[store] max_size`.
    pub database_bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    pub segments: Vec<SegmentReport>,
    /// The active baseline, if `sensei baseline` has run.
    pub baseline: Option<crate::store::BaselineRow>,
    /// Every monitored signal per segment: baseline value, current value, detector standing.
    pub signals: Vec<SignalStatus>,
    /// The windowed tests of the latest round (statistic: the margin towards an alarm, against 1).
    pub windowed: Vec<crate::store::DetectorRow>,
    /// Drift events in the database, and how many are open.
    pub events_total: i64,
    pub events_open: i64,
    /// Alerts firing now.
    pub firing_alerts: Vec<crate::store::FiringAlert>,
    /// Each sequential detector's expected delay at the minimum shift at the observed rates,
    /// and whether that makes it blind (more than a day).
    pub sightlines: Vec<crate::store::DetectorSightline>,
    /// The site's false-alarm budget (`[detect] false_alarms`), its allocation per family and
    /// the events each family raised in the budget's current period against its expectation.
    pub false_alarms: Option<String>,
    pub budget: Option<crate::store::BudgetSummary>,
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
    /// Teacher-sampled records this version of it did not answer (a model on an inference
    /// server), and why: left out of its figures.
    pub skipped: i64,
    pub skipped_by_reason: std::collections::BTreeMap<crate::store::ShadowSkip, i64>,
}

/// One signal of one segment, as `status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SignalStatus {
    pub signal: String,
    pub segment: String,
    /// The value the detector compares the field with, the same number as
    /// `drift_events.baseline_value`: for a rate, p0 (the lab rate under the sampling policy,
    /// Jeffreys-smoothed); for a real-valued signal, the lab mean.
    pub baseline_value: Option<f64>,
    pub current: Option<Interval>,
    pub detector: Option<String>,
    pub statistic: Option<f64>,
    pub threshold: Option<f64>,
    pub samples: Option<i64>,
    /// An unresolved drift event exists for this signal and segment.
    pub drifting: bool,
    /// The open event of this detector, if any: its id, when it was detected and the statistic
    /// and threshold it fired at (the detector's own statistic restarts after an alarm).
    pub open_event: Option<i64>,
    pub open_since: Option<i64>,
    pub fired_statistic: Option<f64>,
    pub fired_threshold: Option<f64>,
}

impl SignalStatus {
    fn with_open_event(mut self, open: &[crate::store::DriftEventRow]) -> SignalStatus {
        let event = open.iter().find(|e| {
            e.signal == self.signal
                && e.segment == self.segment
                && self.detector.as_deref().is_none_or(|d| d == e.detector)
        });
        self.drifting = open
            .iter()
            .any(|e| e.signal == self.signal && e.segment == self.segment);
        if let Some(e) = event {
            self.open_event = Some(e.id);
            self.open_since = Some(e.detected_at);
            self.fired_statistic = Some(e.statistic);
            self.fired_threshold = Some(e.threshold);
        }
        self
    }
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
    // The latest events, and every open one however old: an open drift is never out of sight.
    let open = reader.open_events()?;
    let mut events = reader.recent_events(RECENT_EVENTS)?;
    events.extend(
        open.iter()
            .filter(|o| !events.iter().any(|e| e.id == o.id))
            .cloned()
            .collect::<Vec<_>>(),
    );
    events.sort_by_key(|e| e.id);
    report.recent_events = events;
    (report.events_total, report.events_open) = reader.drift_event_totals()?;
    report.firing_alerts = reader.firing_alerts()?;
    report.outbox = crate::alert::outbox_summary(&config.store.path).ok();
    report.redistill_jobs = reader.redistill_jobs(RECENT_JOBS)?;
    report.dropped = reader.dropped()?;
    report.sightlines = reader.sightlines(config.store.window.as_millis() as i64)?;
    report.false_alarms = Some(config.detect.false_alarms.text.clone());
    report.budget = reader.budget(crate::time::now_ms())?;
    report.database_bytes = reader.database_size().ok().map(|s| s.used_bytes);
    report.max_bytes = config.store.max_bytes;
    for model in reader.shadow_models()? {
        let samples = match &model.sha256 {
            Some(sha) => reader
                .shadow_totals(&model.name, sha)?
                .map_or(0, |t| t.samples),
            None => 0,
        };
        let skipped_by_reason = match &model.sha256 {
            Some(sha) => reader.shadow_skips(&model.name, sha)?,
            None => Default::default(),
        };
        report.shadow_models.push(ShadowStatus {
            model,
            samples,
            skipped: skipped_by_reason.values().sum(),
            skipped_by_reason,
        });
    }
    let reference: Option<crate::drift::Reference> = report
        .baseline
        .as_ref()
        .and_then(|b| serde_json::from_str(&b.profile).ok());
    let detectors = reader.detectors()?;
    report.windowed = detectors
        .iter()
        .filter(|d| d.detector.starts_with("windowed:"))
        .cloned()
        .collect();
    for seg in &report.segments {
        let r = reference.as_ref();
        let rows: [(&str, Option<f64>, Option<Interval>); 4] = [
            (
                "disagreement",
                r.and_then(|r| r.disagreement.as_ref().map(|d| d.p0)),
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
            // The sequential detector (a windowed test on the same signal has its own row).
            let det = detectors.iter().find(|d| {
                d.signal == signal
                    && d.segment == seg.segment
                    && !d.detector.starts_with("windowed:")
            });
            report.signals.push(
                SignalStatus {
                    signal: signal.to_string(),
                    segment: seg.segment.clone(),
                    baseline_value,
                    current,
                    detector: det.map(|d| d.detector.clone()),
                    statistic: det.map(|d| d.statistic),
                    threshold: det.map(|d| d.threshold),
                    samples: det.map(|d| d.samples),
                    ..SignalStatus::default()
                }
                .with_open_event(&open),
            );
        }
    }
    // Error-rate detectors only exist once labels arrived.
    for det in detectors.iter().filter(|d| d.signal.ends_with("_error")) {
        let baseline_value = reference.as_ref().and_then(|r| match det.signal.as_str() {
            "student_error" => r.student_error.as_ref().map(|e| e.p0),
            _ => r.teacher_error.as_ref().map(|e| e.p0),
        });
        report.signals.push(
            SignalStatus {
                signal: det.signal.clone(),
                segment: det.segment.clone(),
                baseline_value,
                current: None,
                detector: Some(det.detector.clone()),
                statistic: Some(det.statistic),
                threshold: Some(det.threshold),
                samples: Some(det.samples),
                ..SignalStatus::default()
            }
            .with_open_event(&open),
        );
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
        skipped_unreachable: s.skipped_unreachable,
        skipped_failed: s.skipped_failed,
        records_duplicate: s.records_duplicate,
        labels_unchanged: s.labels_unchanged,
        labels_corrected: s.labels_corrected,
        segment_values_cut: s.segment_values_cut,
        dropped: Vec::new(),
        database_bytes: None,
        max_bytes: None,
        segments: s.segments.iter().map(SegmentReport::from).collect(),
        baseline: None,
        signals: Vec::new(),
        windowed: Vec::new(),
        events_total: 0,
        events_open: 0,
        firing_alerts: Vec::new(),
        sightlines: Vec::new(),
        false_alarms: None,
        budget: None,
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
        if self.skipped_unreachable > 0 {
            let _ = writeln!(
                s,
                "skipped, teacher out of reach (inference server down, timed out or refusing): {}",
                self.skipped_unreachable
            );
        }
        if self.skipped_failed > 0 {
            let _ = writeln!(
                s,
                "skipped, the teacher failed (an error, or an answer of the wrong shape, datatype or format): {}",
                self.skipped_failed
            );
        }
        if self.records_duplicate > 0 || self.labels_unchanged > 0 || self.labels_corrected > 0 {
            let _ = writeln!(
                s,
                "ids counted before: {} records left out; late labels: {} corrected a record's label, {} changed nothing",
                self.records_duplicate, self.labels_corrected, self.labels_unchanged
            );
        }
        if self.segment_values_cut > 0 {
            let _ = writeln!(
                s,
                "segment values cut to [segments] max_value_bytes: {}",
                self.segment_values_cut
            );
        }
        if let Some(used) = self.database_bytes {
            let budget = self
                .max_bytes
                .map_or("no [store] max_size".to_string(), |m| {
                    format!("max_size {}", mib(m))
                });
            let _ = writeln!(s, "database: {} in use ({budget})", mib(used));
        }
        for d in &self.dropped {
            let why = if d.reason == "size" {
                "to stay under [store] max_size"
            } else {
                "past [store] record_retention"
            };
            let _ = writeln!(
                s,
                "deleted {why}: {} per-record rows, every record up to seq {} (windows, drift events and the distillation buffer are kept)",
                d.records, d.through_seq
            );
        }
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
                    "reference",
                    "current [95% CI]",
                    "detector",
                    "statistic/limit"
                );
                let _ = writeln!(
                    s,
                    "  (reference: what the detector compares with, as in drift_events.baseline_value; for a rate, p0 = the lab rate under the sampling policy, Jeffreys-smoothed)"
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
                        (Some(st), Some(th)) => {
                            format!("{}/{}", number(Some(st)), number(Some(th)))
                        }
                        _ => "-".into(),
                    };
                    // The detector restarts after an alarm: while its event is open, say what
                    // it fired at, not only where it stands now.
                    let drift = match (sig.open_event, sig.fired_statistic, sig.fired_threshold) {
                        (Some(id), Some(st), Some(th)) => format!(
                            "  DRIFT (event #{id}: fired at {}/{} on {})",
                            number(Some(st)),
                            number(Some(th)),
                            sig.open_since.map(crate::time::rfc3339).unwrap_or_default()
                        ),
                        _ if sig.drifting => "  DRIFT".to_string(),
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        s,
                        "  {:<14} {:<12} {:>9} {:>26} {:>16} {:>18}{drift}",
                        sig.signal,
                        segment_name(&sig.segment),
                        fmt_opt(sig.baseline_value, 4),
                        current,
                        sig.detector.as_deref().unwrap_or("-"),
                        standing,
                    );
                }
                if !self.windowed.is_empty() {
                    let alarming: Vec<_> = self
                        .windowed
                        .iter()
                        .filter(|d| d.statistic >= d.threshold)
                        .collect();
                    let _ = writeln!(
                        s,
                        "  windowed tests of the latest round: {}, {} alarming (statistic: margin towards an alarm, 1 = alarm)",
                        self.windowed.len(),
                        alarming.len()
                    );
                    for d in alarming {
                        let _ = writeln!(
                            s,
                            "  {:<14} {:<12} {:>9} {:>26} {:>16} {:>18}  DRIFT",
                            d.signal,
                            segment_name(&d.segment),
                            "",
                            "",
                            d.detector.trim_start_matches("windowed:"),
                            format!(
                                "{}/{}",
                                number(Some(d.statistic)),
                                number(Some(d.threshold))
                            )
                        );
                    }
                }
            }
        }
        let blind: Vec<_> = self
            .sightlines
            .iter()
            .filter(|d| d.sightline.blind)
            .collect();
        if let Some(b) = &self.budget {
            let _ = writeln!(
                s,
                "\nfalse-alarm budget: {} ({:.3} events per {:.0} d, {} segments, {:.2} records/s from the {}); events since {} against what the budget expects if all were false:",
                self.false_alarms.as_deref().unwrap_or("-"),
                b.events_per_period,
                b.period_seconds / 86_400.0,
                b.segments,
                b.records_per_second,
                b.rate_source,
                crate::time::human(b.since_ms),
            );
            for f in &b.families {
                let setting = match (f.arl0, f.alpha) {
                    (Some(arl0), _) => format!("ARL0 {arl0:.3e}"),
                    (_, Some(alpha)) => format!("alpha {alpha:.2e} per round"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "  {:<14} share {:>5.1}%{}  {:<22} events {:>4}  expected {:.3}",
                    f.family,
                    100.0 * f.share,
                    if f.explicit {
                        " (set in the config)"
                    } else {
                        ""
                    },
                    setting,
                    f.events,
                    f.expected
                );
            }
        }
        if !blind.is_empty() {
            let _ = writeln!(
                s,
                "\nBLIND detectors (at the observed rate they need more than a day to see the minimum shift; raise [sampling] max_per_minute, queue or rate):"
            );
            for d in blind {
                let _ = writeln!(s, "  {}", sightline_text(d));
            }
        }
        if !self.shadow_models.is_empty() {
            let _ = writeln!(s, "\nshadow models (on teacher-sampled records):");
            for m in &self.shadow_models {
                let what = match (m.model.status.as_str(), &m.model.detail) {
                    ("failed", Some(detail)) => format!("FAILED: {detail}"),
                    (status, _) if m.skipped > 0 => format!(
                        "{status}, {} samples, {} skipped ({})",
                        m.samples,
                        m.skipped,
                        m.skipped_by_reason
                            .iter()
                            .map(|(reason, n)| format!("{} {n}", reason.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
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
        if !self.firing_alerts.is_empty() {
            let _ = writeln!(s, "\nalerts firing:");
            for a in &self.firing_alerts {
                let _ = writeln!(
                    s,
                    "  {} since {}: {} drift{}, {} notification{} sent",
                    a.rule,
                    a.fired_at
                        .map(crate::time::rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    a.members,
                    if a.members == 1 { "" } else { "s" },
                    a.sent,
                    if a.sent == 1 { "" } else { "s" },
                );
            }
        }
        if self.recent_events.is_empty() {
            let _ = writeln!(s, "\ndrift events: none");
        } else {
            let listed = self.recent_events.len() as i64;
            let which = if listed >= self.events_total {
                "all listed".to_string()
            } else {
                format!(
                    "listed: the latest {RECENT_EVENTS} and every open one ({listed}; the table drift_events holds them all)"
                )
            };
            let _ = writeln!(
                s,
                "\ndrift events: {}, {} open; {which}",
                self.events_total, self.events_open
            );
            for e in &self.recent_events {
                let change = e
                    .estimated_change_record
                    .map_or(String::new(), |c| format!(", change from ~seq {c}"));
                // A windowed test compares distributions: its figures are the p-value and the
                // effect size, not a baseline and a current value.
                let figures = match (e.p_value, e.effect_size) {
                    (Some(p), Some(effect)) => format!(
                        "adjusted p {}, effect size {}",
                        number(Some(p)),
                        number(Some(effect))
                    ),
                    _ => format!(
                        "reference {} → current {}",
                        number(e.baseline_value),
                        number(e.current_value)
                    ),
                };
                let _ = writeln!(
                    s,
                    "  #{} {} {} on {} ({}) at seq {}{change}: {figures}{}{}",
                    e.id,
                    crate::time::rfc3339(e.detected_at),
                    e.signal,
                    segment_name(&e.segment),
                    e.detector,
                    e.detected_at_record,
                    match (e.alarms, e.last_alarm_record) {
                        (n, Some(last)) if n > 1 =>
                            format!("; {n} alarms, the latest at seq {last}"),
                        _ => String::new(),
                    },
                    match e.resolved_at {
                        Some(r) => format!(" (resolved {})", crate::time::rfc3339(r)),
                        None => " (open)".to_string(),
                    }
                );
            }
        }
        s
    }
}

/// One detector's sightline in words: "disagreement on (all): ≈ 13700 records to see the
/// minimum shift (548 samples at 4.0% of records), 2.1 days at the observed rate".
pub fn sightline_text(d: &crate::store::DetectorSightline) -> String {
    let l = &d.sightline;
    let records = if l.expected_delay_records.is_finite() {
        format!("≈ {:.0} records", l.expected_delay_records)
    } else {
        "never (no observations)".to_string()
    };
    let time = l
        .expected_delay_seconds
        .filter(|t| t.is_finite())
        .map_or(String::new(), |t| {
            format!(", {:.1} days at the observed rate", t / 86_400.0)
        });
    format!(
        "{} on {}: {records} to see the minimum shift ({:.0} samples at {:.1}% of records){time}",
        d.signal,
        segment_name(&d.segment),
        l.expected_delay_samples,
        100.0 * l.samples_per_record
    )
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

/// Bytes as MiB, for people.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
