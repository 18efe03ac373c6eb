//! The read-only [`Reader`] for everyone beside the writer (ingest's ledger check, `sensei
//! status`, `/metrics`, the dashboard), and the summary of files, records and segments.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::{Result, Store, StoreError};
use crate::record::ALL_SEGMENTS;

/// A read-only connection for readers beside the running writer.
pub struct Reader {
    pub(super) conn: Connection,
}

/// Alert state, once the alert tables exist.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertCounts {
    pub firing: i64,
    /// Notifications not yet delivered (`None` while the outbox table does not exist).
    pub outbox_backlog: Option<i64>,
}

/// A student/teacher pair seen in the teacher samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersion {
    pub student: String,
    pub teacher: String,
    pub teacher_samples: i64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub mean_teacher_latency_us: Option<f64>,
}

/// Totals for `sensei status`, `replay` and `demo`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub files_done: i64,
    pub files_quarantined: i64,
    pub files_duplicate: i64,
    pub records: i64,
    pub teacher_samples: i64,
    pub skipped_budget: i64,
    pub skipped_queue: i64,
    /// Sampled records the teacher on an inference server could not answer
    /// (`records.sampled` = 5).
    pub skipped_unreachable: i64,
    /// Sampled records the teacher failed on (`records.sampled` = 4): a local run's error, or
    /// an inference server's error answer or one sensei refused.
    pub skipped_failed: i64,
    /// Records left out because their id was counted before (`files.duplicates` of record
    /// files).
    pub records_duplicate: i64,
    /// Late labels that changed nothing (the record had that label, or a later one), and those
    /// that replaced a different label.
    pub labels_unchanged: i64,
    pub labels_corrected: i64,
    /// Segment values cut to `[segments] max_value_bytes` (`files.segment_values_cut`).
    pub segment_values_cut: i64,
    pub segments: Vec<SegmentSummary>,
}

/// Teacher-comparison totals of one segment (or `*` for all).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SegmentSummary {
    pub segment: String,
    pub records: i64,
    pub teacher_samples: i64,
    /// Sum of the samples' inverse-probability weights.
    pub weight_sum: f64,
    /// Sum of squared weights (for the effective sample size of weighted estimates).
    pub weight_sq_sum: f64,
    /// Weighted disagreement rate (classification).
    pub disagreement: Option<f64>,
    pub kl_mean: Option<f64>,
    pub attention_kl_mean: Option<f64>,
    pub mean_confidence: Option<f64>,
}

fn summary(conn: &Connection) -> Result<Summary> {
    let mut s = Summary::default();
    {
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM files GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (status, n) = row?;
            match status.as_str() {
                "done" => s.files_done = n,
                "quarantined" => s.files_quarantined = n,
                "duplicate" => s.files_duplicate = n,
                _ => {}
            }
        }
    }
    // Columns of a later migration: a database not migrated yet reads as none.
    let (duplicate, unchanged, corrected): (i64, i64, i64) = conn
        .query_row(
            "SELECT COALESCE(SUM(CASE WHEN kind != 'labels' THEN duplicates END), 0),
                    COALESCE(SUM(CASE WHEN kind = 'labels' THEN duplicates END), 0),
                    COALESCE(SUM(conflicts), 0)
             FROM files WHERE status = 'done'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap_or((0, 0, 0));
    s.records_duplicate = duplicate;
    s.labels_unchanged = unchanged;
    s.labels_corrected = corrected;
    s.segment_values_cut = conn
        .query_row(
            "SELECT COALESCE(SUM(segment_values_cut), 0) FROM files WHERE status = 'done'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    // Totals come from the window sums, which retention never deletes.
    let (records, samples, budget, queue, unreachable, failed): (i64, i64, i64, i64, i64, i64) =
        conn.query_row(
            "SELECT COALESCE(SUM(records), 0), COALESCE(SUM(teacher_samples), 0),
                COALESCE(SUM(skipped_budget), 0), COALESCE(SUM(skipped_queue), 0),
                COALESCE(SUM(skipped_unreachable), 0), COALESCE(SUM(skipped_failed), 0)
         FROM windows WHERE segment = ?1",
            [ALL_SEGMENTS],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?;
    s.records = records;
    s.teacher_samples = samples;
    s.skipped_budget = budget;
    s.skipped_queue = queue;
    s.skipped_unreachable = unreachable;
    s.skipped_failed = failed;
    let mut stmt = conn.prepare(
        "SELECT w.segment, SUM(w.records), SUM(w.teacher_samples), SUM(w.weight_sum),
                SUM(w.disagreement_wsum) / NULLIF(SUM(w.weight_sum), 0),
                SUM(w.kl_wsum) / NULLIF(SUM(w.weight_sum), 0),
                SUM(w.attention_kl_wsum) / NULLIF(SUM(w.attention_kl_weight), 0),
                SUM(w.confidence_sum) / NULLIF(SUM(w.records), 0),
                SUM(w.weight_sq_sum)
         FROM windows w GROUP BY w.segment ORDER BY w.segment",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SegmentSummary {
            segment: r.get(0)?,
            records: r.get(1)?,
            teacher_samples: r.get(2)?,
            weight_sum: r.get(3)?,
            disagreement: r.get(4)?,
            kl_mean: r.get(5)?,
            attention_kl_mean: r.get(6)?,
            mean_confidence: r.get(7)?,
            weight_sq_sum: r.get::<_, Option<f64>>(8)?.unwrap_or(0.0),
        })
    })?;
    for row in rows {
        s.segments.push(row?);
    }
    Ok(s)
}

