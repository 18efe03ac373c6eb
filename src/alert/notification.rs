//! The notification document: what the outbox stores, what a webhook receives and a command
//! reads on stdin (docs/alerts.md), and its renderings for people (subject, plain text, HTML).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::rule::{Drift, Kind};
use crate::config::alerts::Severity;
use crate::store::ActionNote;
use crate::time::{human, rfc3339_ms, rfc3339_ms_opt};

/// The schema version of [`Notification`] documents.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub version: u32,
    /// The same for every retry of this notification; receivers drop repeats by it.
    pub dedup_key: String,
    /// The alert episode (`<rule>.<fired_at ms>`): the same for its firing, updates, repeats and
    /// resolution.
    pub alert_id: String,
    /// `firing` or `resolved`.
    pub status: String,
    pub kind: Kind,
    pub rule: String,
    pub severity: Severity,
    /// The site (`[alerts] instance`).
    pub instance: String,
    /// One line: what drifted, where.
    pub summary: String,
    /// When the alert fired.
    #[serde(with = "rfc3339_ms")]
    pub fired_at: i64,
    #[serde(with = "rfc3339_ms_opt", default)]
    pub resolved_at: Option<i64>,
    /// When this notification was made.
    #[serde(with = "rfc3339_ms")]
    pub created_at: i64,
    pub dashboard_url: Option<String>,
    pub action: Option<ActionNote>,
    pub drifts: Vec<Drift>,
    /// Re-distillation that keeps failing (rule `redistill-failing`; no drifts): the streak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redistill: Option<RedistillFailure>,
}

/// A run of re-distillation jobs that failed (docs/redistill.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedistillFailure {
    /// Jobs in a row that ended `failed` or `timed_out`.
    pub failures: u32,
    /// `redistill_jobs.id` of the first and the latest of them.
    pub first_job: i64,
    pub last_job: i64,
    /// The latest job's status (`failed`, `timed_out`) and the first line of its detail.
    pub last_status: String,
    pub last_detail: String,
    /// The latest job's log.
    #[serde(default)]
    pub log: Option<String>,
    /// The earliest time an alert rule's request starts the next job.
    #[serde(with = "rfc3339_ms")]
    pub next_allowed_at: i64,
    /// The job whose success ended the streak (resolved notifications).
    #[serde(default)]
    pub resolved_by_job: Option<i64>,
}

impl RedistillFailure {
    fn headline(&self, resolved: bool) -> String {
        match self.resolved_by_job {
            Some(job) if resolved => format!(
                "Resolved: re-distillation works again: job {job} succeeded after {} jobs in a row had failed (jobs {} to {} and maybe more).",
                self.failures, self.first_job, self.last_job
            ),
            _ => format!(
                "Re-distillation keeps failing: {} jobs in a row failed (jobs {} to {}). The serving student stays; the drift it was meant to fix is not being fixed.",
                self.failures, self.first_job, self.last_job
            ),
        }
    }

    fn lines(&self, resolved: bool) -> Vec<(&'static str, String)> {
        if resolved {
            return vec![
                (
                    "failed",
                    format!(
                        "{} jobs in a row, from job {}",
                        self.failures, self.first_job
                    ),
                ),
                (
                    "succeeded",
                    self.resolved_by_job
                        .map_or_else(|| "–".to_owned(), |j| format!("job {j}")),
                ),
            ];
        }
        vec![
            ("failures", format!("{} jobs in a row", self.failures)),
            (
                "last job",
                format!(
                    "job {} {}: {}",
                    self.last_job, self.last_status, self.last_detail
                ),
            ),
            ("log", self.log.clone().unwrap_or_else(|| "–".to_owned())),
            (
                "next job",
                format!(
                    "{} at the earliest (sensei redistill --force runs one now)",
                    human(self.next_allowed_at)
                ),
            ),
        ]
    }
}

/// What a signal measures, for people.
pub fn signal_text(signal: &str) -> &str {
    match signal {
        "disagreement" => "teacher/student disagreement rate",
        "kl" => "KL(teacher ‖ student)",
        "attention_kl" => "attention KL (teacher vs student)",
        "confidence" => "student confidence",
        "class_mix" => "predicted class mix",
        "input_psi" => "input distribution (PSI)",
        "student_error" => "student error rate",
        "teacher_error" => "teacher error rate",
        other => other,
    }
}

pub fn segment_text(segment: &str) -> &str {
    match segment {
        "*" => "all segments",
        "" => "(no segment)",
        s => s,
    }
}

