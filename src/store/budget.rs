//! The false-alarm budget as the database records it: the allocation the drift monitor
//! persists with its state (`detector_state` row `budget`, see `crate::drift::budget`) and
//! the drift events each family has raised in the budget's current period.

use serde::Serialize;

use super::{Reader, Result};

/// One family's part of the budget and what it has spent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetFamily {
    /// A sequential signal family, or `windowed` for the windowed rounds.
    pub family: String,
    /// Share of the budget's events (0 when set explicitly in the config).
    pub share: f64,
    /// Expected false events per period of the family's detectors together.
    pub expected_per_period: f64,
    /// ARL0 of the all-segments detector, in its observations.
    pub arl0: Option<f64>,
    /// α of one windowed round.
    pub alpha: Option<f64>,
    /// Set by `[detect] arl0` or `family_alpha`, not by the budget.
    pub explicit: bool,
    /// Drift events of the family since `BudgetSummary::since_ms`.
    pub events: i64,
    /// What the budget expects by now if every event were false: its rate times the time
    /// since `since_ms`.
    pub expected: f64,
}

/// The budget, its allocation and what has been spent in its current period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetSummary {
    pub events_per_period: f64,
    pub period_seconds: f64,
    /// The record rate the allocation assumes, and where it comes from (field, lab, assumed).
    pub records_per_second: f64,
    pub rate_source: String,
    pub segments: i64,
    /// When the detectors of the active baseline were first armed (unix ms).
    pub armed_at_ms: Option<i64>,
    /// Events are counted from here: the later of the arming and one period ago.
    pub since_ms: i64,
    pub families: Vec<BudgetFamily>,
    pub events: i64,
    pub expected: f64,
}

impl Reader {
    /// The active baseline's budget allocation and the events spent against it; `None`
    /// before the monitor has stored one.
    pub fn budget(&self, now_ms: i64) -> Result<Option<BudgetSummary>> {
        if !self.table_exists("detector_state")? {
            return Ok(None);
        }
        let json: Option<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT d.state, d.baseline_version FROM detector_state d
                 JOIN baselines b ON b.version = d.baseline_version AND b.active = 1
                 WHERE d.detector = 'budget'",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .ok();
        let Some((json, version)) = json else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let a = &v["allocation"];
        if a.is_null() {
            return Ok(None);
        }
        let period_seconds = a["period_seconds"].as_f64().unwrap_or(0.0);
        let armed_at_ms = v["armed_at_ms"].as_i64();
        let since_ms = armed_at_ms
            .unwrap_or(now_ms)
            .max(now_ms - (period_seconds * 1000.0) as i64);
        let elapsed = ((now_ms - since_ms).max(0) as f64 / 1000.0).min(period_seconds);
        let mut counts = self.conn.prepare_cached(
            "SELECT CASE WHEN detector IN ('ks', 'chi_square', 'psi') THEN 'windowed'
                    ELSE signal END, COUNT(*)
             FROM drift_events WHERE baseline_version = ?1 AND detected_at >= ?2
             GROUP BY 1",
        )?;
        let counted: Vec<(String, i64)> = counts
            .query_map(rusqlite::params![version, since_ms], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut families = Vec::new();
        for f in a["families"].as_array().into_iter().flatten() {
            let family = f["family"].as_str().unwrap_or_default().to_string();
            let per_period = f["expected_events"].as_f64().unwrap_or(0.0);
            let events = counted
                .iter()
                .find(|(name, _)| *name == family)
                .map_or(0, |c| c.1);
            families.push(BudgetFamily {
                share: f["share"].as_f64().unwrap_or(0.0),
                expected_per_period: per_period,
                arl0: f["arl0"].as_f64(),
                alpha: f["alpha"].as_f64(),
                explicit: f["explicit"].as_bool().unwrap_or(false),
                events,
                expected: if period_seconds > 0.0 {
                    per_period * elapsed / period_seconds
                } else {
                    0.0
                },
                family,
            });
        }
        Ok(Some(BudgetSummary {
            events_per_period: a["events"].as_f64().unwrap_or(0.0),
            period_seconds,
            records_per_second: a["records_per_second"].as_f64().unwrap_or(0.0),
            rate_source: a["rate_source"].as_str().unwrap_or_default().to_string(),
            segments: a["segments"].as_i64().unwrap_or(0),
            armed_at_ms,
            since_ms,
            events: families.iter().map(|f| f.events).sum(),
            expected: families.iter().map(|f| f.expected).sum(),
            families,
        }))
    }
}
