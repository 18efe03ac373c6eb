//! A bank of Bernoulli CUSUMs at several alert rates, for a shift of unknown size.
//!
//! A [`BernoulliCusum`] tuned to p1 is the optimal detector for a step from p0 to exactly p1, and
//! only for that step: tuned low it is slow on a large step, tuned high it is slow on a small one
//! (docs/detection.md, "Detection delay at the budget's ARL0"). The bank runs k CUSUMs on the same
//! stream, at p1 = p0 + m × `min_shift` for m in [`BANK_MULTIPLIERS`], and alarms when any member
//! reaches its threshold; every member re-arms at an alarm, so one alarm is one detection.
//!
//! # Thresholds
//! Member j's threshold is `h_j = d_j + t`: a fixed offset d_j and one level t shared by all.
//!
//! - The offsets split the false-alarm budget evenly: a Bernoulli CUSUM's ARL0 is about
//!   e^h / KL(p0 ‖ p1) (Siegmund, θ = 1 for log-likelihood-ratio increments, before the
//!   overshoot), so `d_j = ln(KL_j / KL_min)` gives every member about the same ARL0 at a common t.
//! - The level t is calibrated for the bank as a whole: the bank alarms when
//!   `M = max_j (S_j − d_j)` reaches t, and M is one statistic, so its [`ThresholdCurve`] is
//!   simulated at [`super::curve::SIMULATED_TARGETS`] on in-control Bernoulli(p0) paths exactly
//!   as a single CUSUM's (the members' correlation — they see the same observations — is in the
//!   simulation, not bounded away).
//! - Beyond the simulated range the level is linear in ln ARL0 with slope [`SLOPE_BEYOND`],
//!   capped at the Bonferroni level (every member alone at k × the target on its own curve),
//!   see [`BankReference::level`]. `cargo bench --bench detectors -- bank` measures the
//!   extrapolated level at 10⁵ and 10⁶.

use serde::{Deserialize, Serialize};

use super::BaselineError;
use super::calibrate::{ArlEstimate, Calibration, PathSet, StatisticPath, simulated_curve};
use super::curve::ThresholdCurve;
use super::cusum::{Alarm, BernoulliCusum, bernoulli_increments};
use super::rng::SplitMix64;

/// The members' alert rates, p1 = p0 + m × `min_shift`: from half the smallest shift worth an
/// alert to twice it (the benchmark in docs/detection.md chose these).
pub const BANK_MULTIPLIERS: [f64; 3] = [0.5, 1.0, 2.0];

/// The member at p0 + `min_shift` (multiplier 1): the one whose evidence closes an event before
/// any member has alarmed.
const PRIMARY: usize = 1;

/// One member's alert rate and threshold offset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BankMember {
    pub p1: f64,
    /// d_j: the member's threshold is d_j + the bank's level.
    pub offset: f64,
}

/// KL(Bernoulli(p0) ‖ Bernoulli(p1)): the in-control drift of the log-likelihood-ratio CUSUM.
fn kl_bernoulli(p0: f64, p1: f64) -> f64 {
    p0 * (p0 / p1).ln() + (1.0 - p0) * ((1.0 - p0) / (1.0 - p1)).ln()
}

/// The members for in-control rate `p0` and smallest shift worth an alert `shift`: p1 = p0 + m ×
/// shift for m in [`BANK_MULTIPLIERS`] (capped at 0.999), offsets d = ln(KL / KL_min).
pub fn bank_members(p0: f64, shift: f64) -> Result<Vec<BankMember>, BaselineError> {
    if !(shift.is_finite() && shift > 0.0) {
        return Err(BaselineError::invalid(
            "min_shift",
            shift,
            "must be finite and > 0",
        ));
    }
    let mut p1s: Vec<f64> = Vec::with_capacity(BANK_MULTIPLIERS.len());
    for m in BANK_MULTIPLIERS {
        let p1 = (p0 + m * shift).min(0.999);
        bernoulli_increments(p0, p1)?;
        p1s.push(p1);
    }
    if p1s.windows(2).any(|w| w[1] <= w[0]) {
        return Err(BaselineError::invalid(
            "p0",
            p0,
            "too close to 1: the bank's alert rates coincide at the cap of 0.999",
        ));
    }
    let kls: Vec<f64> = p1s.iter().map(|&p1| kl_bernoulli(p0, p1)).collect();
    let low = kls.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(p1s
        .into_iter()
        .zip(kls)
        .map(|(p1, kl)| BankMember {
            p1,
            offset: (kl / low).ln(),
        })
        .collect())
}

