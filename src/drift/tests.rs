//! The drift monitor's event bookkeeping: when an event opens, counts an alarm, and resolves.

use std::path::Path;

use super::*;

/// A reference with only the disagreement detector: p0 = 0.03, p1 = 0.05, h = 3.
fn disagreement_only() -> Reference {
    Reference {
        records: 1000,
        classes: 2,
        arl0: 1000.0,
        records_per_second: None,
        labelled_share: None,
        disagreement: Some(RateReference {
            rate: 0.03,
            events: 30.0,
            trials: 1000.0,
            p0: 0.03,
            p1: 0.05,
            threshold: 3.0,
            simulated_arl0: 1000.0,
            expected_delay: None,
            curve: None,
            bank: None,
        }),
        kl: None,
        attention_kl: None,
        uncertainty: None,
        confidence_values: Vec::new(),
        class_counts: Vec::new(),
        features: Vec::new(),
        student_error: None,
        teacher_error: None,
        student_accuracy: None,
        teacher_accuracy: None,
        agreement: 0.97,
        student_latency_us: 0.0,
        teacher_latency_us: 0.0,
        sampling_policy: None,
        warnings: Vec::new(),
    }
}

fn monitor() -> DriftMonitor {
    let config = Config::from_toml(
        "state_dir = \"/tmp/s\"\n[student]\npath = \"s.onnx\"\n[teacher]\npath = \"t.onnx\"\n",
        Path::new("/etc/sensei/sensei.toml"),
    )
    .expect("config");
    DriftMonitor::new(1, disagreement_only(), &config)
}

/// Feeds `n` teacher comparisons of value `x`, from sequence number `*seq` on.
fn feed(m: &mut DriftMonitor, seq: &mut i64, n: usize, x: bool, out: &mut MonitorDelta) {
    for _ in 0..n {
        *seq += 1;
        let obs = Observation {
            seq: *seq,
            segment: ALL_SEGMENTS,
            disagreement: Some(x),
            ..Observation::default()
        };
        m.observe(&obs, 0, out);
    }
}

fn kinds(out: &MonitorDelta) -> Vec<(&'static str, i64)> {
    out.changes
        .iter()
        .map(|c| match c {
            EventChange::Open(e) => ("open", e.detected_at_record),
            EventChange::Repeat(e) => ("repeat", e.detected_at_record),
            EventChange::Resolve { .. } => ("resolve", 0),
        })
        .collect()
}

/// An alarm while the event is open counts on it; in-control data resolves the event once it
/// favours p0 over p1 by h (ln(0.97/0.95) = 0.0208 per agreement: 144 agreements for h = 3); the next
/// alarm opens a new event.
#[test]
fn an_event_counts_repeats_and_closes_when_back_in_control() {
    let mut m = monitor();
    let mut out = MonitorDelta::default();
    let mut seq = 0;
    // ln(0.05/0.03) = 0.511 per disagreement: the sixth crosses h = 3.
    feed(&mut m, &mut seq, 6, true, &mut out);
    feed(&mut m, &mut seq, 6, true, &mut out);
    assert_eq!(kinds(&out), [("open", 6), ("repeat", 12)]);
    // Fewer agreements than "back in control" needs: still open, so a new alarm is a repeat.
    feed(&mut m, &mut seq, 100, false, &mut out);
    feed(&mut m, &mut seq, 6, true, &mut out);
    assert_eq!(out.changes.len(), 3, "{:?}", kinds(&out));
    assert_eq!(kinds(&out)[2], ("repeat", 118));
    // 144 agreements in a row: back in control.
    feed(&mut m, &mut seq, 143, false, &mut out);
    assert_eq!(out.changes.len(), 3, "{:?}", kinds(&out));
    feed(&mut m, &mut seq, 1, false, &mut out);
    assert_eq!(kinds(&out)[3], ("resolve", 0));
    feed(&mut m, &mut seq, 6, true, &mut out);
    assert_eq!(kinds(&out)[4], ("open", 268));
    assert_eq!(out.opened().count(), 2);
}

