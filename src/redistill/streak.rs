//! Jobs that fail in a row: the back-off they impose on the next job, and the one notification
//! that says re-distillation keeps failing (and the one that says it works again).
//!
//! A *streak* is the run of jobs that ended `failed` or `timed_out` since the last one that
//! `succeeded`. Each failure doubles the wait between the start of the last job and the next
//! one (`min_interval × 2^(failures − 1)`, at most `max_backoff`), so a job that cannot succeed
//! is tried ever more rarely instead of looping. When a streak reaches `alert_after_failures`,
//! the receivers are told once; when a job succeeds again, they are told once more that it is
//! over. Both notifications go through the alert outbox.
//!
//! The streak is derived from `redistill_jobs`; what was announced is kept in
//! `redistill_failure_alerts`, one row per streak, written in the transaction that enqueues its
//! notifications. [`announce`] reads both, decides with [`decide`] (pure: no clock, no disk),
//! and writes what it decided; running it again, in the same process or another one, after a
//! crash or a restart, finds the row and sends nothing twice.

use std::time::Duration;

use crate::alert::notification::{Notification, RedistillFailure, VERSION};
use crate::alert::rule::Kind;
use crate::config::alerts::Severity;
use crate::config::{Config, RedistillConfig};
use crate::store::{FailureAlertRow, FailureNotice, FinishedJob, Store};
use crate::time::rfc3339;

/// The rule name that notifications about failing re-distillation carry (the store's
/// outbox queries know it too).
pub use crate::store::REDISTILL_FAILING_RULE as RULE;

/// How long to wait, after the last job started, before the next may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min_interval_ms: i64,
    pub max_backoff_ms: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Backoff {
    pub fn new(config: &RedistillConfig) -> Backoff {
        Backoff {
            min_interval_ms: millis(config.min_interval),
            max_backoff_ms: millis(config.max_backoff),
        }
    }

    /// The wait after `failures` jobs in a row failed: `min_interval` with none or one,
    /// doubling with each further failure, at most `max_backoff` (and never below
    /// `min_interval`).
    pub fn interval_ms(&self, failures: u32) -> i64 {
        let min = self.min_interval_ms.max(0);
        let doubled = match failures.saturating_sub(1) {
            0 => min,
            n if n >= 63 => i64::MAX,
            n => min.checked_mul(1_i64 << n).unwrap_or(i64::MAX),
        };
        doubled.min(self.max_backoff_ms).max(min)
    }

    /// When the next job may start, the last one having started at `last_start_ms`.
    pub fn next_allowed_ms(&self, last_start_ms: i64, failures: u32) -> i64 {
        last_start_ms.saturating_add(self.interval_ms(failures))
    }
}

/// The jobs that failed in a row up to the latest finished one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streak {
    /// The first failed job of the streak (it names the streak).
    pub first_job: i64,
    pub failures: u32,
    /// The latest failed job.
    pub last: FinishedJob,
}

fn is_failure(status: &str) -> bool {
    matches!(status, "failed" | "timed_out")
}

/// The streak at the end of `finished` (finished jobs, oldest first); `None` when the latest
/// one succeeded or there are none.
pub fn streak(finished: &[FinishedJob]) -> Option<Streak> {
    let failures: Vec<&FinishedJob> = finished
        .iter()
        .rev()
        .take_while(|j| is_failure(&j.status))
        .collect();
    let (last, first) = (failures.first()?, failures.last()?);
    Some(Streak {
        first_job: first.id,
        failures: u32::try_from(failures.len()).unwrap_or(u32::MAX),
        last: (*last).clone(),
    })
}

/// What to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The streak reached `alert_after_failures` and was not announced yet.
    Failing(Streak),
    /// An announced streak ended: `by_job` succeeded.
    Resolved { first_job: i64, by_job: i64 },
}