impl Store {
    pub fn summary(&self) -> Result<Summary> {
        summary(&self.conn)
    }
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        Ok(Reader { conn })
    }

    pub fn summary(&self) -> Result<Summary> {
        summary(&self.conn)
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Whether a table exists (tables of later migrations, read before they are applied).
    pub fn table_exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([name])?)
    }

    /// Alerts firing and the outbox backlog, once the alert tables exist (`None` before).
    pub fn alert_counts(&self) -> Option<AlertCounts> {
        if !self.table_exists("alert_state").ok()? {
            return None;
        }
        let firing = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM alert_state WHERE status = 'firing'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        let outbox_backlog = if self.table_exists("alert_outbox").ok()? {
            self.conn
                .query_row(
                    "SELECT COUNT(*) FROM alert_outbox WHERE status = 'pending'",
                    [],
                    |r| r.get(0),
                )
                .ok()
        } else {
            None
        };
        Some(AlertCounts {
            firing,
            outbox_backlog,
        })
    }

    /// Rows of a table added by a later migration (alerts, re-distillation jobs), newest first,
    /// as JSON objects; empty while the table does not exist.
    pub fn recent_rows(&self, table: &str, order_by: &str, limit: i64) -> Vec<serde_json::Value> {
        let known = matches!(table, "alert_state" | "alert_actions" | "redistill_jobs")
            && order_by
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !known || !self.table_exists(table).unwrap_or(false) {
            return Vec::new();
        }
        let sql = format!("SELECT * FROM {table} ORDER BY {order_by} DESC LIMIT ?1");
        let Ok(mut stmt) = self.conn.prepare(&sql) else {
            return Vec::new();
        };
        let names: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let rows = stmt.query_map([limit], |r| {
            let mut obj = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                use rusqlite::types::ValueRef;
                let v = match r.get_ref(i)? {
                    ValueRef::Null | ValueRef::Blob(_) => serde_json::Value::Null,
                    ValueRef::Integer(n) => n.into(),
                    ValueRef::Real(x) => serde_json::Number::from_f64(x)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                };
                obj.insert(name.clone(), v);
            }
            Ok(serde_json::Value::Object(obj))
        });
        match rows {
            Ok(rows) => rows.filter_map(|r| r.ok()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The data time (`records.ts`, the producer's own time) of each record in `seqs` that is
    /// still kept: drift events name records by `records.seq`, readers want their time.
    pub fn record_times(
        &self,
        seqs: impl IntoIterator<Item = i64>,
    ) -> Result<std::collections::BTreeMap<i64, i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT ts FROM records WHERE seq = ?1")?;
        let mut out = std::collections::BTreeMap::new();
        for seq in seqs {
            if out.contains_key(&seq) {
                continue;
            }
            if let Some(ts) = stmt.query_row([seq], |r| r.get::<_, i64>(0)).optional()? {
                out.insert(seq, ts);
            }
        }
        Ok(out)
    }

    /// The model pairs that answered teacher samples, with their time span (newest first).
    pub fn model_versions(&self) -> Result<Vec<ModelVersion>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT student, teacher, COUNT(*), MIN(ts), MAX(ts), AVG(teacher_latency_us)
             FROM teacher_samples GROUP BY student, teacher ORDER BY MAX(ts) DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ModelVersion {
                student: r.get(0)?,
                teacher: r.get(1)?,
                teacher_samples: r.get(2)?,
                first_ts: r.get(3)?,
                last_ts: r.get(4)?,
                mean_teacher_latency_us: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Mean student latency per record over all windows (µs).
    pub fn mean_student_latency_us(&self) -> Result<Option<f64>> {
        Ok(self.conn.query_row(
            "SELECT SUM(latency_us_sum) * 1.0 / NULLIF(SUM(records), 0) FROM windows WHERE segment = ?1",
            [ALL_SEGMENTS],
            |r| r.get(0),
        )?)
    }
}
