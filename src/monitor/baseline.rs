//! The lab reference profile (`sensei baseline`) and the checks that decide whether it can carry
//! the detectors built on it.
//!
//! A profile holds, per signal, what the detectors need and nothing they would have to
//! re-derive from raw records: rates with their counts, bounded value samples for bootstrap and
//! KS (at most [`MAX_SAMPLE_VALUES`], subsampled deterministically), class counts, and feature
//! bins for PSI. [`BaselineProfile::validate`] returns every problem at once: errors (the
//! profile cannot support a detector: too few records — with the number needed — a rate of 0 or
//! 1, a constant real-valued signal) and warnings (a class that never occurs, a constant feature)
//! with the fallback taken. The detector constructors at the bottom turn a validated part of
//! the profile into a calibrated detector.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BaselineError;
use super::calibrate::{Calibration, calibrate_bernoulli, calibrate_cusum};
use super::cusum::{BernoulliCusum, Cusum, CusumParams};
use super::rng::SplitMix64;
use super::sampling::UncertaintyPolicy;
use super::window::FeatureBins;

/// Largest value sample kept per signal: enough for a bootstrap and a KS test with D resolved
/// to ~0.02, small enough to store as JSON in the database.
pub const MAX_SAMPLE_VALUES: usize = 5000;
/// Fewest lab records for a profile: 10 PSI bins of ≥ 50 records and a KS test that can see a
/// D of 0.1 against a 500-record window.
pub const MIN_RECORDS: usize = 500;
/// Fewest events (disagreements, errors) behind a rate: below that, p0 is uncertain by more
/// than ±30 % and the calibrated false-alarm rate would be fiction.
pub const MIN_EVENTS: u64 = 10;
/// Fewest values behind a real-valued signal (KL, confidence).
pub const MIN_VALUES: usize = 100;

/// A bounded sample of a real-valued signal with the moments of the full sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueSample {
    /// Values seen (all of them, not only those kept).
    pub count: u64,
    pub mean: f64,
    pub sd: f64,
    /// Up to [`MAX_SAMPLE_VALUES`] of them, a uniform subsample if there were more.
    pub values: Vec<f64>,
    /// Non-finite values dropped before anything was computed.
    pub dropped_non_finite: u64,
}

impl ValueSample {
    pub fn from_values(values: &[f64], seed: u64) -> ValueSample {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let dropped_non_finite = (values.len() - finite.len()) as u64;
        let n = finite.len();
        let mean = if n > 0 {
            finite.iter().sum::<f64>() / n as f64
        } else {
            0.0
        };
        let sd = if n > 1 {
            (finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n as f64 - 1.0)).sqrt()
        } else {
            0.0
        };
        let kept = if n <= MAX_SAMPLE_VALUES {
            finite
        } else {
            // Partial Fisher–Yates: a uniform subsample, reproducible from the seed.
            let mut all = finite;
            let mut rng = SplitMix64::new(seed);
            for i in 0..MAX_SAMPLE_VALUES {
                let j = i + rng.index(n - i);
                all.swap(i, j);
            }
            all.truncate(MAX_SAMPLE_VALUES);
            all
        };
        ValueSample {
            count: n as u64,
            mean,
            sd,
            values: kept,
            dropped_non_finite,
        }
    }
}

/// A 0/1 signal on teacher-checked (or labelled) baseline records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateBaseline {
    /// Records the signal was observed on.
    pub records: u64,
    /// Records where it was 1.
    pub events: u64,
    /// Rate among the records the sampling policy would send to the teacher: p0 of the
    /// Bernoulli CUSUM that watches the sampled stream. Equal to `field_rate` under uniform
    /// sampling, and for labels (which are not sampled).
    pub rate_under_policy: f64,
    /// Plain rate over all baseline records.
    pub field_rate: f64,
}

impl RateBaseline {
    /// From per-record outcomes; with a policy and the student uncertainties of the same
    /// records, the rate under that policy is computed as Σ π x / Σ π.
    pub fn from_records(
        outcomes: &[bool],
        sampling: Option<(&UncertaintyPolicy, &[f64])>,
    ) -> Result<RateBaseline, BaselineError> {
        let records = outcomes.len() as u64;
        let events = outcomes.iter().filter(|&&x| x).count() as u64;
        let field_rate = if records > 0 {
            events as f64 / records as f64
        } else {
            0.0
        };
        let rate_under_policy = match sampling {
            Some((policy, uncertainty)) => {
                let x: Vec<f64> = outcomes.iter().map(|&b| f64::from(u8::from(b))).collect();
                super::sampling::rate_under_policy(&x, uncertainty, policy)?
            }
            None => field_rate,
        };
        Ok(RateBaseline {
            records,
            events,
            rate_under_policy,
            field_rate,
        })
    }

