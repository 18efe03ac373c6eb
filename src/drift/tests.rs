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
