//! Sequential change detectors for the per-sample streams: the Bernoulli CUSUM (disagreement and
//! error rates), the one-sided CUSUM for real-valued signals (KL, attention KL, 1 − confidence,
//! entropy) and Page-Hinkley.
//!
//! Each detector is a plain state machine: `update` takes the observation and the record's
//! sequence number, nothing else — no clock, no disk. The whole state derives `Serialize` /
//! `Deserialize`, so the daemon stores it as JSON after every update batch; a restored detector
//! continues exactly where it stopped, and because an alarm re-arms the detector (S = 0) *before*
//! the state is stored, a restart can never fire the same alarm twice.
//!
//! The thresholds `h` come from [`crate::monitor::calibrate`], never from a hand-set constant.

use serde::{Deserialize, Serialize};

use super::BaselineError;

/// One detection: what fired, when, and from where the detector thinks the change started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// The detector statistic when it crossed the threshold.
    pub statistic: f64,
    pub threshold: f64,
    /// Sequence number of the record that made the statistic cross the threshold.
    pub detected_at: u64,
    /// Sequence number of the first record after the statistic last stood at zero — the maximum
    /// likelihood change point of a CUSUM (Page 1954).
    pub estimated_change: u64,
    /// The in-control value (p0, μ0, or for Page-Hinkley the mean before the change point).
    pub baseline_value: f64,
    /// The mean of the observations from `estimated_change` to `detected_at` inclusive.
    pub current_value: f64,
    /// Observations from `estimated_change` to `detected_at` inclusive.
    pub observations_since_change: u64,
}

/// The part common to both CUSUMs: S = max(0, S + increment), the excursion bookkeeping for the
/// change-point estimate, and the re-arm on alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CusumCore {
    threshold: f64,
    statistic: f64,
    /// Sequence number of the first observation of the current excursion above zero.
    excursion_start: Option<u64>,
    excursion_n: u64,
    excursion_sum: f64,
    observed: u64,
    alarms: u64,
}

impl CusumCore {
    fn new(threshold: f64) -> Result<CusumCore, BaselineError> {
        if !(threshold.is_finite() && threshold > 0.0) {
            return Err(BaselineError::invalid(
                "threshold h",
                threshold,
                "must be finite and > 0",
            ));
        }
        Ok(CusumCore {
            threshold,
            statistic: 0.0,
            excursion_start: None,
            excursion_n: 0,
            excursion_sum: 0.0,
            observed: 0,
            alarms: 0,
        })
    }

    /// A new threshold for the running statistic (a re-allocated false-alarm budget); a
    /// non-finite or non-positive value is ignored.
    fn set_threshold(&mut self, threshold: f64) {
        if threshold.is_finite() && threshold > 0.0 {
            self.threshold = threshold;
        }
    }

    fn step(&mut self, increment: f64, value: f64, seq: u64, baseline_value: f64) -> Option<Alarm> {
        self.observed += 1;
        let next = self.statistic + increment;
        if next <= 0.0 {
            // Back at zero: whatever change there was, it is not visible any more; the next
            // excursion starts the change-point estimate afresh.
            self.rearm();
            return None;
        }
        if self.excursion_start.is_none() {
            self.excursion_start = Some(seq);
        }
        self.statistic = next;
        self.excursion_n += 1;
        self.excursion_sum += value;
        if self.statistic < self.threshold {
            return None;
        }
        let n = self.excursion_n.max(1);
        let alarm = Alarm {
            statistic: self.statistic,
            threshold: self.threshold,
            detected_at: seq,
            estimated_change: self.excursion_start.unwrap_or(seq),
            baseline_value,
            current_value: self.excursion_sum / n as f64,
            observations_since_change: self.excursion_n,
        };
        self.alarms += 1;
        self.rearm();
        Some(alarm)
    }

    fn rearm(&mut self) {
        self.statistic = 0.0;
        self.excursion_start = None;
        self.excursion_n = 0;
        self.excursion_sum = 0.0;
    }
}

/// Bernoulli CUSUM (Reynolds & Stoumbos 1999) on a 0/1 stream such as teacher–student
/// disagreement or student error. The increments are the log-likelihood ratio of
/// Bernoulli(p1) against Bernoulli(p0), so the detector is the optimal (Lorden/Moustakides)
/// sequential test for a step from p0 to p1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BernoulliCusum {
    p0: f64,
    p1: f64,
    /// ln(p1 / p0): the increment of a 1.
    up: f64,
    /// ln((1 − p1) / (1 − p0)): the (negative) increment of a 0.
    down: f64,
    core: CusumCore,
}

