//! Drift detection in the running pipeline: the reference measured on the lab set (the active
//! baseline), and the detectors that compare the field with it, per segment and overall.
//!
//! The statistics live in [`crate::monitor`] (pure state machines and calibration); this module
//! decides which detector watches which signal, turns alarms into drift events, and keeps the
//! state that the writer persists with every file, in the same transaction as the file's
//! records — so a restart neither resets a detector nor re-fires an event.
//!
//! Sequential detectors (one observation at a time):
//! - `disagreement`: Bernoulli CUSUM on teacher-sampled records, p0 from the lab set — by
//!   default a bank of them at several p1 (`[detect] detector`, [`crate::monitor::bank`]);
//! - `kl`, `attention_kl`: CUSUM on the per-sample divergences;
//! - `confidence`: CUSUM on 1 − confidence of every record (a rise in student uncertainty);
//! - `student_error`, `teacher_error`: Bernoulli CUSUM (or bank) on labelled records.
//!
//! Windowed tests, in rounds of `[detect] window_records` records: KS on confidence (the signal
//! `confidence`, detector `ks`), chi-square on the class mix, PSI on each input feature
//! (`input_psi[i]`, see [`crate::signal`]) — every segment's window in one round, Holm
//! corrected across segments × signals, and an alarm only when the corrected p-value and the
//! effect size both pass.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::budget::{Allocation, BudgetInput, FamilyInput, allocate};
use crate::config::{Config, RateDetector};
use crate::monitor::window::{
    RoundTest, WindowTest, class_mix_test, evaluate_round, ks_test, psi_test,
};
use crate::monitor::{Alarm, BaselineError, BernoulliBank, BernoulliCusum, Cusum};
use crate::record::ALL_SEGMENTS;
use crate::signal::{Family, SignalName};
use crate::stats::clopper_pearson;
use crate::store::{EventChange, MonitorDelta, NewEvent, StateRow};

pub mod budget;
mod reference;

pub use reference::{
    CLIP_QUANTILE, MAX_REFERENCE_VALUES, MIN_LAB_RECORDS, MIN_WINDOW_RECORDS, PSI_BINS,
    RateReference, Reference, ValueReference, build_reference,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Sequential {
    Rate(BernoulliCusum),
    Value(Cusum),
    /// Added after `Rate` and `Value`: stored states of those still load as they were.
    Bank(BernoulliBank),
}

impl Sequential {
    /// The name in `detector_state` and `drift_events`. A bank is a set of Bernoulli CUSUMs and
    /// keeps their name, so status, metrics and stored rows read the same under either
    /// `[detect] detector`.
    fn name(&self) -> &'static str {
        match self {
            Sequential::Rate(_) | Sequential::Bank(_) => "bernoulli_cusum",
            Sequential::Value(_) => "cusum",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Sequential::Rate(_) => "cusum",
            Sequential::Bank(_) => "bank",
            Sequential::Value(_) => "value cusum",
        }
    }
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
            (Sequential::Bank(d), Value::Flag(x)) => {
                // "Back in control" weighs p0 against the member of the last alarm (unchanged
                // by a step without alarm).
                let alarm = d.update(x, seq as u64);
                (d.recovery_increment(x), alarm, d.recovery_threshold())
            }
            _ => return,
        };
        let detector_name = self.detector.name();
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
                    matches!(self.detector, Sequential::Rate(_) | Sequential::Bank(_)),
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

impl Watch {
    /// Arms the detector at the threshold for `arl0` on its curve (profiles stored before
    /// curves existed keep their calibrated threshold).
    fn set_arl0(&mut self, r: &Reference, signal: Signal, arl0: f64) {
        if let Sequential::Bank(d) = &mut self.detector {
            if let Some(bank) = rate_reference_of(r, signal).and_then(|x| x.bank.as_ref()) {
                d.set_level(bank.level(arl0));
                self.dirty = true;
            }
            return;
        }
        let Some(curve) = curve_of(r, signal) else {
            return;
        };
        let h = curve.threshold(arl0);
        match &mut self.detector {
            Sequential::Rate(d) => d.set_threshold(h),
            Sequential::Value(d) => d.set_threshold(h),
            Sequential::Bank(_) => {}
        }
        self.dirty = true;
    }
}

/// The rate reference of a Bernoulli signal.
fn rate_reference_of(r: &Reference, signal: Signal) -> Option<&RateReference> {
    match signal {
        Signal::Disagreement => r.disagreement.as_ref(),
        Signal::StudentError => r.student_error.as_ref(),
        Signal::TeacherError => r.teacher_error.as_ref(),
        Signal::Kl | Signal::AttentionKl | Signal::Confidence => None,
    }
}

