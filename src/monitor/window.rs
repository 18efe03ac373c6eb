//! Windowed two-sample tests of the every-record signals against the baseline, and the rule
//! that turns one evaluation round of them into alarms.
//!
//! - [`ks_test`]: Kolmogorov–Smirnov on student confidence; effect size D.
//! - [`class_mix_test`]: Pearson chi-square test of homogeneity on the predicted-class counts;
//!   effect size the total variation distance between the two class mixes.
//! - [`psi_test`]: population stability index on one input feature, binned at baseline
//!   quantiles ([`FeatureBins`]); PSI is the effect size, the p-value comes from its chi-square
//!   approximation.
//! - [`evaluate_round`]: every (segment × signal) test of one round is Holm-corrected at the
//!   family-wise level, and an alarm needs *both* a corrected p-value under that level and an
//!   effect size over the signal's threshold — with windows of thousands of records every
//!   trivial difference is significant, and the effect size is what keeps those quiet.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::BaselineError;

/// Which two-sample test produced a [`WindowTest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    KolmogorovSmirnov,
    ChiSquare,
    Psi,
}

/// One two-sample test of a window against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowTest {
    pub kind: TestKind,
    /// The test statistic (D, X², or PSI scaled to its chi-square approximation).
    pub statistic: f64,
    pub p_value: f64,
    /// The size of the difference, on a scale that does not grow with the window:
    /// D, total variation distance, or PSI.
    pub effect_size: f64,
    /// Degrees of freedom of the chi-square reference distribution, where there is one.
    pub degrees_of_freedom: Option<usize>,
    pub n_baseline: u64,
    pub n_window: u64,
}

fn check_sample(values: &[f64], what: &str) -> Result<(), BaselineError> {
    if values.is_empty() {
        return Err(BaselineError::TooFew {
            what: what.to_string(),
            have: 0,
            need: 1,
        });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(BaselineError::NonFinite {
            what: what.to_string(),
            index,
        });
    }
    Ok(())
}

/// Kolmogorov's limiting survival function Q(x) = P(K > x), by the series that converges fast on
/// each side of x ≈ 1.18 (statrs' single series never terminates at x = 0, i.e. at D = 0).
pub fn kolmogorov_survival(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 1.0;
    }
    if x < 1.18 {
        // P(K ≤ x) = √(2π)/x Σ exp(−(2j−1)² π² / (8x²))
        let c = -std::f64::consts::PI * std::f64::consts::PI / (8.0 * x * x);
        let mut sum = 0.0;
        for j in 1..=20 {
            let odd = (2 * j - 1) as f64;
            let term = (odd * odd * c).exp();
            sum += term;
            if term < 1e-17 {
                break;
            }
        }
        (1.0 - (2.0 * std::f64::consts::PI).sqrt() / x * sum).clamp(0.0, 1.0)
    } else {
        // Q(x) = 2 Σ (−1)^(j−1) exp(−2 j² x²)
        let mut sum = 0.0;
        for j in 1..=20 {
            let jf = j as f64;
            let term = (-2.0 * jf * jf * x * x).exp();
            sum += if j % 2 == 1 { term } else { -term };
            if term < 1e-17 {
                break;
            }
        }
        (2.0 * sum).clamp(0.0, 1.0)
    }
}

/// `values` in ascending order, borrowed when they are already (a baseline's reference sample
/// is stored sorted, so each round sorts only its window).
fn sorted(values: &[f64]) -> std::borrow::Cow<'_, [f64]> {
    if values.is_sorted_by(|a, b| a.total_cmp(b).is_le()) {
        return values.into();
    }
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v.into()
}

