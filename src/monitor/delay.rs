//! How long a detector needs to see the smallest shift worth an alert, and whether, at the rate
//! its observations arrive, that is too long to be of use (a *blind* detector).
//!
//! The expected delay is measured once, when the baseline is calibrated: zero-state runs of
//! the detector on streams shifted by exactly the configured minimum (Bernoulli(p1) for a rate,
//! the lab values plus δ = 2k for a real-valued signal), in the detector's own observations.
//! A detector fed by teacher-sampled records sees only a share of the records, so when the
//! teacher budget or queue skips most of them, that delay in *time* can grow past any use;
//! [`Sightline::assess`] says so.

use serde::Serialize;

use super::BaselineError;
use super::cusum::{BernoulliCusum, Cusum};
use super::rng::SplitMix64;

/// Zero-state runs behind an expected delay (relative standard error about 5 %).
pub const DELAY_RUNS: u64 = 400;
/// A detector whose expected delay at the minimum shift exceeds this, at the observed rate of
/// its observations, is blind.
pub const BLIND_AFTER_SECONDS: f64 = 86_400.0;

/// Mean zero-state delay of a Bernoulli CUSUM (p0, p1, h) on a Bernoulli(p1) stream, in
/// observations; runs are cut at `cap` observations.
pub fn bernoulli_delay(
    p0: f64,
    p1: f64,
    h: f64,
    cap: u64,
    seed: u64,
) -> Result<f64, BaselineError> {
    let template = BernoulliCusum::new(p0, p1, h)?;
    Ok(mean_delay(&template, cap, seed, |d, rng, n| {
        d.update(rng.next_f64() < p1, n).is_some()
    }))
}

/// Mean zero-state delay of a copy of `detector` (μ0, k, clip, h) on bootstrap resamples of
/// `values` shifted up by 2k, in observations; runs are cut at `cap` observations.
pub fn cusum_delay(
    values: &[f64],
    detector: &Cusum,
    cap: u64,
    seed: u64,
) -> Result<f64, BaselineError> {
    if values.is_empty() {
        return Err(BaselineError::invalid("values", 0.0, "no lab values"));
    }
    let mut template = detector.clone();
    template.reset();
    let k = template.k();
    Ok(mean_delay(&template, cap, seed, |d, rng, n| {
        let i = (rng.next_u64() % values.len() as u64) as usize;
        d.update(values[i] + 2.0 * k, n).is_some()
    }))
}

/// Mean over [`DELAY_RUNS`] zero-state runs of a copy of `template` of the observations until
/// `alarms` (one observation, numbered from 1) says it alarmed; runs are cut at `cap`.
fn mean_delay<D: Clone>(
    template: &D,
    cap: u64,
    seed: u64,
    mut alarms: impl FnMut(&mut D, &mut SplitMix64, u64) -> bool,
) -> f64 {
    let mut total = 0u64;
    for run in 0..DELAY_RUNS {
        let mut rng = SplitMix64::for_replication(seed, run);
        let mut d = template.clone();
        let mut n = 0;
        while n < cap {
            n += 1;
            if alarms(&mut d, &mut rng, n) {
                break;
            }
        }
        total += n;
    }
    total as f64 / DELAY_RUNS as f64
}

/// What a detector can see at the observed rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sightline {
    /// Expected delay at the minimum shift, in the detector's observations.
    pub expected_delay_samples: f64,
    /// The detector's observations per record of its segment (the teacher's share for teacher
    /// signals, 1 for signals of every record).
    pub samples_per_record: f64,
    /// The expected delay in records of the segment; infinite when it gets no observations.
    pub expected_delay_records: f64,
    /// The expected delay in seconds at the segment's observed record rate, when known.
    pub expected_delay_seconds: Option<f64>,
    /// The delay exceeds [`BLIND_AFTER_SECONDS`] (or the detector gets no observations).
    pub blind: bool,
}

impl Sightline {
    /// `records` of the segment over `span_seconds`, of which `samples` reached the detector.
    pub fn assess(
        expected_delay_samples: f64,
        records: f64,
        samples: f64,
        span_seconds: f64,
    ) -> Sightline {
        let samples_per_record = if records > 0.0 {
            samples / records
        } else {
            0.0
        };
        let expected_delay_records = if samples_per_record > 0.0 {
            expected_delay_samples / samples_per_record
        } else {
            f64::INFINITY
        };
        let expected_delay_seconds = (span_seconds > 0.0 && records > 0.0)
            .then(|| expected_delay_records * span_seconds / records);
        let blind = records > 0.0
            && expected_delay_seconds.map_or(expected_delay_records.is_infinite(), |s| {
                s.is_nan() || s > BLIND_AFTER_SECONDS
            });
        Sightline {
            expected_delay_samples,
            samples_per_record,
            expected_delay_records,
            expected_delay_seconds,
            blind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench measured a mean delay of 389 records for p0 = 0.03, p1 = 0.05, h = 3.15
    /// (docs/detection.md); the estimate from 400 runs lands near it.
    #[test]
    fn bernoulli_delay_matches_the_benchmark() {
        let d = bernoulli_delay(0.03, 0.05, 3.15, 1_000_000, 7).unwrap();
        assert!((330.0..450.0).contains(&d), "{d}");
    }

    #[test]
    fn a_larger_shift_is_seen_sooner() {
        let values: Vec<f64> = (0..1000).map(|i| (i % 10) as f64 / 10.0).collect();
        let detector = |k: f64| Cusum::new(0.45, k, 5.0).unwrap();
        let slow = cusum_delay(&values, &detector(0.05), 1_000_000, 1).unwrap();
        let fast = cusum_delay(&values, &detector(0.2), 1_000_000, 1).unwrap();
        assert!(fast < slow, "{fast} vs {slow}");
    }

    /// 600 teacher samples a minute of 15,000 records a minute: a 548-sample delay is 13,700
    /// records; blind only when those records take longer than a day.
    #[test]
    fn blind_when_the_delay_exceeds_a_day_at_the_observed_rate() {
        let fast = Sightline::assess(548.0, 15_000.0, 600.0, 60.0);
        assert!((fast.expected_delay_records - 13_700.0).abs() < 1e-6);
        assert!(!fast.blind, "{fast:?}");
        // The same share at 15,000 records a day: 13,700 records take most of a day.
        let slow = Sightline::assess(548.0, 15_000.0, 600.0, 86_400.0);
        assert!(!slow.blind, "{slow:?}");
        let slower = Sightline::assess(548.0, 15_000.0, 500.0, 86_400.0);
        assert!(slower.blind, "{slower:?}");
        let never = Sightline::assess(548.0, 15_000.0, 0.0, 60.0);
        assert!(never.blind && never.expected_delay_records.is_infinite());
        let nothing_yet = Sightline::assess(548.0, 0.0, 0.0, 0.0);
        assert!(!nothing_yet.blind);
    }
}