/// The recovery evidence survives a restart with the rest of the detector's state.
#[test]
fn back_in_control_evidence_is_persisted() {
    let mut m = monitor();
    let mut out = MonitorDelta::default();
    let mut seq = 0;
    feed(&mut m, &mut seq, 6, true, &mut out);
    feed(&mut m, &mut seq, 100, false, &mut out);
    m.collect_states(&mut out);
    let rows: Vec<(String, String, String, String)> = out
        .states
        .iter()
        .map(|((a, b, c), r)| (a.clone(), b.clone(), c.clone(), r.json.clone()))
        .collect();
    let mut restored = monitor();
    restored.restore(rows);
    let mut after = MonitorDelta::default();
    feed(&mut restored, &mut seq, 45, false, &mut after);
    assert_eq!(kinds(&after), [("resolve", 0)]);
}

/// [`disagreement_only`] with the bank of CUSUMs calibrated for p0 = 0.03, shift 0.05
/// (calibrated once for all tests).
fn with_bank() -> Reference {
    static BANK: std::sync::OnceLock<crate::monitor::BankReference> = std::sync::OnceLock::new();
    let mut r = disagreement_only();
    if let Some(d) = r.disagreement.as_mut() {
        d.bank = Some(
            BANK.get_or_init(|| {
                crate::monitor::BankReference::calibrate(0.03, 0.05, 5).expect("bank")
            })
            .clone(),
        );
    }
    r
}

fn monitor_with(reference: Reference, detect: &str) -> DriftMonitor {
    let config = Config::from_toml(
        &format!(
            "state_dir = \"/tmp/s\"\n[student]\npath = \"s.onnx\"\n[teacher]\npath = \"t.onnx\"\n[detect]\n{detect}\n"
        ),
        Path::new("/etc/sensei/sensei.toml"),
    )
    .expect("config");
    DriftMonitor::new(1, reference, &config)
}

fn stored_rows(m: &mut DriftMonitor) -> Vec<(String, String, String, String)> {
    let mut out = MonitorDelta::default();
    m.collect_states(&mut out);
    out.states
        .iter()
        .map(|((a, b, c), r)| (a.clone(), b.clone(), c.clone(), r.json.clone()))
        .collect()
}

fn disagreement_watch(m: &DriftMonitor) -> &Watch {
    m.watches.get(ALL_SEGMENTS).expect("segment")[Signal::Disagreement as usize]
        .as_ref()
        .expect("watch")
}

/// By default the disagreement detector is the bank, armed at the budget's ARL0 on its own
/// curve; it opens an event with a change-point estimate, resolves it back in control, and its
/// state survives a restart under the same name as the single CUSUM's.
#[test]
fn the_bank_is_the_default_and_keeps_events_and_state() {
    let mut m = monitor_with(with_bank(), "");
    let mut out = MonitorDelta::default();
    let mut seq = 0;
    feed(&mut m, &mut seq, 300, false, &mut out);
    let Sequential::Bank(bank) = &disagreement_watch(&m).detector else {
        panic!("not a bank: {:?}", disagreement_watch(&m).detector);
    };
    let arl0 = m
        .budget()
        .allocation
        .as_ref()
        .and_then(|a| a.arl0("disagreement", 1.0))
        .expect("allocated");
    let reference = with_bank().disagreement.unwrap().bank.unwrap();
    assert!(arl0 > reference.curve.simulated_up_to());
    assert!((bank.level() - reference.level(arl0)).abs() < 1e-9);
    feed(&mut m, &mut seq, 40, true, &mut out);
    let opened: Vec<_> = out.opened().collect();
    assert_eq!(opened.len(), 1, "{:?}", kinds(&out));
    assert_eq!(opened[0].detector, "bernoulli_cusum");
    assert_eq!(opened[0].estimated_change_record, Some(301));
    let rows = stored_rows(&mut m);
    assert!(
        rows.iter().any(|(s, _, d, j)| s == "disagreement"
            && d == "bernoulli_cusum"
            && j.contains("\"Bank\"")),
        "{rows:?}"
    );
    let mut restored = monitor_with(with_bank(), "");
    restored.restore(rows);
    let (Sequential::Bank(a), Sequential::Bank(b)) = (
        &disagreement_watch(&m).detector,
        &disagreement_watch(&restored).detector,
    ) else {
        panic!("the restored detector is not a bank");
    };
    assert_eq!(a, b);
    // Agreements until back in control: the event resolves.
    let mut after = MonitorDelta::default();
    feed(&mut restored, &mut seq, 3000, false, &mut after);
    assert_eq!(kinds(&after), [("resolve", 0)]);
}

