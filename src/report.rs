//! The dashboard's data and `sensei report`.
//!
//! [`dashboard_data`] gathers what an operator looks at — health, agreement over time against
//! the lab baseline's band, drift events, per-segment windows, detectors, alerts,
//! re-distillation jobs and model versions — from the database in one JSON-serialisable value.
//! The daemon serves it at `/api/dashboard` for the page at `/`; `sensei report --out FILE.html`
//! inlines it into the same page, adding the lab-vs-field gap per signal and the return on
//! investment (student vs teacher latency, size and agreement). The page is one file with its
//! script and styles inline and charts drawn by hand in SVG: no CDN, nothing to fetch.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use sha2::Digest;

use crate::commands::StatusReport;
use crate::config::Config;
use crate::record::ALL_SEGMENTS;
use crate::store::{AlertCounts, DetectorRow, DriftEventRow, ModelVersion, Reader, WindowRow};

/// The dashboard page; `/*SENSEI_DATA*/null` is replaced by the data when it is inlined.
const PAGE: &str = include_str!("http/dashboard.html");
const DATA_SLOT: &str = "/*SENSEI_DATA*/null";

/// Drift events listed and marked on the charts (the latest ones).
const RECENT_EVENTS: i64 = 100;

/// Windows shown on the timeline (the latest ones).
const TIMELINE_WINDOWS: i64 = 400;
/// Per-segment windows read for the heat map.
const SEGMENT_WINDOWS: i64 = 4000;

/// Everything the dashboard shows.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardData {
    /// Unix ms when this was read.
    pub generated_at: i64,
    /// Written by `sensei report` (a snapshot) rather than served live.
    pub report: bool,
    /// Live: whether the pipeline runs. A report says `true`.
    pub ready: bool,
    pub window_ms: i64,
    pub health: Health,
    pub status: StatusReport,
    /// `window_stats` of all segments together, oldest first.
    pub overall: Vec<WindowRow>,
    /// `window_stats` of each segment, oldest first.
    pub segments: Vec<WindowRow>,
    pub baseline: Option<BaselineBand>,
    /// The latest drift events, newest first.
    pub events: Vec<DashboardEvent>,
    /// The open drift episodes, the newest first.
    pub incidents: Vec<Incident>,
    pub detectors: Vec<DetectorRow>,
    pub alert_counts: Option<AlertCounts>,
    /// Each rule's alert, the latest updated first.
    pub alerts: Vec<AlertLine>,
    /// Re-distillation jobs and the requests of alert rules no job took up yet, newest first.
    pub jobs: Vec<JobLine>,
    pub models: Vec<ModelVersion>,
    /// Report only: lab (active baseline) vs field per signal.
    pub gap: Vec<GapRow>,
    /// Report only.
    pub roi: Option<Roi>,
    /// Report only: the shadow models against the serving student, and the verdict.
    pub challengers: Option<Challengers>,
}

/// A drift event as the dashboard shows it: when sensei saw it (`detected_at`, its clock) and
/// the data time of its evidence (the records' own `ts`), which is what the charts' time axis
/// is. A data time is missing once retention deleted its record.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardEvent {
    #[serde(flatten)]
    pub event: DriftEventRow,
    /// Data time of the record that completed the evidence (`detected_at_record`).
    pub data_at: Option<i64>,
    /// Data time of the estimated change point (`estimated_change_record`).
    pub change_data_at: Option<i64>,
}

/// One open drift episode: the open drift events that tell of one change. Two open events are
/// in the same episode when their evidence overlaps in record order, an event's evidence
/// running from its estimated change point (or its first alarm) to its latest alarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// The signals of its events, sorted, each once.
    pub signals: Vec<String>,
    /// The segments of its events, sorted, each once (`*` is all segments together).
    pub segments: Vec<String>,
    /// Its open drift events (`drift_events.id`), oldest first.
    pub event_ids: Vec<i64>,
    /// Alarms counted on its events.
    pub alarms: i64,
    /// `records.seq` of its first alarm, and that record's data time.
    pub start_record: i64,
    pub start_data_at: Option<i64>,
    /// The earliest estimated change point among its events (`records.seq`), and its data time.
    pub change_record: Option<i64>,
    pub change_data_at: Option<i64>,
    /// `records.seq` of its latest alarm.
    pub last_record: i64,
    /// When sensei raised its first alarm (sensei's clock, unix ms).
    pub seen_at: i64,
}