/// Two-sample Kolmogorov–Smirnov test, two-sided. D is computed exactly (ties handled by
/// stepping over each distinct value at once); the p-value is Kolmogorov's limiting
/// distribution at (√n_e + 0.12 + 0.11/√n_e)·D with n_e = nm/(n+m) (Stephens 1970), accurate
/// to a few percent from n_e ≈ 4 on and conservative under ties.
pub fn ks_test(baseline: &[f64], window: &[f64]) -> Result<WindowTest, BaselineError> {
    check_sample(baseline, "KS baseline")?;
    check_sample(window, "KS window")?;
    let a = sorted(baseline);
    let b = sorted(window);
    let (n, m) = (a.len(), b.len());
    let (mut i, mut j) = (0usize, 0usize);
    let mut d: f64 = 0.0;
    while i < n && j < m {
        let x = a[i].min(b[j]);
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let ne = (n as f64 * m as f64) / (n + m) as f64;
    let p_value = kolmogorov_survival((ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * d);
    Ok(WindowTest {
        kind: TestKind::KolmogorovSmirnov,
        statistic: d,
        p_value,
        effect_size: d,
        degrees_of_freedom: None,
        n_baseline: n as u64,
        n_window: m as u64,
    })
}

fn chi_square_survival(statistic: f64, df: usize) -> f64 {
    match ChiSquared::new(df as f64) {
        Ok(dist) if statistic.is_finite() => dist.sf(statistic.max(0.0)).clamp(0.0, 1.0),
        _ => 1.0,
    }
}

/// Chi-square test of homogeneity on the 2 × K table (baseline counts, window counts) of
/// predicted classes; the slices may differ in length (a class new in the field).
///
/// Expected counts are row total × column total / N, positive for every class seen in either
/// sample, so a class the baseline never produced needs no smoothing here: it is simply strong
/// evidence of change. Classes absent from both samples are dropped (they carry no information
/// and would otherwise divide by zero), and the degrees of freedom count only the classes kept.
/// If fewer than two classes remain, both samples are the same single class: the fallback is
/// p = 1 and effect 0, which is the truth, not a skipped test.
pub fn class_mix_test(
    baseline_counts: &[u64],
    window_counts: &[u64],
) -> Result<WindowTest, BaselineError> {
    let nb: u64 = baseline_counts.iter().sum();
    let nw: u64 = window_counts.iter().sum();
    if nb == 0 || nw == 0 {
        return Err(BaselineError::TooFew {
            what: if nb == 0 {
                "class-mix baseline records"
            } else {
                "class-mix window records"
            }
            .to_string(),
            have: 0,
            need: 1,
        });
    }
    let k = baseline_counts.len().max(window_counts.len());
    let total = (nb + nw) as f64;
    let (mut chi2, mut tv, mut kept) = (0.0, 0.0, 0usize);
    for class in 0..k {
        let b = baseline_counts.get(class).copied().unwrap_or(0) as f64;
        let w = window_counts.get(class).copied().unwrap_or(0) as f64;
        if b + w == 0.0 {
            continue;
        }
        kept += 1;
        let eb = nb as f64 * (b + w) / total;
        let ew = nw as f64 * (b + w) / total;
        chi2 += (b - eb) * (b - eb) / eb + (w - ew) * (w - ew) / ew;
        tv += (w / nw as f64 - b / nb as f64).abs();
    }
    let df = kept.saturating_sub(1);
    let p_value = if df == 0 {
        1.0
    } else {
        chi_square_survival(chi2, df)
    };
    Ok(WindowTest {
        kind: TestKind::ChiSquare,
        statistic: chi2,
        p_value,
        effect_size: 0.5 * tv,
        degrees_of_freedom: Some(df),
        n_baseline: nb,
        n_window: nw,
    })
}

/// Baseline bins of one input feature: interior edges at baseline quantiles and the baseline
/// count in each bin. Bin i is `(edge[i−1], edge[i]]`, the outer bins are open-ended, so every
/// field value has a bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureBins {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

impl FeatureBins {
    /// Up to `bins` equal-frequency bins. Tied quantiles collapse into one edge, so a feature
    /// with few distinct values gets fewer bins; a constant feature has no bins to compare and is
    /// a [`BaselineError::ZeroVariance`].
    pub fn from_baseline(
        values: &[f64],
        bins: usize,
        what: &str,
    ) -> Result<FeatureBins, BaselineError> {
        check_sample(values, what)?;
        if bins < 2 {
            return Err(BaselineError::invalid(
                "bins",
                bins as f64,
                "PSI needs at least 2 bins",
            ));
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mut edges: Vec<f64> = (1..bins)
            .map(|i| sorted[((i * n) / bins).saturating_sub(1).min(n - 1)])
            .collect();
        edges.dedup();
        // The top edge must leave something above it, or the last bin is empty by construction.
        while edges.last().is_some_and(|&e| e >= sorted[n - 1]) {
            edges.pop();
        }
        if edges.is_empty() {
            return Err(BaselineError::ZeroVariance {
                what: what.to_string(),
                value: sorted[0],
            });
        }
        let mut bins = FeatureBins {
            counts: vec![0; edges.len() + 1],
            edges,
        };
        bins.counts = bins.count(values);
        Ok(bins)
    }

    pub fn bin_of(&self, x: f64) -> usize {
        self.edges.partition_point(|&e| e < x)
    }

    /// Counts of `values` per bin (non-finite values are not counted: the caller rejects them
    /// at ingestion).
    pub fn count(&self, values: &[f64]) -> Vec<u64> {
        let mut counts = vec![0; self.edges.len() + 1];
        for &v in values.iter().filter(|v| v.is_finite()) {
            counts[self.bin_of(v)] += 1;
        }
        counts
    }
}

/// Additive (Jeffreys) pseudo-count per bin in the PSI: PSI contains ln(q/p), infinite for an
/// empty bin on either side.
pub const PSI_PSEUDO_COUNT: f64 = 0.5;

/// Population stability index of a window's bin counts against the baseline bins:
/// PSI = Σ (q_i − p_i) ln(q_i / p_i), both proportions smoothed with [`PSI_PSEUDO_COUNT`].
///
/// PSI is the symmetrised KL divergence (Jeffreys divergence); under "same distribution", PSI /
/// (1/n_baseline + 1/n_window) is asymptotically χ² with B − 1 degrees of freedom, which gives
/// the p-value. Conventional effect thresholds: 0.1 (moderate), 0.25 (major shift).
pub fn psi_test(
    baseline: &FeatureBins,
    window_counts: &[u64],
) -> Result<WindowTest, BaselineError> {
    let bins = baseline.counts.len();
    if bins < 2 || window_counts.len() != bins {
        return Err(BaselineError::invalid(
            "PSI bins",
            window_counts.len() as f64,
            "window counts must have one entry per baseline bin, and at least 2 bins",
        ));
    }
    let nb: u64 = baseline.counts.iter().sum();
    let nw: u64 = window_counts.iter().sum();
    if nb == 0 || nw == 0 {
        return Err(BaselineError::TooFew {
            what: if nb == 0 {
                "PSI baseline records"
            } else {
                "PSI window records"
            }
            .to_string(),
            have: 0,
            need: 1,
        });
    }
    let smooth = PSI_PSEUDO_COUNT * bins as f64;
    let mut psi = 0.0;
    for (b, w) in baseline.counts.iter().zip(window_counts) {
        let p = (*b as f64 + PSI_PSEUDO_COUNT) / (nb as f64 + smooth);
        let q = (*w as f64 + PSI_PSEUDO_COUNT) / (nw as f64 + smooth);
        psi += (q - p) * (q / p).ln();
    }
    let statistic = psi / (1.0 / nb as f64 + 1.0 / nw as f64);
    Ok(WindowTest {
        kind: TestKind::Psi,
        statistic,
        p_value: chi_square_survival(statistic, bins - 1),
        effect_size: psi,
        degrees_of_freedom: Some(bins - 1),
        n_baseline: nb,
        n_window: nw,
    })
}

/// Holm's step-down adjusted p-values (same order as the input). Rejecting every hypothesis
/// whose adjusted p-value is ≤ α controls the family-wise error rate at α under any dependence
/// between the tests. A non-finite p-value is treated as 1.
pub fn holm_adjust(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let clean = |p: f64| {
        if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            1.0
        }
    };
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| clean(p_values[a]).total_cmp(&clean(p_values[b])));
    let mut adjusted = vec![1.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let candidate = ((m - rank) as f64 * clean(p_values[i])).min(1.0);
        running = running.max(candidate);
        adjusted[i] = running;
    }
    adjusted
}

/// One test of one evaluation round, with the effect size that counts as worth an alert for its
/// signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundTest {
    pub segment: String,
    pub signal: String,
    pub test: WindowTest,
    pub min_effect: f64,
}

