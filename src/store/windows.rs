//! The per-window sums of every segment and of all segments together (`windows`, read through
//! the `window_stats` view of rates and means).

use std::collections::BTreeMap;

use rusqlite::{Transaction, params};
use serde::Serialize;

use super::{Reader, RecordRow, Result};

/// Running sums for one (window, segment) cell.
#[derive(Debug, Default, Clone)]
pub(super) struct WindowSums {
    records: i64,
    confidence: f64,
    entropy: f64,
    latency_us: i64,
    teacher_samples: i64,
    skipped_budget: i64,
    skipped_queue: i64,
    skipped_unreachable: i64,
    skipped_failed: i64,
    weight: f64,
    weight_sq: f64,
    disagreement: f64,
    kl: f64,
    total_variation: f64,
    attention_kl: f64,
    attention_kl_weight: f64,
    cosine_distance: f64,
    abs_error: f64,
    teacher_latency_us: i64,
}

impl WindowSums {
    pub(super) fn add(&mut self, r: &RecordRow) {
        self.records += 1;
        self.confidence += r.confidence.unwrap_or(0.0);
        self.entropy += r.entropy.unwrap_or(0.0);
        self.latency_us += r.latency_us;
        match r.sampled {
            2 => self.skipped_budget += 1,
            3 => self.skipped_queue += 1,
            4 => self.skipped_failed += 1,
            5 => self.skipped_unreachable += 1,
            _ => {}
        }
        if let Some(t) = &r.teacher {
            let w = t.weight;
            let c = &t.comparison;
            self.teacher_samples += 1;
            self.weight += w;
            self.weight_sq += w * w;
            self.disagreement += w * c.disagreement.map_or(0.0, |d| d as u8 as f64);
            self.kl += w * c.kl.unwrap_or(0.0);
            self.total_variation += w * c.total_variation.unwrap_or(0.0);
            if let Some(a) = c.attention_kl {
                self.attention_kl += w * a;
                self.attention_kl_weight += w;
            }
            self.cosine_distance += w * c.cosine_distance.unwrap_or(0.0);
            self.abs_error += w * c.abs_error.unwrap_or(0.0);
            self.teacher_latency_us += t.latency_us;
        }
    }
}

/// A file's window sums by window start, then segment: found without allocating a key per
/// record (a window holds one entry per segment seen, a bounded number).
#[derive(Default)]
pub(super) struct FileWindows {
    by_start: BTreeMap<i64, Vec<(String, WindowSums)>>,
}

impl FileWindows {
    pub(super) fn sums(&mut self, start: i64, segment: &str) -> &mut WindowSums {
        let segments = self.by_start.entry(start).or_default();
        let at = match segments.iter().position(|(s, _)| s == segment) {
            Some(at) => at,
            None => {
                segments.push((segment.to_string(), WindowSums::default()));
                segments.len() - 1
            }
        };
        &mut segments[at].1
    }

    pub(super) fn into_sorted(self) -> BTreeMap<(i64, String), WindowSums> {
        self.by_start
            .into_iter()
            .flat_map(|(start, segments)| segments.into_iter().map(move |(s, w)| ((start, s), w)))
            .collect()
    }
}

