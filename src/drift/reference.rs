//! The reference profile of a baseline version: what `sensei baseline` measures on the lab set,
//! and every detector's threshold calibrated from it.

use serde::{Deserialize, Serialize};

use crate::config::{Config, SamplingPolicy};
use crate::monitor::UncertaintyPolicy;
use crate::monitor::calibrate::{bernoulli_curve, cusum_curve, tail_clip};
use crate::monitor::curve::SIMULATED_TARGETS;
use crate::monitor::lab::LabRun;
use crate::monitor::sampling::{rate_under_policy, resample_under_policy};
use crate::monitor::window::FeatureBins;
use crate::monitor::{
    BankReference, Cusum, CusumParams, ThresholdCurve, bernoulli_delay, cusum_delay,
};

/// Values kept from the lab set for bootstrap calibration and KS tests.
pub const MAX_REFERENCE_VALUES: usize = 5000;
/// Lab records needed before a baseline is accepted.
pub const MIN_LAB_RECORDS: usize = 100;
/// Bins per input feature for PSI.
pub const PSI_BINS: usize = 10;
/// A segment's window enters a round only with at least this many records.
pub const MIN_WINDOW_RECORDS: usize = 30;
/// The lab quantile at which a real-valued CUSUM's increments are clipped (`monitor::Cusum`):
/// 1 % of the lab values lie above it, so a 5000-value lab set estimates that mass from 50
/// values. A higher quantile estimates the mass above it from fewer values, and on a heavy tail
/// that mass is what the false-alarm rate hangs on (measured against 0.995 and 0.999 in
/// docs/detection.md).
pub const CLIP_QUANTILE: f64 = 0.99;

/// A Bernoulli signal's reference: the rate and what it was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateReference {
    pub rate: f64,
    /// Events and trials behind the rate (weighted by the sampling policy where one applies).
    pub events: f64,
    pub trials: f64,
    /// The CUSUM's p0 and p1 and calibrated threshold.
    pub p0: f64,
    pub p1: f64,
    pub threshold: f64,
    pub simulated_arl0: f64,
    /// Mean zero-state delay, in the detector's observations, on a stream at p1
    /// (`monitor::delay`); `None` in profiles stored before it was measured.
    #[serde(default)]
    pub expected_delay: Option<f64>,
    /// h for any ARL0 (`monitor::curve`): the armed threshold follows the false-alarm budget.
    /// `None` in profiles stored before it was measured (those detectors keep `threshold`).
    #[serde(default)]
    pub curve: Option<ThresholdCurve>,
    /// The bank of CUSUMs at several p1 (`monitor::bank`, `[detect] detector = "bank"`) and the
    /// curve of its level. `None` in profiles stored before the bank existed, or when p0 leaves
    /// no room for its members (those signals get the single CUSUM).
    #[serde(default)]
    pub bank: Option<BankReference>,
}

/// A real-valued signal's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueReference {
    pub mean: f64,
    pub sd: f64,
    pub k: f64,
    pub threshold: f64,
    pub simulated_arl0: f64,
    /// Mean zero-state delay, in the detector's observations, on the lab values shifted up by
    /// δ = 2k (`monitor::delay`); `None` in profiles stored before it was measured.
    #[serde(default)]
    pub expected_delay: Option<f64>,
    /// h for any ARL0 (`monitor::curve`), as for a rate.
    #[serde(default)]
    pub curve: Option<ThresholdCurve>,
    /// The clip of the detector's increments, the lab values' [`CLIP_QUANTILE`]; the curve is
    /// calibrated on the clipped increments. `None` in profiles stored before clipping (the
    /// daemon recalibrates those at start, [`Reference::clip_tails`]), for confidence (bounded,
    /// never clipped), or when the lab values leave no room for one.
    #[serde(default)]
    pub clip: Option<f64>,
    /// Up to [`MAX_REFERENCE_VALUES`] lab values (evenly thinned).
    pub values: Vec<f64>,
}

impl ValueReference {
    /// The detector this reference arms (at its stored threshold; the budget moves it).
    pub fn detector(&self) -> Option<Cusum> {
        Cusum::new(self.mean, self.k, self.threshold)
            .and_then(|d| d.with_clip(self.clip))
            .ok()
    }
}

