//! Drift detection in the running pipeline: the reference measured on the lab set (the active
//! baseline), and the detectors that compare the field with it, per segment and overall.
//!
//! The statistics live in [`crate::monitor`] (pure state machines and calibration); this module
//! decides which detector watches which signal, turns alarms into drift events, and keeps the
//! state that the writer persists with every file, in the same transaction as the file's
//! records — so a restart neither resets a detector nor re-fires an event.
//!
//! Sequential detectors (one observation at a time):
//! - `disagreement`: Bernoulli CUSUM on teacher-sampled records, p0 from the lab set;
//! - `kl`, `attention_kl`: CUSUM on the per-sample divergences;
//! - `confidence`: CUSUM on 1 − confidence of every record (a rise in student uncertainty);
//! - `student_error`, `teacher_error`: Bernoulli CUSUM on labelled records.
//!
//! Windowed tests, in rounds of `[detect] window_records` records: KS on confidence, chi-square
//! on the class mix, PSI on each input feature — every segment's window in one round, Holm
//! corrected across segments × signals, and an alarm only when the corrected p-value and the
//! effect size both pass.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::monitor::window::{
    RoundTest, WindowTest, class_mix_test, evaluate_round, ks_test, psi_test,
};
use crate::monitor::{Alarm, BaselineError, BernoulliCusum, Cusum};
use crate::record::ALL_SEGMENTS;
use crate::stats::clopper_pearson;
use crate::store::{EventChange, MonitorDelta, NewEvent, StateRow};

mod reference;

pub use reference::{
    MAX_REFERENCE_VALUES, MIN_LAB_RECORDS, MIN_WINDOW_RECORDS, PSI_BINS, RateReference, Reference,
    ValueReference, build_reference,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Sequential {
    Rate(BernoulliCusum),
    Value(Cusum),
}

/// One sequential detector and its episode bookkeeping. An alarm opens a drift event unless one
/// is open; an alarm while it is open is counted on it (the CUSUM re-arms at every alarm, so a
/// repeat alarm is fresh evidence). The event resolves when the detector is **back in control**:
/// since its last alarm, the observations favour the baseline over the shift by as much evidence
/// as an alarm needs — a CUSUM of the negated increments, `R = max(0, R − increment)`, reaching
/// the detector's own threshold h. For a rate that is the log-likelihood ratio of p0 against p1;
/// for a real value, of μ0 against μ0 + 2k.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Watch {
    detector: Sequential,
    open: bool,
    /// Observations since the last alarm.
    since_alarm: u64,
    /// While an event is open: the evidence for "back in control" since the last alarm.
    #[serde(default)]
    recovery: f64,
    /// Changed since its state was last collected for the database.
    #[serde(skip)]
    dirty: bool,
}

impl Watch {
    /// Feeds one value: an alarm opens an event or counts on the open one; evidence of being
    /// back in control resolves it.
    fn step(
        &mut self,
        signal: Signal,
        segment: &str,
        value: Value,
        seq: i64,
        now_ms: i64,
        out: &mut MonitorDelta,
    ) {
        let (increment, alarm, threshold) = match (&mut self.detector, value) {
            (Sequential::Rate(d), Value::Flag(x)) => {
                (d.increment(x), d.update(x, seq as u64), d.threshold())
            }
            (Sequential::Value(d), Value::Real(x)) => {
                (d.increment(x), d.update(x, seq as u64), d.threshold())
            }
            _ => return,
        };
        let detector_name = match self.detector {
            Sequential::Rate(_) => "bernoulli_cusum",
            Sequential::Value(_) => "cusum",
        };
        match alarm {
            Some(a) => {
                self.since_alarm = 0;
                self.recovery = 0.0;
                let event = event_from_alarm(
                    signal.name(),
                    segment,
                    detector_name,
                    &a,
                    now_ms,
                    matches!(self.detector, Sequential::Rate(_)),
                );
                out.changes.push(if self.open {
                    EventChange::Repeat(event)
                } else {
                    EventChange::Open(event)
                });
                self.open = true;
            }
            None => {
                self.since_alarm += 1;
                if self.open {
                    self.recovery = (self.recovery - increment).max(0.0);
                    if self.recovery >= threshold {
                        self.open = false;
                        self.recovery = 0.0;
                        out.changes.push(EventChange::Resolve {
                            signal: signal.name().to_string(),
                            segment: segment.to_string(),
                            detector: detector_name,
                        });
                    }
                }
            }
        }
        self.dirty = true;
    }
}