/// A drift member of an alert: which detector on which signal and segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertMember {
    pub signal: String,
    pub segment: String,
    pub detector: String,
}

/// A rule's alert as the dashboard shows it (`alert_state`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertLine {
    pub rule: String,
    /// inactive, pending, firing or resolved.
    pub status: String,
    pub pending_since: Option<i64>,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    /// Notifications of its episode.
    pub sent: i64,
    /// The drifts as last announced.
    pub members: Vec<AlertMember>,
    pub updated_at: Option<i64>,
}

/// A re-distillation job (`redistill_jobs`) or an alert rule's request for one that no job took
/// up (`alert_actions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobLine {
    /// `job` or `request`.
    pub kind: &'static str,
    pub id: i64,
    pub status: String,
    /// A job's trigger (`manual`, `alert:<rule>`); a request's rule as `alert:<rule>`.
    pub trigger: String,
    /// Why: the operator's words or the drifts that fired.
    pub reason: String,
    /// The drifts of a request.
    pub drifts: Vec<AlertMember>,
    pub requested_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Records in the training dataset.
    pub records: Option<i64>,
    /// The gate's verdict: passed, rejected.
    pub gate: Option<String>,
    pub detail: Option<String>,
}

/// The challengers' table and verdict (`sensei report`).
#[derive(Debug, Clone, Serialize)]
pub struct Challengers {
    /// The serving student first, then the shadow models by name.
    pub standings: Vec<crate::shadow::Standing>,
    pub verdict: crate::shadow::Verdict,
    pub teacher_bytes: Option<u64>,
}

/// The one-line verdict at the top of the page.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `ok`, `watch`, `drift` or `no-data`.
    pub level: &'static str,
    pub summary: String,
    pub reasons: Vec<String>,
}

/// What the lab measured, as far as the dashboard draws it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BaselineBand {
    pub version: i64,
    pub created_at: i64,
    pub records: i64,
    /// p0: the lab disagreement rate the detectors compare with.
    pub disagreement: Option<f64>,
    pub kl_mean: Option<f64>,
    pub kl_sd: Option<f64>,
    pub attention_kl_mean: Option<f64>,
    pub attention_kl_sd: Option<f64>,
    pub confidence_mean: Option<f64>,
    pub student_latency_us: Option<f64>,
    pub teacher_latency_us: Option<f64>,
}

/// One signal, lab against field.
#[derive(Debug, Clone, Serialize)]
pub struct GapRow {
    pub signal: &'static str,
    pub lab: Option<f64>,
    pub field: Option<f64>,
    /// field − lab.
    pub gap: Option<f64>,
}

/// What the distillation bought: the student's speed and size against the teacher's, and how
/// closely it agrees with it in the field.
#[derive(Debug, Clone, Serialize)]
pub struct Roi {
    pub student_latency_us: Option<f64>,
    pub teacher_latency_us: Option<f64>,
    /// Teacher latency / student latency.
    pub speedup: Option<f64>,
    pub student_bytes: Option<u64>,
    pub teacher_bytes: Option<u64>,
    /// Teacher size / student size.
    pub size_ratio: Option<f64>,
    /// 1 − field disagreement rate.
    pub agreement: Option<f64>,
    /// Lab agreement, for comparison.
    pub lab_agreement: Option<f64>,
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64().filter(|x| x.is_finite())
}