/// The verdict on one [`RoundTest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundDecision {
    pub segment: String,
    pub signal: String,
    pub p_value: f64,
    /// Holm-adjusted over every test of the round.
    pub adjusted_p_value: f64,
    pub effect_size: f64,
    pub min_effect: f64,
    /// adjusted p ≤ family α.
    pub significant: bool,
    /// significant *and* effect size ≥ its threshold.
    pub alarm: bool,
}

impl RoundDecision {
    /// How far the test stands towards an alarm, on the sequential detectors' scale (a
    /// statistic against a threshold of 1, higher is worse): the smaller of the p-value's margin
    /// `ln p / ln α` (1 when the adjusted p-value is α, 0 when it is 1) and the effect size's
    /// `effect / min_effect`. It reaches 1 exactly when the test alarms, so
    /// `statistic / threshold` means the same for every detector.
    pub fn margin(&self, family_alpha: f64) -> f64 {
        let p = self.adjusted_p_value.clamp(f64::MIN_POSITIVE, 1.0);
        let by_p = if family_alpha > 0.0 && family_alpha < 1.0 {
            p.ln() / family_alpha.ln()
        } else {
            f64::from(u8::from(self.significant))
        };
        let by_effect = if self.min_effect > 0.0 {
            (self.effect_size / self.min_effect).max(0.0)
        } else {
            f64::INFINITY
        };
        let m = by_p.min(by_effect);
        if m.is_nan() { 0.0 } else { m }
    }
}