/// A state stored by the single CUSUM (the previous version, or `detector = "cusum"`) loads
/// under the bank: the detector is re-armed as a bank and the open event stays open.
#[test]
fn a_stored_single_cusum_is_rearmed_as_the_configured_bank() {
    let mut old = monitor_with(with_bank(), "detector = \"cusum\"");
    let mut out = MonitorDelta::default();
    let mut seq = 0;
    feed(&mut old, &mut seq, 30, true, &mut out);
    assert_eq!(out.opened().count(), 1);
    assert!(matches!(
        disagreement_watch(&old).detector,
        Sequential::Rate(_)
    ));
    let rows = stored_rows(&mut old);
    let mut m = monitor_with(with_bank(), "detector = \"bank\"");
    m.restore(rows.clone());
    let w = disagreement_watch(&m);
    assert!(
        matches!(w.detector, Sequential::Bank(_)),
        "{:?}",
        w.detector
    );
    assert!(w.open);
    // And back: a bank state under `detector = "cusum"` is re-armed as the single CUSUM.
    let bank_rows = stored_rows(&mut m);
    let mut single = monitor_with(with_bank(), "detector = \"cusum\"");
    single.restore(bank_rows);
    assert!(matches!(
        disagreement_watch(&single).detector,
        Sequential::Rate(_)
    ));
    // A profile without a bank keeps the single CUSUM whatever the setting.
    let mut plain = monitor_with(disagreement_only(), "");
    plain.restore(rows);
    assert!(matches!(
        disagreement_watch(&plain).detector,
        Sequential::Rate(_)
    ));
    assert!(Config::from_toml(
        "state_dir = \"/tmp/s\"\n[student]\npath = \"s.onnx\"\n[teacher]\npath = \"t.onnx\"\n[detect]\ndetector = \"glr\"\n",
        Path::new("/etc/sensei/sensei.toml"),
    )
    .is_err());
}

fn config() -> Config {
    Config::from_toml(
        "state_dir = \"/tmp/s\"\n[student]\npath = \"s.onnx\"\n[teacher]\npath = \"t.onnx\"\n",
        Path::new("/etc/sensei/sensei.toml"),
    )
    .expect("config")
}

/// A KL reference as a profile stored before clipped increments: no `clip`, a threshold
/// calibrated unclipped, no curve. Lab values are exponential (mean 0.2).
fn unclipped_kl_reference() -> Reference {
    let mut rng = crate::monitor::rng::SplitMix64::new(31);
    let values: Vec<f64> = (0..400)
        .map(|_| -0.2 * (1.0 - rng.next_f64()).ln())
        .collect();
    let params = crate::monitor::CusumParams::from_baseline(&values, 1.0).unwrap();
    let mut r = disagreement_only();
    r.kl = Some(ValueReference {
        mean: params.mean,
        sd: params.sd,
        k: params.k,
        threshold: 2.0,
        simulated_arl0: 1000.0,
        expected_delay: None,
        curve: None,
        clip: None,
        values,
    });
    r
}

