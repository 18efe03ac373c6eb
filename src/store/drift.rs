//! Baselines, detector state and drift events (`baselines`, `detector_state`, `drift_events`).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{Reader, Result, Store, finite, write_transaction};

/// The drift event of a teacher whose inference server is out of reach.
pub const TEACHER_UNREACHABLE_SIGNAL: &str = "teacher_unreachable";
pub const TEACHER_UNREACHABLE_DETECTOR: &str = "circuit_breaker";

/// Writes a drift monitor's changes: new events, resolutions, detector states.
pub(super) fn write_delta(
    tx: &Transaction<'_>,
    version: i64,
    delta: &MonitorDelta,
    now_ms: i64,
) -> Result<()> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO drift_events (signal, segment, detector, detected_at, detected_at_record,
            estimated_change_record, statistic, threshold, baseline_value, current_value, current_low,
            current_high, p_value, effect_size, baseline_version, alarms, last_alarm_at,
            last_alarm_record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 1, ?4, ?5)",
    )?;
    let mut alarm = tx.prepare_cached(
        "INSERT INTO drift_alarms (event_id, detected_at, detected_at_record,
            estimated_change_record, statistic, threshold, current_value, p_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut open_event = tx.prepare_cached(
        "SELECT id FROM drift_events
         WHERE signal = ?1 AND segment = ?2 AND detector = ?3 AND resolved_at IS NULL
         ORDER BY id DESC LIMIT 1",
    )?;
    let mut count = tx.prepare_cached(
        "UPDATE drift_events SET alarms = alarms + 1, last_alarm_at = ?2, last_alarm_record = ?3
         WHERE id = ?1",
    )?;
    let mut resolve = tx.prepare_cached(
        "UPDATE drift_events SET resolved_at = ?4
         WHERE signal = ?1 AND segment = ?2 AND detector = ?3 AND resolved_at IS NULL",
    )?;
    // In order: an event may open, resolve and open again within one file.
    for change in &delta.changes {
        let e = match change {
            EventChange::Resolve {
                signal,
                segment,
                detector,
            } => {
                resolve.execute(params![signal, segment, detector, now_ms])?;
                continue;
            }
            EventChange::Open(e) | EventChange::Repeat(e) => e,
        };
        let open: Option<i64> = match change {
            EventChange::Repeat(_) => open_event
                .query_row(params![e.signal, e.segment, e.detector], |r| r.get(0))
                .optional()?,
            _ => None,
        };
        let event_id = match open {
            Some(id) => {
                count.execute(params![id, e.detected_at_ms, e.detected_at_record])?;
                id
            }
            // A repeat whose event is not in the database (it was opened before every alarm
            // was stored) opens one.
            None => {
                ins.execute(params![
                    e.signal,
                    e.segment,
                    e.detector,
                    e.detected_at_ms,
                    e.detected_at_record,
                    e.estimated_change_record,
                    finite(e.statistic),
                    finite(e.threshold),
                    e.baseline_value.map(finite),
                    e.current_value.map(finite),
                    e.current_low.map(finite),
                    e.current_high.map(finite),
                    e.p_value.map(finite),
                    e.effect_size.map(finite),
                    version,
                ])?;
                tx.last_insert_rowid()
            }
        };
        alarm.execute(params![
            event_id,
            e.detected_at_ms,
            e.detected_at_record,
            e.estimated_change_record,
            finite(e.statistic),
            finite(e.threshold),
            e.current_value.map(finite),
            e.p_value.map(finite),
        ])?;
    }
    let mut state = tx.prepare_cached(
        "INSERT INTO detector_state (signal, segment, detector, baseline_version, samples, statistic,
            threshold, state, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (signal, segment, detector) DO UPDATE SET baseline_version = excluded.baseline_version,
            samples = excluded.samples, statistic = excluded.statistic, threshold = excluded.threshold,
            state = excluded.state, updated_at = excluded.updated_at",
    )?;
    for ((signal, segment, detector), row) in &delta.states {
        state.execute(params![
            signal,
            segment,
            detector,
            version,
            row.samples as i64,
            finite(row.statistic),
            finite(row.threshold),
            row.json,
            now_ms
        ])?;
    }
    Ok(())
}

/// One stored baseline version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineRow {
    pub version: i64,
    pub created_at: i64,
    pub active: bool,
    pub student: String,
    pub teacher: String,
    pub records: i64,
    #[serde(skip)]
    pub profile: String,
}

/// A drift event as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftEventRow {
    pub id: i64,
    pub signal: String,
    pub segment: String,
    pub detector: String,
    pub detected_at: i64,
    pub detected_at_record: i64,
    pub estimated_change_record: Option<i64>,
    pub statistic: f64,
    pub threshold: f64,
    pub baseline_value: Option<f64>,
    pub current_value: Option<f64>,
    pub current_low: Option<f64>,
    pub current_high: Option<f64>,
    pub p_value: Option<f64>,
    pub effect_size: Option<f64>,
    pub resolved_at: Option<i64>,
    /// Alarms counted on the event, the opening one included (`drift_alarms`).
    pub alarms: i64,
    /// `records.seq` of its latest alarm.
    pub last_alarm_record: Option<i64>,
}