/// Reads the band from the active baseline's profile. The profile is JSON owned by the drift
/// code; only a few well-known fields are read, and a missing one just draws no band.
fn baseline_band(reader: &Reader) -> Option<BaselineBand> {
    let row = reader.active_baseline().ok().flatten()?;
    let profile: Value = serde_json::from_str(&row.profile).unwrap_or(Value::Null);
    let rate = |k: &str| {
        num(&profile, &[k, "rate"])
            .or_else(|| num(&profile, &[k, "field_rate"]))
            .or_else(|| num(&profile, &[k, "p0"]))
            .or_else(|| num(&profile, &[k]))
    };
    let confidence_mean = num(&profile, &["confidence", "mean"])
        .or_else(|| num(&profile, &["uncertainty", "mean"]).map(|u| 1.0 - u));
    let latency = |model: &str, flat: &str| {
        num(&profile, &[flat])
            .or_else(|| num(&profile, &["latency", model, "mean_ms"]).map(|ms| ms * 1000.0))
    };
    Some(BaselineBand {
        version: row.version,
        created_at: row.created_at,
        records: row.records,
        disagreement: rate("disagreement"),
        kl_mean: num(&profile, &["kl", "mean"]),
        kl_sd: num(&profile, &["kl", "sd"]),
        attention_kl_mean: num(&profile, &["attention_kl", "mean"]),
        attention_kl_sd: num(&profile, &["attention_kl", "sd"]),
        confidence_mean,
        student_latency_us: latency("student", "student_latency_us"),
        teacher_latency_us: latency("teacher", "teacher_latency_us"),
    })
}

/// Reads the dashboard's data. `ready` is the live pipeline's state; `report` adds the
/// lab-vs-field gap and the return on investment.
pub fn dashboard_data(config: &Config, ready: bool, report: bool) -> anyhow::Result<DashboardData> {
    let reader = Reader::open(&config.store.path)?;
    let summary = reader.summary()?;
    let status = crate::commands::status(config)?;
    let overall = reader.windows(Some(ALL_SEGMENTS), None, TIMELINE_WINDOWS)?;
    let since = overall.first().map(|w| w.start);
    let mut segments = reader.windows(None, since, SEGMENT_WINDOWS)?;
    segments.retain(|w| w.segment != ALL_SEGMENTS);
    let baseline = baseline_band(&reader);
    let mut latest = reader.recent_events(RECENT_EVENTS).unwrap_or_default();
    latest.reverse();
    let open = reader.open_events().unwrap_or_default();
    let times =
        reader.record_times(latest.iter().chain(&open).flat_map(|e| {
            std::iter::once(e.detected_at_record).chain(e.estimated_change_record)
        }))?;
    let incidents = incidents(&open, &times);
    let events: Vec<DashboardEvent> = latest
        .into_iter()
        .map(|e| DashboardEvent {
            data_at: times.get(&e.detected_at_record).copied(),
            change_data_at: e
                .estimated_change_record
                .and_then(|r| times.get(&r).copied()),
            event: e,
        })
        .collect();
    let detectors = reader.detectors().unwrap_or_default();
    let alert_counts = reader.alert_counts();
    let alerts = reader
        .recent_rows("alert_state", "updated_at", 50)
        .iter()
        .map(alert_line)
        .collect();
    let jobs = job_lines(
        &reader.recent_rows("redistill_jobs", "id", 20),
        &reader.recent_rows("alert_actions", "id", 20),
    );
    let models = reader.model_versions()?;
    let all = summary.segments.iter().find(|s| s.segment == ALL_SEGMENTS);

    let health = health(
        ready || report,
        summary.records,
        &incidents,
        alert_counts.as_ref(),
        &overall,
        baseline.as_ref(),
        summary.files_quarantined,
    );

    let (gap, roi) = if report {
        let field_conf = all.and_then(|s| s.mean_confidence);
        let b = baseline.clone().unwrap_or_default();
        let row = |signal, lab: Option<f64>, field: Option<f64>| GapRow {
            signal,
            lab,
            field,
            gap: lab.zip(field).map(|(l, f)| f - l),
        };
        let gap = vec![
            row(
                "disagreement",
                b.disagreement,
                all.and_then(|s| s.disagreement),
            ),
            row("kl", b.kl_mean, all.and_then(|s| s.kl_mean)),
            row(
                "attention_kl",
                b.attention_kl_mean,
                all.and_then(|s| s.attention_kl_mean),
            ),
            row("confidence", b.confidence_mean, field_conf),
        ];
        let student_latency_us = reader.mean_student_latency_us()?.or(b.student_latency_us);
        let teacher_latency_us = {
            let (sum, n) = models.iter().fold((0.0, 0i64), |(s, n), m| {
                (
                    s + m.mean_teacher_latency_us.unwrap_or(0.0) * m.teacher_samples as f64,
                    n + m.teacher_samples,
                )
            });
            if n > 0 {
                Some(sum / n as f64)
            } else {
                b.teacher_latency_us
            }
        };
        let size = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
        let student_bytes = size(&config.student.path);
        let teacher_bytes = size(&config.teacher.path);
        let ratio =
            |a: Option<f64>, b: Option<f64>| a.zip(b).and_then(|(a, b)| (b > 0.0).then_some(a / b));
        let roi = Roi {
            student_latency_us,
            teacher_latency_us,
            speedup: ratio(teacher_latency_us, student_latency_us),
            student_bytes,
            teacher_bytes,
            size_ratio: ratio(
                teacher_bytes.map(|x| x as f64),
                student_bytes.map(|x| x as f64),
            ),
            agreement: all.and_then(|s| s.disagreement).map(|d| 1.0 - d),
            lab_agreement: b.disagreement.map(|d| 1.0 - d),
        };
        (gap, Some(roi))
    } else {
        (Vec::new(), None)
    };
    let challengers = if report {
        challengers(config, &reader)?
    } else {
        None
    };

    Ok(DashboardData {
        generated_at: crate::time::now_ms(),
        report,
        ready: ready || report,
        window_ms: config.store.window.as_millis().min(i64::MAX as u128) as i64,
        health,
        status,
        overall,
        segments,
        baseline,
        events,
        incidents,
        detectors,
        alert_counts,
        alerts,
        jobs,
        models,
        gap,
        roi,
        challengers,
    })
}