/// A profile written before clipping loads (no `clip` field), and the daemon's start-up
/// recalibration gives its real-valued signals a clip and a curve from the stored lab values —
/// the same as a new reference from those values; a detector state stored before clipping is
/// restored with the reference's clip and its statistic.
#[test]
fn old_profiles_and_detector_states_take_the_clip() {
    let mut json = serde_json::to_value(unclipped_kl_reference()).unwrap();
    let kl = json["kl"].as_object_mut().unwrap();
    assert!(kl.remove("clip").is_some());
    let mut reference: Reference = serde_json::from_value(json).unwrap();
    assert_eq!(reference, unclipped_kl_reference());
    let config = config();
    assert_eq!(reference.clip_tails(&config), ["kl"]);
    let kl = reference.kl.clone().unwrap();
    let clip = kl.clip.expect("clipped");
    let mut sorted = kl.values.clone();
    sorted.sort_unstable_by(f64::total_cmp);
    assert_eq!(clip, sorted[395], "the 99th percentile of 400 values");
    assert!(kl.curve.is_some() && kl.threshold != 2.0, "{kl:?}");
    let before = unclipped_kl_reference().kl.unwrap();
    assert_eq!((kl.mean, kl.sd, kl.k), (before.mean, before.sd, before.k));
    // Idempotent: a clipped profile is left alone.
    assert!(reference.clip_tails(&config).is_empty());

    // The old detector state: unclipped, mid-excursion.
    let mut old = Cusum::new(kl.mean, kl.k, 2.0).unwrap();
    old.update(kl.mean + kl.k + 0.25, 1);
    let watch = Watch {
        detector: Sequential::Value(old),
        open: false,
        since_alarm: 1,
        recovery: 0.0,
        dirty: false,
    };
    let mut state = serde_json::to_value(&watch).unwrap();
    assert!(
        state["detector"]["Value"]
            .as_object_mut()
            .unwrap()
            .remove("clip")
            .is_some()
    );
    let mut m = DriftMonitor::new(1, reference, &config);
    m.restore(vec![(
        "kl".into(),
        ALL_SEGMENTS.into(),
        "cusum".into(),
        state.to_string(),
    )]);
    let restored = m.watches[ALL_SEGMENTS][Signal::Kl as usize]
        .as_ref()
        .expect("restored");
    let Sequential::Value(d) = &restored.detector else {
        panic!("a KL detector is a real-valued CUSUM");
    };
    assert_eq!(d.clip(), Some(clip));
    assert!((d.statistic() - 0.25).abs() < 1e-12);
    // A value far above the clip adds only what the clip adds.
    assert_eq!(d.increment(1e6), d.increment(clip));
    assert!(d.increment(1e6) < 1.0, "{d:?}");
}

/// A new profile clips KL's increments at the lab's 99th percentile, and never confidence's:
/// 1 − confidence is bounded, so its lab set holds its tail and a clip would only add delay.
#[test]
fn kl_is_clipped_and_confidence_is_not() {
    let mut rng = crate::monitor::rng::SplitMix64::new(7);
    let mut run = crate::monitor::lab::LabRun {
        classes: 10,
        ..Default::default()
    };
    for i in 0..400 {
        let u = rng.next_f64();
        run.confidence.push(1.0 - 0.3 * u * u);
        run.entropy.push(0.5);
        run.prediction.push(i % 10);
        run.teacher_prediction.push(i % 10);
        run.teacher_confidence.push(0.9);
        run.disagreement.push(rng.next_f64() < 0.05);
        run.kl.push(-0.2 * (1.0 - rng.next_f64()).ln());
        run.features.push(vec![rng.next_f64()]);
        run.labels.push(None);
    }
    let reference = build_reference(&run, &config()).unwrap();
    let kl = reference.kl.expect("a KL detector");
    let mut sorted = kl.values.clone();
    sorted.sort_by(f64::total_cmp);
    assert!(
        kl.clip.is_some_and(|c| c < sorted[sorted.len() - 1]),
        "{:?}",
        kl.clip
    );
    let confidence = reference.uncertainty.expect("a confidence detector");
    assert_eq!(confidence.clip, None);
}
