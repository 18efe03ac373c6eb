//! The uncertainty-weighted teacher sampling policy and the estimators that stay unbiased
//! under it.
//!
//! The teacher is expensive, so it sees a sample. Records the student is unsure about are the
//! ones where disagreement concentrates, so the policy samples them more often:
//!
//! π(u) = clamp(floor + (1 − floor) · c · u, floor, 1)
//!
//! with u the student's uncertainty (1 − confidence, or entropy), `floor` the smallest inclusion
//! probability (every record keeps a chance, so every part of the input space stays observed
//! and the weights 1/π stay bounded by 1/floor), and the scale c fitted on the baseline
//! uncertainties so that the *expected* sampling rate is the configured budget rate.
//!
//! Two consequences the rest of the monitor has to respect:
//! - estimates of field rates weight each sampled record by 1/π ([`WeightedMean`]:
//!   Horvitz–Thompson and Hájek, with variances for Poisson sampling);
//! - a detector that watches the *sampled* stream sees the rate under the policy, not the field
//!   rate, so its baseline (p0 of the Bernoulli CUSUM, the bootstrap sample of a real-valued
//!   CUSUM) must be taken under the same policy: [`rate_under_policy`],
//!   [`resample_under_policy`].

use serde::{Deserialize, Serialize};

use super::BaselineError;
use super::rng::SplitMix64;

/// Inclusion probabilities as a function of student uncertainty.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UncertaintyPolicy {
    /// Configured expected sampling rate (on the baseline uncertainty distribution).
    pub rate: f64,
    /// Smallest inclusion probability.
    pub floor: f64,
    /// The fitted scale c.
    pub scale: f64,
}

impl UncertaintyPolicy {
    /// Uniform sampling at `rate` (the same as a floor equal to the rate).
    pub fn uniform(rate: f64) -> Result<UncertaintyPolicy, BaselineError> {
        check_probability("rate", rate)?;
        Ok(UncertaintyPolicy {
            rate,
            floor: rate,
            scale: 0.0,
        })
    }

    /// Fits the scale c so that the mean of π(u) over the baseline uncertainties is `rate`.
    /// The mean is continuous and non-decreasing in c, from `floor` at c = 0 up to the share of
    /// records with u > 0 (those reach π = 1), so bisection finds c whenever the rate lies in
    /// that range; otherwise the error says which bound was violated.
    pub fn fit(
        baseline_uncertainty: &[f64],
        rate: f64,
        floor: f64,
    ) -> Result<UncertaintyPolicy, BaselineError> {
        check_probability("rate", rate)?;
        check_probability("floor", floor)?;
        if floor > rate {
            return Err(BaselineError::invalid(
                "floor",
                floor,
                "the floor cannot exceed the sampling rate",
            ));
        }
        if baseline_uncertainty.is_empty() {
            return Err(BaselineError::TooFew {
                what: "baseline uncertainties for the sampling policy".into(),
                have: 0,
                need: 1,
            });
        }
        if let Some(index) = baseline_uncertainty
            .iter()
            .position(|u| !u.is_finite() || *u < 0.0)
        {
            return Err(BaselineError::NonFinite {
                what: "baseline uncertainty (must be finite and >= 0)".into(),
                index,
            });
        }
        let mut policy = UncertaintyPolicy {
            rate,
            floor,
            scale: 0.0,
        };
        if floor >= rate {
            return Ok(policy);
        }
        let mean_at = |scale: f64| {
            UncertaintyPolicy { rate, floor, scale }.expected_rate(baseline_uncertainty)
        };
        let positive = baseline_uncertainty.iter().filter(|&&u| u > 0.0).count() as f64;
        let n = baseline_uncertainty.len() as f64;
        let ceiling = (positive + floor * (n - positive)) / n;
        if rate >= ceiling {
            return Err(BaselineError::invalid(
                "rate",
                rate,
                "too high for uncertainty weighting: too many baseline records have zero uncertainty; sample uniformly",
            ));
        }
        let max_u = baseline_uncertainty.iter().cloned().fold(0.0, f64::max);
        let mut hi = 1.0 / max_u.max(f64::MIN_POSITIVE);
        while mean_at(hi) < rate {
            hi *= 2.0;
            if !hi.is_finite() {
                return Err(BaselineError::invalid(
                    "rate",
                    rate,
                    "no scale reaches this rate",
                ));
            }
        }
        let mut lo = 0.0;
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if mean_at(mid) < rate {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        policy.scale = hi;
        Ok(policy)
    }

    /// π(u). A non-finite uncertainty gets π = 1: a record the student cannot even score is
    /// exactly the one the teacher should see.
    pub fn inclusion_probability(&self, uncertainty: f64) -> f64 {
        if !uncertainty.is_finite() {
            return 1.0;
        }
        let u = uncertainty.max(0.0);
        (self.floor + (1.0 - self.floor) * self.scale * u).clamp(self.floor, 1.0)
    }

    /// The inverse-probability weight 1/π(u) (≤ 1/floor).
    pub fn weight(&self, uncertainty: f64) -> f64 {
        1.0 / self.inclusion_probability(uncertainty)
    }

    /// Mean inclusion probability over a set of uncertainties (0 for an empty set).
    pub fn expected_rate(&self, uncertainties: &[f64]) -> f64 {
        if uncertainties.is_empty() {
            return 0.0;
        }
        uncertainties
            .iter()
            .map(|&u| self.inclusion_probability(u))
            .sum::<f64>()
            / uncertainties.len() as f64
    }
}

fn check_probability(name: &str, p: f64) -> Result<(), BaselineError> {
    if p.is_finite() && p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(BaselineError::invalid(name, p, "must lie in (0, 1]"))
    }
}