    /// p0 for a detector, if the baseline supports one.
    pub fn p0(&self, what: &str) -> Result<f64, BaselineError> {
        if self.events < MIN_EVENTS {
            // Say how many records it would take at the observed (or a 1 %) rate.
            let rate = if self.events > 0 {
                self.field_rate
            } else {
                0.01
            };
            return Err(BaselineError::TooFew {
                what: format!(
                    "{what}: events in the baseline (about {} records would be needed at a rate of {rate:.3})",
                    (MIN_EVENTS as f64 / rate).ceil()
                ),
                have: self.events as usize,
                need: MIN_EVENTS as usize,
            });
        }
        let p0 = self.rate_under_policy;
        if !(p0 > 0.0 && p0 < 1.0) || self.events == self.records {
            return Err(BaselineError::DegenerateRate {
                what: what.to_string(),
                rate: p0,
            });
        }
        Ok(p0)
    }
}

/// Input summary of one feature: moments and PSI bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureProfile {
    pub name: String,
    pub mean: f64,
    pub sd: f64,
    /// `None` when the feature is constant in the baseline (no bins to compare).
    pub bins: Option<FeatureBins>,
}

/// Default number of PSI bins (deciles), the convention PSI thresholds were set for.
pub const PSI_BINS: usize = 10;

impl FeatureProfile {
    pub fn from_values(name: &str, values: &[f64]) -> FeatureProfile {
        let sample = ValueSample::from_values(values, 0);
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        FeatureProfile {
            name: name.to_string(),
            mean: sample.mean,
            sd: sample.sd,
            bins: FeatureBins::from_baseline(&finite, PSI_BINS, name).ok(),
        }
    }
}

/// Latency of one model on the lab set, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyProfile {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl LatencyProfile {
    pub fn from_values(latencies_ms: &[f64]) -> Option<LatencyProfile> {
        let mut v: Vec<f64> = latencies_ms
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(LatencyProfile {
            count: v.len() as u64,
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        })
    }
}

/// The lab reference profile of one baseline version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineProfile {
    /// Lab records the student answered.
    pub records: u64,
    /// Lab records the teacher answered too (all of them in the lab stage, normally).
    pub teacher_records: u64,
    /// The teacher sampling policy the rates under policy were computed for.
    pub sampling: Option<UncertaintyPolicy>,
    pub disagreement: Option<RateBaseline>,
    pub kl: Option<ValueSample>,
    pub attention_kl: Option<ValueSample>,
    pub confidence: Option<ValueSample>,
    /// Predicted-class counts, indexed by class.
    pub class_counts: Vec<u64>,
    pub features: Vec<FeatureProfile>,
    /// Per model name ("student", "teacher").
    pub latency: BTreeMap<String, LatencyProfile>,
    pub labelled_records: u64,
    pub student_error: Option<RateBaseline>,
    pub teacher_error: Option<RateBaseline>,
}

/// A problem the profile can live with, and the fallback taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum BaselineWarning {
    #[error(
        "class {class} never occurs in the baseline: the class-mix test compares it as a count of 0 (any field occurrence is evidence of change) and PSI-style shares use a pseudo-count of 0.5"
    )]
    ClassNeverOccurs { class: usize },
    #[error("feature {name} is constant in the baseline: its PSI test is disabled")]
    ConstantFeature { name: String },
    #[error("{what}: {dropped} non-finite values were dropped")]
    NonFiniteDropped { what: String, dropped: u64 },
    #[error("no labelled records: the error-rate detectors are off until labels arrive")]
    NoLabels,
}

