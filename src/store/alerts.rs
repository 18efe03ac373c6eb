//! The alert tables (`migrations/0003_alerts.sql`): rule state, the outbox, requested actions,
//! and the read of `drift_events` the rules evaluate. Alerting has its own connection beside the
//! pipeline's writer (WAL lets them share the file): [`AlertDb`].
//!
//! The outbox guarantee rests on two transactions: an evaluation writes the new rule state, its
//! notifications and its actions together (a notification exists exactly when the state says it
//! was made), and a delivery marks one row sent after the receiver accepted it. A crash between
//! a receiver accepting and that mark is the only way a notification is sent twice, and the
//! repeat carries the same dedup key.
//!
//! The rows here are what the tables hold: a rule's state with its members as JSON, a
//! notification as its JSON payload. `crate::alert` turns them into its own types.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Result, StoreError};
use crate::time::{rfc3339_ms, rfc3339_ms_opt};

/// The alert evaluator's and delivery workers' connection.
pub struct AlertDb {
    conn: Connection,
}

/// One evaluation's transaction ([`AlertDb::transaction`]); its queries are [`AlertTx::tables`].
pub struct AlertTx<'a> {
    tx: Transaction<'a>,
}

/// The alert tables' queries, on a connection or inside an evaluation's transaction.
#[derive(Clone, Copy)]
pub struct AlertTables<'a> {
    conn: &'a Connection,
}

/// One row of `drift_events`, as alerting reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftEvent {
    #[serde(rename = "event_id")]
    pub id: i64,
    pub signal: String,
    pub segment: String,
    pub detector: String,
    #[serde(with = "rfc3339_ms")]
    pub detected_at: i64,
    pub detected_at_record: i64,
    pub estimated_change_record: Option<i64>,
    /// The time of the record where the change is estimated to start, while it is kept.
    #[serde(with = "rfc3339_ms_opt", default)]
    pub estimated_change_at: Option<i64>,
    pub statistic: f64,
    pub threshold: f64,
    pub baseline_value: Option<f64>,
    pub current_value: Option<f64>,
    pub current_low: Option<f64>,
    pub current_high: Option<f64>,
    pub p_value: Option<f64>,
    pub effect_size: Option<f64>,
    pub baseline_version: Option<i64>,
    #[serde(with = "rfc3339_ms_opt", default)]
    pub resolved_at: Option<i64>,
    /// Alarms counted on the event while it was open, the opening one included: a drift that
    /// follows a false alarm shows here.
    #[serde(default = "one")]
    pub alarms: i64,
    /// `records.seq` of the event's latest alarm.
    #[serde(default)]
    pub last_alarm_record: Option<i64>,
}

fn one() -> i64 {
    1
}

/// What sensei did about a drift, when the rule has an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionNote {
    /// `redistill`.
    pub action: String,
    /// `alert_actions.id`.
    pub id: i64,
    /// `requested`, then as the re-distillation loop moves it on: `started`, `skipped`, `done`,
    /// `failed`.
    pub status: String,
    /// The loop's note (job id, or why it was skipped).
    #[serde(default)]
    pub detail: Option<String>,
}

/// One `alert_state` row: a rule's alert as last evaluated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleStateRow {
    /// `inactive`, `pending`, `firing` or `resolved`.
    pub status: String,
    pub pending_since: Option<i64>,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    pub sent: i64,
    /// The members as last announced (JSON).
    pub members: String,
}

/// One outbox row ready to be sent.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub receiver: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    /// The notification document (JSON).
    pub payload: String,
}

/// A notification to enqueue: one outbox row per receiver.
pub struct NewNotification<'a> {
    pub receivers: &'a [String],
    pub dedup_key: &'a str,
    pub alert_id: &'a str,
    pub rule: &'a str,
    /// `firing`, `update`, `repeat`, `resolved`.
    pub kind: &'a str,
    /// The notification document (JSON).
    pub payload: String,
}

/// An action a rule requested.
pub struct NewAction<'a> {
    pub action: &'a str,
    pub rule: &'a str,
    pub alert_id: &'a str,
    pub drifts_json: String,
}