/// Beyond the simulated range, the bank's level grows by this much per unit of ln ARL0 (see
/// [`BankReference::level`]).
pub const SLOPE_BEYOND: f64 = 1.1;

/// What a bank's reference keeps: its members, the curve of its level and the members' own
/// curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankReference {
    pub members: Vec<BankMember>,
    /// The level t at the simulated targets of the bank as a whole ([`Self::level`] reads it).
    pub curve: ThresholdCurve,
    /// Each member's own threshold curve, for the Bonferroni cap of [`Self::level`] (empty in
    /// references without it: no cap).
    #[serde(default)]
    pub member_curves: Vec<ThresholdCurve>,
}

impl BankReference {
    /// The bank for in-control rate `p0` and smallest shift worth an alert `shift`: its members
    /// ([`bank_members`]), the simulated curve of its level ([`bank_curve`]) and the members'
    /// curves.
    pub fn calibrate(p0: f64, shift: f64, seed: u64) -> Result<BankReference, BaselineError> {
        let members = bank_members(p0, shift)?;
        let (curve, _) = bank_curve(p0, &members, seed)?;
        let member_curves = members
            .iter()
            .enumerate()
            .map(|(j, m)| {
                super::calibrate::bernoulli_curve(p0, m.p1, seed ^ (j as u64 + 1)).map(|c| c.0)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BankReference {
            members,
            curve,
            member_curves,
        })
    }

    /// The Bonferroni level for `arl0`: every member alone at ARL0 k × `arl0` on its own curve,
    /// the bank at the largest of those thresholds less its offset. The bank's false alarms are
    /// at most the sum of its members', so at this level its ARL0 is at least `arl0`.
    pub fn bonferroni_level(&self, arl0: f64) -> Option<f64> {
        if self.member_curves.len() != self.members.len() || self.members.is_empty() {
            return None;
        }
        let k = self.members.len() as f64;
        Some(
            self.member_curves
                .iter()
                .zip(&self.members)
                .map(|(c, m)| c.threshold(k * arl0) - m.offset)
                .fold(f64::NEG_INFINITY, f64::max),
        )
    }

    /// The bank's level for in-control run length `arl0` (observations): interpolated between
    /// the simulated points; beyond the largest (10⁴), linear in ln ARL0 with slope
    /// [`SLOPE_BEYOND`], capped at the Bonferroni level.
    ///
    /// Asymptotically ln ARL0 = t + constant (slope 1, see the module documentation), but
    /// measured from 10⁴ to 10⁶ the bank needs about 1.06–1.07 per unit of ln ARL0 (members that
    /// rarely add a false alarm at a low level add relatively more at a higher one), and
    /// Siegmund's form, right for one CUSUM, bends the wrong way for a bank: anchored at 10⁴ it
    /// put the level for 10⁶ 30 % short in ARL0. 1.1 is above what was measured, so the line errs
    /// towards fewer false alarms; the Bonferroni level is an upper bound that holds whatever
    /// the members' correlation, so the cap keeps the line from growing beyond the need at very
    /// large ARL0s. `cargo bench --bench detectors -- bank` measures both.
    pub fn level(&self, arl0: f64) -> f64 {
        let top = self.curve.simulated_up_to();
        let t_top = self.curve.threshold(top);
        if arl0 <= top {
            return self.curve.threshold(arl0);
        }
        let line = t_top + SLOPE_BEYOND * (arl0 / top).ln();
        match self.bonferroni_level(arl0) {
            Some(cap) => line.min(cap).max(t_top),
            None => line,
        }
    }
}

/// The bank detector (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BernoulliBank {
    p0: f64,
    /// The members, each armed at its offset + `level`.
    members: Vec<BernoulliCusum>,
    offsets: Vec<f64>,
    level: f64,
    /// The member that raised the last alarm (its evidence decides "back in control").
    fired: usize,
    observed: u64,
    alarms: u64,
}