/// The reference profile of one baseline version (stored as `baselines.profile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub records: u64,
    pub classes: usize,
    /// The ARL0 `threshold` and `simulated_arl0` of every signal refer to (the largest target
    /// simulated); the armed thresholds follow the false-alarm budget.
    pub arl0: f64,
    /// Records per second over the lab set's timestamps: the budget's expected rate until the
    /// field has shown its own.
    #[serde(default)]
    pub records_per_second: Option<f64>,
    /// Share of lab records with a label: the budget's expected share of labelled records.
    #[serde(default)]
    pub labelled_share: Option<f64>,
    pub disagreement: Option<RateReference>,
    pub kl: Option<ValueReference>,
    pub attention_kl: Option<ValueReference>,
    /// Of 1 − confidence.
    pub uncertainty: Option<ValueReference>,
    pub confidence_values: Vec<f64>,
    pub class_counts: Vec<u64>,
    pub features: Vec<Option<FeatureBins>>,
    pub student_error: Option<RateReference>,
    pub teacher_error: Option<RateReference>,
    pub student_accuracy: Option<f64>,
    pub teacher_accuracy: Option<f64>,
    pub agreement: f64,
    pub student_latency_us: f64,
    pub teacher_latency_us: f64,
    /// The uncertainty-weighted sampling policy fitted on the lab set (`[sampling] policy =
    /// "uncertainty"`); `None` for uniform sampling.
    pub sampling_policy: Option<UncertaintyPolicy>,
    /// Why a signal has no detector (too few lab records, no attention, no labels, …).
    pub warnings: Vec<String>,
}

/// The value, or `None` with the reason added to the warnings.
fn keep<T>(warnings: &mut Vec<String>, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            warnings.push(e);
            None
        }
    }
}

/// [`thin`], in ascending order: the Kolmogorov–Smirnov test of every round needs them sorted.
fn sorted_thin(values: &[f64]) -> Vec<f64> {
    let mut v = thin(values);
    v.sort_unstable_by(f64::total_cmp);
    v
}

fn thin(values: &[f64]) -> Vec<f64> {
    if values.len() <= MAX_REFERENCE_VALUES {
        return values.to_vec();
    }
    let step = values.len() as f64 / MAX_REFERENCE_VALUES as f64;
    (0..MAX_REFERENCE_VALUES)
        .map(|i| values[(i as f64 * step) as usize])
        .collect()
}

/// p0 for a Bernoulli CUSUM from `k` events in `n` trials. A lab set with no event at all
/// (k = 0) has no likelihood ratio at p0 = 0; the Jeffreys estimate (k + ½)/(n + 1) is used
/// instead, which is what one such lab set supports.
fn rate_reference(
    what: &str,
    k: f64,
    n: f64,
    shift: f64,
    arl0: f64,
    seed: u64,
) -> Result<RateReference, String> {
    if n < MIN_LAB_RECORDS as f64 {
        return Err(format!(
            "{what}: {n} lab samples, at least {MIN_LAB_RECORDS} needed"
        ));
    }
    let rate = k / n;
    let p0 = (k + 0.5) / (n + 1.0);
    let p1 = (p0 + shift).min(0.999);
    if p1 <= p0 {
        return Err(format!(
            "{what}: baseline rate {rate:.3} leaves no room for a shift of {shift}"
        ));
    }
    let (curve, cals) = bernoulli_curve(p0, p1, seed).map_err(|e| format!("{what}: {e}"))?;
    let cal = cals
        .last()
        .cloned()
        .ok_or_else(|| format!("{what}: no calibration"))?;
    let cap = (10.0 * arl0) as u64;
    let expected_delay = bernoulli_delay(p0, p1, cal.threshold, cap, seed ^ 0xde1a).ok();
    let bank = BankReference::calibrate(p0, shift, seed ^ 0xba4c).ok();
    Ok(RateReference {
        rate,
        events: k,
        trials: n,
        p0,
        p1,
        threshold: cal.threshold,
        simulated_arl0: cal.arl0,
        expected_delay,
        curve: Some(curve),
        bank,
    })
}

fn value_reference(
    what: &str,
    values: &[f64],
    tail: Tail,
    shift_sd: f64,
    arl0: f64,
    seed: u64,
) -> Result<ValueReference, String> {
    if values.len() < MIN_LAB_RECORDS {
        return Err(format!(
            "{what}: {} lab values, at least {MIN_LAB_RECORDS} needed",
            values.len()
        ));
    }
    let params =
        CusumParams::from_baseline(values, shift_sd).map_err(|e| format!("{what}: {e}"))?;
    calibrate_values(what, thin(values), tail, params, arl0, seed)
}

/// Whether a real-valued signal's increments are clipped at the lab's [`CLIP_QUANTILE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// KL and attention KL: unbounded above, often heavy-tailed; the bootstrap cannot draw
    /// beyond the lab maximum, so unclipped thresholds come out too low.
    Clipped,
    /// 1 − confidence: bounded (below 1 − 1/classes), so its lab set holds its tail and the
    /// clip would buy no calibration, only delay: a shift pushes many values past the clip
    /// (measured in docs/detection.md).
    Bounded,
}

