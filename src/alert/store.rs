//! The alert tables (`migrations/0003_alerts.sql`): rule state, the outbox, requested actions,
//! and the read of `drift_events`. Alerting has its own connection beside the pipeline's writer
//! (WAL lets them share the file), so these queries live here, next to their only user.
//!
//! The outbox guarantee rests on two transactions: an evaluation writes the new rule state, its
//! notifications and its actions together (a notification exists exactly when the state says it
//! was made), and a delivery marks one row sent after the receiver accepted it. A crash between
//! a receiver accepting and that mark is the only way a notification is sent twice, and the
//! repeat carries the same dedup key.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::notification::{ActionNote, Notification};
use super::rule::{DriftEvent, GroupState, Status};

pub struct AlertDb {
    conn: Connection,
}

/// One outbox row ready to be sent.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub receiver: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub notification: Notification,
}

/// A notification to enqueue, per receiver.
pub struct NewNotification<'a> {
    pub receivers: &'a [String],
    pub notification: &'a Notification,
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
    pub states: Vec<(&'a str, GroupState)>,
    pub notifications: Vec<NewNotification<'a>>,
    pub cursor: i64,
}

fn columns() -> &'static str {
    "e.id, e.signal, e.segment, e.detector, e.detected_at, e.detected_at_record,
     e.estimated_change_record, r.ts, e.statistic, e.threshold, e.baseline_value, e.current_value,
     e.current_low, e.current_high, e.p_value, e.effect_size, e.baseline_version, e.resolved_at"
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
    })
}

fn json_error(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

impl AlertDb {
    /// Opens the database the daemon's store created and migrated.
    pub fn open(path: &Path) -> rusqlite::Result<AlertDb> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Copying the write-ahead log into the database is the store's checkpoint thread's
        // job; an evaluation's commit should not do it whenever the log has passed 1000 pages.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(AlertDb { conn })
    }

    /// Starts the transaction one evaluation reads and writes in (`IMMEDIATE`: the evaluation's
    /// reads and writes see one snapshot, and two daemons on one file cannot interleave).
    pub fn transaction(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// `(last_event_id, evaluated_at)`; `None` before the first evaluation.
pub fn cursor(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.query_row(
        "SELECT last_event_id, evaluated_at FROM alert_cursor WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Open drift events and those above `after` (open or not), with the time of the record
/// where the change is estimated to start while that record is kept.
pub fn events(conn: &Connection, after: i64) -> rusqlite::Result<Vec<DriftEvent>> {
    let sql = format!(
        "SELECT {} FROM drift_events e LEFT JOIN records r ON r.seq = e.estimated_change_record
             WHERE e.resolved_at IS NULL OR e.id > ?1 ORDER BY e.id",
        columns()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([after], event_row)?;
    rows.collect()
}

pub fn max_event_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM drift_events", [], |r| {
        r.get(0)
    })
}

pub fn state(conn: &Connection, rule: &str) -> rusqlite::Result<GroupState> {
    let row = conn
        .query_row(
            "SELECT status, pending_since, fired_at, resolved_at, last_sent_at, sent, members
                 FROM alert_state WHERE rule = ?1",
            [rule],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get::<_, String>(6)?,
                ))
            },
        )
        .optional()?;
    let Some((status, pending_since, fired_at, resolved_at, last_sent_at, sent, members)) = row
    else {
        return Ok(GroupState::default());
    };
    Ok(GroupState {
        status: Status::parse(&status),
        pending_since,
        fired_at,
        resolved_at,
        last_sent_at,
        sent,
        members: serde_json::from_str(&members).unwrap_or_default(),
    })
}

/// Commits one evaluation: states, notifications (one outbox row per receiver), requested
/// actions, and the cursor. Returns the ids of the actions created.
pub fn write_evaluation(
    tx: &Connection,
    commit: &EvaluationCommit<'_>,
    now: i64,
) -> rusqlite::Result<()> {
    {
        let mut upsert = tx.prepare_cached(
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
            let members = serde_json::to_string(&s.members).map_err(json_error)?;
            upsert.execute(params![
                rule,
                s.status.as_str(),
                s.pending_since,
                s.fired_at,
                s.resolved_at,
                s.last_sent_at,
                s.sent,
                members,
                now
            ])?;
        }
        let mut ins = tx.prepare_cached(
            "INSERT INTO alert_outbox (dedup_key, alert_id, receiver, rule, kind, payload,
                                           created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (dedup_key, receiver) DO NOTHING",
        )?;
        for n in &commit.notifications {
            let doc = n.notification;
            let payload = serde_json::to_string(doc).map_err(json_error)?;
            for receiver in n.receivers {
                ins.execute(params![
                    doc.dedup_key,
                    doc.alert_id,
                    receiver,
                    doc.rule,
                    doc.kind.as_str(),
                    payload,
                    now
                ])?;
            }
        }
        tx.execute(
            "INSERT INTO alert_cursor (id, last_event_id, evaluated_at) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET last_event_id = excluded.last_event_id,
                     evaluated_at = excluded.evaluated_at",
            params![commit.cursor, now],
        )?;
    }
    Ok(())
}