/// A new detector for `signal`, or `None` when the baseline has no reference for it.
fn new_watch(r: &Reference, signal: Signal) -> Option<Watch> {
    let detector = match signal {
        Signal::Disagreement => rate_detector(r.disagreement.as_ref())?,
        Signal::StudentError => rate_detector(r.student_error.as_ref())?,
        Signal::TeacherError => rate_detector(r.teacher_error.as_ref())?,
        Signal::Kl => value_detector(r.kl.as_ref())?,
        Signal::AttentionKl => value_detector(r.attention_kl.as_ref())?,
        Signal::Confidence => value_detector(r.uncertainty.as_ref())?,
    };
    Some(Watch {
        detector,
        open: false,
        since_alarm: 0,
        recovery: 0.0,
        dirty: true,
    })
}

/// Per-segment window accumulators for the windowed tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Window {
    confidence: Vec<f64>,
    classes: Vec<u64>,
    /// Per feature, counts in the reference bins.
    features: Vec<Vec<u64>>,
    records: usize,
    /// Changed since its state was last collected for the database.
    #[serde(skip)]
    dirty: bool,
}

/// The detectors of one pipeline, for one baseline version.
#[derive(Debug, Clone)]
pub struct DriftMonitor {
    pub baseline_version: i64,
    reference: Reference,
    window_records: usize,
    family_alpha: f64,
    min_ks: f64,
    min_class_shift: f64,
    min_psi: f64,
    /// segment → its sequential detectors, one slot per [`Signal`] (a lookup by `&str`
    /// allocates nothing, and a record's signals share one lookup of its segment).
    watches: BTreeMap<String, [Option<Watch>; Signal::ALL.len()]>,
    windows: BTreeMap<String, Window>,
    open_windowed: BTreeMap<(String, String), bool>,
}

/// What the monitor learns from one record.
#[derive(Debug, Clone, Default)]
pub struct Observation<'a> {
    pub seq: i64,
    pub segment: &'a str,
    pub confidence: Option<f64>,
    pub prediction: Option<i64>,
    pub features: &'a [f64],
    pub disagreement: Option<bool>,
    pub kl: Option<f64>,
    pub attention_kl: Option<f64>,
}

const WINDOW_KEY: &str = "window";

/// The signals the sequential detectors watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Disagreement,
    Kl,
    AttentionKl,
    Confidence,
    StudentError,
    TeacherError,
}

impl Signal {
    const ALL: [Signal; 6] = [
        Signal::Disagreement,
        Signal::Kl,
        Signal::AttentionKl,
        Signal::Confidence,
        Signal::StudentError,
        Signal::TeacherError,
    ];