/// The clip, threshold curve and expected delay of a real-valued signal with parameters
/// `params` on the (thinned) lab values `kept`.
fn calibrate_values(
    what: &str,
    kept: Vec<f64>,
    tail: Tail,
    params: CusumParams,
    arl0: f64,
    seed: u64,
) -> Result<ValueReference, String> {
    let clip = match tail {
        Tail::Clipped => {
            tail_clip(&kept, CLIP_QUANTILE, params.k).filter(|&c| c > params.mean + params.k)
        }
        Tail::Bounded => None,
    };
    let (curve, cals) =
        cusum_curve(&kept, params.k, clip, seed).map_err(|e| format!("{what}: {e}"))?;
    let cal = cals
        .last()
        .cloned()
        .ok_or_else(|| format!("{what}: no calibration"))?;
    let detector = Cusum::new(params.mean, params.k, cal.threshold)
        .and_then(|d| d.with_clip(clip))
        .map_err(|e| format!("{what}: {e}"))?;
    let cap = (10.0 * arl0) as u64;
    let expected_delay = cusum_delay(&kept, &detector, cap, seed ^ 0xde1a).ok();
    Ok(ValueReference {
        mean: params.mean,
        sd: params.sd,
        k: params.k,
        threshold: cal.threshold,
        simulated_arl0: cal.arl0,
        expected_delay,
        curve: Some(curve),
        clip,
        values: kept,
    })
}

impl Reference {
    /// Recalibrates the real-valued signals of a profile stored before their increments were
    /// clipped (`clip` absent): the clip, curve, threshold and expected delay are computed anew
    /// from the stored lab values, mean and k, with the seeds [`build_reference`] uses, so the
    /// result is what a new `sensei baseline` on the same lab set stores. Returns the signals
    /// recalibrated; a signal whose recalibration fails keeps its unclipped calibration.
    pub fn clip_tails(&mut self, config: &Config) -> Vec<&'static str> {
        let seed = config.detect.seed;
        let arl0 = self.arl0;
        let mut done = Vec::new();
        // Confidence is never clipped (`Tail::Bounded`).
        for (name, slot, signal_seed) in [
            ("kl", &mut self.kl, seed ^ 1),
            ("attention_kl", &mut self.attention_kl, seed ^ 2),
        ] {
            let Some(r) = slot.as_mut() else { continue };
            if r.clip.is_some() || r.values.len() < MIN_LAB_RECORDS {
                continue;
            }
            let params = CusumParams {
                mean: r.mean,
                sd: r.sd,
                k: r.k,
            };
            if let Ok(fresh) = calibrate_values(
                name,
                r.values.clone(),
                Tail::Clipped,
                params,
                arl0,
                signal_seed,
            ) && fresh.clip.is_some()
            {
                *r = fresh;
                done.push(name);
            }
        }
        done
    }
}