/// The serving student and every shadow model of the latest pipeline start, measured on the
/// same teacher-sampled records, and the verdict. `None` when nothing runs in shadow.
fn challengers(config: &Config, reader: &Reader) -> anyhow::Result<Option<Challengers>> {
    use crate::shadow::{STUDENT, Standing};
    use crate::store::ShadowKind;
    let shadow = reader.shadow_models()?;
    if shadow.is_empty() && config.challengers.is_empty() {
        return Ok(None);
    }
    let floor = config.shadow.agreement_floor;
    let student_file = std::fs::read(&config.student.path).ok();
    let student_sha = student_file
        .as_ref()
        .map(|b| crate::model::hex(&sha2::Sha256::digest(b))[..12].to_string());
    let student = reader.student_shadow_totals(student_sha.as_deref())?;
    let mut standings = vec![Standing::new(
        STUDENT,
        ShadowKind::Student,
        student_sha.clone(),
        "serving",
        None,
        student_file.as_ref().map(|b| b.len() as u64),
        student_file
            .as_deref()
            .and_then(crate::shadow::parameter_count),
        student.as_ref().map(|(_, t)| t),
        floor,
    )];
    for m in shadow {
        let totals = match &m.sha256 {
            Some(sha) => reader.shadow_totals(&m.name, sha)?,
            None => None,
        };
        standings.push(Standing::new(
            &m.name,
            m.kind,
            m.sha256.clone(),
            &m.status,
            m.detail.clone(),
            m.size_bytes,
            m.parameters,
            totals.as_ref(),
            floor,
        ));
    }
    let teacher_bytes = std::fs::metadata(&config.teacher.path)
        .ok()
        .map(|m| m.len());
    let verdict = crate::shadow::verdict(&standings, teacher_bytes, floor);
    Ok(Some(Challengers {
        standings,
        verdict,
        teacher_bytes,
    }))
}

