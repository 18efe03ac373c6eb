//! The shadow models' standing and the verdict (pure): the statistics of each model's
//! [`Totals`] (agreement with the teacher and its interval, mean KL, latency), what `sensei
//! report` shows of each model, and [`verdict`], which picks the smallest model whose agreement
//! with the teacher is, at 95% confidence, at least `[shadow] agreement_floor`.

use serde::Serialize;

use super::CONFIDENCE;
use crate::stats::{Interval, weighted_rate_interval};
use crate::store::{ShadowKind, Totals};

/// The statistics of a model version's shadow sums ([`Totals`] are kept by the store).
impl Totals {
    /// Weighted share of records whose top-1 agrees with the teacher's.
    pub fn agreement_rate(&self) -> Option<f64> {
        (self.agreement_weight > 0.0).then(|| self.agreement / self.agreement_weight)
    }

    /// The Kish effective sample size of the agreement rate, (Σw)² / Σw²: what the weighted
    /// samples are worth as independent unweighted ones.
    pub fn effective_n(&self) -> Option<f64> {
        (self.agreement_weight_sq > 0.0)
            .then(|| self.agreement_weight * self.agreement_weight / self.agreement_weight_sq)
    }

    /// Clopper-Pearson interval of the agreement rate on the effective sample size.
    pub fn agreement_interval(&self) -> Option<Interval> {
        weighted_rate_interval(
            self.agreement_rate()?,
            self.agreement_weight,
            self.agreement_weight_sq,
            1.0 - CONFIDENCE,
        )
    }

    pub fn mean_kl(&self) -> Option<f64> {
        (self.kl_weight > 0.0).then(|| self.kl / self.kl_weight)
    }

    pub fn mean_attention_kl(&self) -> Option<f64> {
        (self.attention_kl_weight > 0.0).then(|| self.attention_kl / self.attention_kl_weight)
    }

    /// Mean per-record latency, µs.
    pub fn mean_latency_us(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.latency_us as f64 / self.samples as f64)
    }

    /// The teacher's mean per-record latency on the same records, µs.
    pub fn mean_teacher_latency_us(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.teacher_latency_us as f64 / self.samples as f64)
    }
}

/// One model in the challengers' table: the serving student or a shadow model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standing {
    pub name: String,
    pub kind: ShadowKind,
    pub sha256: Option<String>,
    /// `serving` (the student), `running` or `failed`.
    pub status: String,
    /// Why it failed.
    pub detail: Option<String>,
    pub size_bytes: Option<u64>,
    pub parameters: Option<u64>,
    /// Teacher-sampled records it answered.
    pub samples: i64,
    /// Effective sample size of the agreement (weighted samples count for less).
    pub effective_n: Option<f64>,
    /// Weighted top-1 agreement with the teacher and its 95% interval.
    pub agreement: Option<Interval>,
    pub mean_kl: Option<f64>,
    pub mean_attention_kl: Option<f64>,
    pub latency_us: Option<f64>,
    /// The teacher's latency on the same records.
    pub teacher_latency_us: Option<f64>,
    /// The agreement's lower bound is at or above the floor.
    pub meets_floor: bool,
}

impl Standing {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        kind: ShadowKind,
        sha256: Option<String>,
        status: &str,
        detail: Option<String>,
        size_bytes: Option<u64>,
        parameters: Option<u64>,
        totals: Option<&Totals>,
        floor: f64,
    ) -> Standing {
        let agreement = totals.and_then(Totals::agreement_interval);
        Standing {
            name: name.to_string(),
            kind,
            sha256,
            status: status.to_string(),
            detail,
            size_bytes,
            parameters,
            samples: totals.map_or(0, |t| t.samples),
            effective_n: totals.and_then(Totals::effective_n),
            agreement,
            mean_kl: totals.and_then(Totals::mean_kl),
            mean_attention_kl: totals.and_then(Totals::mean_attention_kl),
            latency_us: totals.and_then(Totals::mean_latency_us),
            teacher_latency_us: totals.and_then(Totals::mean_teacher_latency_us),
            meets_floor: agreement.is_some_and(|a| a.low >= floor),
        }
    }
}

/// The smallest model whose agreement meets the floor, and what it saves against the teacher.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub name: String,
    pub kind: ShadowKind,
    pub size_bytes: u64,
    /// The 95% lower bound of its agreement with the teacher.
    pub agreement_low: f64,
    pub latency_us: Option<f64>,
    pub teacher_latency_us: Option<f64>,
    /// 1 − its latency / the teacher's, on the same records.
    pub latency_saving: Option<f64>,
    pub teacher_bytes: Option<u64>,
    /// 1 − its size / the teacher's.
    pub size_saving: Option<f64>,
}