impl BernoulliCusum {
    /// `p0` is the in-control rate (measured under the same sampling policy as the stream the
    /// detector will see), `p1 > p0` the smallest rate worth an alert, `h` the calibrated
    /// threshold. Rates of exactly 0 or 1 have no likelihood ratio and are refused.
    pub fn new(p0: f64, p1: f64, h: f64) -> Result<BernoulliCusum, BaselineError> {
        let (up, down) = bernoulli_increments(p0, p1)?;
        Ok(BernoulliCusum {
            p0,
            p1,
            up,
            down,
            core: CusumCore::new(h)?,
        })
    }

    /// The log-likelihood ratio of one observation, ln P(x | p1) / P(x | p0): what it adds to S
    /// before the clamp at zero.
    pub fn increment(&self, x: bool) -> f64 {
        if x { self.up } else { self.down }
    }

    pub fn update(&mut self, x: bool, seq: u64) -> Option<Alarm> {
        let increment = self.increment(x);
        self.core
            .step(increment, f64::from(u8::from(x)), seq, self.p0)
    }

    /// Sets the statistic back to zero (the detector re-arms by itself after an alarm).
    pub fn reset(&mut self) {
        self.core.rearm();
    }

    pub fn statistic(&self) -> f64 {
        self.core.statistic
    }
    pub fn threshold(&self) -> f64 {
        self.core.threshold
    }
    /// Moves the threshold, keeping the statistic (see `CusumCore::set_threshold`).
    pub fn set_threshold(&mut self, h: f64) {
        self.core.set_threshold(h);
    }
    pub fn p0(&self) -> f64 {
        self.p0
    }
    pub fn p1(&self) -> f64 {
        self.p1
    }
    /// Observations seen since the detector was created.
    pub fn observed(&self) -> u64 {
        self.core.observed
    }
    pub fn alarms(&self) -> u64 {
        self.core.alarms
    }
    /// Sequence number where the current excursion began, if the statistic is above zero.
    pub fn excursion_start(&self) -> Option<u64> {
        self.core.excursion_start
    }
}

/// The log-likelihood-ratio increments `(ln(p1/p0), ln((1−p1)/(1−p0)))`, after checking that
/// both are finite and that a 1 pushes up while a 0 pulls down.
pub fn bernoulli_increments(p0: f64, p1: f64) -> Result<(f64, f64), BaselineError> {
    if !(p0.is_finite() && p0 > 0.0 && p0 < 1.0) {
        return Err(BaselineError::invalid(
            "p0",
            p0,
            "the in-control rate must lie strictly between 0 and 1",
        ));
    }
    if !(p1.is_finite() && p1 > p0 && p1 < 1.0) {
        return Err(BaselineError::invalid(
            "p1",
            p1,
            "the alert rate must lie strictly between p0 and 1",
        ));
    }
    Ok(((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln()))
}

/// The parameters of a one-sided (upward) CUSUM on a real-valued signal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CusumParams {
    /// In-control mean μ0 (the baseline mean).
    pub mean: f64,
    /// Baseline standard deviation, kept for reporting.
    pub sd: f64,
    /// Reference value k = δ/2, δ the smallest upward shift worth an alert.
    pub k: f64,
}

impl CusumParams {
    /// μ0 and σ from the baseline sample, δ = `shift_sd` × σ and k = δ/2 (the choice that makes
    /// the CUSUM optimal for a shift of exactly δ in a normal stream).
    pub fn from_baseline(values: &[f64], shift_sd: f64) -> Result<CusumParams, BaselineError> {
        if !(shift_sd.is_finite() && shift_sd > 0.0) {
            return Err(BaselineError::invalid(
                "shift_sd",
                shift_sd,
                "must be finite and > 0",
            ));
        }
        let (mean, sd) = super::mean_sd(values, "CUSUM baseline values")?;
        Ok(CusumParams {
            mean,
            sd,
            k: shift_sd * sd / 2.0,
        })
    }
}

/// What one observation adds to a real-valued CUSUM before the clamp at zero:
/// min(x, clip) − μ0 − k. Shared by the running detector and every simulation of it
/// (`monitor::calibrate`, `monitor::delay`), so the calibrated and the armed increments cannot
/// differ.
pub fn clipped_increment(x: f64, mean: f64, k: f64, clip: Option<f64>) -> f64 {
    match clip {
        Some(c) => x.min(c) - mean - k,
        None => x - mean - k,
    }
}