/// A number with four significant digits, or `–` when unknown.
pub fn number(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(x) if !x.is_finite() => x.to_string(),
        Some(0.0) => "0".into(),
        Some(x) if x.abs() >= 1e5 || x.abs() < 1e-3 => format!("{x:.3e}"),
        Some(x) => {
            let digits = (3 - x.abs().log10().floor() as i32).max(0) as usize;
            format!("{x:.digits$}")
        }
    }
}

/// `0.2240 [0.1490, 0.3150]`.
fn current(d: &Drift) -> String {
    let e = &d.event;
    match (e.current_low, e.current_high) {
        (Some(lo), Some(hi)) => format!(
            "{} [{}, {}]",
            number(e.current_value),
            number(Some(lo)),
            number(Some(hi))
        ),
        _ => number(e.current_value),
    }
}

/// The one-line summary: `disagreement drift on line=A` or `disagreement, kl drift on 3
/// segments: line=A, line=B, line=C`.
pub fn summarize(drifts: &[Drift]) -> String {
    let mut signals: Vec<&str> = drifts.iter().map(|d| d.event.signal.as_str()).collect();
    signals.dedup();
    signals.sort_unstable();
    signals.dedup();
    let mut segments: Vec<&str> = drifts.iter().map(|d| d.event.segment.as_str()).collect();
    segments.sort_unstable();
    segments.dedup();
    let what = if signals.is_empty() {
        "drift".to_owned()
    } else {
        format!("{} drift", signals.join(", "))
    };
    match segments.as_slice() {
        [] => what,
        [one] => format!("{what} on {}", segment_text(one)),
        many => {
            const SHOWN: usize = 5;
            let listed: Vec<&str> = many.iter().take(SHOWN).map(|s| segment_text(s)).collect();
            let more = if many.len() > SHOWN {
                format!(" (+{} more)", many.len() - SHOWN)
            } else {
                String::new()
            };
            format!(
                "{what} on {} segments: {}{more}",
                many.len(),
                listed.join(", ")
            )
        }
    }
}

impl Notification {
    pub fn firing(&self) -> bool {
        self.status == "firing"
    }

    /// A subject that reads well in a crowded inbox: state and severity first, then what and
    /// where, then the site.
    pub fn subject(&self) -> String {
        let state = match self.kind {
            Kind::Resolved => "RESOLVED".to_owned(),
            Kind::Test => "TEST".to_owned(),
            Kind::Repeat => format!("STILL FIRING {}", self.severity.as_str().to_uppercase()),
            Kind::Firing | Kind::Update => {
                format!("FIRING {}", self.severity.as_str().to_uppercase())
            }
        };
        let mut s = format!("[sensei] {state}: {} ({})", self.summary, self.instance);
        if s.chars().count() > 160 {
            s = s.chars().take(157).collect::<String>() + "...";
        }
        s
    }

    /// The first paragraph, for people.
    fn headline(&self) -> String {
        if let Some(f) = &self.redistill {
            return f.headline(self.kind == Kind::Resolved);
        }
        let since = self.drifts.iter().map(|d| d.since).min();
        let since = since.map_or(String::new(), |s| format!(" since {}", human(s)));
        match self.kind {
            Kind::Test => format!(
                "This is a test notification from sensei on {}, sent by `sensei alert test`. The drift below is an example, not a measurement.",
                self.instance
            ),
            Kind::Resolved => format!(
                "Resolved: {}{since} is back in control as of {} (rule {}, fired {}).",
                self.summary,
                human(self.resolved_at.unwrap_or(self.created_at)),
                self.rule,
                human(self.fired_at)
            ),
            Kind::Repeat => format!(
                "Still firing: {}{since} (rule {}, {} severity, fired {}).",
                self.summary,
                self.rule,
                self.severity.as_str(),
                human(self.fired_at)
            ),
            Kind::Update => format!(
                "Spreading: {}{since} (rule {}, {} severity, fired {}).",
                self.summary,
                self.rule,
                self.severity.as_str(),
                human(self.fired_at)
            ),
            Kind::Firing => format!(
                "Drift detected: {}{since} (rule {}, {} severity).",
                self.summary,
                self.rule,
                self.severity.as_str()
            ),
        }
    }