/// What one evaluation changes, committed together.
#[derive(Default)]
pub struct EvaluationCommit<'a> {
    pub states: Vec<(&'a str, RuleStateRow)>,
    pub notifications: Vec<NewNotification<'a>>,
    pub cursor: i64,
}

fn columns() -> &'static str {
    "e.id, e.signal, e.segment, e.detector, e.detected_at, e.detected_at_record,
     e.estimated_change_record,
     (SELECT r.ts FROM records r WHERE r.seq = e.estimated_change_record), e.statistic, e.threshold, e.baseline_value, e.current_value,
     e.current_low, e.current_high, e.p_value, e.effect_size, e.baseline_version, e.resolved_at,
     e.alarms, e.last_alarm_record"
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DriftEvent> {
    Ok(DriftEvent {
        id: r.get(0)?,
        signal: r.get(1)?,
        segment: r.get(2)?,
        detector: r.get(3)?,
        detected_at: r.get(4)?,
        detected_at_record: r.get(5)?,
        estimated_change_record: r.get(6)?,
        estimated_change_at: r.get(7)?,
        statistic: r.get(8)?,
        threshold: r.get(9)?,
        baseline_value: r.get(10)?,
        current_value: r.get(11)?,
        current_low: r.get(12)?,
        current_high: r.get(13)?,
        p_value: r.get(14)?,
        effect_size: r.get(15)?,
        baseline_version: r.get(16)?,
        resolved_at: r.get(17)?,
        alarms: r.get(18)?,
        last_alarm_record: r.get(19)?,
    })
}

impl AlertDb {
    /// Opens the database the daemon's store created and migrated.
    pub fn open(path: &Path) -> Result<AlertDb> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        // Copying the write-ahead log into the database is the store's checkpoint thread's
        // job; an evaluation's commit should not do it whenever the log has passed 1000 pages.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        Ok(AlertDb { conn })
    }

    /// Starts the transaction one evaluation reads and writes in (`IMMEDIATE`: the evaluation's
    /// reads and writes see one snapshot, and two daemons on one file cannot interleave).
    pub fn transaction(&mut self) -> Result<AlertTx<'_>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(AlertTx { tx })
    }

    /// The queries outside an evaluation (delivery, Alertmanager refresh).
    pub fn tables(&self) -> AlertTables<'_> {
        AlertTables { conn: &self.conn }
    }

    /// The oldest unsent notification of `receiver` (receivers get theirs in order, so a
    /// resolution never overtakes its firing).
    pub fn head(&self, receiver: &str) -> Result<Option<OutboxRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, attempts, next_attempt_at, payload FROM alert_outbox
                 WHERE receiver = ?1 AND status = 'pending' ORDER BY id LIMIT 1",
                [receiver],
                |r| {
                    Ok(OutboxRow {
                        id: r.get(0)?,
                        receiver: receiver.to_owned(),
                        attempts: r.get(1)?,
                        next_attempt_at: r.get(2)?,
                        payload: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn mark_sent(&self, id: i64, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE alert_outbox SET status = 'sent', sent_at = ?2, last_attempt_at = ?2,
                 attempts = attempts + 1, last_error = NULL
             WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    pub fn mark_failed(&self, id: i64, now: i64, error: &str, next_attempt_at: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE alert_outbox SET attempts = attempts + 1, last_attempt_at = ?2,
                 last_error = ?3, next_attempt_at = ?4
             WHERE id = ?1",
            params![id, now, error, next_attempt_at],
        )?;
        Ok(())
    }
}

impl AlertTx<'_> {
    /// The evaluation's queries, inside its transaction.
    pub fn tables(&self) -> AlertTables<'_> {
        AlertTables { conn: &self.tx }
    }

    pub fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
}