/// The mean of `values` *among the records the policy would sample*, Σ π_i x_i / Σ π_i, from a
/// baseline where the teacher saw every record. This is the p0 of a Bernoulli CUSUM watching
/// the sampled disagreement stream.
pub fn rate_under_policy(
    values: &[f64],
    uncertainty: &[f64],
    policy: &UncertaintyPolicy,
) -> Result<f64, BaselineError> {
    if values.len() != uncertainty.len() || values.is_empty() {
        return Err(BaselineError::TooFew {
            what: "baseline records with both a value and an uncertainty".into(),
            have: values.len().min(uncertainty.len()),
            need: values.len().max(uncertainty.len()).max(1),
        });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(BaselineError::NonFinite {
            what: "baseline values".into(),
            index,
        });
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (x, u) in values.iter().zip(uncertainty) {
        let pi = policy.inclusion_probability(*u);
        num += pi * x;
        den += pi;
    }
    // den ≥ floor · n > 0 because the floor is > 0.
    Ok(num / den)
}

/// A sample of size `n` distributed like the values the policy would send to the teacher
/// (resampling with probability ∝ π), for bootstrapping a real-valued CUSUM on a sampled stream.
pub fn resample_under_policy(
    values: &[f64],
    uncertainty: &[f64],
    policy: &UncertaintyPolicy,
    n: usize,
    seed: u64,
) -> Result<Vec<f64>, BaselineError> {
    if values.len() != uncertainty.len() || values.is_empty() {
        return Err(BaselineError::TooFew {
            what: "baseline records with both a value and an uncertainty".into(),
            have: values.len().min(uncertainty.len()),
            need: values.len().max(uncertainty.len()).max(1),
        });
    }
    let mut cumulative = Vec::with_capacity(values.len());
    let mut total = 0.0;
    for &u in uncertainty {
        total += policy.inclusion_probability(u);
        cumulative.push(total);
    }
    let mut rng = SplitMix64::new(seed);
    Ok((0..n)
        .map(|_| {
            let target = rng.next_f64() * total;
            let i = cumulative
                .partition_point(|&c| c <= target)
                .min(values.len() - 1);
            values[i]
        })
        .collect())
}

/// A point estimate with its estimated variance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub variance: f64,
}