impl BaselineProfile {
    /// Every error and every warning at once. `Err` means at least one detector could not be
    /// built from this profile; the error list says which and why.
    pub fn validate(&self) -> Result<Vec<BaselineWarning>, Vec<BaselineError>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        if (self.records as usize) < MIN_RECORDS {
            errors.push(BaselineError::TooFew {
                what: "baseline records".into(),
                have: self.records as usize,
                need: MIN_RECORDS,
            });
        }
        if let Some(Err(e)) = self
            .disagreement
            .as_ref()
            .map(|rate| rate.p0("disagreement"))
        {
            errors.push(e);
        }
        for (what, sample) in [
            ("KL", &self.kl),
            ("attention KL", &self.attention_kl),
            ("confidence", &self.confidence),
        ] {
            let Some(sample) = sample else { continue };
            if sample.dropped_non_finite > 0 {
                warnings.push(BaselineWarning::NonFiniteDropped {
                    what: what.to_string(),
                    dropped: sample.dropped_non_finite,
                });
            }
            if sample.values.len() < MIN_VALUES {
                errors.push(BaselineError::TooFew {
                    what: format!("{what} values"),
                    have: sample.values.len(),
                    need: MIN_VALUES,
                });
            } else if let Err(e) = super::mean_sd(&sample.values, what) {
                errors.push(e);
            }
        }
        if self.class_counts.iter().sum::<u64>() > 0 {
            for (class, &count) in self.class_counts.iter().enumerate() {
                if count == 0 {
                    warnings.push(BaselineWarning::ClassNeverOccurs { class });
                }
            }
        } else if self.records > 0 {
            errors.push(BaselineError::TooFew {
                what: "predicted-class counts".into(),
                have: 0,
                need: MIN_RECORDS,
            });
        }
        for feature in &self.features {
            if feature.bins.is_none() {
                warnings.push(BaselineWarning::ConstantFeature {
                    name: feature.name.clone(),
                });
            }
        }
        if self.labelled_records == 0 {
            warnings.push(BaselineWarning::NoLabels);
        }
        for (what, rate) in [
            ("student error", &self.student_error),
            ("teacher error", &self.teacher_error),
        ] {
            if let Some(Err(e)) = rate.as_ref().map(|rate| rate.p0(what)) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(errors)
        }
    }
}

/// A Bernoulli CUSUM for a rate baseline: p1 = p0 + `delta`, threshold calibrated to `arl0`.
pub fn bernoulli_detector(
    rate: &RateBaseline,
    what: &str,
    delta: f64,
    arl0: f64,
    seed: u64,
) -> Result<(BernoulliCusum, Calibration), BaselineError> {
    let p0 = rate.p0(what)?;
    let p1 = p0 + delta;
    let calibration = calibrate_bernoulli(p0, p1, arl0, seed)?;
    Ok((
        BernoulliCusum::new(p0, p1, calibration.threshold)?,
        calibration,
    ))
}