pub(super) fn upsert_windows(
    tx: &Transaction<'_>,
    windows: &BTreeMap<(i64, String), WindowSums>,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO windows (start, segment, records, confidence_sum, entropy_sum, latency_us_sum,
            teacher_samples, skipped_budget, skipped_queue, weight_sum, disagreement_wsum, kl_wsum,
            total_variation_wsum, attention_kl_wsum, attention_kl_weight, cosine_distance_wsum,
            abs_error_wsum, teacher_latency_us_sum, weight_sq_sum, skipped_unreachable,
            skipped_failed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
                 ?20, ?21)
         ON CONFLICT (start, segment) DO UPDATE SET
            records = records + excluded.records,
            confidence_sum = confidence_sum + excluded.confidence_sum,
            entropy_sum = entropy_sum + excluded.entropy_sum,
            latency_us_sum = latency_us_sum + excluded.latency_us_sum,
            teacher_samples = teacher_samples + excluded.teacher_samples,
            skipped_budget = skipped_budget + excluded.skipped_budget,
            skipped_queue = skipped_queue + excluded.skipped_queue,
            weight_sum = weight_sum + excluded.weight_sum,
            disagreement_wsum = disagreement_wsum + excluded.disagreement_wsum,
            kl_wsum = kl_wsum + excluded.kl_wsum,
            total_variation_wsum = total_variation_wsum + excluded.total_variation_wsum,
            attention_kl_wsum = attention_kl_wsum + excluded.attention_kl_wsum,
            attention_kl_weight = attention_kl_weight + excluded.attention_kl_weight,
            cosine_distance_wsum = cosine_distance_wsum + excluded.cosine_distance_wsum,
            abs_error_wsum = abs_error_wsum + excluded.abs_error_wsum,
            teacher_latency_us_sum = teacher_latency_us_sum + excluded.teacher_latency_us_sum,
            weight_sq_sum = weight_sq_sum + excluded.weight_sq_sum,
            skipped_unreachable = skipped_unreachable + excluded.skipped_unreachable,
            skipped_failed = skipped_failed + excluded.skipped_failed",
    )?;
    for ((start, segment), w) in windows {
        stmt.execute(params![
            start,
            segment,
            w.records,
            w.confidence,
            w.entropy,
            w.latency_us,
            w.teacher_samples,
            w.skipped_budget,
            w.skipped_queue,
            w.weight,
            w.disagreement,
            w.kl,
            w.total_variation,
            w.attention_kl,
            w.attention_kl_weight,
            w.cosine_distance,
            w.abs_error,
            w.teacher_latency_us,
            w.weight_sq,
            w.skipped_unreachable,
            w.skipped_failed,
        ])?;
    }
    Ok(())
}

/// A `window_stats` row (rates and means of one window and segment).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowRow {
    pub start: i64,
    pub segment: String,
    pub records: i64,
    pub teacher_samples: i64,
    pub skipped_budget: i64,
    pub skipped_queue: i64,
    pub mean_confidence: Option<f64>,
    pub mean_entropy: Option<f64>,
    pub mean_latency_us: Option<f64>,
    pub disagreement_rate: Option<f64>,
    pub mean_kl: Option<f64>,
    pub mean_total_variation: Option<f64>,
    pub mean_attention_kl: Option<f64>,
    pub mean_teacher_latency_us: Option<f64>,
}

pub(super) fn window_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WindowRow> {
    Ok(WindowRow {
        start: r.get(0)?,
        segment: r.get(1)?,
        records: r.get(2)?,
        teacher_samples: r.get(3)?,
        skipped_budget: r.get(4)?,
        skipped_queue: r.get(5)?,
        mean_confidence: r.get(6)?,
        mean_entropy: r.get(7)?,
        mean_latency_us: r.get(8)?,
        disagreement_rate: r.get(9)?,
        mean_kl: r.get(10)?,
        mean_total_variation: r.get(11)?,
        mean_attention_kl: r.get(12)?,
        mean_teacher_latency_us: r.get(13)?,
    })
}

impl Reader {
    /// `window_stats` rows, oldest first: one segment (or all when `None`), windows starting at
    /// or after `since_ms`, at most the latest `limit`.
    pub fn windows(
        &self,
        segment: Option<&str>,
        since_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<WindowRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT * FROM (
                SELECT start, segment, records, teacher_samples, skipped_budget, skipped_queue,
                       mean_confidence, mean_entropy, mean_latency_us, disagreement_rate, mean_kl,
                       mean_total_variation, mean_attention_kl, mean_teacher_latency_us
                FROM window_stats
                WHERE (?1 IS NULL OR segment = ?1) AND start >= ?2
                ORDER BY start DESC, segment LIMIT ?3)
             ORDER BY start, segment",
        )?;
        let rows = stmt.query_map(
            params![segment, since_ms.unwrap_or(i64::MIN), limit],
            window_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The latest window with teacher samples of every segment (what "now" looks like).
    pub fn latest_windows(&self) -> Result<Vec<WindowRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT w.start, w.segment, w.records, w.teacher_samples, w.skipped_budget,
                    w.skipped_queue, w.mean_confidence, w.mean_entropy, w.mean_latency_us,
                    w.disagreement_rate, w.mean_kl, w.mean_total_variation, w.mean_attention_kl,
                    w.mean_teacher_latency_us
             FROM window_stats w
             JOIN (SELECT segment, MAX(start) AS start FROM windows WHERE teacher_samples > 0
                   GROUP BY segment) l ON l.segment = w.segment AND l.start = w.start
             ORDER BY w.segment",
        )?;
        let rows = stmt.query_map([], window_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