/// Builds and calibrates the reference from a lab run. Signals the lab set cannot support get
/// no detector and a warning that says why; a lab set too small for anything is an error.
pub fn build_reference(run: &LabRun, config: &Config) -> Result<Reference, String> {
    let n = run.records();
    if n < MIN_LAB_RECORDS {
        return Err(format!(
            "the lab set has {n} records; a baseline needs at least {MIN_LAB_RECORDS} to estimate rates and calibrate thresholds"
        ));
    }
    let d = &config.detect;
    let arl0 = SIMULATED_TARGETS[SIMULATED_TARGETS.len() - 1];
    let mut warnings = Vec::new();
    let uncertainty_values: Vec<f64> = run.confidence.iter().map(|c| 1.0 - c).collect();
    let sampling_policy = match config.sampling.policy {
        SamplingPolicy::Uniform => None,
        SamplingPolicy::Uncertainty => keep(
            &mut warnings,
            UncertaintyPolicy::fit(
                &uncertainty_values,
                config.sampling.rate,
                config.sampling.floor * config.sampling.rate,
            )
            .map_err(|e| format!("sampling: {e}; the teacher samples uniformly instead")),
        ),
    };
    // The detectors watch the *sampled* streams, so their references are measured as the policy
    // would sample the lab set: p0 is Σπd/Σπ, real values are resampled with probability ∝ π.
    let under_policy = |values: &[f64], seed: u64| -> Vec<f64> {
        match (&sampling_policy, values.len() == uncertainty_values.len()) {
            (Some(p), true) => {
                resample_under_policy(values, &uncertainty_values, p, values.len(), seed)
                    .unwrap_or_else(|_| values.to_vec())
            }
            _ => values.to_vec(),
        }
    };
    let disagreements = run.disagreement.iter().filter(|&&x| x).count() as u64;
    let flags: Vec<f64> = run
        .disagreement
        .iter()
        .map(|&x| f64::from(u8::from(x)))
        .collect();
    let disagreement_k = match &sampling_policy {
        Some(p) => {
            rate_under_policy(&flags, &uncertainty_values, p)
                .unwrap_or(disagreements as f64 / n as f64)
                * n as f64
        }
        None => disagreements as f64,
    };
    let disagreement = keep(
        &mut warnings,
        rate_reference(
            "disagreement",
            disagreement_k,
            n as f64,
            d.min_shift_disagreement,
            arl0,
            d.seed,
        ),
    );
    let kl = keep(
        &mut warnings,
        value_reference(
            "kl",
            &under_policy(&run.kl, d.seed ^ 11),
            Tail::Clipped,
            d.min_shift_sd,
            arl0,
            d.seed ^ 1,
        ),
    );
    let attention_kl = if run.attention_kl.is_empty() {
        warnings.push(
            "attention_kl: the models expose no comparable attention; no attention detector".into(),
        );
        None
    } else {
        keep(
            &mut warnings,
            value_reference(
                "attention_kl",
                &under_policy(&run.attention_kl, d.seed ^ 12),
                Tail::Clipped,
                d.min_shift_sd,
                arl0,
                d.seed ^ 2,
            ),
        )
    };
    let uncertainty = keep(
        &mut warnings,
        value_reference(
            "confidence",
            &uncertainty_values,
            Tail::Bounded,
            d.min_shift_sd,
            arl0,
            d.seed ^ 3,
        ),
    );
    let mut class_counts = vec![0u64; run.classes.max(1)];
    for &p in &run.prediction {
        if let Some(c) = class_counts.get_mut(p.max(0) as usize) {
            *c += 1;
        }
    }
    let never: Vec<usize> = (0..class_counts.len())
        .filter(|&c| class_counts[c] == 0)
        .collect();
    if !never.is_empty() {
        warnings.push(format!(
            "class_mix: classes {never:?} never occur in the lab predictions; the chi-square test smooths them and a field occurrence counts as a shift"
        ));
    }
    let width = run.features.iter().map(Vec::len).min().unwrap_or(0);
    let mut features = Vec::with_capacity(width);
    for f in 0..width {
        let values: Vec<f64> = run.features.iter().map(|v| v[f]).collect();
        match FeatureBins::from_baseline(&values, PSI_BINS, &format!("input feature {f}")) {
            Ok(b) => features.push(Some(b)),
            Err(e) => {
                warnings.push(format!("input_psi: {e}; no PSI test for this feature"));
                features.push(None);
            }
        }
    }
    if run.records_per_second().is_none() {
        warnings.push(
            "false-alarm budget: the lab records' timestamps do not span ten seconds; the budget assumes 1 record/s until ten minutes of field records show the rate".into(),
        );
    }
    let labelled_share = run.labels.iter().filter(|l| l.is_some()).count() as f64 / n as f64;
    let labelled: Vec<(usize, i64)> = run
        .labels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (i, l)))
        .collect();
    let (student_error, teacher_error, student_accuracy, teacher_accuracy) = if labelled.is_empty()
    {
        warnings.push(
            "student_error, teacher_error: the lab set has no labels; no error-rate detectors"
                .into(),
        );
        (None, None, None, None)
    } else {
        let m = labelled.len() as u64;
        let s_err = labelled
            .iter()
            .filter(|&&(i, l)| run.prediction[i] != l)
            .count() as u64;
        let t_err = labelled
            .iter()
            .filter(|&&(i, l)| run.teacher_prediction[i] != l)
            .count() as u64;
        (
            keep(
                &mut warnings,
                rate_reference(
                    "student_error",
                    s_err as f64,
                    m as f64,
                    d.min_shift_error,
                    arl0,
                    d.seed ^ 4,
                ),
            ),
            keep(
                &mut warnings,
                rate_reference(
                    "teacher_error",
                    t_err as f64,
                    m as f64,
                    d.min_shift_error,
                    arl0,
                    d.seed ^ 5,
                ),
            ),
            Some(1.0 - s_err as f64 / m as f64),
            Some(1.0 - t_err as f64 / m as f64),
        )
    };
    Ok(Reference {
        records: n as u64,
        classes: run.classes,
        arl0,
        records_per_second: run.records_per_second(),
        labelled_share: Some(labelled_share),
        disagreement,
        kl,
        attention_kl,
        uncertainty,
        confidence_values: sorted_thin(&run.confidence),
        class_counts,
        features,
        student_error,
        teacher_error,
        student_accuracy,
        teacher_accuracy,
        agreement: 1.0 - disagreements as f64 / n as f64,
        student_latency_us: run.student_latency_us,
        teacher_latency_us: run.teacher_latency_us,
        sampling_policy,
        warnings,
    })
}