/// The challengers' table and verdict as `sensei report` prints them.
pub fn challengers_text(c: &Challengers) -> String {
    use std::fmt::Write as _;
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |x| format!("{x:.digits$}"));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "challengers (on the same teacher-sampled records; agreement with the teacher, 95% CI):"
    );
    let _ = writeln!(
        s,
        "  {:<20} {:<10} {:>8} {:>8} {:>24} {:>8} {:>8} {:>10} {:>10} {:>10}",
        "model",
        "kind",
        "samples",
        "eff. n",
        "agreement [95% CI]",
        "KL",
        "attn KL",
        "µs/record",
        "bytes",
        "params"
    );
    for st in &c.standings {
        let agreement = st.agreement.map_or("-".into(), |i| {
            format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.low, i.high)
        });
        let _ = writeln!(
            s,
            "  {:<20} {:<10} {:>8} {:>8} {:>24} {:>8} {:>8} {:>10} {:>10} {:>10}{}",
            st.name,
            st.kind.as_str(),
            st.samples,
            opt(st.effective_n, 0),
            agreement,
            opt(st.mean_kl, 4),
            opt(st.mean_attention_kl, 4),
            opt(st.latency_us, 0),
            st.size_bytes.map_or("-".into(), |b| b.to_string()),
            st.parameters.map_or("-".into(), |p| p.to_string()),
            match (st.status.as_str(), &st.detail) {
                ("failed", Some(d)) => format!("  FAILED: {d}"),
                ("failed", None) => "  FAILED".into(),
                _ => String::new(),
            }
        );
    }
    let _ = writeln!(s, "verdict: {}", c.verdict.summary);
    s
}

/// The upper edge of the 95% band of a rate p0 measured on n samples.
fn band_high(p0: f64, n: i64) -> f64 {
    let n = n.max(1) as f64;
    p0 + 1.96 * (p0 * (1.0 - p0) / n).sqrt()
}

fn health(
    running: bool,
    records: i64,
    incidents: &[Incident],
    alerts: Option<&AlertCounts>,
    overall: &[WindowRow],
    baseline: Option<&BaselineBand>,
    quarantined: i64,
) -> Health {
    let mut reasons = Vec::new();
    // Every open event is in one incident.
    let open: usize = incidents.iter().map(|i| i.event_ids.len()).sum();
    for i in incidents {
        reasons.push(format!(
            "drift on {} in {} ({} open event(s))",
            i.signals.join(", "),
            i.segments
                .iter()
                .map(|s| segment_words(s))
                .collect::<Vec<_>>()
                .join(", "),
            i.event_ids.len()
        ));
    }
    let firing = alerts.map_or(0, |a| a.firing);
    if firing > 0 {
        reasons.push(format!("{firing} alert(s) firing"));
    }
    let mut watch = false;
    if !running {
        watch = true;
        reasons.push("the pipeline is not running (starting, reloading or stopping)".into());
    }
    let latest = overall.iter().rev().find(|w| w.teacher_samples > 0);
    if let (Some(w), Some(p0)) = (latest, baseline.and_then(|b| b.disagreement))
        && let Some(rate) = w.disagreement_rate
        && rate > band_high(p0, w.teacher_samples)
    {
        watch = true;
        reasons.push(format!(
            "latest window's disagreement {:.1}% is above the lab band (lab {:.1}%)",
            rate * 100.0,
            p0 * 100.0
        ));
    }
    let no_baseline = baseline.is_none() && records > 0;
    if no_baseline {
        reasons.push(
            "no lab baseline yet, so no drift verdict: run `sensei baseline` on the lab set".into(),
        );
    }
    if quarantined > 0 {
        reasons.push(format!("{quarantined} file(s) quarantined"));
    }
    let (level, summary) = if records == 0 {
        (
            "no-data",
            "No records yet: waiting for files in the inbox.".to_string(),
        )
    } else if open > 0 || firing > 0 {
        (
            "drift",
            format!(
                "Drift: {open} open drift event(s){}.",
                if firing > 0 {
                    format!(", {firing} alert(s) firing")
                } else {
                    String::new()
                }
            ),
        )
    } else if watch {
        ("watch", "Watch: see the reasons below.".to_string())
    } else if no_baseline {
        (
            "watch",
            "Running, but not yet compared with the lab: no baseline.".to_string(),
        )
    } else {
        (
            "ok",
            "Healthy: the student agrees with its teacher as it did in the lab.".to_string(),
        )
    };
    Health {
        level,
        summary,
        reasons,
    }
}