impl Estimate {
    pub fn standard_error(&self) -> f64 {
        self.variance.max(0.0).sqrt()
    }
}

/// Running inverse-probability-weighted mean of a signal observed on sampled records
/// (disagreement, error, KL), under Poisson sampling with known inclusion probabilities.
/// Serialisable like every monitor state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightedMean {
    /// Every record the policy decided on, sampled or not (N).
    pub population: u64,
    pub sampled: u64,
    sum_w: f64,
    sum_wx: f64,
    /// Σ (1 − π)/π², Σ (1 − π)/π² x, Σ (1 − π)/π² x²: the pieces of both variance formulas.
    sum_c: f64,
    sum_cx: f64,
    sum_cxx: f64,
}

impl WeightedMean {
    pub fn new() -> WeightedMean {
        WeightedMean::default()
    }

    /// A record the policy did not send to the teacher.
    pub fn add_unsampled(&mut self) {
        self.population += 1;
    }

    /// A sampled record with value `x` and inclusion probability `pi`. Non-finite values and
    /// probabilities outside (0, 1] are refused (returns `false`) so they cannot poison the sums.
    pub fn add_sampled(&mut self, x: f64, pi: f64) -> bool {
        if !(x.is_finite() && pi.is_finite() && pi > 0.0 && pi <= 1.0) {
            return false;
        }
        self.population += 1;
        self.sampled += 1;
        let w = 1.0 / pi;
        let c = (1.0 - pi) * w * w;
        self.sum_w += w;
        self.sum_wx += w * x;
        self.sum_c += c;
        self.sum_cx += c * x;
        self.sum_cxx += c * x * x;
        true
    }

    /// Horvitz–Thompson: Σ x/π / N, unbiased; variance Σ (1 − π)/π² x² / N².
    pub fn horvitz_thompson(&self) -> Option<Estimate> {
        if self.population == 0 || self.sampled == 0 {
            return None;
        }
        let n = self.population as f64;
        Some(Estimate {
            value: self.sum_wx / n,
            variance: self.sum_cxx / (n * n),
        })
    }

    /// Hájek: Σ x/π / Σ 1/π — the ratio form, which has a smaller variance when the realised
    /// sample size fluctuates; approximately unbiased. Linearised variance
    /// Σ (1 − π)/π² (x − m)² / (Σ 1/π)².
    pub fn hajek(&self) -> Option<Estimate> {
        if self.sampled == 0 || self.sum_w.is_nan() || self.sum_w <= 0.0 {
            return None;
        }
        let m = self.sum_wx / self.sum_w;
        let ss = (self.sum_cxx - 2.0 * m * self.sum_cx + m * m * self.sum_c).max(0.0);
        Some(Estimate {
            value: m,
            variance: ss / (self.sum_w * self.sum_w),
        })
    }

    /// Σ 1/π: the Horvitz–Thompson estimate of the population size.
    pub fn sum_of_weights(&self) -> f64 {
        self.sum_w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uncertainties(n: usize, seed: u64) -> Vec<f64> {
        // Skewed like 1 − confidence of a good student: most records near 0.
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.next_f64().powi(3) * 0.6).collect()
    }

    #[test]
    fn fitted_policy_spends_the_configured_rate() {
        let u = uncertainties(5000, 1);
        let policy = UncertaintyPolicy::fit(&u, 0.1, 0.02).unwrap();
        assert!((policy.expected_rate(&u) - 0.1).abs() < 1e-9, "{policy:?}");
        assert!(policy.inclusion_probability(0.0) == 0.02);
        assert!(policy.inclusion_probability(0.5) > policy.inclusion_probability(0.1));
        assert!(policy.inclusion_probability(100.0) == 1.0);
        assert_eq!(policy.inclusion_probability(f64::NAN), 1.0);
        assert!(policy.weight(0.0) <= 50.0 + 1e-9);
        let uniform = UncertaintyPolicy::uniform(0.1).unwrap();
        assert_eq!(uniform.inclusion_probability(0.9), 0.1);
    }