/// Records an action a rule requested (once per alert episode); returns its id.
pub fn request_action(tx: &Connection, a: &NewAction<'_>, now: i64) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO alert_actions (action, rule, alert_id, requested_at, drifts, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?4)
             ON CONFLICT (alert_id, action) DO NOTHING",
        params![a.action, a.rule, a.alert_id, now, a.drifts_json],
    )?;
    tx.query_row(
        "SELECT id FROM alert_actions WHERE alert_id = ?1 AND action = ?2",
        params![a.alert_id, a.action],
        |r| r.get(0),
    )
}

/// The action an alert episode requested, as it stands now.
pub fn action_of(conn: &Connection, alert_id: &str) -> rusqlite::Result<Option<ActionNote>> {
    conn.query_row(
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
    .optional()
}

/// Alerts of rules no longer in the config stop counting as pending or firing (silently:
/// their receivers may be gone too). Returns how many.
pub fn retire_unconfigured(tx: &Connection, rules: &[&str], now: i64) -> rusqlite::Result<usize> {
    let names = serde_json::to_string(rules).map_err(json_error)?;
    tx.execute(
        "UPDATE alert_state SET status = 'inactive', pending_since = NULL, updated_at = ?2
         WHERE status IN ('pending', 'firing')
           AND rule NOT IN (SELECT value FROM json_each(?1))",
        params![names, now],
    )
}

/// Receivers with a notification due now. Not only the evaluator writes the outbox (the
/// re-distillation loop does, from the daemon or from `sensei redistill`), so the delivery
/// workers are woken for whatever is due, whoever wrote it.
pub fn due_receivers(conn: &Connection, now: i64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT receiver FROM alert_outbox WHERE status = 'pending' AND next_attempt_at <= ?1",
    )?;
    let rows = stmt.query_map([now], |r| r.get(0))?;
    rows.collect()
}

/// The firing notifications of failure streaks of re-distillation that are not over yet,
/// delivered to `receiver` (for Alertmanager, which must be told again that they still fire).
pub fn open_redistill_failures(
    conn: &Connection,
    receiver: &str,
) -> rusqlite::Result<Vec<Notification>> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.payload FROM alert_outbox o
           JOIN redistill_failure_alerts f ON o.alert_id = 'redistill-failing.job-' || f.first_job
         WHERE f.resolved_job IS NULL AND o.receiver = ?1 AND o.kind = 'firing'
           AND o.status = 'sent'
         ORDER BY o.id",
    )?;
    let rows = stmt.query_map([receiver], |r| r.get::<_, String>(0))?;
    let mut docs = Vec::new();
    for payload in rows {
        match serde_json::from_str(&payload?) {
            Ok(doc) => docs.push(doc),
            Err(e) => tracing::debug!(receiver, error = %e, "An outbox payload does not parse."),
        }
    }
    Ok(docs)
}

/// Rules whose alert is firing now.
pub fn firing(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT rule FROM alert_state WHERE status = 'firing'")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

impl AlertDb {
    /// The oldest unsent notification of `receiver` (receivers get theirs in order, so a
    /// resolution never overtakes its firing).
    pub fn head(&self, receiver: &str) -> rusqlite::Result<Option<Pending>> {
        let row = self
            .conn
            .query_row(
                "SELECT id, attempts, next_attempt_at, payload FROM alert_outbox
                 WHERE receiver = ?1 AND status = 'pending' ORDER BY id LIMIT 1",
                [receiver],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, attempts, next_attempt_at, payload)) = row else {
            return Ok(None);
        };
        let notification = serde_json::from_str(&payload).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok(Some(Pending {
            id,
            receiver: receiver.to_owned(),
            attempts,
            next_attempt_at,
            notification,
        }))
    }

    pub fn mark_sent(&self, id: i64, now: i64) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE alert_outbox SET status = 'sent', sent_at = ?2, last_attempt_at = ?2,
                 attempts = attempts + 1, last_error = NULL
             WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    pub fn mark_failed(
        &self,
        id: i64,
        now: i64,
        error: &str,
        next_attempt_at: i64,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE alert_outbox SET attempts = attempts + 1, last_attempt_at = ?2,
                 last_error = ?3, next_attempt_at = ?4
             WHERE id = ?1",
            params![id, now, error, next_attempt_at],
        )?;
        Ok(())
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
pub fn outbox_summary(path: &Path) -> rusqlite::Result<OutboxSummary> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    outbox_summary_conn(&conn)
}

/// [`outbox_summary`] on an open connection.
pub fn outbox_summary_conn(conn: &Connection) -> rusqlite::Result<OutboxSummary> {
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