/// A detector's current standing, for status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorRow {
    pub signal: String,
    pub segment: String,
    pub detector: String,
    pub samples: i64,
    pub statistic: f64,
    pub threshold: f64,
}

pub(super) fn active_baseline(conn: &Connection) -> Result<Option<BaselineRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT version, created_at, active, student, teacher, records, profile
             FROM baselines WHERE active = 1",
        )?
        .query_row([], |r| {
            Ok(BaselineRow {
                version: r.get(0)?,
                created_at: r.get(1)?,
                active: r.get::<_, i64>(2)? == 1,
                student: r.get(3)?,
                teacher: r.get(4)?,
                records: r.get(5)?,
                profile: r.get(6)?,
            })
        })
        .optional()?)
}

pub(super) fn recent_events(conn: &Connection, limit: i64) -> Result<Vec<DriftEventRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, signal, segment, detector, detected_at, detected_at_record, estimated_change_record,
                statistic, threshold, baseline_value, current_value, current_low, current_high, p_value,
                effect_size, resolved_at, alarms, last_alarm_record
         FROM drift_events ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(DriftEventRow {
            id: r.get(0)?,
            signal: r.get(1)?,
            segment: r.get(2)?,
            detector: r.get(3)?,
            detected_at: r.get(4)?,
            detected_at_record: r.get(5)?,
            estimated_change_record: r.get(6)?,
            statistic: r.get(7)?,
            threshold: r.get(8)?,
            baseline_value: r.get(9)?,
            current_value: r.get(10)?,
            current_low: r.get(11)?,
            current_high: r.get(12)?,
            p_value: r.get(13)?,
            effect_size: r.get(14)?,
            resolved_at: r.get(15)?,
            alarms: r.get(16)?,
            last_alarm_record: r.get(17)?,
        })
    })?;
    let mut out: Vec<DriftEventRow> = rows.collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

pub(super) fn detectors(conn: &Connection) -> Result<Vec<DetectorRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.signal, d.segment, d.detector, d.samples, d.statistic, d.threshold
         FROM detector_state d JOIN baselines b ON b.version = d.baseline_version AND b.active = 1
         WHERE d.detector NOT IN ('window', 'budget')
         ORDER BY d.signal, d.segment, d.detector",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DetectorRow {
            signal: r.get(0)?,
            segment: r.get(1)?,
            detector: r.get(2)?,
            samples: r.get(3)?,
            statistic: r.get(4)?,
            threshold: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A rule's alert that is firing, for status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FiringAlert {
    pub rule: String,
    pub fired_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    /// Notifications of the episode so far.
    pub sent: i64,
    /// Drifts (signal × segment × detector) in the alert.
    pub members: i64,
}

/// Drift events of one signal and segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftEventCount {
    pub signal: String,
    pub segment: String,
    pub total: i64,
    pub open: i64,
}

impl Store {
    /// Stores a new baseline version and makes it the active one.
    pub fn insert_baseline(
        &mut self,
        student: &str,
        teacher: &str,
        records: i64,
        sources: &str,
        profile: &str,
        now_ms: i64,
    ) -> Result<i64> {
        let tx = write_transaction(&mut self.conn)?;
        tx.execute("UPDATE baselines SET active = 0 WHERE active = 1", [])?;
        tx.execute(
            "INSERT INTO baselines (created_at, active, student, teacher, records, sources, profile)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6)",
            params![now_ms, student, teacher, records, sources, profile],
        )?;
        let version = tx.last_insert_rowid();
        tx.commit()?;
        Ok(version)
    }

