//! Drift detection: the statistics that decide whether the student has drifted from its
//! teacher and from the lab.
//!
//! Everything here is a pure function or a plain state machine — time (record sequence numbers)
//! and data are arguments, randomness comes from an explicit seed, and every state type is
//! `serde`-serialisable so the daemon persists it and a restart neither resets a detector nor
//! re-fires an alarm. The method behind each part, and the measured false-alarm rates, are in
//! `docs/detection.md`.
//!
//! # Layout
//! - [`cusum`]: sequential detectors on per-sample streams — [`BernoulliCusum`] (disagreement,
//!   error rates), [`Cusum`] (KL, attention KL, 1 − confidence, entropy), [`PageHinkley`] — and
//!   the [`Alarm`] they raise.
//! - [`bank`]: [`BernoulliBank`], Bernoulli CUSUMs at several alert rates calibrated jointly
//!   to one ARL0, for shifts of unknown size.
//! - [`calibrate`]: thresholds from a target in-control average run length (ARL0), by
//!   simulation (Bernoulli) or bootstrap from the baseline (real-valued); false-alarm
//!   verification.
//! - [`curve`]: the threshold for any target ARL0 — simulated points, Siegmund's approximation
//!   beyond them — so that a false-alarm budget can be re-allocated without re-simulating.
//! - [`delay`]: the expected detection delay at the minimum shift, and whether at the observed
//!   rates a detector is blind ([`Sightline`]).
//! - [`window`]: windowed two-sample tests against the baseline (KS on confidence, chi-square on
//!   the class mix, PSI on input features), the p-value-and-effect-size rule and the Holm
//!   correction over segments × signals.
//! - [`sampling`]: the uncertainty-weighted teacher sampling policy and the inverse-probability
//!   weighted (Horvitz–Thompson / Hájek) estimators that keep rates unbiased under it.
//! - [`lab`]: the lab set's per-record measurements that a reference profile is built from.
//! - [`rng`]: the seeded generator every simulation uses.
//!
//! # Degenerate data
//! No NaN or infinity leaves this module: every division is guarded, and a baseline that cannot
//! support a statistic (too few records, a rate of 0 or 1, zero variance) is a
//! [`BaselineError`], not a silently passing test.

pub mod bank;
pub mod calibrate;
pub mod curve;
pub mod cusum;
pub mod delay;
pub mod lab;
pub mod rng;
pub mod sampling;
pub mod window;

pub use bank::{BankMember, BankReference, BernoulliBank};
pub use calibrate::{Calibration, CalibrationOptions, calibrate_bernoulli, calibrate_cusum};
pub use curve::ThresholdCurve;
pub use cusum::{Alarm, BernoulliCusum, Cusum, CusumParams, PageHinkley};
pub use delay::{BLIND_AFTER_SECONDS, Sightline, bernoulli_delay, cusum_delay};
pub use sampling::{UncertaintyPolicy, WeightedMean};
pub use window::{RoundDecision, RoundTest, WindowTest};

/// Why a baseline (or a parameter derived from it) cannot support a statistic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BaselineError {
    #[error("{what}: {have} available, at least {need} needed")]
    TooFew {
        what: String,
        have: usize,
        need: usize,
    },
    #[error(
        "{what}: zero variance (every value is {value}); a shift cannot be scaled by the spread"
    )]
    ZeroVariance { what: String, value: f64 },
    #[error(
        "{what}: the baseline rate is {rate}; a rate of exactly 0 or 1 has no likelihood ratio"
    )]
    DegenerateRate { what: String, rate: f64 },
    #[error("{what}: value {index} is not finite")]
    NonFinite { what: String, index: usize },
    #[error("{name} = {value}: {reason}")]
    InvalidParameter {
        name: String,
        value: f64,
        reason: String,
    },
}

impl BaselineError {
    pub(crate) fn invalid(name: &str, value: f64, reason: &str) -> BaselineError {
        BaselineError::InvalidParameter {
            name: name.to_string(),
            value,
            reason: reason.to_string(),
        }
    }
}

/// Mean and sample standard deviation of a baseline sample, refusing empty, non-finite and
/// constant samples (for reports and benchmarks; the detectors call it internally).
pub fn mean_sd_of(values: &[f64]) -> Result<(f64, f64), BaselineError> {
    mean_sd(values, "values")
}

/// Mean and sample standard deviation, refusing empty, non-finite and constant samples.
pub(crate) fn mean_sd(values: &[f64], what: &str) -> Result<(f64, f64), BaselineError> {
    if values.len() < 2 {
        return Err(BaselineError::TooFew {
            what: what.to_string(),
            have: values.len(),
            need: 2,
        });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(BaselineError::NonFinite {
            what: what.to_string(),
            index,
        });
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    // Relative test: a spread at rounding-noise level is no spread at all.
    if var.sqrt() <= 1e-12 * mean.abs().max(1e-300) || var <= 0.0 {
        return Err(BaselineError::ZeroVariance {
            what: what.to_string(),
            value: values[0],
        });
    }
    Ok((mean, var.sqrt()))
}