/// Applies Holm's correction at `family_alpha` across all (segment × signal) tests of one round
/// and the p-value-and-effect-size rule.
pub fn evaluate_round(tests: &[RoundTest], family_alpha: f64) -> Vec<RoundDecision> {
    let p: Vec<f64> = tests.iter().map(|t| t.test.p_value).collect();
    let adjusted = holm_adjust(&p);
    tests
        .iter()
        .zip(adjusted)
        .map(|(t, adjusted_p_value)| {
            let significant = adjusted_p_value <= family_alpha;
            RoundDecision {
                segment: t.segment.clone(),
                signal: t.signal.clone(),
                p_value: t.test.p_value,
                adjusted_p_value,
                effect_size: t.test.effect_size,
                min_effect: t.min_effect,
                significant,
                alarm: significant && t.test.effect_size >= t.min_effect,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-300)
    }

    #[test]
    fn the_margin_reaches_one_exactly_when_the_test_alarms() {
        let decide = |adjusted_p_value: f64, effect_size: f64| {
            let significant = adjusted_p_value <= 0.05;
            RoundDecision {
                segment: "*".into(),
                signal: "confidence".into(),
                p_value: adjusted_p_value,
                adjusted_p_value,
                effect_size,
                min_effect: 0.1,
                significant,
                alarm: significant && effect_size >= 0.1,
            }
        };
        for (p, effect) in [
            (1.0, 0.0),
            (0.9, 0.5),
            (0.06, 0.5),
            (0.05, 0.1),
            (0.01, 0.09),
            (0.01, 0.3),
            (0.0, 0.3),
            (0.0, 0.0),
            (1e-12, 2.0),
        ] {
            let d = decide(p, effect);
            let m = d.margin(0.05);
            assert!(m.is_finite() && m >= 0.0, "p {p}, effect {effect}: {m}");
            assert_eq!(m >= 1.0, d.alarm, "p {p}, effect {effect}: margin {m}");
        }
        // In control (p = 1): nowhere near the threshold, whatever the effect size.
        assert_eq!(decide(1.0, 0.5).margin(0.05), 0.0);
    }

    #[test]
    fn kolmogorov_survival_matches_scipy() {
        // scipy.special.kolmogorov(x)
        for (x, q) in [
            (0.3, 0.9999906941986655),
            (0.8, 0.5441424115741981),
            (1.0, 0.26999967167735456),
            (1.18, 0.1234538094297657),
            (1.5, 0.022217962616525127),
            (2.0, 0.0006709252557796953),
        ] {
            assert!(rel(kolmogorov_survival(x), q) < 1e-9, "x = {x}");
        }
        assert_eq!(kolmogorov_survival(0.0), 1.0);
    }

    #[test]
    fn ks_matches_a_reference_computation() {
        let a = [0.61, 0.72, 0.75, 0.80, 0.83, 0.88, 0.90, 0.91, 0.95, 0.97];
        let b = [0.40, 0.52, 0.58, 0.66, 0.70, 0.74, 0.79, 0.85];
        let t = ks_test(&a, &b).unwrap();
        // scipy.stats.ks_2samp(a, b).statistic; p = kolmogorov((√ne + 0.12 + 0.11/√ne)·D)
        assert!((t.statistic - 0.575).abs() < 1e-12);
        assert_eq!(t.effect_size, t.statistic);
        assert!(rel(t.p_value, 0.06422121745909881) < 1e-9, "{t:?}");
        // Identical samples: D = 0, p = 1 (statrs' series would not terminate here).
        let same = ks_test(&a, &a).unwrap();
        assert_eq!((same.statistic, same.p_value), (0.0, 1.0));
        // Ties across the samples are stepped over together.
        let tied = ks_test(&[1.0, 1.0, 2.0, 2.0], &[1.0, 2.0]).unwrap();
        assert_eq!(tied.statistic, 0.0);
    }

    #[test]
    fn ks_refuses_empty_and_non_finite_samples() {
        assert!(matches!(
            ks_test(&[], &[1.0]),
            Err(BaselineError::TooFew { .. })
        ));
        assert!(matches!(
            ks_test(&[1.0, f64::NAN], &[1.0]),
            Err(BaselineError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn class_mix_matches_scipy_and_survives_empty_classes() {
        // scipy.stats.chi2_contingency([[50,30,20,0],[30,30,35,5]], correction=False)
        let t = class_mix_test(&[50, 30, 20, 0], &[30, 30, 35, 5]).unwrap();
        assert!(rel(t.statistic, 14.09090909090909) < 1e-12);
        assert!(rel(t.p_value, 0.0027839854684719553) < 1e-8, "{t:?}");
        assert_eq!(t.degrees_of_freedom, Some(3));
        assert!((t.effect_size - 0.2).abs() < 1e-12);
        // A class absent from both samples is dropped, a class new in the window is counted,
        // and a window with a class the baseline lacks gives finite numbers.
        let t = class_mix_test(&[50, 30, 20, 0, 0], &[30, 30, 35, 5]).unwrap();
        assert_eq!(t.degrees_of_freedom, Some(3));
        assert!(rel(t.statistic, 14.09090909090909) < 1e-12);
        // One class on both sides: nothing can differ.
        let t = class_mix_test(&[0, 40], &[0, 10]).unwrap();
        assert_eq!(
            (t.p_value, t.effect_size, t.degrees_of_freedom),
            (1.0, 0.0, Some(0))
        );
        assert!(class_mix_test(&[0, 0], &[1, 2]).is_err());
    }

    #[test]
    fn psi_matches_a_reference_computation() {
        let bins = FeatureBins {
            edges: vec![1.0, 2.0, 3.0],
            counts: vec![25, 25, 25, 25],
        };
        let t = psi_test(&bins, &[10, 20, 30, 40]).unwrap();
        // numpy with the 0.5 pseudo-count; scipy.stats.chi2.sf(psi / (1/100 + 1/100), 3)
        assert!(rel(t.effect_size, 0.21799421315274758) < 1e-12);
        assert!(rel(t.statistic, 10.899710657637378) < 1e-12);
        assert!(rel(t.p_value, 0.012280724794235257) < 1e-8);
        let same = psi_test(&bins, &[25, 25, 25, 25]).unwrap();
        assert_eq!((same.effect_size, same.p_value), (0.0, 1.0));
        // An empty bin on either side stays finite.
        let empty = psi_test(&bins, &[0, 0, 0, 100]).unwrap();
        assert!(empty.effect_size.is_finite() && empty.p_value.is_finite());
        assert!(psi_test(&bins, &[1, 2]).is_err());
        assert!(psi_test(&bins, &[0, 0, 0, 0]).is_err());
    }

    #[test]
    fn feature_bins_use_baseline_quantiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let bins = FeatureBins::from_baseline(&values, 10, "x").unwrap();
        assert_eq!(
            bins.edges,
            vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
        );
        assert_eq!(bins.counts, vec![10; 10]);
        assert_eq!(bins.bin_of(-5.0), 0);
        assert_eq!(bins.bin_of(10.0), 0);
        assert_eq!(bins.bin_of(10.5), 1);
        assert_eq!(bins.bin_of(1e9), 9);
        // Heavy ties collapse edges; a constant feature is an error, not a 1-bin PSI.
        let tied: Vec<f64> = (0..100)
            .map(|i| if i < 80 { 0.0 } else { i as f64 })
            .collect();
        let bins = FeatureBins::from_baseline(&tied, 10, "t").unwrap();
        assert!(bins.edges.windows(2).all(|w| w[0] < w[1]));
        assert!(matches!(
            FeatureBins::from_baseline(&[3.0; 50], 10, "c"),
            Err(BaselineError::ZeroVariance { .. })
        ));
    }

    #[test]
    fn holm_on_a_known_vector() {
        let adjusted = holm_adjust(&[0.01, 0.04, 0.03, 0.005]);
        let expected = [0.03, 0.06, 0.06, 0.02];
        for (a, e) in adjusted.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{adjusted:?}");
        }
        assert_eq!(holm_adjust(&[0.5, f64::NAN]), vec![1.0, 1.0]);
        assert!(holm_adjust(&[]).is_empty());
    }

    #[test]
    fn an_alarm_needs_both_significance_and_effect() {
        let test = |p: f64, effect: f64| WindowTest {
            kind: TestKind::KolmogorovSmirnov,
            statistic: effect,
            p_value: p,
            effect_size: effect,
            degrees_of_freedom: None,
            n_baseline: 5000,
            n_window: 5000,
        };
        let round = [
            ("A", 1e-9, 0.30), // significant, large: alarm
            ("B", 1e-9, 0.02), // significant, trivial: quiet
            ("C", 0.02, 0.40), // large, but not significant: Holm-adjusted 0.02 > 0.01
        ]
        .map(|(segment, p, effect)| RoundTest {
            segment: segment.into(),
            signal: "confidence".into(),
            test: test(p, effect),
            min_effect: 0.1,
        });
        let decisions = evaluate_round(&round, 0.01);
        let alarms: Vec<bool> = decisions.iter().map(|d| d.alarm).collect();
        assert_eq!(alarms, vec![true, false, false]);
        assert!(decisions[1].significant);
        assert!((decisions[2].adjusted_p_value - 0.02).abs() < 1e-12);
    }
}