    /// The teacher's inference server went out of reach (`out_of_reach`, its circuit breaker
    /// opened after `failures` batches in a row) or answered again: opens, or resolves, the
    /// drift event `teacher_unreachable` on all segments (`*`), detector `circuit_breaker`, that
    /// alert rules select like any other. At most one is open; opening it again while open
    /// changes nothing, so `for` counts from the first time.
    pub fn teacher_reach(
        &mut self,
        out_of_reach: bool,
        failures: u32,
        breaker_after: u32,
        at_ms: i64,
    ) -> Result<()> {
        let tx = write_transaction(&mut self.conn)?;
        if out_of_reach {
            tx.execute(
                "INSERT INTO drift_events (signal, segment, detector, detected_at, detected_at_record,
                    statistic, threshold, alarms, last_alarm_at, last_alarm_record)
                 SELECT ?1, '*', ?2, ?3, r.seq, ?4, ?5, 1, ?3, r.seq
                 FROM (SELECT COALESCE(MAX(seq), 0) AS seq FROM records) r
                 WHERE NOT EXISTS (SELECT 1 FROM drift_events
                     WHERE signal = ?1 AND segment = '*' AND detector = ?2 AND resolved_at IS NULL)",
                params![
                    TEACHER_UNREACHABLE_SIGNAL,
                    TEACHER_UNREACHABLE_DETECTOR,
                    at_ms,
                    f64::from(failures),
                    f64::from(breaker_after)
                ],
            )?;
        } else {
            tx.execute(
                "UPDATE drift_events SET resolved_at = ?3
                 WHERE signal = ?1 AND segment = '*' AND detector = ?2 AND resolved_at IS NULL",
                params![
                    TEACHER_UNREACHABLE_SIGNAL,
                    TEACHER_UNREACHABLE_DETECTOR,
                    at_ms
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn active_baseline(&self) -> Result<Option<BaselineRow>> {
        active_baseline(&self.conn)
    }

    /// Persisted detector states of a baseline version: (signal, segment, detector, json).
    pub fn detector_states(&self, version: i64) -> Result<Vec<(String, String, String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT signal, segment, detector, state FROM detector_state WHERE baseline_version = ?1",
        )?;
        let rows = stmt.query_map([version], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Reader {
    pub fn active_baseline(&self) -> Result<Option<BaselineRow>> {
        active_baseline(&self.conn)
    }

    /// The latest `limit` drift events, oldest first.
    pub fn recent_events(&self, limit: i64) -> Result<Vec<DriftEventRow>> {
        recent_events(&self.conn, limit)
    }

    /// Every detector of the active baseline with its statistic and threshold.
    pub fn detectors(&self) -> Result<Vec<DetectorRow>> {
        detectors(&self.conn)
    }

    /// Drift events not yet resolved.
    pub fn open_events(&self) -> Result<Vec<DriftEventRow>> {
        Ok(recent_events(&self.conn, i64::MAX)?
            .into_iter()
            .filter(|e| e.resolved_at.is_none())
            .collect())
    }

    /// Every drift event, and those not yet resolved.
    pub fn drift_event_totals(&self) -> Result<(i64, i64)> {
        if !self.table_exists("drift_events")? {
            return Ok((0, 0));
        }
        Ok(self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(resolved_at IS NULL), 0) FROM drift_events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// The alerts firing now, the latest to fire first.
    pub fn firing_alerts(&self) -> Result<Vec<FiringAlert>> {
        if !self.table_exists("alert_state")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT rule, fired_at, last_sent_at, sent, json_array_length(members)
             FROM alert_state WHERE status = 'firing' ORDER BY fired_at DESC, rule",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(FiringAlert {
                rule: r.get(0)?,
                fired_at: r.get(1)?,
                last_sent_at: r.get(2)?,
                sent: r.get(3)?,
                members: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drift events per signal and segment: all, and those not yet resolved.
    pub fn drift_event_counts(&self) -> Result<Vec<DriftEventCount>> {
        if !self.table_exists("drift_events")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT signal, segment, COUNT(*), SUM(resolved_at IS NULL)
             FROM drift_events GROUP BY signal, segment ORDER BY signal, segment",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DriftEventCount {
                signal: r.get(0)?,
                segment: r.get(1)?,
                total: r.get(2)?,
                open: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drift events detected at or after `since_ms`, newest first, at most `limit`.
    pub fn drift_events_since(&self, since_ms: i64, limit: i64) -> Result<Vec<DriftEventRow>> {
        if !self.table_exists("drift_events")? {
            return Ok(Vec::new());
        }
        let mut events = self.recent_events(limit.max(0))?;
        events.retain(|e| e.detected_at >= since_ms);
        events.sort_by_key(|e| std::cmp::Reverse(e.id));
        Ok(events)
    }
}

/// A drift event on its way to the database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    pub signal: String,
    pub segment: String,
    pub detector: &'static str,
    pub detected_at_ms: i64,
    pub detected_at_record: i64,
    pub estimated_change_record: Option<i64>,
    pub statistic: f64,
    pub threshold: f64,
    pub baseline_value: Option<f64>,
    pub current_value: Option<f64>,
    pub current_low: Option<f64>,
    pub current_high: Option<f64>,
    pub p_value: Option<f64>,
    pub effect_size: Option<f64>,
}

/// One change to the drift events, in the order the detectors saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum EventChange {
    /// An alarm of a detector with no open event: a new drift event (and its first alarm).
    Open(NewEvent),
    /// An alarm while the detector's event is open: one more alarm counted on that event.
    Repeat(NewEvent),
    /// The detector is back in control: its open event resolves.
    Resolve {
        signal: String,
        segment: String,
        detector: &'static str,
    },
}

/// What one batch of observations changed: events opened, alarms, events resolved, and the
/// detector states to persist.
#[derive(Debug, Default)]
pub struct MonitorDelta {
    pub changes: Vec<EventChange>,
    /// (signal, segment, detector) → its state.
    pub states: BTreeMap<StateKey, StateRow>,
}

impl MonitorDelta {
    /// The events this batch opened.
    pub fn opened(&self) -> impl Iterator<Item = &NewEvent> {
        self.changes.iter().filter_map(|c| match c {
            EventChange::Open(e) => Some(e),
            _ => None,
        })
    }
}

/// (signal, segment, detector).
pub type StateKey = (String, String, String);

/// One detector's persisted state (`detector_state`).
#[derive(Debug, Clone, PartialEq)]
pub struct StateRow {
    pub samples: u64,
    pub statistic: f64,
    pub threshold: f64,
    pub json: String,
}