/// One-sided CUSUM for an upward shift in the mean of a real-valued stream:
/// S = max(0, S + min(x, c) − μ0 − k), alarm at S ≥ h.
///
/// The clip c (a high quantile of the lab values, see `drift::reference`) bounds what one
/// observation can add. The threshold is calibrated on the same clipped increments, so the only
/// part of the in-control tail that matters is the mass above c — which a lab set estimates
/// well — and not the shape of the tail beyond the largest lab value, which a bootstrap cannot
/// draw from. Without a clip (`None`, detectors stored before it existed) the increment is
/// x − μ0 − k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cusum {
    mean: f64,
    k: f64,
    #[serde(default)]
    clip: Option<f64>,
    /// Non-finite observations are skipped (a NaN would freeze S for good) and counted here.
    skipped_non_finite: u64,
    core: CusumCore,
}

impl Cusum {
    pub fn new(mean: f64, k: f64, h: f64) -> Result<Cusum, BaselineError> {
        if !mean.is_finite() {
            return Err(BaselineError::invalid("mean", mean, "must be finite"));
        }
        if !(k.is_finite() && k >= 0.0) {
            return Err(BaselineError::invalid("k", k, "must be finite and >= 0"));
        }
        Ok(Cusum {
            mean,
            k,
            clip: None,
            skipped_non_finite: 0,
            core: CusumCore::new(h)?,
        })
    }

    /// The same detector with its increments clipped at `clip` (`None`: unclipped). A clip that
    /// is not finite, or that leaves no positive increment (c ≤ μ0 + k), is refused.
    pub fn with_clip(mut self, clip: Option<f64>) -> Result<Cusum, BaselineError> {
        self.set_clip(clip)?;
        Ok(self)
    }

    /// Sets the clip, keeping the statistic (see [`Cusum::with_clip`]).
    pub fn set_clip(&mut self, clip: Option<f64>) -> Result<(), BaselineError> {
        if let Some(c) = clip
            && !(c.is_finite() && c > self.mean + self.k)
        {
            return Err(BaselineError::invalid(
                "clip",
                c,
                "must be finite and above the mean plus k, or the detector could never move",
            ));
        }
        self.clip = clip;
        Ok(())
    }

    /// What one observation adds to S before the clamp at zero, min(x, c) − μ0 − k (0 for a
    /// non-finite value, which is skipped).
    pub fn increment(&self, x: f64) -> f64 {
        if x.is_finite() {
            clipped_increment(x, self.mean, self.k, self.clip)
        } else {
            0.0
        }
    }

    /// Feeds one observation. The alarm's `current_value` is the mean of the observations
    /// themselves, unclipped.
    pub fn update(&mut self, x: f64, seq: u64) -> Option<Alarm> {
        if !x.is_finite() {
            self.skipped_non_finite += 1;
            return None;
        }
        let increment = clipped_increment(x, self.mean, self.k, self.clip);
        self.core.step(increment, x, seq, self.mean)
    }

    pub fn reset(&mut self) {
        self.core.rearm();
    }
    pub fn statistic(&self) -> f64 {
        self.core.statistic
    }
    pub fn threshold(&self) -> f64 {
        self.core.threshold
    }
    /// Moves the threshold, keeping the statistic (see `CusumCore::set_threshold`).
    pub fn set_threshold(&mut self, h: f64) {
        self.core.set_threshold(h);
    }
    pub fn mean(&self) -> f64 {
        self.mean
    }
    pub fn k(&self) -> f64 {
        self.k
    }
    pub fn clip(&self) -> Option<f64> {
        self.clip
    }
    pub fn observed(&self) -> u64 {
        self.core.observed
    }
    pub fn alarms(&self) -> u64 {
        self.core.alarms
    }
    pub fn skipped_non_finite(&self) -> u64 {
        self.skipped_non_finite
    }
    pub fn excursion_start(&self) -> Option<u64> {
        self.core.excursion_start
    }
}

