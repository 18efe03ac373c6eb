//! The dashboard's data and `sensei report`.
//!
//! [`dashboard_data`] gathers what an operator looks at — health, agreement over time against
//! the lab baseline's band, drift events, per-segment windows, detectors, alerts,
//! re-distillation jobs and model versions — from the database in one JSON-serialisable value.
//! The daemon serves it at `/api/dashboard` for the page at `/`; `sensei report --out FILE.html`
//! inlines it into the same page, adding the lab-vs-field gap per signal and the return on
//! investment (student vs teacher latency, size and agreement). The page is one file with its
//! script and styles inline and charts drawn by hand in SVG: no CDN, nothing to fetch.

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
    /// Newest first.
    pub events: Vec<DriftEventRow>,
    pub detectors: Vec<DetectorRow>,
    pub alert_counts: Option<AlertCounts>,
    pub alerts: Vec<Value>,
    pub jobs: Vec<Value>,
    pub models: Vec<ModelVersion>,
    /// Report only: lab (active baseline) vs field per signal.
    pub gap: Vec<GapRow>,
    /// Report only.
    pub roi: Option<Roi>,
    /// Report only: the shadow models against the serving student, and the verdict.
    pub challengers: Option<Challengers>,
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
    let events = reader.recent_events(100).unwrap_or_default();
    let detectors = reader.detectors().unwrap_or_default();
    let alert_counts = reader.alert_counts();
    let alerts = reader.recent_rows("alert_state", "updated_at", 50);
    // Re-distillation requests made by alert rules, and jobs once they are recorded.
    let mut jobs = reader.recent_rows("redistill_jobs", "rowid", 20);
    if jobs.is_empty() {
        jobs = reader.recent_rows("alert_actions", "id", 20);
    }
    let models = reader.model_versions()?;
    let all = summary.segments.iter().find(|s| s.segment == ALL_SEGMENTS);

    let health = health(
        ready || report,
        summary.records,
        &events,
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
    events: &[DriftEventRow],
    alerts: Option<&AlertCounts>,
    overall: &[WindowRow],
    baseline: Option<&BaselineBand>,
    quarantined: i64,
) -> Health {
    let mut reasons = Vec::new();
    let open: Vec<&DriftEventRow> = events.iter().filter(|e| e.resolved_at.is_none()).collect();
    for e in &open {
        reasons.push(format!(
            "drift on {} in segment {} ({})",
            e.signal, e.segment, e.detector
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
    } else if !open.is_empty() || firing > 0 {
        (
            "drift",
            format!(
                "Drift: {} open drift event(s){}.",
                open.len(),
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

    #[test]
    fn band_is_above_p0_and_narrows_with_samples() {
        assert!(band_high(0.05, 10) > band_high(0.05, 1000));
        assert!(band_high(0.05, 1000) > 0.05);
    }
}