/// The threshold curve of a signal's reference.
fn curve_of(r: &Reference, signal: Signal) -> Option<&crate::monitor::ThresholdCurve> {
    match signal {
        Signal::Disagreement => r.disagreement.as_ref()?.curve.as_ref(),
        Signal::StudentError => r.student_error.as_ref()?.curve.as_ref(),
        Signal::TeacherError => r.teacher_error.as_ref()?.curve.as_ref(),
        Signal::Kl => r.kl.as_ref()?.curve.as_ref(),
        Signal::AttentionKl => r.attention_kl.as_ref()?.curve.as_ref(),
        Signal::Confidence => r.uncertainty.as_ref()?.curve.as_ref(),
    }
}

/// The reference of a real-valued signal; `None` for a rate.
fn value_reference_of(r: &Reference, signal: Signal) -> Option<&ValueReference> {
    match signal {
        Signal::Kl => r.kl.as_ref(),
        Signal::AttentionKl => r.attention_kl.as_ref(),
        Signal::Confidence => r.uncertainty.as_ref(),
        Signal::Disagreement | Signal::StudentError | Signal::TeacherError => None,
    }
}

/// Whether the baseline has a reference (and so a detector) for `signal`.
fn has_reference(r: &Reference, signal: Signal) -> bool {
    match signal {
        Signal::Disagreement => r.disagreement.is_some(),
        Signal::StudentError => r.student_error.is_some(),
        Signal::TeacherError => r.teacher_error.is_some(),
        Signal::Kl => r.kl.is_some(),
        Signal::AttentionKl => r.attention_kl.is_some(),
        Signal::Confidence => r.uncertainty.is_some(),
    }
}

/// What the budget allocation is computed from, counted as the records arrive (persisted as
/// the `budget` state row, with the allocation itself for `sensei status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BudgetState {
    /// Records seen per segment, the all-segments aggregate included.
    pub seen: BTreeMap<String, u64>,
    /// Teacher comparisons and labels seen (all segments).
    pub teacher: u64,
    pub labels: u64,
    /// Earliest and latest record timestamp seen (ms).
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: Option<i64>,
    /// When the detectors of this baseline were first armed (ms).
    pub armed_at_ms: Option<i64>,
    pub allocation: Option<Allocation>,
    #[serde(skip)]
    dirty: bool,
}

/// The budget state row's signal, segment and detector in `detector_state`.
pub const BUDGET_KEY: &str = "budget";

/// The field rate is trusted over the lab's once this many records span at least
/// [`MIN_RATE_SPAN_MS`].
const MIN_RATE_RECORDS: u64 = 1000;
const MIN_RATE_SPAN_MS: i64 = 600_000;
/// Without a field or lab rate, the budget assumes this many records per second.
pub const ASSUMED_RECORDS_PER_SECOND: f64 = 1.0;

/// A new detector for `signal`, or `None` when the baseline has no reference for it.
fn new_watch(r: &Reference, signal: Signal, kind: RateDetector) -> Option<Watch> {
    let detector = match signal {
        Signal::Disagreement => rate_detector(r.disagreement.as_ref(), kind)?,
        Signal::StudentError => rate_detector(r.student_error.as_ref(), kind)?,
        Signal::TeacherError => rate_detector(r.teacher_error.as_ref(), kind)?,
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
    /// `[detect] detector`: what watches the Bernoulli signals.
    rate_kind: RateDetector,
    /// segment → its sequential detectors, one slot per [`Signal`] (a lookup by `&str`
    /// allocates nothing, and a record's signals share one lookup of its segment).
    watches: BTreeMap<String, [Option<Watch>; Signal::ALL.len()]>,
    windows: BTreeMap<String, Window>,
    open_windowed: BTreeMap<(String, String), bool>,
    /// `[detect] false_alarms`, `arl0`, `family_alpha` and the configured teacher rate.
    budget_events: f64,
    budget_period_seconds: f64,
    explicit_arl0: crate::config::Arl0Override,
    explicit_alpha: Option<f64>,
    teacher_rate: f64,
    budget: BudgetState,
}

/// What the monitor learns from one record.
#[derive(Debug, Clone, Default)]
pub struct Observation<'a> {
    pub seq: i64,
    pub segment: &'a str,
    pub confidence: Option<f64>,
    pub prediction: Option<i64>,
    pub features: &'a [f64],
    /// The record's timestamp (ms): the budget's observed record rate.
    pub ts_ms: Option<i64>,
    pub disagreement: Option<bool>,
    pub kl: Option<f64>,
    pub attention_kl: Option<f64>,
}