/// Page-Hinkley test for an upward shift (Page 1954, Hinkley 1971): m_t = Σ (x_i − x̄_i − δ)
/// with x̄_i the running mean of the stream itself, alarm when m_t − min m ≥ λ. Unlike the CUSUM
/// it needs no baseline mean — useful when the baseline of a signal is unreliable — at the cost
/// of a slower reaction, because the running mean absorbs part of the shift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    delta: f64,
    threshold: f64,
    /// No alarm before this many observations: the running mean is still too noisy.
    min_samples: u64,
    n: u64,
    mean: f64,
    cumulative: f64,
    minimum: f64,
    /// Sequence number after the minimum of `cumulative`, and the running mean there.
    after_minimum: Option<u64>,
    mean_at_minimum: f64,
    since_minimum_n: u64,
    since_minimum_sum: f64,
    skipped_non_finite: u64,
    observed: u64,
    alarms: u64,
}

impl PageHinkley {
    pub fn new(delta: f64, threshold: f64, min_samples: u64) -> Result<PageHinkley, BaselineError> {
        if !(delta.is_finite() && delta >= 0.0) {
            return Err(BaselineError::invalid(
                "delta",
                delta,
                "must be finite and >= 0",
            ));
        }
        if !(threshold.is_finite() && threshold > 0.0) {
            return Err(BaselineError::invalid(
                "threshold",
                threshold,
                "must be finite and > 0",
            ));
        }
        Ok(PageHinkley {
            delta,
            threshold,
            min_samples,
            n: 0,
            mean: 0.0,
            cumulative: 0.0,
            minimum: 0.0,
            after_minimum: None,
            mean_at_minimum: 0.0,
            since_minimum_n: 0,
            since_minimum_sum: 0.0,
            skipped_non_finite: 0,
            observed: 0,
            alarms: 0,
        })
    }

    /// Advances the statistic and returns m_t − min m (shared with the calibration, so the
    /// simulated and the running detector cannot drift apart).
    pub(crate) fn advance(&mut self, x: f64) -> f64 {
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        self.cumulative += x - self.mean - self.delta;
        if self.cumulative < self.minimum {
            self.minimum = self.cumulative;
            self.after_minimum = None;
            self.mean_at_minimum = self.mean;
            self.since_minimum_n = 0;
            self.since_minimum_sum = 0.0;
        }
        if self.n >= self.min_samples {
            self.cumulative - self.minimum
        } else {
            0.0
        }
    }

    pub fn update(&mut self, x: f64, seq: u64) -> Option<Alarm> {
        if !x.is_finite() {
            self.skipped_non_finite += 1;
            return None;
        }
        self.observed += 1;
        let before = self.minimum;
        let statistic = self.advance(x);
        if self.cumulative >= before {
            if self.after_minimum.is_none() {
                self.after_minimum = Some(seq);
            }
            self.since_minimum_n += 1;
            self.since_minimum_sum += x;
        }
        if statistic < self.threshold {
            return None;
        }
        let alarm = Alarm {
            statistic,
            threshold: self.threshold,
            detected_at: seq,
            estimated_change: self.after_minimum.unwrap_or(seq),
            baseline_value: self.mean_at_minimum,
            current_value: self.since_minimum_sum / self.since_minimum_n.max(1) as f64,
            observations_since_change: self.since_minimum_n,
        };
        self.alarms += 1;
        self.reset();
        Some(alarm)
    }

    /// Forgets the stream (running mean included): the detector starts over.
    pub fn reset(&mut self) {
        let (observed, alarms, skipped) = (self.observed, self.alarms, self.skipped_non_finite);
        if let Ok(fresh) = PageHinkley::new(self.delta, self.threshold, self.min_samples) {
            *self = fresh;
        }
        self.observed = observed;
        self.alarms = alarms;
        self.skipped_non_finite = skipped;
    }

