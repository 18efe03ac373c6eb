//! The names of the monitored signals, one naming everywhere: a *family* (what is measured, say
//! `input_psi`) and, for families with one member per input feature, an *index*
//! (`input_psi[4]`). The detector that watched the signal is a separate name
//! (`drift_events.detector`): KS and CUSUM on the student's confidence are both `confidence`.
//!
//! Drift events, detector states, `status` and the dashboard write the full name; `/metrics`
//! splits it into a `signal` label (the family) and a `feature` label (the index); an alert
//! rule names a family (every member) or one member.

use std::fmt;
use std::str::FromStr;

/// What a signal measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Disagreement,
    Kl,
    AttentionKl,
    Confidence,
    ClassMix,
    InputPsi,
    StudentError,
    TeacherError,
    /// The teacher's inference server out of reach (its circuit breaker open): no detector
    /// statistic, an event that is open while the server is.
    TeacherUnreachable,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::Disagreement,
        Family::Kl,
        Family::AttentionKl,
        Family::Confidence,
        Family::ClassMix,
        Family::InputPsi,
        Family::StudentError,
        Family::TeacherError,
        Family::TeacherUnreachable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Disagreement => "disagreement",
            Family::Kl => "kl",
            Family::AttentionKl => "attention_kl",
            Family::Confidence => "confidence",
            Family::ClassMix => "class_mix",
            Family::InputPsi => "input_psi",
            Family::StudentError => "student_error",
            Family::TeacherError => "teacher_error",
            Family::TeacherUnreachable => "teacher_unreachable",
        }
    }

    /// Whether the family has one member per input feature (and so an index).
    pub fn indexed(self) -> bool {
        matches!(self, Family::InputPsi)
    }

    /// What the family measures, for people.
    pub fn text(self) -> &'static str {
        match self {
            Family::Disagreement => "teacher/student disagreement rate",
            Family::Kl => "KL(teacher ‖ student)",
            Family::AttentionKl => "attention KL (teacher vs student)",
            Family::Confidence => "student confidence",
            Family::ClassMix => "predicted class mix",
            Family::InputPsi => "input distribution (PSI)",
            Family::StudentError => "student error rate",
            Family::TeacherError => "teacher error rate",
            Family::TeacherUnreachable => "teacher's inference server out of reach",
        }
    }

    fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A signal: its family and, for an indexed family, the feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignalName {
    pub family: Family,
    pub index: Option<usize>,
}

impl SignalName {
    pub fn new(family: Family) -> SignalName {
        SignalName {
            family,
            index: None,
        }
    }

    pub fn feature(family: Family, index: usize) -> SignalName {
        SignalName {
            family,
            index: Some(index),
        }
    }

    /// Whether this name, read as a pattern, takes in `other`: a family without an index takes
    /// every member of the family.
    pub fn covers(&self, other: &SignalName) -> bool {
        self.family == other.family && (self.index.is_none() || self.index == other.index)
    }

    /// Whether this pattern takes in the stored signal name `stored` (a name that does not parse
    /// is taken by no pattern).
    pub fn covers_name(&self, stored: &str) -> bool {
        stored.parse().is_ok_and(|s| self.covers(&s))
    }

    /// The index as the `feature` label of `/metrics` (empty without one).
    pub fn feature_label(&self) -> String {
        self.index.map(|i| i.to_string()).unwrap_or_default()
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]", self.family.name()),
            None => f.write_str(self.family.name()),
        }
    }
}

/// Why a signal name does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSignal(pub String);

impl fmt::Display for BadSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadSignal {}

/// Every family, the indexed ones with their `[i]`, for error messages and docs.
pub fn families_text() -> String {
    Family::ALL
        .iter()
        .map(|f| {
            if f.indexed() {
                format!("{0}, {0}[i]", f.name())
            } else {
                f.name().to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for SignalName {
    type Err = BadSignal;

    fn from_str(s: &str) -> Result<SignalName, BadSignal> {
        let (family, index) = match s.split_once('[') {
            None => (s, None),
            Some((family, rest)) => {
                let Some(digits) = rest.strip_suffix(']') else {
                    return Err(BadSignal(format!(
                        "\"{s}\": an index is written in brackets at the end, as in input_psi[4]"
                    )));
                };
                let index = match digits.parse::<usize>() {
                    Ok(i) if !digits.starts_with('+') => i,
                    _ => {
                        return Err(BadSignal(format!(
                            "\"{s}\": the index \"{digits}\" is not a feature number (0, 1, 2, …)"
                        )));
                    }
                };
                (family, Some(index))
            }
        };
        let Some(family) = Family::from_name(family) else {
            return Err(BadSignal(format!(
                "unknown signal \"{s}\", expected one of {}",
                families_text()
            )));
        };
        if index.is_some() && !family.indexed() {
            return Err(BadSignal(format!(
                "\"{s}\": {} has no per-feature members; write \"{}\"",
                family.name(),
                family.name()
            )));
        }
        Ok(SignalName { family, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Family::ALL {
            let s = SignalName::new(f);
            assert_eq!(s.to_string().parse::<SignalName>(), Ok(s));
        }
        let psi = SignalName::feature(Family::InputPsi, 4);
        assert_eq!(psi.to_string(), "input_psi[4]");
        assert_eq!("input_psi[4]".parse::<SignalName>(), Ok(psi));
        assert_eq!(psi.feature_label(), "4");
    }

    #[test]
    fn a_family_covers_its_members_and_a_member_only_itself() {
        let family: SignalName = "input_psi".parse().unwrap();
        let four: SignalName = "input_psi[4]".parse().unwrap();
        assert!(family.covers_name("input_psi[4]"));
        assert!(family.covers_name("input_psi[0]"));
        assert!(four.covers_name("input_psi[4]"));
        assert!(!four.covers_name("input_psi[3]"));
        assert!(!family.covers_name("class_mix"));
        let confidence: SignalName = "confidence".parse().unwrap();
        assert!(confidence.covers_name("confidence"));
        assert!(!confidence.covers_name("confidence_ks"));
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        for (bad, says) in [
            ("input_psi[x]", "not a feature number"),
            ("input_psi[4", "in brackets at the end"),
            ("input_psi[-1]", "not a feature number"),
            ("kl[2]", "no per-feature members"),
            ("confidence_ks", "unknown signal"),
        ] {
            let e = bad.parse::<SignalName>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