const WINDOW_KEY: &str = "window";

/// The threshold a windowed test's statistic is shown against: its statistic is the test's
/// margin towards an alarm ([`crate::monitor::window::RoundDecision::margin`]), which reaches 1
/// exactly when it alarms — the same reading as a CUSUM against its threshold. The p-value and
/// the effect size themselves are on the drift event.
pub const WINDOWED_THRESHOLD: f64 = 1.0;

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
        self.family().name()
    }

    fn family(self) -> Family {
        match self {
            Signal::Disagreement => Family::Disagreement,
            Signal::Kl => Family::Kl,
            Signal::AttentionKl => Family::AttentionKl,
            Signal::Confidence => Family::Confidence,
            Signal::StudentError => Family::StudentError,
            Signal::TeacherError => Family::TeacherError,
        }
    }

    fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl DriftMonitor {
    pub fn new(baseline_version: i64, reference: Reference, config: &Config) -> DriftMonitor {
        let d = &config.detect;
        let mut m = DriftMonitor {
            baseline_version,
            reference,
            window_records: d.window_records,
            family_alpha: d.family_alpha.unwrap_or(0.01),
            min_ks: d.min_ks,
            min_class_shift: d.min_class_shift,
            min_psi: d.min_psi,
            rate_kind: d.rate_detector,
            watches: BTreeMap::new(),
            windows: BTreeMap::new(),
            open_windowed: BTreeMap::new(),
            budget_events: d.false_alarms.events,
            budget_period_seconds: d.false_alarms.period.as_secs_f64(),
            explicit_arl0: d.arl0.clone(),
            explicit_alpha: d.family_alpha,
            teacher_rate: config.sampling.rate,
            budget: BudgetState::default(),
        };
        if m.rate_kind == RateDetector::Bank {
            for s in [
                Signal::Disagreement,
                Signal::StudentError,
                Signal::TeacherError,
            ] {
                if rate_reference_of(&m.reference, s).is_some_and(|r| r.bank.is_none()) {
                    tracing::warn!(
                        signal = s.name(),
                        baseline = baseline_version,
                        "The baseline profile has no bank of CUSUMs for this signal (stored before the bank existed, or p0 too close to 1); it is watched by the single Bernoulli CUSUM. Run `sensei baseline` again to get the bank."
                    );
                }
            }
        }
        m.reallocate();
        m
    }

    /// The budget, its allocation and what it was computed from.
    pub fn budget(&self) -> &BudgetState {
        &self.budget
    }

    /// Records per second the budget assumes, and where that comes from.
    fn expected_rate(&self) -> (f64, &'static str) {
        let b = &self.budget;
        let all = b.seen.get(ALL_SEGMENTS).copied().unwrap_or(0);
        if let (Some(first), Some(last)) = (b.first_ts_ms, b.last_ts_ms)
            && all >= MIN_RATE_RECORDS
            && last - first >= MIN_RATE_SPAN_MS
        {
            return ((all - 1) as f64 / ((last - first) as f64 / 1000.0), "field");
        }
        match self.reference.records_per_second {
            Some(r) if r.is_finite() && r > 0.0 => (r, "lab"),
            _ => (ASSUMED_RECORDS_PER_SECOND, "assumed"),
        }
    }

    /// Recomputes the allocation from the counts so far and moves every detector's
    /// threshold to it. Runs when the detectors are armed, when a segment joins and after
    /// every windowed round; a threshold lookup costs microseconds (`monitor::curve`).
    fn reallocate(&mut self) {
        let b = &self.budget;
        let all = b.seen.get(ALL_SEGMENTS).copied().unwrap_or(0);
        let teacher_share = if all >= MIN_RATE_RECORDS && b.teacher > 0 {
            b.teacher as f64 / all as f64
        } else {
            self.teacher_rate
        };
        let label_share = if all >= MIN_RATE_RECORDS && b.labels > 0 {
            b.labels as f64 / all as f64
        } else {
            self.reference.labelled_share.unwrap_or(1.0)
        };
        let families: Vec<FamilyInput> = Signal::ALL
            .into_iter()
            .filter(|&s| has_reference(&self.reference, s))
            .map(|s| FamilyInput {
                family: s.name(),
                observations_per_record: match s {
                    Signal::Disagreement | Signal::Kl | Signal::AttentionKl => teacher_share,
                    Signal::Confidence => 1.0,
                    Signal::StudentError | Signal::TeacherError => label_share,
                },
                explicit_arl0: self.explicit_arl0.for_family(s.name()).map(|a| a as f64),
            })
            .collect();
        let segments = b.seen.keys().filter(|k| *k != ALL_SEGMENTS).count();
        let (rate, source) = self.expected_rate();
        let windowed = !self.reference.confidence_values.is_empty()
            || self.reference.class_counts.iter().sum::<u64>() > 0
            || self.reference.features.iter().any(Option::is_some);
        let allocation = allocate(&BudgetInput {
            events: self.budget_events,
            period_seconds: self.budget_period_seconds,
            records_per_second: rate,
            rate_source: source,
            families: &families,
            segments,
            windowed,
            window_records: self.window_records,
            explicit_alpha: self.explicit_alpha,
        });
        if let Some(alpha) = allocation.alpha() {
            self.family_alpha = alpha;
        }
        let n_segments = segments as f64;
        for (segment, slots) in &mut self.watches {
            let share = if segment == ALL_SEGMENTS {
                1.0
            } else {
                // Smoothed so that a segment that has just joined has a share of 1/segments.
                (self.budget.seen.get(segment).copied().unwrap_or(0) as f64 + 1.0)
                    / (all as f64 + n_segments.max(1.0))
            };
            for (signal, w) in Signal::ALL.iter().zip(slots.iter_mut()) {
                if let (Some(w), Some(arl0)) = (w.as_mut(), allocation.arl0(signal.name(), share)) {
                    w.set_arl0(&self.reference, *signal, arl0);
                }
            }
        }
        self.budget.allocation = Some(allocation);
        self.budget.dirty = true;
    }

    /// The ARL0 a new detector of `signal` on `segment` gets from the current allocation.
    fn arl0_of_new(&self, segment: &str, signal: Signal) -> Option<f64> {
        let allocation = self.budget.allocation.as_ref()?;
        let share = if segment == ALL_SEGMENTS {
            1.0
        } else {
            let all = self.budget.seen.get(ALL_SEGMENTS).copied().unwrap_or(0) as f64;
            let n = self
                .budget
                .seen
                .keys()
                .filter(|k| *k != ALL_SEGMENTS)
                .count()
                .max(1) as f64;
            (self.budget.seen.get(segment).copied().unwrap_or(0) as f64 + 1.0) / (all + n)
        };
        allocation.arl0(signal.name(), share)
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Restores persisted state rows `(signal, segment, detector, json)`.
    pub fn restore(&mut self, rows: Vec<(String, String, String, String)>) {
        for (signal, segment, detector, json) in rows {
            if detector == BUDGET_KEY {
                if let Ok(b) = serde_json::from_str::<BudgetState>(&json) {
                    self.budget = b;
                }
            } else if detector == WINDOW_KEY {
                if let Ok(w) = serde_json::from_str::<Window>(&json) {
                    self.windows.insert(segment, w);
                }
            } else if detector.starts_with("windowed:") {
                self.open_windowed.insert((signal, segment), json == "open");
            } else if let (Some(signal), Ok(mut w)) = (
                Signal::from_name(&signal),
                serde_json::from_str::<Watch>(&json),
            ) {
                self.rearm_if_reconfigured(&mut w, signal, &segment);
                // A detector stored before its increments were clipped takes the reference's
                // clip, keeping its statistic: the threshold it is armed at is calibrated on
                // the clipped increments.
                if let (Sequential::Value(d), Some(r)) =
                    (&mut w.detector, value_reference_of(&self.reference, signal))
                    && d.clip() != r.clip
                    && d.set_clip(r.clip).is_ok()
                {
                    w.dirty = true;
                }
                self.watches.entry(segment).or_default()[signal as usize] = Some(w);
            }
        }
        self.reallocate();
    }

    /// A stored Bernoulli detector of the other kind than `[detect] detector` asks for (a state
    /// from before the bank, or a changed setting) is replaced by a fresh one of the configured
    /// kind, with a log line; whether an event is open carries over, the statistic starts at 0.
    fn rearm_if_reconfigured(&self, w: &mut Watch, signal: Signal, segment: &str) {
        let Some(fresh) = new_watch(&self.reference, signal, self.rate_kind) else {
            return;
        };
        let stored = w.detector.kind();
        let wanted = fresh.detector.kind();
        if stored == wanted || matches!(w.detector, Sequential::Value(_)) {
            return;
        }
        tracing::info!(
            signal = signal.name(),
            segment,
            stored,
            configured = wanted,
            "Re-armed a stored Bernoulli detector as the configured kind ([detect] detector); its statistic starts at zero, an open event stays open."
        );
        w.detector = fresh.detector;
        w.recovery = 0.0;
        w.dirty = true;
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
        for &(signal, value) in values {
            if value.is_some()
                && self
                    .watches
                    .get(segment)
                    .is_some_and(|slots| slots[signal as usize].is_none())
            {
                let arl0 = self.arl0_of_new(segment, signal);
                let mut w = new_watch(&self.reference, signal, self.rate_kind);
                if let (Some(w), Some(arl0)) = (w.as_mut(), arl0) {
                    w.set_arl0(&self.reference, signal, arl0);
                }
                if let Some(slots) = self.watches.get_mut(segment) {
                    slots[signal as usize] = w;
                }
            }
        }
        let Some(slots) = self.watches.get_mut(segment) else {
            return;
        };
        for &(signal, value) in values {
            let Some(value) = value else {
                continue;
            };
            if let Some(w) = &mut slots[signal as usize] {
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
        let b = &mut self.budget;
        b.armed_at_ms.get_or_insert(now_ms);
        if let Some(ts) = obs.ts_ms {
            b.first_ts_ms = Some(b.first_ts_ms.map_or(ts, |f| f.min(ts)));
            b.last_ts_ms = Some(b.last_ts_ms.map_or(ts, |l| l.max(ts)));
        }
        if obs.disagreement.is_some() {
            b.teacher += 1;
        }
        b.dirty = true;
        let mut joined = false;
        for &segment in segments {
            match b.seen.get_mut(segment) {
                Some(n) => *n += 1,
                None => {
                    b.seen.insert(segment.to_string(), 1);
                    joined = true;
                }
            }
        }
        if joined {
            // A new segment: more detectors share the budget.
            self.reallocate();
        }
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
        self.budget.labels += 1;
        self.budget.dirty = true;
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
                    SignalName::new(Family::Confidence).to_string(),
                    ks_test(&r.confidence_values, &w.confidence),
                    self.min_ks,
                );
            }
            if w.classes.iter().sum::<u64>() > 0 {
                push(
                    SignalName::new(Family::ClassMix).to_string(),
                    class_mix_test(&r.class_counts, &w.classes),
                    self.min_class_shift,
                );
            }
            for (f, bins) in r.features.iter().enumerate() {
                if let Some(bins) = bins {
                    push(
                        SignalName::feature(Family::InputPsi, f).to_string(),
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
            let margin = d.margin(self.family_alpha);
            if d.alarm {
                let event = NewEvent {
                    signal: d.signal.clone(),
                    segment: d.segment.clone(),
                    detector,
                    detected_at_ms: now_ms,
                    detected_at_record: seq,
                    estimated_change_record: None,
                    statistic: margin,
                    threshold: WINDOWED_THRESHOLD,
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
                    statistic: margin,
                    threshold: WINDOWED_THRESHOLD,
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
        // Segment shares and the observed rates move: re-spread the budget.
        self.reallocate();
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
                let detector = w.detector.name();
                let (samples, statistic, threshold) = match &w.detector {
                    Sequential::Rate(d) => (d.observed(), d.statistic(), d.threshold()),
                    Sequential::Value(d) => (d.observed(), d.statistic(), d.threshold()),
                    // The member nearest to its threshold.
                    Sequential::Bank(d) => (d.observed(), d.statistic(), d.threshold()),
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
        if self.budget.dirty {
            self.budget.dirty = false;
            out.states.insert(
                (
                    BUDGET_KEY.to_string(),
                    ALL_SEGMENTS.to_string(),
                    BUDGET_KEY.to_string(),
                ),
                StateRow {
                    samples: self.budget.seen.get(ALL_SEGMENTS).copied().unwrap_or(0),
                    statistic: 0.0,
                    threshold: 0.0,
                    json: serde_json::to_string(&self.budget).unwrap_or_default(),
                },
            );
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

/// The configured kind of detector for a rate, armed at the profile's reference ARL0 until the
/// budget moves it; the single CUSUM where the profile has no bank.
fn rate_detector(r: Option<&RateReference>, kind: RateDetector) -> Option<Sequential> {
    let r = r?;
    if kind == RateDetector::Bank
        && let Some(bank) = &r.bank
        && let Ok(d) = BernoulliBank::new(
            r.p0,
            &bank.members,
            bank.curve.threshold(bank.curve.simulated_up_to()),
        )
    {
        return Some(Sequential::Bank(d));
    }
    BernoulliCusum::new(r.p0, r.p1, r.threshold)
        .ok()
        .map(Sequential::Rate)
}

fn value_detector(r: Option<&ValueReference>) -> Option<Sequential> {
    r?.detector().map(Sequential::Value)
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
