//! The threshold for any target ARL0, without simulating at that target.
//!
//! A site-wide false-alarm budget gives each detector an ARL0 of 10⁶–10⁹ observations; a Monte
//! Carlo calibration at that scale would take minutes to hours per detector, and the daemon
//! re-allocates whenever a segment joins. So a detector's threshold comes from a
//! [`ThresholdCurve`]: h calibrated by simulation at a few feasible targets (up to
//! [`SIMULATED_TARGETS`]' largest) and, beyond the largest, Siegmund's approximation for the
//! CUSUM (Siegmund 1985, *Sequential Analysis*, ch. X):
//!
//! ```text
//! ARL0(h) ≈ (e^{θ(h+ρ)} − θ(h+ρ) − 1) / (θ |μ|)
//! ```
//!
//! - μ < 0 is the mean increment in control, and θ > 0 the root of E[e^{θ·increment}] = 1 — for
//!   a Bernoulli CUSUM, whose increments are log-likelihood ratios, θ = 1 exactly; for a
//!   real-valued CUSUM on bootstrap resamples, θ is the root of the lab values' empirical moment
//!   generating function, so the approximation describes exactly the distribution the
//!   simulation draws from;
//! - ρ is the overshoot correction. Siegmund's closed form for ρ needs a continuous increment
//!   distribution; instead ρ is fitted so that the formula passes through the largest simulated
//!   point. The formula's slope, θ per unit of h on the log scale, is exact asymptotically, so
//!   extrapolation carries only the Monte Carlo error of that one point (about 3 %) plus the
//!   error of ρ being constant in h — measured in docs/detection.md.
//!
//! Below the largest simulated point, h is interpolated linearly in ln ARL0 between the
//! simulated points. Looking a threshold up costs a few dozen floating-point operations.

use serde::{Deserialize, Serialize};

use super::BaselineError;

/// The targets calibrated by simulation for every curve (on one set of paths, so the cost is
/// that of the largest).
pub const SIMULATED_TARGETS: [f64; 5] = [100.0, 300.0, 1_000.0, 3_000.0, 10_000.0];

/// h(ARL0) for one detector (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdCurve {
    /// (target ARL0, calibrated h: the smallest whose simulated ARL0 reaches it), ascending.
    pub points: Vec<(f64, f64)>,
    /// Root of E[e^{θ·increment}] = 1 in control.
    pub theta: f64,
    /// |E[increment]| in control.
    pub drift: f64,
    /// Overshoot correction, fitted at the largest simulated point (its simulated ARL0).
    pub rho: f64,
}

/// g(x) = e^x − x − 1, increasing for x > 0.
fn g(x: f64) -> f64 {
    x.exp_m1() - x
}