    #[test]
    fn impossible_policies_are_errors() {
        let u = uncertainties(100, 2);
        assert!(
            UncertaintyPolicy::fit(&u, 0.05, 0.1).is_err(),
            "floor above the rate"
        );
        assert!(
            UncertaintyPolicy::fit(&[0.0; 100], 0.1, 0.02).is_err(),
            "no uncertainty to weight by"
        );
        assert!(UncertaintyPolicy::fit(&[], 0.1, 0.02).is_err());
        assert!(UncertaintyPolicy::fit(&[0.1, f64::NAN], 0.1, 0.02).is_err());
        assert!(UncertaintyPolicy::fit(&u, 0.0, 0.0).is_err());
    }

    #[test]
    fn weighted_estimators_are_unbiased_and_their_variance_is_right() {
        // Disagreement concentrated on uncertain records: the sampled stream over-represents
        // it, the weighted estimates must not.
        let u = uncertainties(4000, 3);
        let mut rng = SplitMix64::new(4);
        let x: Vec<f64> = u
            .iter()
            .map(|&u| f64::from(u8::from(rng.bernoulli(0.01 + u))))
            .collect();
        let truth = x.iter().sum::<f64>() / x.len() as f64;
        let policy = UncertaintyPolicy::fit(&u, 0.1, 0.02).unwrap();
        let under_policy = rate_under_policy(&x, &u, &policy).unwrap();
        assert!(
            under_policy > 1.5 * truth,
            "the policy favours disagreements"
        );

        let reps = 300;
        let (mut ht, mut hj, mut var_hj, mut hj_sq) = (0.0, 0.0, 0.0, 0.0);
        for r in 0..reps {
            let mut rng = SplitMix64::for_replication(9, r);
            let mut m = WeightedMean::new();
            for (xi, ui) in x.iter().zip(&u) {
                let pi = policy.inclusion_probability(*ui);
                if rng.bernoulli(pi) {
                    m.add_sampled(*xi, pi);
                } else {
                    m.add_unsampled();
                }
            }
            let h = m.hajek().unwrap();
            ht += m.horvitz_thompson().unwrap().value;
            hj += h.value;
            hj_sq += h.value * h.value;
            var_hj += h.variance;
        }
        let n = reps as f64;
        let (ht, hj) = (ht / n, hj / n);
        let empirical_var = hj_sq / n - hj * hj;
        let se = (empirical_var / n).sqrt();
        assert!((ht - truth).abs() < 4.0 * se, "HT {ht} vs {truth}");
        assert!((hj - truth).abs() < 4.0 * se, "Hájek {hj} vs {truth}");
        let ratio = (var_hj / n) / empirical_var;
        assert!(
            (0.75..1.33).contains(&ratio),
            "variance estimate off by {ratio}"
        );
    }

    #[test]
    fn empty_and_bad_inputs_give_no_estimate() {
        let mut m = WeightedMean::new();
        assert!(m.hajek().is_none() && m.horvitz_thompson().is_none());
        m.add_unsampled();
        assert!(m.hajek().is_none());
        assert!(!m.add_sampled(f64::NAN, 0.5));
        assert!(!m.add_sampled(1.0, 0.0));
        assert!(m.add_sampled(1.0, 1.0));
        let e = m.hajek().unwrap();
        assert_eq!((e.value, e.variance), (1.0, 0.0));
        let back: WeightedMean = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn resampling_under_the_policy_follows_the_inclusion_probabilities() {
        let values = [0.0, 1.0];
        let policy = UncertaintyPolicy {
            rate: 0.5,
            floor: 0.1,
            scale: 1.0,
        };
        // π = 0.1 for the first, 1.0 for the second → share of 1.0 is 1/1.1.
        let s = resample_under_policy(&values, &[0.0, 1.0], &policy, 20_000, 1).unwrap();
        let share = s.iter().sum::<f64>() / s.len() as f64;
        assert!((share - 1.0 / 1.1).abs() < 0.01, "{share}");
    }
}