/// Decides what to announce, from the current streak, the latest job that succeeded, and the
/// latest streak announced (`alerted`: its first job, and whether its end was announced).
/// `alert_after` 0 never announces a streak (an announced one is still resolved).
pub fn decide(
    current: Option<&Streak>,
    last_success: Option<i64>,
    alerted: Option<&FailureAlertRow>,
    alert_after: u32,
) -> Vec<Notice> {
    let mut notices = Vec::new();
    if let Some(a) = alerted
        && a.resolved_job.is_none()
        && let Some(by_job) = last_success.filter(|&s| s > a.first_job)
    {
        notices.push(Notice::Resolved {
            first_job: a.first_job,
            by_job,
        });
    }
    if let Some(s) = current
        && alert_after > 0
        && s.failures >= alert_after
        && alerted.is_none_or(|a| a.first_job != s.first_job)
    {
        notices.push(Notice::Failing(s.clone()));
    }
    notices
}

/// The first line of a job's detail, at most 300 characters.
fn first_line(detail: &str) -> String {
    let line = detail.lines().next().unwrap_or("").trim();
    let mut short: String = line.chars().take(300).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}

fn alert_id(first_job: i64) -> String {
    format!("{RULE}.job-{first_job}")
}

/// The notification document of a notice.
pub fn notification(
    config: &Config,
    notice: &Notice,
    streak_row: Option<&FailureAlertRow>,
    now: i64,
) -> Notification {
    let backoff = Backoff::new(&config.redistill);
    let (kind, first_job, failure, summary, fired_at, resolved_at) = match notice {
        Notice::Failing(s) => {
            let log = s.last.dir.as_ref().map(|d| {
                std::path::Path::new(d)
                    .join("job.log")
                    .display()
                    .to_string()
            });
            let failure = RedistillFailure {
                failures: s.failures,
                first_job: s.first_job,
                last_job: s.last.id,
                last_status: s.last.status.clone(),
                last_detail: first_line(&s.last.detail),
                log,
                next_allowed_at: backoff.next_allowed_ms(s.last.started_at, s.failures),
                resolved_by_job: None,
            };
            let summary = format!(
                "re-distillation keeps failing: {} jobs in a row",
                s.failures
            );
            (Kind::Firing, s.first_job, failure, summary, now, None)
        }
        Notice::Resolved { first_job, by_job } => {
            let row = streak_row.filter(|r| r.first_job == *first_job);
            let failure = RedistillFailure {
                failures: row.map_or(0, |r| r.failures),
                first_job: *first_job,
                last_job: row.map_or(*first_job, |r| r.last_job),
                last_status: "succeeded".into(),
                last_detail: String::new(),
                log: None,
                next_allowed_at: now,
                resolved_by_job: Some(*by_job),
            };
            let summary = format!("re-distillation works again: job {by_job} succeeded");
            let fired_at = row.map_or(now, |r| r.alerted_at);
            (
                Kind::Resolved,
                *first_job,
                failure,
                summary,
                fired_at,
                Some(now),
            )
        }
    };
    let n = if kind == Kind::Resolved { 2 } else { 1 };
    Notification {
        version: VERSION,
        dedup_key: format!("{}.{n}", alert_id(first_job)),
        alert_id: alert_id(first_job),
        status: if kind == Kind::Resolved {
            "resolved"
        } else {
            "firing"
        }
        .into(),
        kind,
        rule: RULE.into(),
        severity: Severity::Warning,
        instance: config.alerts.instance.clone(),
        summary,
        fired_at,
        resolved_at,
        created_at: now,
        dashboard_url: config.alerts.dashboard_url.clone(),
        action: None,
        drifts: Vec::new(),
        redistill: Some(failure),
    }
}

