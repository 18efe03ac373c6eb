//! The lab set as measured by the lab stage (`sensei baseline`): both models' answers and their
//! comparison on every lab record, from which the reference profile is built
//! (`crate::drift::build_reference`).

use std::path::PathBuf;

/// Per-record measurements on the lab set (teacher run on every record).
#[derive(Debug, Default, Clone)]
pub struct LabRun {
    pub sources: Vec<PathBuf>,
    pub student_sha: String,
    pub teacher_sha: String,
    pub confidence: Vec<f64>,
    pub entropy: Vec<f64>,
    pub prediction: Vec<i64>,
    pub teacher_prediction: Vec<i64>,
    pub teacher_confidence: Vec<f64>,
    pub disagreement: Vec<bool>,
    pub kl: Vec<f64>,
    pub attention_kl: Vec<f64>,
    pub features: Vec<Vec<f64>>,
    pub labels: Vec<Option<i64>>,
    pub classes: usize,
    pub student_latency_us: f64,
    pub teacher_latency_us: f64,
    /// Earliest and latest record timestamp (Unix seconds), when the records carry them: the
    /// lab set's record rate is the fallback expected rate of the false-alarm budget.
    pub ts_range: Option<(f64, f64)>,
}

impl LabRun {
    pub fn records(&self) -> usize {
        self.prediction.len()
    }

    /// Records per second over the lab set's timestamps, when 100 or more records span at least
    /// ten seconds.
    pub fn records_per_second(&self) -> Option<f64> {
        let (first, last) = self.ts_range?;
        let span = last - first;
        (span >= 10.0 && self.records() >= 100).then(|| (self.records() - 1) as f64 / span)
    }
}