/// The challengers' verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub agreement_floor: f64,
    pub confidence: f64,
    /// `None` when no model meets the floor.
    pub chosen: Option<Choice>,
    pub summary: String,
}

/// Picks the smallest model (file bytes) whose agreement's 95% lower bound is at least
/// `floor`; among equal sizes the higher lower bound, then the name. Failed models and models
/// of unknown size are not candidates.
pub fn verdict(standings: &[Standing], teacher_bytes: Option<u64>, floor: f64) -> Verdict {
    let eligible = standings
        .iter()
        .filter(|s| s.meets_floor && s.status != "failed")
        .filter_map(|s| Some((s, s.size_bytes?, s.agreement?.low)));
    let best = eligible.min_by(|(a, a_size, a_low), (b, b_size, b_low)| {
        a_size
            .cmp(b_size)
            .then(b_low.total_cmp(a_low))
            .then(a.name.cmp(&b.name))
    });
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let Some((s, size, low)) = best else {
        let summary = if standings.iter().all(|s| s.agreement.is_none()) {
            "No verdict yet: no model has been compared with the teacher on sampled records."
                .to_string()
        } else {
            let closest = standings
                .iter()
                .filter(|s| s.status != "failed")
                .filter_map(|s| Some((s, s.agreement?.low)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match closest {
                Some((s, low)) => format!(
                    "No model meets the agreement floor of {} at {:.0}% confidence; the closest is {} '{}' (lower bound {}).",
                    pct(floor),
                    CONFIDENCE * 100.0,
                    s.kind.as_str(),
                    s.name,
                    pct(low)
                ),
                None => format!("No model meets the agreement floor of {}.", pct(floor)),
            }
        };
        return Verdict {
            agreement_floor: floor,
            confidence: CONFIDENCE,
            chosen: None,
            summary,
        };
    };
    let saving = |part: Option<f64>, whole: Option<f64>| {
        part.zip(whole)
            .and_then(|(p, w)| (w > 0.0).then(|| 1.0 - p / w))
    };
    let choice = Choice {
        name: s.name.clone(),
        kind: s.kind,
        size_bytes: size,
        agreement_low: low,
        latency_us: s.latency_us,
        teacher_latency_us: s.teacher_latency_us,
        latency_saving: saving(s.latency_us, s.teacher_latency_us),
        teacher_bytes,
        size_saving: saving(Some(size as f64), teacher_bytes.map(|b| b as f64)),
    };
    let mut summary = format!(
        "{} '{}' is the smallest model whose agreement with the teacher meets the floor of {} ({:.0}% lower bound {}, effective n {:.0}): {} bytes",
        s.kind.as_str(),
        s.name,
        pct(floor),
        CONFIDENCE * 100.0,
        pct(low),
        s.effective_n.unwrap_or(0.0),
        size
    );
    if let (Some(saved), Some(tb)) = (choice.size_saving, teacher_bytes) {
        summary.push_str(&format!(
            ", {} smaller than the teacher ({tb} bytes)",
            pct(saved)
        ));
    }
    if let (Some(l), Some(saved)) = (choice.latency_us, choice.latency_saving) {
        summary.push_str(&format!(
            "; {l:.0} µs per record, {} {} than the teacher",
            pct(saved.abs()),
            if saved >= 0.0 { "faster" } else { "slower" }
        ));
    }
    summary.push('.');
    Verdict {
        agreement_floor: floor,
        confidence: CONFIDENCE,
        chosen: Some(choice),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Comparison;

    fn agree(agrees: bool) -> Comparison {
        Comparison {
            disagreement: Some(!agrees),
            kl: Some(if agrees { 0.01 } else { 1.0 }),
            ..Comparison::default()
        }
    }

    /// Totals of `n` records of weight `w`, `k` of which agree.
    fn totals(n: i64, k: i64, w: f64) -> Totals {
        let mut t = Totals::default();
        for i in 0..n {
            t.add(i, w, &agree(i < k), 10, 100);
        }
        t
    }

    fn standing(name: &str, size: u64, t: &Totals, floor: f64) -> Standing {
        Standing::new(
            name,
            ShadowKind::Challenger,
            Some("abc".into()),
            "running",
            None,
            Some(size),
            None,
            Some(t),
            floor,
        )
    }

    #[test]
    fn weighted_agreement_uses_the_weights_and_the_effective_sample_size() {
        let mut t = Totals::default();
        // Three agreeing records of weight 1 and one disagreeing of weight 3: 3 / 6 agree.
        for (seq, w, a) in [
            (5, 1.0, true),
            (2, 1.0, true),
            (9, 1.0, true),
            (7, 3.0, false),
        ] {
            t.add(seq, w, &agree(a), 10, 100);
        }
        assert_eq!(t.samples, 4);
        assert_eq!((t.first_seq, t.last_seq), (2, 9));
        assert!((t.agreement_rate().unwrap() - 0.5).abs() < 1e-12);
        // (Σw)² / Σw² = 36 / 12 = 3, not 4.
        assert!((t.effective_n().unwrap() - 3.0).abs() < 1e-12);
        let kl = (3.0 * 0.01 + 3.0 * 1.0) / 6.0;
        assert!((t.mean_kl().unwrap() - kl).abs() < 1e-12);
        assert_eq!(t.mean_latency_us(), Some(10.0));
        assert_eq!(t.mean_teacher_latency_us(), Some(100.0));
        assert_eq!(t.mean_attention_kl(), None);
    }

    #[test]
    fn equal_weights_give_the_exact_binomial_interval() {
        let t = totals(100, 95, 4.0);
        let i = t.agreement_interval().unwrap();
        let exact = crate::stats::clopper_pearson(95.0, 100.0, 0.05).unwrap();
        assert!((i.low - exact.low).abs() < 1e-9 && (i.high - exact.high).abs() < 1e-9);
        assert!((i.estimate - 0.95).abs() < 1e-12);
    }

    #[test]
    fn records_without_a_usable_weight_or_top1_are_not_counted_as_agreement() {
        let mut t = Totals::default();
        t.add(1, 0.0, &agree(true), 1, 1);
        t.add(2, f64::NAN, &agree(true), 1, 1);
        assert_eq!(t.samples, 0);
        t.add(3, 1.0, &Comparison::default(), 1, 1); // an embedding: no top-1
        assert_eq!(t.samples, 1);
        assert_eq!(t.agreement_rate(), None);
        assert_eq!(t.agreement_interval(), None);
    }

    #[test]
    fn verdict_names_the_smallest_model_whose_lower_bound_meets_the_floor() {
        let floor = 0.9;
        let perfect = totals(200, 200, 1.0);
        let poor = totals(200, 120, 1.0);
        let standings = vec![
            standing("big", 4000, &perfect, floor),
            standing("tiny", 1000, &poor, floor),
            standing("mid", 3000, &perfect, floor),
        ];
        assert!(!standings[1].meets_floor);
        let v = verdict(&standings, Some(6000), floor);
        let c = v.chosen.expect("a choice");
        assert_eq!(c.name, "mid");
        assert_eq!(c.size_bytes, 3000);
        assert!((c.size_saving.unwrap() - 0.5).abs() < 1e-12);
        assert!((c.latency_saving.unwrap() - 0.9).abs() < 1e-12);
        assert!(v.summary.contains("'mid'"), "{}", v.summary);
        assert!(v.summary.contains("50.0% smaller"), "{}", v.summary);
    }

    #[test]
    fn a_high_estimate_on_few_samples_does_not_meet_the_floor() {
        // 10 of 10 agree: the estimate is 1, the 95% lower bound 0.69.
        let few = totals(10, 10, 1.0);
        let s = standing("lucky", 100, &few, 0.9);
        assert_eq!(s.agreement.unwrap().estimate, 1.0);
        assert!(!s.meets_floor);
        // Weighted: 200 samples whose weights make them worth about 10.
        let mut skewed = Totals::default();
        for i in 0..200 {
            skewed.add(i, if i < 10 { 100.0 } else { 0.01 }, &agree(true), 1, 1);
        }
        assert!(skewed.effective_n().unwrap() < 11.0);
        assert!(!standing("skewed", 100, &skewed, 0.9).meets_floor);
    }

    #[test]
    fn verdict_says_when_no_model_meets_the_floor() {
        let poor = totals(200, 150, 1.0);
        let mut failed = standing("broken", 10, &totals(200, 200, 1.0), 0.9);
        failed.status = "failed".into();
        let v = verdict(&[standing("a", 100, &poor, 0.9), failed], Some(1000), 0.9);
        assert_eq!(v.chosen, None);
        assert!(v.summary.starts_with("No model meets"), "{}", v.summary);
        assert!(v.summary.contains("'a'"), "{}", v.summary);
        let none = verdict(&[], None, 0.9);
        assert!(
            none.summary.starts_with("No verdict yet"),
            "{}",
            none.summary
        );
    }

    #[test]
    fn equal_sizes_prefer_the_higher_lower_bound() {
        let floor = 0.8;
        let v = verdict(
            &[
                standing("b", 500, &totals(400, 380, 1.0), floor),
                standing("a", 500, &totals(400, 360, 1.0), floor),
            ],
            None,
            floor,
        );
        assert_eq!(v.chosen.unwrap().name, "b");
    }
}