impl BernoulliBank {
    /// A bank at in-control rate `p0` with `members`, armed at `level`.
    pub fn new(
        p0: f64,
        members: &[BankMember],
        level: f64,
    ) -> Result<BernoulliBank, BaselineError> {
        if members.is_empty() {
            return Err(BaselineError::invalid(
                "members",
                0.0,
                "a bank needs at least one CUSUM",
            ));
        }
        if !(level.is_finite() && level > 0.0) {
            return Err(BaselineError::invalid(
                "level",
                level,
                "must be finite and > 0",
            ));
        }
        let cusums = members
            .iter()
            .map(|m| BernoulliCusum::new(p0, m.p1, m.offset + level))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BernoulliBank {
            p0,
            members: cusums,
            offsets: members.iter().map(|m| m.offset).collect(),
            level,
            fired: PRIMARY.min(members.len() - 1),
            observed: 0,
            alarms: 0,
        })
    }

    /// Feeds one observation to every member. When members reach their thresholds, the alarm is
    /// that of the one furthest past its threshold (its excursion gives the change-point
    /// estimate), and every member re-arms.
    pub fn update(&mut self, x: bool, seq: u64) -> Option<Alarm> {
        self.observed += 1;
        let mut best: Option<(usize, Alarm)> = None;
        for (j, m) in self.members.iter_mut().enumerate() {
            if let Some(a) = m.update(x, seq) {
                let margin = a.statistic - a.threshold;
                if best
                    .as_ref()
                    .is_none_or(|(_, b)| margin > b.statistic - b.threshold)
                {
                    best = Some((j, a));
                }
            }
        }
        let (j, alarm) = best?;
        self.fired = j;
        self.alarms += 1;
        for m in &mut self.members {
            m.reset();
        }
        Some(alarm)
    }

    /// The member nearest to its threshold (largest S − h).
    fn nearest(&self) -> &BernoulliCusum {
        self.members
            .iter()
            .max_by(|a, b| {
                (a.statistic() - a.threshold()).total_cmp(&(b.statistic() - b.threshold()))
            })
            .unwrap_or(&self.members[0])
    }

    /// The statistic of the member nearest to its threshold (with [`Self::threshold`], what
    /// status and metrics show).
    pub fn statistic(&self) -> f64 {
        self.nearest().statistic()
    }
    /// The threshold of the member nearest to its threshold.
    pub fn threshold(&self) -> f64 {
        self.nearest().threshold()
    }

    /// The log-likelihood ratio of one observation under the member of the last alarm: the
    /// evidence "back in control" accumulates against (with [`Self::recovery_threshold`]).
    pub fn recovery_increment(&self, x: bool) -> f64 {
        self.members[self.fired].increment(x)
    }
    pub fn recovery_threshold(&self) -> f64 {
        self.members[self.fired].threshold()
    }

    /// Moves the bank's level (every member to its offset + `level`), keeping the statistics;
    /// a non-finite or non-positive level is ignored.
    pub fn set_level(&mut self, level: f64) {
        if !(level.is_finite() && level > 0.0) {
            return;
        }
        self.level = level;
        for (m, d) in self.members.iter_mut().zip(&self.offsets) {
            m.set_threshold(d + level);
        }
    }

    pub fn reset(&mut self) {
        for m in &mut self.members {
            m.reset();
        }
    }
    pub fn level(&self) -> f64 {
        self.level
    }
    pub fn p0(&self) -> f64 {
        self.p0
    }
    pub fn members(&self) -> &[BernoulliCusum] {
        &self.members
    }
    pub fn observed(&self) -> u64 {
        self.observed
    }
    pub fn alarms(&self) -> u64 {
        self.alarms
    }
}

/// The bank's statistic M = max_j (S_j − d_j) on a simulated stream.
struct BankPath {
    p: f64,
    /// (up, down, offset) per member.
    members: Vec<(f64, f64, f64)>,
    s: Vec<f64>,
}

