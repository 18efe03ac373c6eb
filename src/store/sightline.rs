//! Whether each sequential detector can see the smallest shift worth an alert at the rates its
//! observations arrive (`monitor::delay`): the expected delay measured at baseline time (in the
//! active baseline's profile), against the records and teacher samples of the segment's
//! windows over the latest day of data.

use rusqlite::Connection;
use serde::Serialize;

use super::{Reader, Result, Store};
use crate::monitor::Sightline;

/// The stretch of data the observed rates are measured over: the day before the segment's
/// latest window.
const RATE_SPAN_MS: i64 = 86_400_000;

/// One detector's sightline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorSightline {
    pub signal: String,
    pub segment: String,
    pub detector: String,
    #[serde(flatten)]
    pub sightline: Sightline,
}

/// Every sequential detector of the active baseline that has an expected delay in its profile
/// (the error-rate detectors are left out: the share of labelled records is not in the
/// windows). `window_ms` is `[store] window`.
fn sightlines(conn: &Connection, window_ms: i64) -> Result<Vec<DetectorSightline>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.signal, d.segment, d.detector,
                json_extract(b.profile, CASE d.signal
                    WHEN 'disagreement' THEN '$.disagreement.expected_delay'
                    WHEN 'kl' THEN '$.kl.expected_delay'
                    WHEN 'attention_kl' THEN '$.attention_kl.expected_delay'
                    WHEN 'confidence' THEN '$.uncertainty.expected_delay' END),
                d.threshold,
                json_extract(b.profile, CASE d.signal
                    WHEN 'disagreement' THEN '$.disagreement.threshold'
                    WHEN 'kl' THEN '$.kl.threshold'
                    WHEN 'attention_kl' THEN '$.attention_kl.threshold'
                    WHEN 'confidence' THEN '$.uncertainty.threshold' END)
         FROM detector_state d JOIN baselines b ON b.version = d.baseline_version AND b.active = 1
         WHERE d.detector IN ('cusum', 'bernoulli_cusum')
           AND d.signal IN ('disagreement', 'kl', 'attention_kl', 'confidence')
         ORDER BY d.signal, d.segment",
    )?;
    type Row = (String, String, String, Option<f64>, f64, Option<f64>);
    let detectors: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut rates = conn.prepare_cached(
        "SELECT COALESCE(SUM(records), 0), COALESCE(SUM(teacher_samples), 0),
                MIN(start), MAX(start)
         FROM windows
         WHERE segment = ?1 AND start >= (SELECT MAX(start) FROM windows WHERE segment = ?1) - ?2",
    )?;
    let mut out = Vec::new();
    for (signal, segment, detector, delay, armed, measured_at) in detectors {
        let Some(delay) = delay else { continue };
        // The delay was measured at the profile's threshold; the false-alarm budget arms
        // another. A CUSUM's delay grows about linearly with h (Wald: (h + overshoot) / drift).
        let delay = match measured_at {
            Some(h) if h > 0.0 && armed > 0.0 => delay * armed / h,
            _ => delay,
        };
        let (records, teacher, first, last): (i64, i64, Option<i64>, Option<i64>) = rates
            .query_row(rusqlite::params![segment, RATE_SPAN_MS], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        let span_ms = match (first, last) {
            (Some(first), Some(last)) => last - first + window_ms,
            _ => 0,
        };
        let samples = if signal == "confidence" {
            records
        } else {
            teacher
        };
        out.push(DetectorSightline {
            signal,
            segment,
            detector,
            sightline: Sightline::assess(
                delay,
                records as f64,
                samples as f64,
                span_ms as f64 / 1000.0,
            ),
        });
    }
    Ok(out)
}

impl Reader {
    /// Each sequential detector's expected delay at the minimum shift at the observed rates,
    /// and whether it is blind.
    pub fn sightlines(&self, window_ms: i64) -> Result<Vec<DetectorSightline>> {
        if !self.table_exists("detector_state")? {
            return Ok(Vec::new());
        }
        sightlines(&self.conn, window_ms)
    }
}

impl Store {
    /// [`Reader::sightlines`] on the writing connection.
    pub fn sightlines(&self, window_ms: i64) -> Result<Vec<DetectorSightline>> {
        sightlines(&self.conn, window_ms)
    }
}