/// Announces what the jobs' history calls for (see the module header); returns the receivers
/// that got a notification. Safe to call any time, from any process, as often as wanted.
pub fn announce(store: &mut Store, config: &Config, now: i64) -> anyhow::Result<Vec<String>> {
    let rc = &config.redistill;
    let receivers = rc.alert_receivers.clone();
    let written = store.announce_redistill_failures(now, |state| {
        let current = streak(&state.finished);
        decide(
            current.as_ref(),
            state.last_success,
            state.alerted.as_ref(),
            rc.alert_after_failures,
        )
        .into_iter()
        .map(|notice| {
            let doc = notification(config, &notice, state.alerted.as_ref(), now);
            let payload = serde_json::to_string(&doc).unwrap_or_default();
            match &notice {
                Notice::Failing(s) => {
                    tracing::warn!(
                        failures = s.failures,
                        first_job = s.first_job,
                        last_job = s.last.id,
                        receivers = ?receivers,
                        "Re-distillation keeps failing: {} jobs in a row; the student stays. Next automatic job at {} at the earliest.",
                        s.failures,
                        rfc3339(doc.redistill.as_ref().map_or(now, |f| f.next_allowed_at)),
                    );
                    FailureNotice::Failing {
                        first_job: s.first_job,
                        last_job: s.last.id,
                        failures: s.failures,
                        dedup_key: doc.dedup_key.clone(),
                        alert_id: doc.alert_id.clone(),
                        payload,
                        receivers: receivers.clone(),
                    }
                }
                Notice::Resolved { first_job, by_job } => {
                    tracing::info!(
                        first_job,
                        by_job,
                        "Re-distillation works again after a failure streak."
                    );
                    FailureNotice::Resolved {
                        first_job: *first_job,
                        by_job: *by_job,
                        dedup_key: doc.dedup_key.clone(),
                        alert_id: doc.alert_id.clone(),
                        payload,
                        receivers: receivers.clone(),
                    }
                }
            }
        })
        .collect()
    })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn backoff(min: i64, max: i64) -> Backoff {
        Backoff {
            min_interval_ms: min,
            max_backoff_ms: max,
        }
    }

    #[test]
    fn the_interval_doubles_with_each_failure_up_to_the_cap() {
        let b = backoff(6 * HOUR, 7 * 24 * HOUR);
        let hours: Vec<i64> = (0..8).map(|n| b.interval_ms(n) / HOUR).collect();
        assert_eq!(hours, [6, 6, 12, 24, 48, 96, 168, 168]);
        assert_eq!(b.interval_ms(u32::MAX), 7 * 24 * HOUR);
        assert_eq!(b.next_allowed_ms(1_000, 3), 1_000 + 24 * HOUR);
        // The cap is never below the minimum interval, and no interval means no back-off.
        assert_eq!(backoff(1_000, 500).interval_ms(5), 1_000);
        assert_eq!(backoff(0, HOUR).interval_ms(10), 0);
        // A cap that is not a power-of-two multiple is reached exactly.
        let b = backoff(1_000, 3_000);
        let ms: Vec<i64> = (1..6).map(|n| b.interval_ms(n)).collect();
        assert_eq!(ms, [1_000, 2_000, 3_000, 3_000, 3_000]);
    }

    fn job(id: i64, status: &str) -> FinishedJob {
        FinishedJob {
            id,
            status: status.into(),
            started_at: id * 1_000,
            detail: format!("job {id} {status}\nmore"),
            dir: Some(format!("/w/job-{id}")),
        }
    }

    fn alerted(first_job: i64, resolved_job: Option<i64>) -> FailureAlertRow {
        FailureAlertRow {
            first_job,
            last_job: first_job + 1,
            failures: 2,
            alerted_at: 5,
            resolved_job,
        }
    }

    #[test]
    fn a_streak_is_the_failures_since_the_last_success() {
        assert_eq!(streak(&[]), None);
        assert_eq!(streak(&[job(1, "failed"), job(2, "succeeded")]), None);
        let s = streak(&[
            job(1, "failed"),
            job(2, "succeeded"),
            job(3, "timed_out"),
            job(4, "failed"),
        ])
        .expect("a streak");
        assert_eq!((s.first_job, s.failures, s.last.id), (3, 2, 4));
    }

    #[test]
    fn a_streak_is_announced_once_when_it_reaches_the_threshold() {
        let jobs = [job(1, "succeeded"), job(2, "failed")];
        let one = streak(&jobs);
        assert!(decide(one.as_ref(), Some(1), None, 2).is_empty());
        let jobs = [job(1, "succeeded"), job(2, "failed"), job(3, "failed")];
        let two = streak(&jobs).expect("streak");
        assert_eq!(
            decide(Some(&two), Some(1), None, 2),
            [Notice::Failing(two.clone())]
        );
        // Announced: more failures of the same streak say nothing more.
        let mut five = two.clone();
        five.failures = 5;
        assert!(decide(Some(&five), Some(1), Some(&alerted(2, None)), 2).is_empty());
        // 0 never announces; a threshold of 1 announces the first failure.
        assert!(decide(Some(&five), Some(1), None, 0).is_empty());
        let first = streak(&[job(2, "failed")]).expect("streak");
        assert_eq!(decide(Some(&first), None, None, 1).len(), 1);
        // An older streak that was announced and resolved does not silence a new one.
        assert_eq!(
            decide(Some(&two), Some(1), Some(&alerted(0, Some(1))), 2),
            [Notice::Failing(two)]
        );
    }

    #[test]
    fn a_success_resolves_the_announced_streak_once() {
        let resolved = Notice::Resolved {
            first_job: 2,
            by_job: 6,
        };
        assert_eq!(
            decide(None, Some(6), Some(&alerted(2, None)), 2),
            std::slice::from_ref(&resolved)
        );
        // Even with announcements switched off since.
        assert_eq!(
            decide(None, Some(6), Some(&alerted(2, None)), 0),
            [resolved]
        );
        assert!(decide(None, Some(6), Some(&alerted(2, Some(6))), 2).is_empty());
        // A success before the streak does not end it.
        assert!(decide(None, Some(1), Some(&alerted(2, None)), 2).is_empty());
        // A success missed in between, then a new streak: both are announced, in order.
        let new = streak(&[job(7, "failed"), job(8, "failed")]).expect("streak");
        let notices = decide(Some(&new), Some(6), Some(&alerted(2, None)), 2);
        assert!(matches!(notices[0], Notice::Resolved { by_job: 6, .. }));
        assert_eq!(notices[1], Notice::Failing(new));
    }

    #[test]
    fn the_failing_notification_says_what_failed_and_when_the_next_job_may_run() {
        let text = "state_dir = \"/var/lib/sensei\"\n[student]\npath = \"/s.onnx\"\n[teacher]\npath = \"/t.onnx\"\n\
                    [redistill]\nmin_interval = \"1h\"\nmax_backoff = \"3h\"\n";
        let config = Config::from_toml(text, std::path::Path::new("/etc/sensei.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let s = streak(&[job(3, "failed"), job(4, "failed"), job(5, "timed_out")]).unwrap();
        let doc = notification(&config, &Notice::Failing(s), None, 9_000);
        let f = doc.redistill.as_ref().expect("the streak");
        assert_eq!((f.failures, f.first_job, f.last_job), (3, 3, 5));
        assert_eq!(f.last_detail, "job 5 timed_out");
        assert_eq!(f.log.as_deref(), Some("/w/job-5/job.log"));
        assert_eq!(f.next_allowed_at, 5_000 + 3 * HOUR);
        assert_eq!(doc.dedup_key, "redistill-failing.job-3.1");
        assert_eq!(doc.rule, RULE);
        assert!(doc.firing());
        let text = doc.text();
        for needed in ["3 jobs in a row", "job 5", "timed_out", "/w/job-5/job.log"] {
            assert!(text.contains(needed), "{needed} missing in\n{text}");
        }
        assert!(
            doc.subject()
                .starts_with("[sensei] FIRING WARNING: re-distillation keeps failing: 3 jobs"),
            "{}",
            doc.subject()
        );
        let resolved = Notice::Resolved {
            first_job: 3,
            by_job: 9,
        };
        let done = notification(&config, &resolved, Some(&alerted(3, None)), 20_000);
        assert_eq!(done.dedup_key, "redistill-failing.job-3.2");
        assert_eq!(done.alert_id, doc.alert_id);
        assert_eq!(done.kind, Kind::Resolved);
        assert!(done.text().contains("job 9 succeeded"), "{}", done.text());
    }

    fn config_with_receivers(extra: &str) -> Config {
        let text = format!(
            "state_dir = \"/var/lib/sensei\"\n[student]\npath = \"/s.onnx\"\n[teacher]\npath = \"/t.onnx\"\n\
             [receivers.ops]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\
             [receivers.lines]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\
             [[rules]]\nname = \"drift\"\nreceivers = [\"lines\"]\naction = \"redistill\"\n\
             [redistill]\nmin_interval = \"1h\"\n{extra}"
        );
        Config::from_toml(&text, std::path::Path::new("/etc/sensei.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs one job to `status` through the store, as the job runner does.
    fn finish(store: &mut Store, status: &str, at: i64) -> i64 {
        let request = crate::store::JobRequest {
            trigger: "manual".into(),
            reason: "test".into(),
            action_id: None,
        };
        let b = Backoff::new(&config_with_receivers("").redistill);
        let crate::store::Enqueued::Queued { job } = store
            .enqueue_redistill_job(
                &request,
                |at, failures| b.next_allowed_ms(at, failures),
                true,
                at,
            )
            .unwrap()
        else {
            panic!("not queued");
        };
        assert!(store.start_redistill_job(job, 1, "/w", at).unwrap());
        store
            .finish_redistill_job(job, status, Some(1), "the command failed", at + 10)
            .unwrap();
        job
    }

    #[test]
    fn announcements_are_written_once_across_reopened_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sensei.db");
        // The default audience: the receivers of the rules that ask for re-distillation.
        let config = config_with_receivers("");
        assert_eq!(config.redistill.alert_receivers, ["lines"]);
        let outbox = |kind: &str| -> i64 {
            rusqlite::Connection::open(&path)
                .unwrap()
                .query_row(
                    "SELECT COUNT(*) FROM alert_outbox WHERE rule = ?1 AND kind = ?2",
                    [RULE, kind],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let mut store = Store::open(&path).unwrap();
        finish(&mut store, "succeeded", 1_000);
        finish(&mut store, "failed", 2_000);
        assert!(announce(&mut store, &config, 3_000).unwrap().is_empty());
        finish(&mut store, "timed_out", 4_000);
        assert_eq!(announce(&mut store, &config, 5_000).unwrap(), ["lines"]);
        // The back-off counts the streak: 2 failures, min_interval × 2 after the last start.
        let request = crate::store::JobRequest {
            trigger: "alert:drift".into(),
            reason: "test".into(),
            action_id: None,
        };
        let b = Backoff::new(&config.redistill);
        assert_eq!(
            store
                .enqueue_redistill_job(
                    &request,
                    |at, failures| b.next_allowed_ms(at, failures),
                    false,
                    6_000
                )
                .unwrap(),
            crate::store::Enqueued::TooSoon {
                last_job: 3,
                failures: 2,
                next_allowed_ms: 4_000 + 2 * HOUR,
            }
        );
        finish(&mut store, "failed", 7_000);
        drop(store);
        // As after a restart: a new connection finds the streak announced.
        let mut store = Store::open(&path).unwrap();
        assert!(announce(&mut store, &config, 8_000).unwrap().is_empty());
        assert_eq!((outbox("firing"), outbox("resolved")), (1, 0));
        let payload: String = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT payload FROM alert_outbox", [], |r| r.get(0))
            .unwrap();
        let doc: Notification = serde_json::from_str(&payload).unwrap();
        let f = doc.redistill.expect("streak");
        assert_eq!((f.failures, f.first_job, f.last_job), (2, 2, 3));
        assert_eq!(f.last_status, "timed_out");

        finish(&mut store, "succeeded", 9_000);
        assert_eq!(announce(&mut store, &config, 10_000).unwrap(), ["lines"]);
        assert!(announce(&mut store, &config, 11_000).unwrap().is_empty());
        assert_eq!((outbox("firing"), outbox("resolved")), (1, 1));
        // Explicit receivers replace the default.
        let ops = config_with_receivers("alert_receivers = [\"ops\"]\nalert_after_failures = 1\n");
        finish(&mut store, "failed", 12_000);
        assert_eq!(announce(&mut store, &ops, 13_000).unwrap(), ["ops"]);
    }
}