impl AlertTables<'_> {
    /// `(last_event_id, evaluated_at)`; `None` before the first evaluation.
    pub fn cursor(&self) -> Result<Option<(i64, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT last_event_id, evaluated_at FROM alert_cursor WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Open drift events and those above `after` (open or not), with the time of the record
    /// where the change is estimated to start while that record is kept.
    pub fn events(&self, after: i64) -> Result<Vec<DriftEvent>> {
        let sql = format!(
            // A record's time by its `seq` through the view's primary key; a join with the view
            // would make SQLite build the whole view first.
            "SELECT {} FROM drift_events e
                 WHERE e.resolved_at IS NULL OR e.id > ?1 ORDER BY e.id",
            columns()
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([after], event_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn max_event_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM drift_events", [], |r| {
                r.get(0)
            })?)
    }

    /// A rule's state; `None` before its first evaluation.
    pub fn rule_state(&self, rule: &str) -> Result<Option<RuleStateRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT status, pending_since, fired_at, resolved_at, last_sent_at, sent, members
                     FROM alert_state WHERE rule = ?1",
                [rule],
                |r| {
                    Ok(RuleStateRow {
                        status: r.get(0)?,
                        pending_since: r.get(1)?,
                        fired_at: r.get(2)?,
                        resolved_at: r.get(3)?,
                        last_sent_at: r.get(4)?,
                        sent: r.get(5)?,
                        members: r.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    /// Commits one evaluation: states, notifications (one outbox row per receiver) and the
    /// cursor.
    pub fn write_evaluation(&self, commit: &EvaluationCommit<'_>, now: i64) -> Result<()> {
        let mut upsert = self.conn.prepare_cached(
            "INSERT INTO alert_state (rule, status, pending_since, fired_at, resolved_at,
                                      last_sent_at, sent, members, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (rule) DO UPDATE SET status = excluded.status,
                 pending_since = excluded.pending_since, fired_at = excluded.fired_at,
                 resolved_at = excluded.resolved_at, last_sent_at = excluded.last_sent_at,
                 sent = excluded.sent, members = excluded.members,
                 updated_at = excluded.updated_at",
        )?;
        for (rule, s) in &commit.states {
            upsert.execute(params![
                rule,
                s.status,
                s.pending_since,
                s.fired_at,
                s.resolved_at,
                s.last_sent_at,
                s.sent,
                s.members,
                now
            ])?;
        }
        let mut ins = self.conn.prepare_cached(
            "INSERT INTO alert_outbox (dedup_key, alert_id, receiver, rule, kind, payload,
                                       created_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (dedup_key, receiver) DO NOTHING",
        )?;
        for n in &commit.notifications {
            for receiver in n.receivers {
                ins.execute(params![
                    n.dedup_key,
                    n.alert_id,
                    receiver,
                    n.rule,
                    n.kind,
                    n.payload,
                    now
                ])?;
            }
        }
        self.conn.execute(
            "INSERT INTO alert_cursor (id, last_event_id, evaluated_at) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET last_event_id = excluded.last_event_id,
                     evaluated_at = excluded.evaluated_at",
            params![commit.cursor, now],
        )?;
        Ok(())
    }

    /// Records an action a rule requested (once per alert episode); returns its id.
    pub fn request_action(&self, a: &NewAction<'_>, now: i64) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO alert_actions (action, rule, alert_id, requested_at, drifts, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?4)
                 ON CONFLICT (alert_id, action) DO NOTHING",
            params![a.action, a.rule, a.alert_id, now, a.drifts_json],
        )?;
        Ok(self.conn.query_row(
            "SELECT id FROM alert_actions WHERE alert_id = ?1 AND action = ?2",
            params![a.alert_id, a.action],
            |r| r.get(0),
        )?)
    }

    /// The action an alert episode requested, as it stands now.
    pub fn action_of(&self, alert_id: &str) -> Result<Option<ActionNote>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, action, status, detail FROM alert_actions WHERE alert_id = ?1 ORDER BY id LIMIT 1",
                [alert_id],
                |r| {
                    Ok(ActionNote {
                        id: r.get(0)?,
                        action: r.get(1)?,
                        status: r.get(2)?,
                        detail: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Alerts of rules no longer in the config stop counting as pending or firing (silently:
    /// their receivers may be gone too). Returns how many.
    pub fn retire_unconfigured(&self, rules: &[&str], now: i64) -> Result<usize> {
        let names = serde_json::to_string(rules).unwrap_or_else(|_| "[]".into());
        Ok(self.conn.execute(
            "UPDATE alert_state SET status = 'inactive', pending_since = NULL, updated_at = ?2
             WHERE status IN ('pending', 'firing')
               AND rule NOT IN (SELECT value FROM json_each(?1))",
            params![names, now],
        )?)
    }

    /// Receivers with a notification due now. Not only the evaluator writes the outbox (the
    /// re-distillation loop does, from the daemon or from `sensei redistill`), so the delivery
    /// workers are woken for whatever is due, whoever wrote it.
    pub fn due_receivers(&self, now: i64) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT receiver FROM alert_outbox WHERE status = 'pending' AND next_attempt_at <= ?1",
        )?;
        let rows = stmt.query_map([now], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The payloads of the firing notifications of failure streaks of re-distillation that are
    /// not over yet, delivered to `receiver` (for Alertmanager, which must be told again that
    /// they still fire).
    pub fn open_redistill_failures(&self, receiver: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.payload FROM alert_outbox o
               JOIN redistill_failure_alerts f ON o.alert_id = 'redistill-failing.job-' || f.first_job
             WHERE f.resolved_job IS NULL AND o.receiver = ?1 AND o.kind = 'firing'
               AND o.status = 'sent'
             ORDER BY o.id",
        )?;
        let rows = stmt.query_map([receiver], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Rules whose alert is firing now.
    pub fn firing(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT rule FROM alert_state WHERE status = 'firing'")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The outbox per receiver, for `sensei status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxSummary {
    pub receivers: Vec<ReceiverOutbox>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReceiverOutbox {
    pub receiver: String,
    pub sent: i64,
    /// Not delivered yet (new, or failing and being retried).
    pub pending: i64,
    /// Of those, how many have failed at least once.
    pub failing: i64,
    /// Creation time (unix ms) of the oldest undelivered notification.
    pub oldest_pending_at: Option<i64>,
    pub last_error: Option<String>,
    /// The most attempts any undelivered notification has had.
    pub max_attempts: i64,
}

/// Summarises the outbox of the database at `path` (read-only; an older database without the
/// alert tables reads as empty).
pub fn outbox_summary(path: &Path) -> Result<OutboxSummary> {
    let open_err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(open_err)?;
    outbox_summary_conn(&conn)
}

fn outbox_summary_conn(conn: &Connection) -> Result<OutboxSummary> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alert_outbox')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(OutboxSummary::default());
    }
    let mut stmt = conn.prepare(
        "SELECT receiver,
                SUM(status = 'sent'),
                SUM(status = 'pending'),
                SUM(status = 'pending' AND attempts > 0),
                MIN(CASE WHEN status = 'pending' THEN created_at END),
                MAX(CASE WHEN status = 'pending' THEN attempts ELSE 0 END),
                (SELECT last_error FROM alert_outbox o2
                  WHERE o2.receiver = o.receiver AND o2.status = 'pending'
                        AND o2.last_error IS NOT NULL
                  ORDER BY o2.last_attempt_at DESC LIMIT 1)
         FROM alert_outbox o GROUP BY receiver ORDER BY receiver",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ReceiverOutbox {
            receiver: r.get(0)?,
            sent: r.get(1)?,
            pending: r.get(2)?,
            failing: r.get(3)?,
            oldest_pending_at: r.get(4)?,
            max_attempts: r.get(5)?,
            last_error: r.get(6)?,
        })
    })?;
    Ok(OutboxSummary {
        receivers: rows.collect::<rusqlite::Result<_>>()?,
    })
}

impl OutboxSummary {
    /// Lines for `sensei status`: one per receiver, undelivered ones stated plainly.
    pub fn text(&self, now: i64) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        if self.receivers.is_empty() {
            s.push_str("alert outbox: empty\n");
            return s;
        }
        s.push_str("alert outbox:\n");
        for r in &self.receivers {
            let _ = write!(
                s,
                "  {:<20} sent {:>5}   pending {:>4}",
                r.receiver, r.sent, r.pending
            );
            if r.failing > 0 {
                let age = r.oldest_pending_at.map_or(0, |t| (now - t).max(0) / 1000);
                let _ = write!(
                    s,
                    "   UNDELIVERED: {} failing, oldest {}s old, {} attempts; last error: {}",
                    r.failing,
                    age,
                    r.max_attempts,
                    r.last_error.as_deref().unwrap_or("?")
                );
            }
            s.push('\n');
        }
        s
    }
}