impl BankPath {
    fn new(p: f64, p0: f64, members: &[BankMember]) -> Result<BankPath, BaselineError> {
        let members = members
            .iter()
            .map(|m| bernoulli_increments(p0, m.p1).map(|(u, d)| (u, d, m.offset)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BankPath {
            p,
            s: vec![0.0; members.len()],
            members,
        })
    }
}

impl StatisticPath for BankPath {
    fn step(&mut self, rng: &mut SplitMix64) -> f64 {
        let one = rng.next_f64() < self.p;
        let mut top = f64::NEG_INFINITY;
        for (s, &(up, down, d)) in self.s.iter_mut().zip(&self.members) {
            // Same arithmetic as the running members: S = max(0, S + inc).
            *s = (*s + if one { up } else { down }).max(0.0);
            top = top.max(*s - d);
        }
        top
    }
}

fn check_members(members: &[BankMember]) -> Result<(), BaselineError> {
    if members.is_empty() {
        return Err(BaselineError::invalid(
            "members",
            0.0,
            "a bank needs at least one CUSUM",
        ));
    }
    if let Some(m) = members
        .iter()
        .find(|m| !(m.offset.is_finite() && m.offset >= 0.0))
    {
        return Err(BaselineError::invalid(
            "offset",
            m.offset,
            "must be finite and >= 0",
        ));
    }
    if !members.iter().any(|m| m.offset == 0.0) {
        return Err(BaselineError::invalid(
            "offset",
            0.0,
            "one member must have offset 0 (the bank statistic is then >= 0)",
        ));
    }
    Ok(())
}

/// The [`ThresholdCurve`] of the bank's level t: simulated on Bernoulli(p0) paths at
/// [`super::curve::SIMULATED_TARGETS`]. Read it through [`BankReference::level`]: the curve's
/// own Siegmund extrapolation (θ = 1, the drift of the member with offset 0) is kept for its
/// format but falls short for a bank. Also returns the simulated calibrations.
pub fn bank_curve(
    p0: f64,
    members: &[BankMember],
    seed: u64,
) -> Result<(ThresholdCurve, Vec<Calibration>), BaselineError> {
    check_members(members)?;
    let template = BankPath::new(p0, p0, members)?;
    let base = members
        .iter()
        .find(|m| m.offset == 0.0)
        .copied()
        .unwrap_or(members[0]);
    let (up, _) = bernoulli_increments(p0, base.p1)?;
    simulated_curve(
        || BankPath {
            p: template.p,
            members: template.members.clone(),
            s: template.s.clone(),
        },
        up,
        (1.0, kl_bernoulli(p0, base.p1)),
        seed,
    )
}

/// Measures the average run length of a bank (p0, members, level) on streams drawn from
/// Bernoulli(`p_true`): its ARL0 when `p_true = p0`, its zero-state delay otherwise. Paths are
/// truncated at `max_observations`.
pub fn measure_arl_bank(
    p_true: f64,
    (p0, members, level): (f64, &[BankMember], f64),
    max_observations: u64,
    replications: usize,
    seed: u64,
) -> Result<ArlEstimate, BaselineError> {
    check_members(members)?;
    if !(0.0..=1.0).contains(&p_true) {
        return Err(BaselineError::invalid(
            "p_true",
            p_true,
            "must be a probability",
        ));
    }
    let template = BankPath::new(p_true, p0, members)?;
    let mut set = PathSet::new(replications, max_observations, seed, || BankPath {
        p: template.p,
        members: template.members.clone(),
        s: template.s.clone(),
    });
    Ok(set.estimate(level))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::calibrate::{bernoulli_curve, measure_arl_bernoulli};

    #[test]
    fn members_span_half_to_twice_the_shift_with_equal_share_offsets() {
        let m = bank_members(0.03, 0.05).unwrap();
        let p1s: Vec<f64> = m.iter().map(|m| m.p1).collect();
        assert!((p1s[0] - 0.055).abs() < 1e-12 && (p1s[2] - 0.13).abs() < 1e-12);
        assert_eq!(m[0].offset, 0.0);
        assert!(m[1].offset > 0.0 && m[2].offset > m[1].offset, "{m:?}");
        assert!(bank_members(0.03, 0.0).is_err());
        assert!(bank_members(0.9995, 0.05).is_err());
    }

    /// The calibrated level gives the bank its target ARL0 on fresh in-control streams (seeds
    /// other than the calibration's), within 4 standard errors and 15 %.
    #[test]
    fn the_bank_reaches_its_target_arl0_on_fresh_streams() {
        let (p0, target) = (0.03, 2000.0);
        let reference = BankReference::calibrate(p0, 0.05, 21).unwrap();
        let members = reference.members.clone();
        assert_eq!(
            reference.curve.points.len(),
            crate::monitor::curve::SIMULATED_TARGETS.len()
        );
        let level = reference.level(target);
        let m = measure_arl_bank(p0, (p0, &members, level), 40_000, 2000, 22).unwrap();
        let err = (m.mean - target).abs();
        assert!(
            err < 4.0 * m.standard_error && err < 0.15 * target,
            "level {level}: {m:?}"
        );
        // A bank is stricter than its lowest member alone at the same level: its false alarms
        // are the union of the members' (on the same paths).
        let single =
            measure_arl_bernoulli(p0, (p0, members[0].p1, level), 40_000, 2000, 22).unwrap();
        assert!(single.mean > 1.08 * m.mean, "{single:?} vs {m:?}");
        // Beyond the simulated range (10⁴): the extrapolated level for 10⁵ holds within 4
        // standard errors and 20 %, below the Bonferroni level.
        let target = 100_000.0;
        let level = reference.level(target);
        assert!(level <= reference.bonferroni_level(target).unwrap());
        let m = measure_arl_bank(p0, (p0, &members, level), 1_000_000, 300, 23).unwrap();
        let err = (m.mean - target).abs();
        assert!(
            err < 4.0 * m.standard_error && err < 0.2 * target,
            "level {level}: {m:?}"
        );
    }

    /// At the same ARL0 (10⁶, of the order the budget gives), the bank sees a large step sooner
    /// than the single CUSUM tuned to the smallest shift, and gives up little on that shift.
    #[test]
    fn the_bank_detects_a_large_step_sooner_than_the_cusum_tuned_low() {
        let (p0, shift, target) = (0.03, 0.05, 1e6);
        let bank = BankReference::calibrate(p0, shift, 31).unwrap();
        let members = bank.members.clone();
        let level = bank.level(target);
        let (single, _) = bernoulli_curve(p0, p0 + shift, 32).unwrap();
        let h = single.threshold(target);
        let large = 0.25;
        let b = measure_arl_bank(large, (p0, &members, level), 50_000, 1000, 33).unwrap();
        let s = measure_arl_bernoulli(large, (p0, p0 + shift, h), 50_000, 1000, 33).unwrap();
        assert!(b.mean < 0.92 * s.mean, "bank {b:?}, single {s:?}");
        let b = measure_arl_bank(p0 + shift, (p0, &members, level), 50_000, 1000, 34).unwrap();
        let s = measure_arl_bernoulli(p0 + shift, (p0, p0 + shift, h), 50_000, 1000, 34).unwrap();
        assert!(b.mean < 1.25 * s.mean, "bank {b:?}, single {s:?}");
    }

    #[test]
    fn an_alarm_rearms_every_member_and_names_the_change_point() {
        let members = bank_members(0.03, 0.05).unwrap();
        let mut bank = BernoulliBank::new(0.03, &members, 3.0).unwrap();
        let mut rng = SplitMix64::new(41);
        // In control for 500 records, then a jump to 0.5 at record 500.
        let mut alarm = None;
        for seq in 0..2000u64 {
            let p = if seq < 500 { 0.03 } else { 0.5 };
            if let Some(a) = bank.update(rng.next_f64() < p, seq)
                && seq >= 500
            {
                alarm = Some(a);
                break;
            }
        }
        let a = alarm.expect("a jump to 0.5 is detected");
        assert!(a.detected_at >= 500 && a.detected_at < 530, "{a:?}");
        assert!(
            a.estimated_change >= 490 && a.estimated_change <= a.detected_at,
            "{a:?}"
        );
        assert!(bank.members().iter().all(|m| m.statistic() == 0.0));
        assert!(bank.alarms() >= 1);
        // The largest member fired on a jump that large, and its threshold is the recovery's.
        assert!(bank.recovery_threshold() >= bank.members()[0].threshold());
        bank.set_level(4.0);
        for (m, d) in bank.members().iter().zip(&members) {
            assert!((m.threshold() - (d.offset + 4.0)).abs() < 1e-12);
        }
        let json = serde_json::to_string(&bank).unwrap();
        let back: BernoulliBank = serde_json::from_str(&json).unwrap();
        assert_eq!(back, bank);
    }
}