    pub fn statistic(&self) -> f64 {
        if self.n >= self.min_samples {
            self.cumulative - self.minimum
        } else {
            0.0
        }
    }
    pub fn threshold(&self) -> f64 {
        self.threshold
    }
    pub fn observed(&self) -> u64 {
        self.observed
    }
    pub fn alarms(&self) -> u64 {
        self.alarms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::rng::SplitMix64;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn bernoulli_increments_and_alarm_on_a_hand_computed_sequence() {
        // p0 = 0.1, p1 = 0.2: a 1 adds ln 2 = 0.693147, a 0 adds ln(0.8/0.9) = −0.117783.
        let mut d = BernoulliCusum::new(0.1, 0.2, 1.5).unwrap();
        let up = 2f64.ln();
        let down = (0.8f64 / 0.9).ln();
        assert!(d.update(false, 1).is_none());
        assert_eq!(d.statistic(), 0.0);
        assert!(d.update(true, 2).is_none());
        assert!(close(d.statistic(), up));
        assert!(d.update(false, 3).is_none());
        assert!(close(d.statistic(), up + down));
        assert!(d.update(true, 4).is_none());
        assert!(close(d.statistic(), 2.0 * up + down)); // 1.268511 < 1.5
        let alarm = d.update(true, 5).expect("3·ln2 + ln(8/9) = 1.961658 ≥ 1.5");
        assert!(close(alarm.statistic, 3.0 * up + down));
        assert_eq!(alarm.threshold, 1.5);
        assert_eq!(alarm.detected_at, 5);
        assert_eq!(
            alarm.estimated_change, 2,
            "the first record after S last stood at 0"
        );
        assert_eq!(alarm.observations_since_change, 4);
        assert!(close(alarm.current_value, 0.75));
        assert_eq!(alarm.baseline_value, 0.1);
        // Re-armed: the next record starts from zero.
        assert_eq!(d.statistic(), 0.0);
        assert_eq!(d.alarms(), 1);
        assert!(d.update(false, 6).is_none());
        assert_eq!(d.observed(), 6);
    }

    #[test]
    fn change_point_moves_to_the_latest_excursion() {
        let mut d = BernoulliCusum::new(0.1, 0.2, 1.9).unwrap();
        d.update(true, 10); // S = 0.693, excursion from 10
        for seq in 11..=16 {
            d.update(false, seq); // six zeros: 0.693 − 6·0.1178 < 0 → back to 0 at 16
        }
        assert_eq!(d.statistic(), 0.0);
        assert_eq!(d.excursion_start(), None);
        d.update(true, 17);
        d.update(true, 18);
        let alarm = d.update(true, 19).expect("3 ln 2 = 2.08 ≥ 1.9");
        assert_eq!(alarm.estimated_change, 17);
        assert_eq!(alarm.detected_at, 19);
        assert!(close(alarm.current_value, 1.0));
    }

    #[test]
    fn real_valued_cusum_on_a_hand_computed_sequence() {
        // μ0 = 1, k = 0.5, h = 2: increments x − 1.5.
        let mut d = Cusum::new(1.0, 0.5, 2.0).unwrap();
        assert!(d.update(1.0, 1).is_none()); // −0.5 → 0
        assert!(d.update(2.0, 2).is_none()); // 0.5
        assert!(d.update(2.5, 3).is_none()); // 1.5
        assert!(d.update(0.0, 4).is_none()); // 0
        assert!(d.update(f64::NAN, 5).is_none()); // skipped
        assert_eq!(d.skipped_non_finite(), 1);
        assert!(d.update(3.0, 6).is_none()); // 1.5
        let alarm = d.update(2.0, 7).expect("1.5 + 0.5 = 2.0 ≥ 2");
        assert!(close(alarm.statistic, 2.0));
        assert_eq!(alarm.estimated_change, 6);
        assert!(close(alarm.current_value, 2.5));
        assert_eq!(alarm.baseline_value, 1.0);
        assert_eq!(d.statistic(), 0.0);
    }

    #[test]
    fn clipped_cusum_on_a_hand_computed_sequence() {
        // μ0 = 1, k = 0.5, c = 2.5, h = 2: increments min(x, 2.5) − 1.5.
        let mut d = Cusum::new(1.0, 0.5, 2.0)
            .unwrap()
            .with_clip(Some(2.5))
            .unwrap();
        assert!(close(d.increment(100.0), 1.0));
        assert!(close(d.increment(2.0), 0.5));
        assert!(d.update(100.0, 1).is_none()); // 1.0, not 98.5
        assert!(close(d.statistic(), 1.0));
        let alarm = d.update(2.5, 2).expect("1.0 + 1.0 = 2.0 ≥ 2");
        assert!(close(alarm.statistic, 2.0));
        // The alarm reports the observations themselves, unclipped.
        assert!(close(alarm.current_value, 51.25));
        // Unclipped, the first value alone would have crossed.
        let mut raw = Cusum::new(1.0, 0.5, 2.0).unwrap();
        assert!(raw.update(100.0, 1).is_some());
        // A clip that leaves no positive increment is refused.
        assert!(
            Cusum::new(1.0, 0.5, 2.0)
                .unwrap()
                .with_clip(Some(1.5))
                .is_err()
        );
        assert!(
            Cusum::new(1.0, 0.5, 2.0)
                .unwrap()
                .with_clip(Some(f64::INFINITY))
                .is_err()
        );
    }

    /// A detector stored before increments were clipped (no `clip` in its JSON) loads unclipped
    /// and continues as it did.
    #[test]
    fn a_detector_stored_without_a_clip_loads_unclipped() {
        let mut d = Cusum::new(0.5, 0.1, 3.0).unwrap();
        d.update(1.7, 1);
        let mut json = serde_json::to_value(&d).unwrap();
        assert!(json.as_object_mut().unwrap().remove("clip").is_some());
        let mut old: Cusum = serde_json::from_value(json).unwrap();
        assert_eq!(old, d);
        assert_eq!(old.clip(), None);
        assert!(close(old.statistic(), 1.1));
        old.update(5.0, 2).expect("unclipped: 1.1 + 4.4 ≥ 3");
    }

    #[test]
    fn page_hinkley_detects_a_step_after_it_happened() {
        let mut d = PageHinkley::new(0.05, 5.0, 30).unwrap();
        let mut rng = SplitMix64::new(3);
        let mut alarm = None;
        for seq in 0..2000u64 {
            let shift = if seq >= 500 { 1.0 } else { 0.0 };
            let x = rng.next_f64() + shift;
            if let Some(a) = d.update(x, seq) {
                alarm = Some(a);
                break;
            }
        }
        let alarm = alarm.expect("a shift of 3.5 sd is found");
        assert!(
            alarm.detected_at >= 500 && alarm.detected_at < 560,
            "{alarm:?}"
        );
        assert!(
            alarm.estimated_change >= 460 && alarm.estimated_change <= 510,
            "{alarm:?}"
        );
        assert!(alarm.current_value > alarm.baseline_value);
    }

    #[test]
    fn degenerate_parameters_are_errors() {
        assert!(BernoulliCusum::new(0.0, 0.1, 3.0).is_err());
        assert!(BernoulliCusum::new(0.1, 0.1, 3.0).is_err());
        assert!(BernoulliCusum::new(0.1, 1.0, 3.0).is_err());
        assert!(BernoulliCusum::new(0.1, 0.2, f64::NAN).is_err());
        assert!(Cusum::new(0.0, -1.0, 3.0).is_err());
        assert!(Cusum::new(0.0, 0.1, 0.0).is_err());
        assert!(matches!(
            CusumParams::from_baseline(&[0.2; 50], 1.0),
            Err(BaselineError::ZeroVariance { .. })
        ));
        assert!(matches!(
            CusumParams::from_baseline(&[0.2], 1.0),
            Err(BaselineError::TooFew { .. })
        ));
    }

    #[test]
    fn state_restored_mid_stream_continues_identically() {
        let mut rng = SplitMix64::new(11);
        let stream: Vec<(bool, f64)> = (0..4000)
            .map(|i| {
                let p = if i > 2500 { 0.2 } else { 0.05 };
                (
                    rng.bernoulli(p),
                    rng.next_f64() + if i > 2500 { 0.3 } else { 0.0 },
                )
            })
            .collect();
        let mut b = BernoulliCusum::new(0.05, 0.1, 4.0).unwrap();
        let mut c = Cusum::new(0.5, 0.1, 3.0).unwrap();
        let mut p = PageHinkley::new(0.05, 3.0, 30).unwrap();
        let run = |b: &mut BernoulliCusum,
                   c: &mut Cusum,
                   p: &mut PageHinkley,
                   range: std::ops::Range<usize>| {
            let mut alarms = Vec::new();
            for i in range {
                let seq = i as u64;
                alarms.extend(b.update(stream[i].0, seq));
                alarms.extend(c.update(stream[i].1, seq));
                alarms.extend(p.update(stream[i].1, seq));
            }
            alarms
        };
        run(&mut b, &mut c, &mut p, 0..1777);
        let saved = serde_json::to_string(&(&b, &c, &p)).unwrap();
        let (mut b2, mut c2, mut p2): (BernoulliCusum, Cusum, PageHinkley) =
            serde_json::from_str(&saved).unwrap();
        assert_eq!((&b2, &c2, &p2), (&b, &c, &p));
        let original = run(&mut b, &mut c, &mut p, 1777..4000);
        let restored = run(&mut b2, &mut c2, &mut p2, 1777..4000);
        assert!(!original.is_empty());
        assert_eq!(original, restored);
        assert_eq!((b, c, p), (b2, c2, p2));
    }
}
