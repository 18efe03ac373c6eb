//! Small statistics helpers shared by the summaries: intervals for (weighted) proportions.

use serde::Serialize;
use statrs::distribution::{Beta, ContinuousCDF};

/// `x` rounded to four significant digits, for log lines: `0.123456` → `0.1235`, `12345.6` →
/// `12350`. The result is the double nearest the rounded decimal, so it prints as that decimal.
/// Non-finite values and zero are returned as they are.
pub fn four_digits(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let exponent = 3 - x.abs().log10().floor() as i32;
    // Divide (or multiply) by an exact power of ten so that the last step is one correctly
    // rounded operation.
    if exponent >= 0 {
        let scale = 10f64.powi(exponent);
        (x * scale).round() / scale
    } else {
        let scale = 10f64.powi(-exponent);
        (x / scale).round() * scale
    }
}

/// A point estimate with a two-sided interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Clopper-Pearson (exact) interval for `k` successes in `n` trials at confidence `1 - alpha`.
/// `k` and `n` may be fractional: for inverse-probability-weighted samples pass the effective
/// sample size `n_eff = (Σw)² / Σw²` and `k = p̂ · n_eff` (Kish).
pub fn clopper_pearson(k: f64, n: f64, alpha: f64) -> Option<Interval> {
    if n.is_nan() || n <= 0.0 || k < 0.0 || k > n {
        return None;
    }
    let estimate = k / n;
    let low = if k <= 0.0 {
        0.0
    } else {
        Beta::new(k, n - k + 1.0).ok()?.inverse_cdf(alpha / 2.0)
    };
    let high = if k >= n {
        1.0
    } else {
        Beta::new(k + 1.0, n - k)
            .ok()?
            .inverse_cdf(1.0 - alpha / 2.0)
    };
    Some(Interval {
        estimate,
        low,
        high,
    })
}

/// The interval of a weighted rate: `rate` = Σ w·x / Σ w with weights summing to `weight_sum`
/// and squares to `weight_sq_sum`.
pub fn weighted_rate_interval(
    rate: f64,
    weight_sum: f64,
    weight_sq_sum: f64,
    alpha: f64,
) -> Option<Interval> {
    if weight_sq_sum <= 0.0 {
        return None;
    }
    let n_eff = weight_sum * weight_sum / weight_sq_sum;
    let mut i = clopper_pearson((rate * n_eff).clamp(0.0, n_eff), n_eff, alpha)?;
    i.estimate = rate;
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_digits_keeps_four_significant_digits() {
        assert_eq!(four_digits(0.123_456_7).to_string(), "0.1235");
        assert_eq!(four_digits(5.041_234).to_string(), "5.041");
        assert_eq!(four_digits(11.095_3).to_string(), "11.1");
        assert_eq!(four_digits(12_345.6).to_string(), "12350");
        assert_eq!(four_digits(-0.000_123_456).to_string(), "-0.0001235");
        assert_eq!(four_digits(3.0), 3.0);
        assert_eq!(four_digits(0.0), 0.0);
        assert!(four_digits(f64::NAN).is_nan());
    }

    #[test]
    fn clopper_pearson_matches_reference_values() {
        // R: binom.test(5, 100)$conf.int = 0.01643187 0.11283491
        let i = clopper_pearson(5.0, 100.0, 0.05).unwrap();
        assert!((i.low - 0.016_431_87).abs() < 1e-6, "{i:?}");
        assert!((i.high - 0.112_834_9).abs() < 1e-6, "{i:?}");
        let zero = clopper_pearson(0.0, 50.0, 0.05).unwrap();
        assert_eq!(zero.low, 0.0);
        // 1 - 0.025^(1/50) = 0.07112
        assert!((zero.high - 0.071_12).abs() < 1e-4, "{zero:?}");
        assert!(clopper_pearson(1.0, 0.0, 0.05).is_none());
    }

    #[test]
    fn equal_weights_give_the_unweighted_interval() {
        let w = weighted_rate_interval(0.05, 400.0, 1600.0, 0.05).unwrap(); // 100 samples of weight 4
        let u = clopper_pearson(5.0, 100.0, 0.05).unwrap();
        assert!((w.low - u.low).abs() < 1e-9 && (w.high - u.high).abs() < 1e-9);
    }
}
