//! `[detect]`: the drift detectors' false-alarm rate, smallest shifts worth an alert and the windowed tests.

use super::super::raw::{self, RawArl0};
use super::super::{Arl0Override, DetectConfig, FalseAlarmBudget, RateDetector};
use super::Check;
use super::values::parse_duration;

/// The sequential families an `arl0` table may name.
pub(crate) const SEQUENTIAL_FAMILIES: [&str; 6] = [
    "disagreement",
    "kl",
    "attention_kl",
    "confidence",
    "student_error",
    "teacher_error",
];

/// Parses `"N per <duration>"` (N > 0, a decimal allowed; the duration as everywhere else, e.g.
/// "90d", "1h").
pub fn parse_false_alarms(text: &str) -> Result<(f64, std::time::Duration), String> {
    const EXPECTED: &str = "expected \"N per <duration>\", e.g. \"1 per 90d\"";
    let mut parts = text.split_whitespace();
    let (Some(n), Some("per"), Some(period), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(EXPECTED.to_string());
    };
    let events: f64 = n
        .parse()
        .map_err(|_| format!("\"{n}\" is not a number: {EXPECTED}"))?;
    if !(events.is_finite() && events > 0.0) {
        return Err(format!("the number of events must be above 0, got {n}"));
    }
    let period = parse_duration(period).map_err(|e| format!("period \"{period}\": {e}"))?;
    if period.as_secs() < 60 {
        return Err(format!("the period must be at least 1m, got \"{text}\""));
    }
    Ok((events, period))
}

impl Check<'_> {
    pub(super) fn detect(&mut self, raw: raw::RawDetect) -> DetectConfig {
        DetectConfig {
            false_alarms: self.false_alarms(raw.false_alarms),
            arl0: self.arl0(raw.arl0),
            rate_detector: self.choice(
                "detect.detector",
                raw.detector,
                RateDetector::Bank,
                &[("bank", RateDetector::Bank), ("cusum", RateDetector::Cusum)],
            ),
            min_shift_disagreement: self.fraction(
                "detect.min_shift_disagreement",
                raw.min_shift_disagreement,
                0.05,
            ),
            min_shift_error: self.fraction("detect.min_shift_error", raw.min_shift_error, 0.05),
            min_shift_sd: self.positive("detect.min_shift_sd", raw.min_shift_sd, 1.0),
            window_records: self.integer(
                "detect.window_records",
                raw.window_records,
                200,
                20,
                1_000_000,
            ),
            family_alpha: raw
                .family_alpha
                .map(|a| self.fraction("detect.family_alpha", Some(a), 0.01)),
            min_ks: self.fraction("detect.min_ks", raw.min_ks, 0.15),
            min_class_shift: self.fraction("detect.min_class_shift", raw.min_class_shift, 0.1),
            min_psi: self.positive("detect.min_psi", raw.min_psi, 0.2),
            seed: self.integer("detect.seed", raw.seed, 1, 0, i64::MAX),
        }
    }

    fn false_alarms(&mut self, raw: Option<String>) -> FalseAlarmBudget {
        let Some(text) = raw else {
            return FalseAlarmBudget::default();
        };
        match parse_false_alarms(&text) {
            Ok((events, period)) => FalseAlarmBudget {
                events,
                period,
                text,
            },
            Err(message) => {
                self.problem(
                    "detect.false_alarms",
                    format!("cannot parse \"{text}\": {message}"),
                );
                FalseAlarmBudget::default()
            }
        }
    }

    fn arl0(&mut self, raw: Option<RawArl0>) -> Arl0Override {
        const MIN: i64 = 100;
        const MAX: i64 = 1_000_000_000_000;
        match raw {
            None => Arl0Override::default(),
            Some(RawArl0::All(v)) => Arl0Override {
                all: Some(self.integer("detect.arl0", Some(v), 10_000, MIN, MAX)),
                by_family: Default::default(),
            },
            Some(RawArl0::ByFamily(table)) => {
                let mut by_family = std::collections::BTreeMap::new();
                for (family, v) in table {
                    let key = format!("detect.arl0.{family}");
                    if !SEQUENTIAL_FAMILIES.contains(&family.as_str()) {
                        self.problem(
                            &key,
                            format!(
                                "unknown signal family, expected one of {}",
                                SEQUENTIAL_FAMILIES.join(", ")
                            ),
                        );
                        continue;
                    }
                    let n: u64 = self.integer(&key, Some(v), 10_000, MIN, MAX);
                    by_family.insert(family, n);
                }
                Arl0Override {
                    all: None,
                    by_family,
                }
            }
        }
    }
}