    fn action_text(&self) -> String {
        if self.redistill.is_some() {
            return "the serving student stays, and automatic jobs back off (the wait doubles after each failure, up to [redistill] max_backoff). Someone should read the job's log.".to_owned();
        }
        match &self.action {
            Some(a) if a.action == "redistill" => {
                let detail = a
                    .detail
                    .as_deref()
                    .map_or(String::new(), |d| format!(": {d}"));
                match a.status.as_str() {
                    "requested" => format!(
                        "re-distillation of the student on the teacher-labelled field data was requested (action #{}).",
                        a.id
                    ),
                    "started" => format!("re-distillation started (action #{}{detail}).", a.id),
                    "skipped" => format!(
                        "re-distillation was not started (action #{}{detail}).",
                        a.id
                    ),
                    "done" => format!("re-distillation finished (action #{}{detail}).", a.id),
                    "failed" => format!("re-distillation failed (action #{}{detail}).", a.id),
                    other => format!("re-distillation {other} (action #{}{detail}).", a.id),
                }
            }
            Some(a) => format!("action {} {} (#{}).", a.action, a.status, a.id),
            None => {
                "Nothing automatic: this rule has no action. Someone should look at it.".to_owned()
            }
        }
    }

    /// The lines describing one drift, for the plain-text part.
    fn drift_lines(d: &Drift) -> Vec<(String, String)> {
        let e = &d.event;
        let mut lines = vec![
            (
                "what".to_owned(),
                format!(
                    "{} ({}, detector {})",
                    signal_text(&e.signal),
                    e.signal,
                    e.detector
                ),
            ),
            ("since".to_owned(), human(d.since)),
        ];
        let mut change = format!(
            "detected {} at seq {} (records.seq)",
            human(e.detected_at),
            e.detected_at_record
        );
        if let Some(r) = e.estimated_change_record {
            let _ = write!(change, "; change estimated to start at seq {r}");
            if let Some(at) = e.estimated_change_at {
                let _ = write!(change, " ({})", human(at));
            }
        }
        lines.push(("evidence".to_owned(), change));
        if e.alarms > 1 {
            let latest = e
                .last_alarm_record
                .map_or(String::new(), |r| format!(", the latest at seq {r}"));
            lines.push(("alarms".to_owned(), format!("{}{latest}", e.alarms)));
        }
        lines.push(("baseline".to_owned(), number(e.baseline_value)));
        lines.push((
            "current".to_owned(),
            format!("{} (95% interval)", current(d)),
        ));
        lines.push((
            "statistic".to_owned(),
            format!(
                "{} (threshold {})",
                number(Some(e.statistic)),
                number(Some(e.threshold))
            ),
        ));
        if e.p_value.is_some() || e.effect_size.is_some() {
            lines.push((
                "test".to_owned(),
                format!(
                    "p = {}, effect size {}",
                    number(e.p_value),
                    number(e.effect_size)
                ),
            ));
        }
        if let Some(r) = e.resolved_at {
            lines.push(("resolved".to_owned(), human(r)));
        }
        lines
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}\n", self.headline());
        for d in &self.drifts {
            let _ = writeln!(s, "* {}", segment_text(&d.event.segment));
            for (k, v) in Self::drift_lines(d) {
                let _ = writeln!(s, "    {k:<10} {v}");
            }
            s.push('\n');
        }
        if let Some(f) = &self.redistill {
            for (k, v) in f.lines(self.kind == Kind::Resolved) {
                let _ = writeln!(s, "    {k:<10} {v}");
            }
            s.push('\n');
        }
        if self.kind != Kind::Resolved {
            let _ = writeln!(s, "What sensei did: {}\n", self.action_text());
        }
        if let Some(url) = &self.dashboard_url {
            let _ = writeln!(s, "Dashboard: {url}");
        }
        let _ = writeln!(
            s,
            "Site: {}   Rule: {}   Alert: {}   Dedup key: {}",
            self.instance, self.rule, self.alert_id, self.dedup_key
        );
        s
    }

    pub fn html(&self) -> String {
        let mut s =
            String::from("<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif\">\n");
        let colour = match (self.kind, self.severity) {
            (Kind::Resolved, _) => "#2e7d32",
            (Kind::Test, _) => "#555555",
            (_, Severity::Critical) => "#c62828",
            (_, Severity::Warning) => "#ef6c00",
            (_, Severity::Info) => "#1565c0",
        };
        let _ = writeln!(
            s,
            "<p style=\"color: {colour}; font-weight: bold\">{}</p>",
            escape(&self.headline())
        );
        if let Some(f) = &self.redistill {
            s.push_str(
                "<table border=\"1\" cellpadding=\"4\" style=\"border-collapse: collapse\">\n",
            );
            for (k, v) in f.lines(self.kind == Kind::Resolved) {
                let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(&v));
            }
            s.push_str("</table>\n");
        } else {
            s.push_str(
            "<table border=\"1\" cellpadding=\"4\" style=\"border-collapse: collapse\">\n<tr><th>segment</th><th>signal</th><th>since</th><th>baseline</th><th>current [95% interval]</th><th>statistic / threshold</th><th>detector</th></tr>\n",
        );
            for d in &self.drifts {
                let e = &d.event;
                let _ = writeln!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
                    escape(segment_text(&e.segment)),
                    escape(signal_text(&e.signal)),
                    escape(&human(d.since)),
                    escape(&number(e.baseline_value)),
                    escape(&current(d)),
                    escape(&number(Some(e.statistic))),
                    escape(&number(Some(e.threshold))),
                    escape(&e.detector)
                );
            }
            s.push_str("</table>\n");
        }
        if self.kind != Kind::Resolved {
            let _ = writeln!(
                s,
                "<p><b>What sensei did:</b> {}</p>",
                escape(&self.action_text())
            );
        }
        if let Some(url) = &self.dashboard_url {
            let _ = writeln!(
                s,
                "<p><a href=\"{}\">Open the sensei dashboard</a></p>",
                escape(url)
            );
        }
        let _ = writeln!(
            s,
            "<p style=\"color: #777; font-size: small\">Site {} · rule {} · alert {} · dedup key {}</p>\n</body></html>",
            escape(&self.instance),
            escape(&self.rule),
            escape(&self.alert_id),
            escape(&self.dedup_key)
        );
        s
    }
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DriftEvent;

    fn drift(segment: &str) -> Drift {
        Drift {
            since: 1_772_431_200_000,
            event: DriftEvent {
                id: 1,
                signal: "disagreement".into(),
                segment: segment.into(),
                detector: "bernoulli_cusum".into(),
                detected_at: 1_772_431_500_000,
                detected_at_record: 4600,
                estimated_change_record: Some(4513),
                estimated_change_at: None,
                statistic: 9.31,
                threshold: 8.02,
                baseline_value: Some(0.034),
                current_value: Some(0.224),
                current_low: Some(0.149),
                current_high: Some(0.315),
                p_value: None,
                effect_size: None,
                baseline_version: Some(1),
                resolved_at: None,
                alarms: 1,
                last_alarm_record: None,
            },
        }
    }

    #[test]
    fn summaries_name_what_and_where() {
        assert_eq!(
            summarize(&[drift("line=A")]),
            "disagreement drift on line=A"
        );
        assert_eq!(
            summarize(&[drift("*")]),
            "disagreement drift on all segments"
        );
        let many: Vec<Drift> = (0..7).map(|i| drift(&format!("line={i}"))).collect();
        assert_eq!(
            summarize(&many),
            "disagreement drift on 7 segments: line=0, line=1, line=2, line=3, line=4 (+2 more)"
        );
    }

    #[test]
    fn numbers_have_four_significant_digits() {
        assert_eq!(number(Some(0.22413)), "0.2241");
        assert_eq!(number(Some(12.3456)), "12.35");
        assert_eq!(number(Some(0.0)), "0");
        assert_eq!(number(None), "–");
        assert_eq!(number(Some(0.0001234)), "1.234e-4");
    }

    #[test]
    fn document_round_trips_and_renders() {
        let n = Notification {
            version: VERSION,
            dedup_key: "drift.1.1".into(),
            alert_id: "drift.1".into(),
            status: "firing".into(),
            kind: Kind::Firing,
            rule: "drift".into(),
            severity: Severity::Critical,
            instance: "line4-edge".into(),
            summary: summarize(&[drift("line=A")]),
            fired_at: 1_772_431_560_000,
            resolved_at: None,
            created_at: 1_772_431_560_000,
            dashboard_url: Some("http://dash.example/".into()),
            action: Some(ActionNote {
                action: "redistill".into(),
                id: 3,
                status: "requested".into(),
                detail: None,
            }),
            drifts: vec![drift("line=A")],
            redistill: None,
        };
        let json = serde_json::to_string(&n).expect("json");
        assert!(
            json.contains("\"since\":\"2026-03-02T06:00:00Z\""),
            "{json}"
        );
        let back: Notification = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, n);
        assert_eq!(
            n.subject(),
            "[sensei] FIRING CRITICAL: disagreement drift on line=A (line4-edge)"
        );
        let text = n.text();
        assert!(text.contains("0.2240 [0.1490, 0.3150]"), "{text}");
        assert!(text.contains("baseline   0.03400"), "{text}");
        assert!(
            text.contains("What sensei did: re-distillation of the student"),
            "{text}"
        );
        assert!(text.contains("Dashboard: http://dash.example/"), "{text}");
        assert!(n.html().contains("<td>line=A</td>"));
    }
}
