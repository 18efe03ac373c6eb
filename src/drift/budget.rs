//! The site's false-alarm budget (`[detect] false_alarms = "1 per 90d"`) and its allocation
//! to every detector.
//!
//! An operator plans for "at most N false alerts per period for this site", not for samples
//! between false alarms of one detector. The budget is spread over every sequential detector
//! (each signal family, per segment and for all segments) and the windowed rounds, in shares
//! proportional to a weight per family ([`weight`]: disagreement, the primary signal, gets
//! the largest share). A detector with share s of the budget may raise E·s false alarms per
//! period T, so its ARL0 in its own observations is
//!
//! ```text
//! ARL0 = (observations it expects per period) / (E · s)
//!      = records/s · T · segment share · observations per record / (E · w / W)
//! ```
//!
//! where w is its family's weight and W the sum of the weights of every detector counted.
//! Observations per record are 1 for confidence, the teacher's share of records for the
//! teacher-fed signals (disagreement, KL, attention KL) and the labelled share for the error
//! rates. A windowed round is one Holm family (P(any false alarm in a round) ≤ α), so with
//! R = records/s · T / window_records rounds per period, its α = E · w_windowed / W / R.
//!
//! A family whose ARL0 is set explicitly (`[detect] arl0`) keeps it and takes no share; so do
//! the windowed rounds when `family_alpha` is set. Their expected false alarms come on top of
//! the budget and are reported as such.

use serde::{Deserialize, Serialize};

/// The name under which the windowed rounds appear in an allocation.
pub const WINDOWED: &str = "windowed";

/// The smallest ARL0 (observations) the budget hands out: below it a detector would fire on
/// noise within minutes of data.
pub const MIN_ARL0: f64 = 100.0;

/// The largest α per windowed round the budget hands out.
pub const MAX_ALPHA: f64 = 0.5;

/// The budget weight of one detector of a family: disagreement, the primary signal of a
/// student drifting from its teacher, has the largest share; the student's error rate (the
/// ground truth, where labels exist) and the windowed rounds (one weight for the whole round)
/// the next; KL, attention KL, confidence and the teacher's error one each.
pub fn weight(family: &str) -> f64 {
    match family {
        "disagreement" => 4.0,
        "student_error" | WINDOWED => 2.0,
        _ => 1.0,
    }
}

/// One sequential family as the allocation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyInput {
    pub family: &'static str,
    /// Observations of one detector of the family per record of its segment.
    pub observations_per_record: f64,
    /// `[detect] arl0` for this family, if set.
    pub explicit_arl0: Option<f64>,
}

/// What an allocation is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetInput<'a> {
    pub events: f64,
    pub period_seconds: f64,
    pub records_per_second: f64,
    /// Where the rate comes from: "field", "lab" or "assumed".
    pub rate_source: &'static str,
    pub families: &'a [FamilyInput],
    /// Segments besides the all-segments aggregate.
    pub segments: usize,
    /// Whether windowed rounds run at all, and their round length.
    pub windowed: bool,
    pub window_records: usize,
    /// `[detect] family_alpha`, if set.
    pub explicit_alpha: Option<f64>,
}

/// A family's part of the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyAllocation {
    pub family: String,
    pub weight: f64,
    /// Detectors of the family counted (segments + 1; one for the windowed rounds).
    pub detectors: usize,
    /// Share of the budget's events, all its detectors together (0 when set explicitly).
    pub share: f64,
    /// Expected false drift events per period, all its detectors together.
    pub expected_events: f64,
    pub observations_per_record: f64,
    /// ARL0 of the all-segments detector in its observations (a segment's detector: this
    /// times the segment's share of records); `None` for the windowed rounds.
    pub arl0: Option<f64>,
    /// α of one windowed round; `None` for a sequential family.
    pub alpha: Option<f64>,
    /// Set in the config rather than by the budget.
    pub explicit: bool,
}

/// The budget and its allocation (persisted with the detector state; `sensei status`,
/// `/metrics` and the dashboard show it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub events: f64,
    pub period_seconds: f64,
    pub records_per_second: f64,
    pub rate_source: String,
    pub segments: usize,
    pub families: Vec<FamilyAllocation>,
}

impl Allocation {
    /// The ARL0 of `family`'s detector on a segment with `segment_share` of the records (1 for
    /// the all-segments detector); `None` for a family not in the allocation.
    pub fn arl0(&self, family: &str, segment_share: f64) -> Option<f64> {
        let f = self.families.iter().find(|f| f.family == family)?;
        let arl0 = f.arl0?;
        Some(if f.explicit {
            arl0
        } else {
            (arl0 * segment_share).max(MIN_ARL0)
        })
    }

    /// α of one windowed round.
    pub fn alpha(&self) -> Option<f64> {
        self.families
            .iter()
            .find(|f| f.family == WINDOWED)
            .and_then(|f| f.alpha)
    }

    /// Expected false events per period of every detector together (the budget plus what
    /// explicit settings add).
    pub fn expected_events(&self) -> f64 {
        self.families.iter().map(|f| f.expected_events).sum()
    }
}