/// A real-valued CUSUM for a value baseline: k = `shift_sd` × σ / 2, threshold bootstrapped to
/// `arl0`.
pub fn cusum_detector(
    sample: &ValueSample,
    shift_sd: f64,
    arl0: f64,
    seed: u64,
) -> Result<(Cusum, Calibration), BaselineError> {
    if sample.values.len() < MIN_VALUES {
        return Err(BaselineError::TooFew {
            what: "baseline values for a CUSUM".into(),
            have: sample.values.len(),
            need: MIN_VALUES,
        });
    }
    let params = CusumParams::from_baseline(&sample.values, shift_sd)?;
    let calibration = calibrate_cusum(&sample.values, params.k, arl0, seed)?;
    Ok((
        Cusum::new(params.mean, params.k, calibration.threshold)?,
        calibration,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_profile() -> BaselineProfile {
        let mut rng = SplitMix64::new(1);
        let n = 2000;
        let kl: Vec<f64> = (0..n).map(|_| -0.1 * (1.0 - rng.next_f64()).ln()).collect();
        let confidence: Vec<f64> = (0..n).map(|_| 1.0 - 0.3 * rng.next_f64().powi(2)).collect();
        let disagreement: Vec<bool> = (0..n).map(|_| rng.bernoulli(0.04)).collect();
        let feature: Vec<f64> = (0..n).map(|_| rng.next_f64()).collect();
        BaselineProfile {
            records: n as u64,
            teacher_records: n as u64,
            sampling: None,
            disagreement: Some(RateBaseline::from_records(&disagreement, None).unwrap()),
            kl: Some(ValueSample::from_values(&kl, 1)),
            attention_kl: None,
            confidence: Some(ValueSample::from_values(&confidence, 2)),
            class_counts: vec![700, 800, 500],
            features: vec![FeatureProfile::from_values("x0", &feature)],
            latency: BTreeMap::from([(
                "student".to_string(),
                LatencyProfile::from_values(&[1.0, 2.0, 3.0]).unwrap(),
            )]),
            labelled_records: 0,
            student_error: None,
            teacher_error: None,
        }
    }

    #[test]
    fn a_healthy_profile_validates_and_builds_detectors() {
        let profile = healthy_profile();
        assert_eq!(profile.validate().unwrap(), vec![BaselineWarning::NoLabels]);
        let (detector, calibration) = bernoulli_detector(
            profile.disagreement.as_ref().unwrap(),
            "disagreement",
            0.03,
            300.0,
            1,
        )
        .unwrap();
        assert_eq!(detector.threshold(), calibration.threshold);
        let (cusum, _) = cusum_detector(profile.kl.as_ref().unwrap(), 1.0, 300.0, 2).unwrap();
        assert!(cusum.k() > 0.0);
        let back: BaselineProfile =
            serde_json::from_str(&serde_json::to_string(&profile).unwrap()).unwrap();
        assert_eq!(back, profile);
    }

    #[test]
    fn too_few_records_say_how_many_are_needed() {
        let mut profile = healthy_profile();
        profile.records = 120;
        let errors = profile.validate().unwrap_err();
        assert!(errors.contains(&BaselineError::TooFew {
            what: "baseline records".into(),
            have: 120,
            need: MIN_RECORDS
        }));
        assert!(
            errors[0]
                .to_string()
                .contains("120 available, at least 500 needed"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn degenerate_parts_are_errors_or_warnings_never_nan() {
        let mut profile = healthy_profile();
        profile.class_counts = vec![700, 0, 1300];
        profile.disagreement = Some(RateBaseline::from_records(&[false; 3000], None).unwrap());
        profile.kl = Some(ValueSample::from_values(&[0.0; 500], 0));
        profile
            .features
            .push(FeatureProfile::from_values("constant", &[1.0; 500]));
        let errors = profile.validate().unwrap_err();
        assert!(errors.iter().any(|e| matches!(e, BaselineError::TooFew { what, have: 0, .. } if what.starts_with("disagreement"))), "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, BaselineError::ZeroVariance { .. })),
            "{errors:?}"
        );
        // The detectors refuse the same parts.
        assert!(
            bernoulli_detector(
                profile.disagreement.as_ref().unwrap(),
                "disagreement",
                0.03,
                300.0,
                1
            )
            .is_err()
        );
        assert!(cusum_detector(profile.kl.as_ref().unwrap(), 1.0, 300.0, 1).is_err());

        profile.disagreement = healthy_profile().disagreement;
        profile.kl = healthy_profile().kl;
        let warnings = profile.validate().unwrap();
        assert!(warnings.contains(&BaselineWarning::ClassNeverOccurs { class: 1 }));
        assert!(warnings.contains(&BaselineWarning::ConstantFeature {
            name: "constant".into()
        }));
        // A class never seen in the baseline still tests to finite numbers.
        let t =
            crate::monitor::window::class_mix_test(&profile.class_counts, &[10, 5, 20]).unwrap();
        assert!(t.p_value.is_finite() && t.statistic.is_finite());
        // A rate of 1 is degenerate too.
        let all = RateBaseline::from_records(&[true; 50], None).unwrap();
        assert!(matches!(
            all.p0("error"),
            Err(BaselineError::DegenerateRate { .. })
        ));
    }

    #[test]
    fn value_samples_are_bounded_and_keep_full_moments() {
        let values: Vec<f64> = (0..12_000).map(f64::from).collect();
        let s = ValueSample::from_values(&values, 3);
        assert_eq!(s.values.len(), MAX_SAMPLE_VALUES);
        assert_eq!(s.count, 12_000);
        assert!((s.mean - 5999.5).abs() < 1e-9);
        let with_nan = ValueSample::from_values(&[1.0, f64::NAN, 2.0], 0);
        assert_eq!((with_nan.count, with_nan.dropped_non_finite), (2, 1));
    }

    #[test]
    fn rate_under_policy_is_what_the_sampled_stream_sees() {
        let outcomes = [true, false, false, false];
        let u = [1.0, 0.0, 0.0, 0.0];
        let policy = UncertaintyPolicy {
            rate: 0.5,
            floor: 0.1,
            scale: 1.0,
        };
        let r = RateBaseline::from_records(&outcomes, Some((&policy, &u))).unwrap();
        assert_eq!(r.field_rate, 0.25);
        // π = (1, 0.1, 0.1, 0.1): 1 / 1.3
        assert!((r.rate_under_policy - 1.0 / 1.3).abs() < 1e-12);
    }
}