    /// The name in `detector_state` and `drift_events`.
    fn name(self) -> &'static str {
        match self {
            Signal::Disagreement => "disagreement",
            Signal::Kl => "kl",
            Signal::AttentionKl => "attention_kl",
            Signal::Confidence => "confidence",
            Signal::StudentError => "student_error",
            Signal::TeacherError => "teacher_error",
        }
    }

    fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl DriftMonitor {
    pub fn new(baseline_version: i64, reference: Reference, config: &Config) -> DriftMonitor {
        let d = &config.detect;
        DriftMonitor {
            baseline_version,
            reference,
            window_records: d.window_records,
            family_alpha: d.family_alpha,
            min_ks: d.min_ks,
            min_class_shift: d.min_class_shift,
            min_psi: d.min_psi,
            watches: BTreeMap::new(),
            windows: BTreeMap::new(),
            open_windowed: BTreeMap::new(),
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Restores persisted state rows `(signal, segment, detector, json)`.
    pub fn restore(&mut self, rows: Vec<(String, String, String, String)>) {
        for (signal, segment, detector, json) in rows {
            if detector == WINDOW_KEY {
                if let Ok(w) = serde_json::from_str::<Window>(&json) {
                    self.windows.insert(segment, w);
                }
            } else if detector.starts_with("windowed:") {
                self.open_windowed.insert((signal, segment), json == "open");
            } else if let (Some(signal), Ok(w)) = (
                Signal::from_name(&signal),
                serde_json::from_str::<Watch>(&json),
            ) {
                self.watches.entry(segment).or_default()[signal as usize] = Some(w);
            }
        }
    }

    /// Feeds a record's `values` (one per signal, `None` where the record has none) to the
    /// detectors of `segment`, creating each on first use where the baseline has a reference.
    fn step(
        &mut self,
        segment: &str,
        values: &[(Signal, Option<Value>)],
        seq: i64,
        now_ms: i64,
        out: &mut MonitorDelta,
    ) {
        if values.iter().all(|(_, v)| v.is_none()) {
            return;
        }
        if !self.watches.contains_key(segment) {
            self.watches.insert(segment.to_string(), Default::default());
        }
        let Some(slots) = self.watches.get_mut(segment) else {
            return;
        };
        for &(signal, value) in values {
            let Some(value) = value else {
                continue;
            };
            let slot = &mut slots[signal as usize];
            if slot.is_none() {
                *slot = new_watch(&self.reference, signal);
            }
            if let Some(w) = slot {
                w.step(signal, segment, value, seq, now_ms, out);
            }
        }
    }

    /// Feeds one record to every detector of its segment and of the whole fleet.
    pub fn observe(&mut self, obs: &Observation<'_>, now_ms: i64, out: &mut MonitorDelta) {
        let segments: &[&str] = if obs.segment == ALL_SEGMENTS {
            &[ALL_SEGMENTS]
        } else {
            &[obs.segment, ALL_SEGMENTS]
        };
        let values = [
            (Signal::Disagreement, obs.disagreement.map(Value::Flag)),
            (Signal::Kl, obs.kl.map(Value::Real)),
            (Signal::AttentionKl, obs.attention_kl.map(Value::Real)),
            (
                Signal::Confidence,
                obs.confidence.map(|c| Value::Real(1.0 - c)),
            ),
        ];
        for &segment in segments {
            self.step(segment, &values, obs.seq, now_ms, out);
            self.accumulate(segment, obs);
        }
        let round_full = self
            .windows
            .get(ALL_SEGMENTS)
            .is_some_and(|w| w.records >= self.window_records);
        if round_full {
            self.round(obs.seq, now_ms, out);
        }
    }

    /// Feeds one labelled record to the error-rate detectors.
    pub fn observe_label(
        &mut self,
        seq: i64,
        segment: &str,
        student_wrong: bool,
        teacher_wrong: Option<bool>,
        now_ms: i64,
        out: &mut MonitorDelta,
    ) {
        let segments: &[&str] = if segment == ALL_SEGMENTS {
            &[ALL_SEGMENTS]
        } else {
            &[segment, ALL_SEGMENTS]
        };
        let values = [
            (Signal::StudentError, Some(Value::Flag(student_wrong))),
            (Signal::TeacherError, teacher_wrong.map(Value::Flag)),
        ];
        for &s in segments {
            self.step(s, &values, seq, now_ms, out);
        }
    }

    fn accumulate(&mut self, segment: &str, obs: &Observation<'_>) {
        let r = &self.reference;
        if !self.windows.contains_key(segment) {
            self.windows.insert(segment.to_string(), Window::default());
        }
        let Some(w) = self.windows.get_mut(segment) else {
            return;
        };
        if w.classes.len() != r.class_counts.len() {
            w.classes = vec![0; r.class_counts.len()];
        }
        if w.features.len() != r.features.len() {
            w.features = r
                .features
                .iter()
                .map(|b| vec![0; b.as_ref().map_or(0, |b| b.counts.len())])
                .collect();
        }
        w.records += 1;
        w.dirty = true;
        if let Some(c) = obs.confidence {
            w.confidence.push(c);
        }
        if let Some(p) = obs.prediction
            && let Some(slot) = w.classes.get_mut(p.max(0) as usize)
        {
            *slot += 1;
        }
        for (f, bins) in r.features.iter().enumerate() {
            if let (Some(bins), Some(&x)) = (bins, obs.features.get(f))
                && let Some(slot) = w.features[f].get_mut(bins.bin_of(x))
            {
                *slot += 1;
            }
        }
    }

    /// One round of windowed tests over every segment's window, Holm-corrected together.
    fn round(&mut self, seq: i64, now_ms: i64, out: &mut MonitorDelta) {
        let r = &self.reference;
        let mut tests: Vec<RoundTest> = Vec::new();
        for (segment, w) in &self.windows {
            if w.records < MIN_WINDOW_RECORDS {
                continue;
            }
            let mut push =
                |signal: String, result: Result<WindowTest, BaselineError>, min_effect: f64| {
                    if let Ok(test) = result {
                        tests.push(RoundTest {
                            segment: segment.clone(),
                            signal,
                            test,
                            min_effect,
                        });
                    }
                };
            if !r.confidence_values.is_empty() && !w.confidence.is_empty() {
                push(
                    "confidence_ks".into(),
                    ks_test(&r.confidence_values, &w.confidence),
                    self.min_ks,
                );
            }
            if w.classes.iter().sum::<u64>() > 0 {
                push(
                    "class_mix".into(),
                    class_mix_test(&r.class_counts, &w.classes),
                    self.min_class_shift,
                );
            }
            for (f, bins) in r.features.iter().enumerate() {
                if let Some(bins) = bins {
                    push(
                        format!("input_psi[{f}]"),
                        psi_test(bins, &w.features[f]),
                        self.min_psi,
                    );
                }
            }
        }
        let decisions = evaluate_round(&tests, self.family_alpha);
        for (d, t) in decisions.iter().zip(&tests) {
            let key = (d.signal.clone(), d.segment.clone());
            let was_open = self.open_windowed.get(&key).copied().unwrap_or(false);
            let detector = match t.test.kind {
                crate::monitor::window::TestKind::KolmogorovSmirnov => "ks",
                crate::monitor::window::TestKind::ChiSquare => "chi_square",
                crate::monitor::window::TestKind::Psi => "psi",
            };
            if d.alarm {
                let event = NewEvent {
                    signal: d.signal.clone(),
                    segment: d.segment.clone(),
                    detector,
                    detected_at_ms: now_ms,
                    detected_at_record: seq,
                    estimated_change_record: None,
                    statistic: t.test.statistic,
                    threshold: self.family_alpha,
                    baseline_value: None,
                    current_value: Some(d.effect_size),
                    current_low: None,
                    current_high: None,
                    p_value: Some(d.adjusted_p_value),
                    effect_size: Some(d.effect_size),
                };
                // A round that alarms again while its event is open counts on it.
                out.changes.push(if was_open {
                    EventChange::Repeat(event)
                } else {
                    EventChange::Open(event)
                });
            } else if was_open {
                out.changes.push(EventChange::Resolve {
                    signal: d.signal.clone(),
                    segment: d.segment.clone(),
                    detector,
                });
            }
            self.open_windowed.insert(key.clone(), d.alarm);
            out.states.insert(
                (
                    d.signal.clone(),
                    d.segment.clone(),
                    format!("windowed:{detector}"),
                ),
                StateRow {
                    samples: t.test.n_window,
                    statistic: d.adjusted_p_value,
                    threshold: self.family_alpha,
                    json: if d.alarm {
                        "open".into()
                    } else {
                        "closed".into()
                    },
                },
            );
        }
        // A new round starts empty everywhere.
        for w in self.windows.values_mut() {
            *w = Window {
                dirty: true,
                ..Window::default()
            };
        }
    }

    /// Adds the state of every detector and window changed since the last call to `out`, for
    /// the database. Called once per commit, after the last observation: serialising states per
    /// record would cost more than the detectors themselves.
    pub fn collect_states(&mut self, out: &mut MonitorDelta) {
        for (segment, slots) in &mut self.watches {
            for (signal, w) in Signal::ALL.iter().zip(slots.iter_mut()) {
                let Some(w) = w.as_mut().filter(|w| w.dirty) else {
                    continue;
                };
                w.dirty = false;
                let (detector, samples, statistic, threshold) = match &w.detector {
                    Sequential::Rate(d) => (
                        "bernoulli_cusum",
                        d.observed(),
                        d.statistic(),
                        d.threshold(),
                    ),
                    Sequential::Value(d) => ("cusum", d.observed(), d.statistic(), d.threshold()),
                };
                out.states.insert(
                    (
                        signal.name().to_string(),
                        segment.clone(),
                        detector.to_string(),
                    ),
                    StateRow {
                        samples,
                        statistic,
                        threshold,
                        json: serde_json::to_string(&*w).unwrap_or_default(),
                    },
                );
            }
        }
        for (segment, w) in self.windows.iter_mut().filter(|(_, w)| w.dirty) {
            w.dirty = false;
            out.states.insert(
                (
                    WINDOW_KEY.to_string(),
                    segment.clone(),
                    WINDOW_KEY.to_string(),
                ),
                StateRow {
                    samples: w.records as u64,
                    statistic: 0.0,
                    threshold: 0.0,
                    json: serde_json::to_string(&*w).unwrap_or_default(),
                },
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Flag(bool),
    Real(f64),
}

fn rate_detector(r: Option<&RateReference>) -> Option<Sequential> {
    let r = r?;
    BernoulliCusum::new(r.p0, r.p1, r.threshold)
        .ok()
        .map(Sequential::Rate)
}

fn value_detector(r: Option<&ValueReference>) -> Option<Sequential> {
    let r = r?;
    Cusum::new(r.mean, r.k, r.threshold)
        .ok()
        .map(Sequential::Value)
}

fn event_from_alarm(
    signal: &str,
    segment: &str,
    detector: &'static str,
    a: &Alarm,
    now_ms: i64,
    rate: bool,
) -> NewEvent {
    let (low, high) = if rate {
        let n = a.observations_since_change as f64;
        clopper_pearson(a.current_value * n, n, 0.05)
            .map_or((None, None), |i| (Some(i.low), Some(i.high)))
    } else {
        (None, None)
    };
    let (current_value, baseline_value) = if signal == "confidence" {
        // The detector watches 1 − confidence; report confidence itself.
        (1.0 - a.current_value, 1.0 - a.baseline_value)
    } else {
        (a.current_value, a.baseline_value)
    };
    let (low, high) = if signal == "confidence" {
        (high.map(|h| 1.0 - h), low.map(|l| 1.0 - l))
    } else {
        (low, high)
    };
    NewEvent {
        signal: signal.to_string(),
        segment: segment.to_string(),
        detector,
        detected_at_ms: now_ms,
        detected_at_record: a.detected_at as i64,
        estimated_change_record: Some(a.estimated_change as i64),
        statistic: a.statistic,
        threshold: a.threshold,
        baseline_value: Some(baseline_value),
        current_value: Some(current_value),
        current_low: low,
        current_high: high,
        p_value: None,
        effect_size: None,
    }
}

#[cfg(test)]
mod tests;