/// Spreads the budget over the detectors (see the module documentation).
pub fn allocate(input: &BudgetInput<'_>) -> Allocation {
    let per_family = input.segments + 1;
    let records_per_period = (input.records_per_second * input.period_seconds).max(1.0);
    let budgeted: f64 = input
        .families
        .iter()
        .filter(|f| f.explicit_arl0.is_none())
        .map(|f| weight(f.family) * per_family as f64)
        .sum::<f64>()
        + if input.windowed && input.explicit_alpha.is_none() {
            weight(WINDOWED)
        } else {
            0.0
        };
    let mut families = Vec::with_capacity(input.families.len() + 1);
    for f in input.families {
        let w = weight(f.family);
        // The all-segments detector sees every record; the segments' detectors share them.
        let observations = records_per_period * f.observations_per_record;
        let all_segments_observations = observations * if input.segments > 0 { 2.0 } else { 1.0 };
        let (share, arl0, expected_events) = match f.explicit_arl0 {
            Some(arl0) => (0.0, arl0, all_segments_observations / arl0),
            None => {
                let share = w * per_family as f64 / budgeted;
                let per_detector = input.events * w / budgeted;
                let arl0 = (observations / per_detector).max(MIN_ARL0);
                (share, arl0, input.events * share)
            }
        };
        families.push(FamilyAllocation {
            family: f.family.to_string(),
            weight: w,
            detectors: per_family,
            share,
            expected_events,
            observations_per_record: f.observations_per_record,
            arl0: Some(arl0),
            alpha: None,
            explicit: f.explicit_arl0.is_some(),
        });
    }
    if input.windowed {
        let rounds = records_per_period / input.window_records.max(1) as f64;
        let w = weight(WINDOWED);
        let (share, alpha, explicit) = match input.explicit_alpha {
            Some(alpha) => (0.0, alpha, true),
            None => {
                let share = w / budgeted;
                (share, (input.events * share / rounds).min(MAX_ALPHA), false)
            }
        };
        families.push(FamilyAllocation {
            family: WINDOWED.to_string(),
            weight: w,
            detectors: 1,
            share,
            expected_events: alpha * rounds,
            observations_per_record: 1.0 / input.window_records.max(1) as f64,
            arl0: None,
            alpha: Some(alpha),
            explicit,
        });
    }
    Allocation {
        events: input.events,
        period_seconds: input.period_seconds,
        records_per_second: input.records_per_second,
        rate_source: input.rate_source.to_string(),
        segments: input.segments,
        families,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(families: &[FamilyInput], segments: usize) -> BudgetInput<'_> {
        BudgetInput {
            events: 1.0,
            period_seconds: 90.0 * 86_400.0,
            records_per_second: 100.0,
            rate_source: "field",
            families,
            segments,
            windowed: true,
            window_records: 200,
            explicit_alpha: None,
        }
    }

    fn family(name: &'static str, opr: f64) -> FamilyInput {
        FamilyInput {
            family: name,
            observations_per_record: opr,
            explicit_arl0: None,
        }
    }

    #[test]
    fn the_shares_spend_exactly_the_budget_and_follow_the_weights() {
        let families = [
            family("disagreement", 0.1),
            family("kl", 0.1),
            family("confidence", 1.0),
        ];
        let a = allocate(&input(&families, 4));
        let total: f64 = a.families.iter().map(|f| f.expected_events).sum();
        assert!((total - 1.0).abs() < 1e-12, "{a:?}");
        // W = 5 detectors × (4 + 1 + 1) + 2 = 32; disagreement's detector gets 4/32.
        let d = &a.families[0];
        assert!((d.share - 20.0 / 32.0).abs() < 1e-12);
        let records = 100.0 * 90.0 * 86_400.0;
        let expected = records * 0.1 / (4.0 / 32.0);
        assert!((d.arl0.unwrap() - expected).abs() / expected < 1e-12);
        // A segment with a quarter of the records: a quarter of the ARL0, the same rate of
        // false alarms per record of its own.
        assert!((a.arl0("disagreement", 0.25).unwrap() - expected / 4.0).abs() < 1e-3);
        // α per round: 2/32 of one event over 90 days of 200-record rounds.
        let alpha = a.alpha().unwrap();
        assert!((alpha - (2.0 / 32.0) / (records / 200.0)).abs() < 1e-18);
    }

    #[test]
    fn a_new_segment_lowers_every_share() {
        let families = [family("disagreement", 0.1), family("confidence", 1.0)];
        let one = allocate(&input(&families, 1));
        let two = allocate(&input(&families, 2));
        assert!(two.arl0("confidence", 1.0) > one.arl0("confidence", 1.0));
        assert!(two.alpha() < one.alpha());
    }

    #[test]
    fn an_explicit_arl0_wins_for_its_family_and_leaves_the_budget_to_the_rest() {
        let families = [
            FamilyInput {
                explicit_arl0: Some(10_000.0),
                ..family("disagreement", 0.1)
            },
            family("confidence", 1.0),
        ];
        let a = allocate(&input(&families, 0));
        assert_eq!(a.arl0("disagreement", 0.1), Some(10_000.0));
        let budgeted: f64 = a
            .families
            .iter()
            .filter(|f| !f.explicit)
            .map(|f| f.share)
            .sum();
        assert!((budgeted - 1.0).abs() < 1e-12);
        // 100/s · 90 d · 0.1 / 10,000 false alarms on top of the budget.
        assert!((a.families[0].expected_events - 7_776.0).abs() < 1e-6);
    }
}