/// The x > 0 with g(x) = y (y > 0), by bisection.
fn g_inverse(y: f64) -> f64 {
    let (mut lo, mut hi): (f64, f64) = (0.0, 1.0);
    while g(hi) < y {
        lo = hi;
        hi *= 2.0;
        if hi > 1e6 {
            return hi;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if g(mid) < y {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// θ > 0 with Σ wᵢ e^{θ vᵢ} = 1 (weights summing to 1), and |Σ wᵢ vᵢ|: the exponent and drift
/// of a CUSUM with increments vᵢ. Refused when the mean is not negative or no increment is
/// positive (then the statistic never returns to zero, or never leaves it).
pub fn cusum_exponent(increments: &[(f64, f64)]) -> Result<(f64, f64), BaselineError> {
    let total: f64 = increments.iter().map(|&(_, w)| w).sum();
    if !(total.is_finite() && total > 0.0) {
        return Err(BaselineError::invalid("weights", total, "must sum to > 0"));
    }
    let mean = increments.iter().map(|&(v, w)| v * w).sum::<f64>() / total;
    let max = increments
        .iter()
        .filter(|&&(_, w)| w > 0.0)
        .map(|&(v, _)| v)
        .fold(f64::NEG_INFINITY, f64::max);
    if !(mean < 0.0 && max > 0.0) {
        return Err(BaselineError::invalid(
            "mean increment",
            mean,
            "a CUSUM needs a negative mean increment and some positive increments",
        ));
    }
    // ln M(θ) = ln Σ w e^{θ v} − ln Σ w, computed around the largest exponent.
    let log_mgf = |theta: f64| -> f64 {
        let top = theta * max;
        let s: f64 = increments
            .iter()
            .map(|&(v, w)| w * (theta * v - top).exp())
            .sum();
        top + s.ln() - total.ln()
    };
    let mut hi = 1.0;
    while log_mgf(hi) <= 0.0 {
        hi *= 2.0;
        if hi > 1e12 {
            return Err(BaselineError::invalid("theta", hi, "no root found"));
        }
    }
    // log M is convex with log M(0) = 0 and slope μ < 0 at 0: the positive root is unique.
    let mut lo = hi / 2.0;
    while lo > 1e-12 && log_mgf(lo) > 0.0 {
        lo /= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if log_mgf(mid) > 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok((0.5 * (lo + hi), -mean))
}

impl ThresholdCurve {
    /// A curve from calibrated (target ARL0, h) points, the simulated ARL0 at the largest
    /// point's h (the anchor of the extrapolation) and the increments' exponent and drift.
    pub fn new(
        mut points: Vec<(f64, f64)>,
        anchor_arl0: f64,
        theta: f64,
        drift: f64,
    ) -> Result<ThresholdCurve, BaselineError> {
        points.retain(|&(a, h)| a.is_finite() && a > 1.0 && h.is_finite() && h > 0.0);
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let Some(&(_, h_top)) = points.last() else {
            return Err(BaselineError::invalid(
                "points",
                0.0,
                "no simulated point to anchor the curve",
            ));
        };
        if !(theta.is_finite() && theta > 0.0 && drift.is_finite() && drift > 0.0) {
            return Err(BaselineError::invalid(
                "theta",
                theta,
                "exponent and drift must be finite and > 0",
            ));
        }
        if !(anchor_arl0.is_finite() && anchor_arl0 > 1.0) {
            return Err(BaselineError::invalid(
                "anchor ARL0",
                anchor_arl0,
                "must be finite and > 1",
            ));
        }
        let rho = g_inverse(anchor_arl0 * theta * drift) / theta - h_top;
        Ok(ThresholdCurve {
            points,
            theta,
            drift,
            rho,
        })
    }

    /// Siegmund's ARL0 at threshold h, with the fitted overshoot.
    pub fn siegmund_arl0(&self, h: f64) -> f64 {
        g(self.theta * (h + self.rho)) / (self.theta * self.drift)
    }

    /// The largest simulated ARL0: beyond it, thresholds are extrapolated.
    pub fn simulated_up_to(&self) -> f64 {
        self.points.last().map_or(0.0, |p| p.0)
    }

    /// The threshold for in-control run length `arl0` (observations).
    pub fn threshold(&self, arl0: f64) -> f64 {
        let arl0 = arl0.max(2.0);
        let n = self.points.len();
        let (arl_top, h_top) = self.points[n - 1];
        if arl0 > arl_top || n == 1 {
            // Siegmund: x = θ(h + ρ) with g(x) = ARL0·θ·|μ|.
            let h = g_inverse(arl0 * self.theta * self.drift) / self.theta - self.rho;
            return if arl0 > arl_top { h.max(h_top) } else { h }.max(f64::MIN_POSITIVE);
        }
        // Interpolation linear in ln ARL0 between neighbouring points (the first two below
        // the smallest).
        let i = self.points.partition_point(|p| p.0 < arl0).clamp(1, n - 1);
        let (a0, h0) = self.points[i - 1];
        let (a1, h1) = self.points[i];
        if a1 <= a0 {
            return h_top;
        }
        let t = (arl0.ln() - a0.ln()) / (a1.ln() - a0.ln());
        (h0 + t * (h1 - h0)).max(f64::MIN_POSITIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exponent_of_log_likelihood_ratio_increments_is_one() {
        let (p0, p1): (f64, f64) = (0.03, 0.08);
        let up = (p1 / p0).ln();
        let down = ((1.0 - p1) / (1.0 - p0)).ln();
        let (theta, drift) = cusum_exponent(&[(up, p0), (down, 1.0 - p0)]).unwrap();
        assert!((theta - 1.0).abs() < 1e-9, "{theta}");
        let kl = p0 * (p0 / p1).ln() + (1.0 - p0) * ((1.0 - p0) / (1.0 - p1)).ln();
        assert!((drift - kl).abs() < 1e-12);
    }

    #[test]
    fn the_exponent_of_normal_increments_is_twice_the_mean_over_the_variance() {
        // Increments N(−k, 1) have θ = 2k exactly; a large sample of them comes close.
        let mut rng = crate::monitor::rng::SplitMix64::new(3);
        let k = 0.5;
        let v: Vec<(f64, f64)> = (0..200_000)
            .map(|_| {
                let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (z - k, 1.0)
            })
            .collect();
        let (theta, _) = cusum_exponent(&v).unwrap();
        assert!((theta - 2.0 * k).abs() < 0.05, "{theta}");
    }

    #[test]
    fn a_curve_interpolates_its_points_and_grows_with_ln_arl0_beyond() {
        let c =
            ThresholdCurve::new(vec![(1000.0, 2.0), (10_000.0, 4.0)], 10_000.0, 1.0, 0.05).unwrap();
        assert!((c.threshold(10_000.0) - 4.0).abs() < 1e-9);
        assert!((c.threshold(1000.0) - 2.0).abs() < 1e-9);
        assert!((c.siegmund_arl0(4.0) - 10_000.0).abs() < 1e-6);
        // Asymptotic slope: ten times the ARL0 costs ln 10 / θ more threshold.
        let step = c.threshold(1e8) - c.threshold(1e7);
        assert!((step - 10f64.ln()).abs() < 1e-3, "{step}");
        assert!(c.threshold(1e5) > 4.0);
        assert!(cusum_exponent(&[(1.0, 1.0), (-0.5, 1.0)]).is_err());
        assert!(cusum_exponent(&[(-1.0, 1.0)]).is_err());
    }
}