/// A segment in words: the aggregate is "all segments".
fn segment_words(segment: &str) -> String {
    if segment == ALL_SEGMENTS {
        "all segments".to_owned()
    } else if segment.is_empty() {
        "(no segment)".to_owned()
    } else {
        format!("segment {segment}")
    }
}

/// The open drift episodes among `open` (the open drift events), the newest first. `times`
/// maps record numbers to their data time.
fn incidents(open: &[DriftEventRow], times: &BTreeMap<i64, i64>) -> Vec<Incident> {
    // Each event's evidence in record order: from its change point (or first alarm) to its
    // latest alarm.
    let mut spans: Vec<(i64, i64, &DriftEventRow)> = open
        .iter()
        .map(|e| {
            let first = e.detected_at_record;
            let start = e.estimated_change_record.map_or(first, |c| c.min(first));
            let end = e.last_alarm_record.unwrap_or(first).max(first);
            (start, end, e)
        })
        .collect();
    spans.sort_by_key(|&(start, end, e)| (start, end, e.id));
    let mut groups: Vec<(i64, Vec<&DriftEventRow>)> = Vec::new();
    for (start, end, e) in spans {
        match groups.last_mut() {
            Some((reach, members)) if start <= *reach => {
                *reach = (*reach).max(end);
                members.push(e);
            }
            _ => groups.push((end, vec![e])),
        }
    }
    let mut out: Vec<Incident> = groups
        .into_iter()
        .map(|(last, mut members)| {
            members.sort_by_key(|e| e.id);
            let set = |f: fn(&DriftEventRow) -> &str| {
                let mut v: Vec<String> = members.iter().map(|e| f(e).to_owned()).collect();
                v.sort();
                v.dedup();
                v
            };
            let start_record = members
                .iter()
                .map(|e| e.detected_at_record)
                .min()
                .unwrap_or(0);
            let change_record = members
                .iter()
                .filter_map(|e| e.estimated_change_record)
                .min();
            Incident {
                signals: set(|e| &e.signal),
                segments: set(|e| &e.segment),
                event_ids: members.iter().map(|e| e.id).collect(),
                alarms: members.iter().map(|e| e.alarms).sum(),
                start_record,
                start_data_at: times.get(&start_record).copied(),
                change_record,
                change_data_at: change_record.and_then(|r| times.get(&r).copied()),
                last_record: last,
                seen_at: members.iter().map(|e| e.detected_at).min().unwrap_or(0),
            }
        })
        .collect();
    out.sort_by_key(|i| {
        std::cmp::Reverse((i.change_record.unwrap_or(i.start_record), i.start_record))
    });
    out
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn opt_text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// The drifts of an alert (`alert_state.members`, `alert_actions.drifts`: JSON arrays of the
/// notification document's drifts), as signal, segment and detector.
fn members(json: &Value) -> Vec<AlertMember> {
    let parsed: Value = match json.as_str() {
        Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        None => json.clone(),
    };
    parsed
        .as_array()
        .map(|drifts| {
            drifts
                .iter()
                .map(|d| AlertMember {
                    signal: text(d, "signal"),
                    segment: text(d, "segment"),
                    detector: text(d, "detector"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn alert_line(row: &Value) -> AlertLine {
    AlertLine {
        rule: text(row, "rule"),
        status: text(row, "status"),
        pending_since: int(row, "pending_since"),
        fired_at: int(row, "fired_at"),
        resolved_at: int(row, "resolved_at"),
        last_sent_at: int(row, "last_sent_at"),
        sent: int(row, "sent").unwrap_or(0),
        members: members(row.get("members").unwrap_or(&Value::Null)),
        updated_at: int(row, "updated_at"),
    }
}

/// The jobs, and the requests (`alert_actions`) that no job took up, newest first.
fn job_lines(jobs: &[Value], actions: &[Value]) -> Vec<JobLine> {
    let taken: std::collections::BTreeSet<i64> =
        jobs.iter().filter_map(|j| int(j, "action_id")).collect();
    let mut out: Vec<JobLine> = jobs
        .iter()
        .map(|j| JobLine {
            kind: "job",
            id: int(j, "id").unwrap_or(0),
            status: text(j, "status"),
            trigger: text(j, "trigger"),
            reason: text(j, "reason"),
            drifts: Vec::new(),
            requested_at: int(j, "requested_at"),
            started_at: int(j, "started_at"),
            finished_at: int(j, "finished_at"),
            records: int(j, "records"),
            gate: opt_text(j, "gate"),
            detail: opt_text(j, "detail"),
        })
        .collect();
    out.extend(
        actions
            .iter()
            .filter(|a| int(a, "id").is_some_and(|id| !taken.contains(&id)))
            .map(|a| JobLine {
                kind: "request",
                id: int(a, "id").unwrap_or(0),
                status: text(a, "status"),
                trigger: format!("alert:{}", text(a, "rule")),
                reason: format!(
                    "{} requested by alert {}",
                    text(a, "action"),
                    text(a, "alert_id")
                ),
                drifts: members(a.get("drifts").unwrap_or(&Value::Null)),
                requested_at: int(a, "requested_at"),
                started_at: None,
                finished_at: None,
                records: None,
                gate: None,
                detail: opt_text(a, "detail"),
            }),
    );
    out.sort_by_key(|l| std::cmp::Reverse(l.requested_at.unwrap_or(0)));
    out
}

/// The dashboard page, with `data` inlined (a report) or fetched from `/api/dashboard` (live).
pub fn page(data: Option<&DashboardData>) -> String {
    let json = data.map_or_else(|| "null".into(), inline_json);
    PAGE.replacen(DATA_SLOT, &json, 1)
}

/// `value` as JSON that is safe inside a `<script>` element whatever its strings hold: with no
/// `<` at all, neither `</script>` nor `<!--<script>` (which makes the parser look for a second
/// end tag) can end or bend the element; `>`, `&` and the two line separators JavaScript once
/// refused in strings are escaped too.
fn inline_json(value: &impl Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// `sensei report --out FILE`: the dashboard with the data inlined, plus the lab-vs-field gap
/// and the return on investment, as one self-contained HTML file.
pub fn write_report(config: &Config, out: &Path) -> anyhow::Result<DashboardData> {
    let data = dashboard_data(config, true, true)?;
    let html = page(Some(&data));
    let tmp = out.with_extension("html.tmp");
    std::fs::write(&tmp, html).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlined_data_cannot_close_the_script() {
        let html = page(None);
        assert!(html.contains("const INLINE = null"));
        assert!(!html.contains(DATA_SLOT));
    }

    #[test]
    fn no_producer_string_can_end_or_bend_the_inlined_script() {
        let hostile = serde_json::json!({
            "segment": ["<!--<script>", "</script><b>x</b>", "a&b", "\u{2028}\u{2029}", "]]>-->"],
        });
        let json = inline_json(&hostile);
        for bad in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!json.contains(bad), "{bad:?} in {json}");
        }
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hostile);
    }

    fn open_event(
        id: i64,
        signal: &str,
        segment: &str,
        change: Option<i64>,
        first: i64,
        last: i64,
    ) -> DriftEventRow {
        DriftEventRow {
            id,
            signal: signal.into(),
            segment: segment.into(),
            detector: "cusum".into(),
            detected_at: 1_000 + id,
            detected_at_record: first,
            estimated_change_record: change,
            statistic: 5.0,
            threshold: 4.0,
            baseline_value: None,
            current_value: None,
            current_low: None,
            current_high: None,
            p_value: None,
            effect_size: None,
            resolved_at: None,
            alarms: 2,
            last_alarm_record: Some(last),
        }
    }

    /// Open events whose evidence overlaps are one episode; a drift that begins after the
    /// first one's evidence ended is another, listed first.
    #[test]
    fn open_events_group_into_episodes_the_newest_first() {
        let open = vec![
            open_event(1, "kl", "line=A", Some(200), 250, 300),
            open_event(2, "disagreement", "*", Some(240), 280, 320),
            // A windowed test: no change point, its evidence from its first alarm.
            open_event(3, "input_psi[4]", "line=A", None, 310, 310),
            open_event(4, "confidence", "line=B", Some(900), 950, 990),
        ];
        let times: BTreeMap<i64, i64> = [(200, 20_000), (250, 25_000), (900, 90_000)].into();
        let episodes = incidents(&open, &times);
        assert_eq!(episodes.len(), 2, "{episodes:#?}");
        let (newest, oldest) = (&episodes[0], &episodes[1]);
        assert_eq!(newest.event_ids, [4]);
        assert_eq!(newest.segments, ["line=B"]);
        assert_eq!(newest.change_record, Some(900));
        assert_eq!(newest.change_data_at, Some(90_000));
        assert_eq!(newest.start_data_at, None, "record 950 is not kept");
        assert_eq!(oldest.event_ids, [1, 2, 3]);
        assert_eq!(oldest.signals, ["disagreement", "input_psi[4]", "kl"]);
        assert_eq!(oldest.segments, ["*", "line=A"]);
        assert_eq!(oldest.start_record, 250);
        assert_eq!(oldest.start_data_at, Some(25_000));
        assert_eq!(oldest.change_record, Some(200));
        assert_eq!(oldest.change_data_at, Some(20_000));
        assert_eq!(oldest.last_record, 320);
        assert_eq!(oldest.alarms, 6);
        assert_eq!(oldest.seen_at, 1_001);
        assert!(incidents(&[], &times).is_empty());
    }

    /// The alerts and jobs panels get the stored rows in words: members and drifts parsed out
    /// of their JSON, requests a job took up left out.
    #[test]
    fn alert_and_job_rows_are_read_into_lines() {
        let drifts = r#"[{"since":"2026-03-02T06:00:00Z","signal":"kl","segment":"*","detector":"cusum","event_id":3}]"#;
        let alert = alert_line(&serde_json::json!({
            "rule": "r", "status": "firing", "fired_at": 5, "sent": 2, "members": drifts,
            "updated_at": 6,
        }));
        assert_eq!(alert.fired_at, Some(5));
        assert_eq!(
            alert.members,
            [AlertMember {
                signal: "kl".into(),
                segment: "*".into(),
                detector: "cusum".into()
            }]
        );
        let jobs = [
            serde_json::json!({"id": 4, "status": "failed", "trigger": "alert:r",
            "reason": "alert r.5: kl", "action_id": 1, "requested_at": 10, "detail": "exit 3"}),
        ];
        let actions = [
            serde_json::json!({"id": 1, "action": "redistill", "rule": "r", "alert_id": "r.5",
                "requested_at": 9, "drifts": drifts, "status": "started"}),
            serde_json::json!({"id": 2, "action": "redistill", "rule": "r", "alert_id": "r.7",
                "requested_at": 12, "drifts": drifts, "status": "skipped", "detail": "rate-limited"}),
        ];
        let lines = job_lines(&jobs, &actions);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert_eq!((lines[0].kind, lines[0].id), ("request", 2));
        assert_eq!(lines[0].drifts.len(), 1);
        assert_eq!(lines[0].detail.as_deref(), Some("rate-limited"));
        assert_eq!((lines[1].kind, lines[1].id), ("job", 4));
    }

    #[test]
    fn band_is_above_p0_and_narrows_with_samples() {
        assert!(band_high(0.05, 10) > band_high(0.05, 1000));
        assert!(band_high(0.05, 1000) > 0.05);
    }
}
