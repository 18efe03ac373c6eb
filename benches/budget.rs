//! The false-alarm budget, measured: per-signal ARL0 on in-control streams at simulated and
//! extrapolated targets (`monitor::curve`), the clip of the real-valued CUSUMs' increments
//! against other lab quantiles and none (ARL0 on the true distribution, detection delay, and
//! five more lab sets), the windowed rounds' false-alarm rate per round,
//! and in-control soaks of the whole drift monitor (`drift::DriftMonitor`, 20 segments, every
//! signal) counting false drift events against the budget's expectation.
//!
//! Run with `cargo bench --bench budget` (release mode); docs/detection.md quotes its output.
//! `SENSEI_SOAK_RECORDS` sets the records per soak (default 10,000,000); `SENSEI_SOAK_ONLY=1`
//! runs the soaks alone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use sensei::config::Config;
use sensei::drift::{CLIP_QUANTILE, ValueReference};
use sensei::drift::{DriftMonitor, Observation, build_reference};
use sensei::monitor::Cusum;
use sensei::monitor::calibrate::{
    cusum_curve, measure_arl_bernoulli, measure_arl_bootstrap, measure_arl_cusum, tail_clip,
};
use sensei::monitor::lab::LabRun;
use sensei::monitor::rng::SplitMix64;
use sensei::monitor::window::{
    FeatureBins, RoundTest, class_mix_test, evaluate_round, ks_test, psi_test,
};
use sensei::store::{EventChange, MonitorDelta};

/// Draws one value of a real-valued signal.
type Sampler = fn(&mut SplitMix64) -> f64;

const CLASSES: usize = 10;
const FEATURES: usize = 4;
const LAB_RECORDS: usize = 5000;
const SEGMENTS: usize = 20;
/// Records per second of the simulated site (lab timestamps and field timestamps alike).
const RATE: f64 = 100.0;
const TEACHER_RATE: f64 = 0.1;
const LABEL_SHARE: f64 = 0.05;

/// The in-control model every record is drawn from, in the lab and in the field.
struct Draw {
    confidence: f64,
    prediction: i64,
    features: [f64; FEATURES],
    disagreement: bool,
    kl: f64,
    attention_kl: f64,
    student_wrong: bool,
    teacher_wrong: bool,
}

fn normal(rng: &mut SplitMix64) -> f64 {
    let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn kl_draw(rng: &mut SplitMix64) -> f64 {
    -0.2 * (1.0 - rng.next_f64()).ln()
}

fn attention_draw(rng: &mut SplitMix64) -> f64 {
    (-2.0 + 0.5 * normal(rng)).exp()
}

fn uncertainty_draw(rng: &mut SplitMix64) -> f64 {
    let u = rng.next_f64();
    0.3 * u * u
}

fn draw(rng: &mut SplitMix64) -> Draw {
    // Class c with probability ∝ c + 1.
    let total = (CLASSES * (CLASSES + 1) / 2) as f64;
    let mut x = rng.next_f64() * total;
    let mut prediction = 0;
    for c in 0..CLASSES {
        x -= (c + 1) as f64;
        if x < 0.0 {
            prediction = c as i64;
            break;
        }
    }
    let mut features = [0.0; FEATURES];
    for f in &mut features {
        *f = normal(rng);
    }
    Draw {
        confidence: 1.0 - uncertainty_draw(rng),
        prediction,
        features,
        disagreement: rng.next_f64() < 0.03,
        kl: kl_draw(rng),
        attention_kl: attention_draw(rng),
        student_wrong: false,
        teacher_wrong: false,
    }
    .with_labels(rng)
}

impl Draw {
    /// The label's verdicts: the student is wrong with probability 0.1, and the teacher, which
    /// answers `other` exactly when it disagrees, is wrong when it disagrees with a right
    /// student or agrees with a wrong one (0.03 · 0.9 + 0.97 · 0.1 = 0.124, as in the lab set).
    fn with_labels(mut self, rng: &mut SplitMix64) -> Draw {
        self.student_wrong = rng.next_f64() < 0.10;
        self.teacher_wrong = self.disagreement != self.student_wrong;
        self
    }
}

fn lab_run(seed: u64) -> LabRun {
    let mut rng = SplitMix64::new(seed);
    let mut run = LabRun {
        classes: CLASSES,
        ts_range: Some((0.0, (LAB_RECORDS - 1) as f64 / RATE)),
        ..LabRun::default()
    };
    for _ in 0..LAB_RECORDS {
        let d = draw(&mut rng);
        run.confidence.push(d.confidence);
        run.entropy.push(0.0);
        run.prediction.push(d.prediction);
        let other = (d.prediction + 1) % CLASSES as i64;
        run.teacher_prediction
            .push(if d.disagreement { other } else { d.prediction });
        run.teacher_confidence.push(0.9);
        run.disagreement.push(d.disagreement);
        run.kl.push(d.kl);
        run.attention_kl.push(d.attention_kl);
        run.features.push(d.features.to_vec());
        // Labels: wrong for the student with probability 0.1.
        run.labels
            .push(Some(if d.student_wrong { other } else { d.prediction }));
    }
    run
}

fn config(false_alarms: &str) -> Config {
    Config::from_toml(
        &format!(
            "state_dir = \"/tmp/s\"\n[student]\npath = \"s.onnx\"\n[teacher]\npath = \"t.onnx\"\n\
             [sampling]\npolicy = \"uniform\"\nrate = {TEACHER_RATE}\n\
             [detect]\nfalse_alarms = \"{false_alarms}\"\n"
        ),
        Path::new("/etc/sensei/sensei.toml"),
    )
    .expect("config")
}

fn main() {
    let records: u64 = std::env::var("SENSEI_SOAK_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    if std::env::var("SENSEI_SOAK_ONLY").is_err() {
        per_signal();
        tails();
        windowed();
    }
    for budget in ["1 per 10m", "1 per 1h", "1 per 90d"] {
        soak(budget, records);
    }
}

/// Per signal: the curve's threshold at simulated (10⁴) and extrapolated targets, and the ARL0
/// measured on fresh in-control streams — bootstrap resamples of the lab values (what the
/// calibration assumes) and draws from the true distribution behind them.
fn per_signal() {
    let run = lab_run(7);
    let t0 = Instant::now();
    let reference = build_reference(&run, &config("1 per 90d")).expect("reference");
    println!(
        "## Per-signal ARL0 (lab set of {LAB_RECORDS} records; reference built in {:.2} s)",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "| signal | target ARL0 | h | simulated or extrapolated | measured ARL0 ± se (streams as calibrated) | error | measured on the true distribution | error |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let targets: [(f64, usize); 4] = [(1e4, 2000), (1e5, 500), (1e6, 150), (1e7, 40)];
    let pct = |m: f64, t: f64| format!("{:+.1} %", 100.0 * (m - t) / t);
    for (name, r) in [
        ("disagreement", &reference.disagreement),
        ("student_error", &reference.student_error),
        ("teacher_error", &reference.teacher_error),
    ] {
        let r = r.as_ref().expect("rate reference");
        let curve = r.curve.as_ref().expect("curve");
        let true_p = match name {
            "disagreement" => 0.03,
            "student_error" => 0.10,
            _ => 0.124,
        };
        for (i, &(target, reps)) in targets.iter().enumerate() {
            let h = curve.threshold(target);
            let cap = (10.0 * target) as u64;
            let m = measure_arl_bernoulli(r.p0, (r.p0, r.p1, h), cap, reps, 1000 + i as u64)
                .expect("measure");
            let t = measure_arl_bernoulli(true_p, (r.p0, r.p1, h), cap, reps, 2000 + i as u64)
                .expect("measure");
            println!(
                "| {name} (p0 {:.4}, true {true_p}) | {target:.0e} | {h:.3} | {} | {:.0} ± {:.0} | {} | {:.0} ± {:.0} | {} |",
                r.p0,
                if target <= curve.simulated_up_to() {
                    "simulated"
                } else {
                    "extrapolated"
                },
                m.mean,
                m.standard_error,
                pct(m.mean, target),
                t.mean,
                t.standard_error,
                pct(t.mean, target)
            );
        }
    }
    let draws: [(&str, Sampler); 3] = [
        ("kl", kl_draw),
        ("attention_kl", attention_draw),
        ("confidence", uncertainty_draw),
    ];
    for (name, true_draw) in draws {
        let r = match name {
            "kl" => &reference.kl,
            "attention_kl" => &reference.attention_kl,
            _ => &reference.uncertainty,
        }
        .as_ref()
        .expect("value reference");
        let curve = r.curve.as_ref().expect("curve");
        for (i, &(target, reps)) in targets.iter().enumerate() {
            let h = curve.threshold(target);
            let cap = (10.0 * target) as u64;
            let mut d = r.detector().expect("detector");
            d.set_threshold(h);
            let m = measure_arl_bootstrap(&r.values, &d, cap, reps, 3000 + i as u64);
            let t = measure_arl_cusum(true_draw, &d, cap, reps, 4000 + i as u64);
            println!(
                "| {name} | {target:.0e} | {h:.3} | {} | {:.0} ± {:.0} | {} | {:.0} ± {:.0} | {} |",
                if target <= curve.simulated_up_to() {
                    "simulated"
                } else {
                    "extrapolated"
                },
                m.mean,
                m.standard_error,
                pct(m.mean, target),
                t.mean,
                t.standard_error,
                pct(t.mean, target)
            );
        }
    }
    println!();
}

/// The clip of the real-valued CUSUMs, measured: for each heavy- or light-tailed signal, the
/// ARL0 on the true distribution with the increments unclipped (the bootstrap alone) and clipped
/// at lab quantiles, each on its own curve; and the zero-state detection delay on the true
/// distribution shifted up by `min_shift_sd` (δ = 2k), at the thresholds of ARL0 10⁴ and 10⁶.
fn tails() {
    let run = lab_run(7);
    let reference = build_reference(&run, &config("1 per 90d")).expect("reference");
    println!(
        "## Clipped increments (lab set of {LAB_RECORDS} records; the detectors use the {CLIP_QUANTILE} quantile)"
    );
    println!(
        "| signal | clip | ARL0 on the true distribution at 10⁴ / 10⁵ / 10⁶ / 10⁷ (error) | delay at δ = 2k, h for 10⁴ | h for 10⁶ |"
    );
    println!("|---|---|---|---|---|");
    let targets: [(f64, usize); 4] = [(1e4, 2000), (1e5, 500), (1e6, 150), (1e7, 40)];
    let draws: [(&str, Sampler, Option<&ValueReference>); 3] = [
        ("kl", kl_draw, reference.kl.as_ref()),
        (
            "attention_kl",
            attention_draw,
            reference.attention_kl.as_ref(),
        ),
        (
            "confidence",
            uncertainty_draw,
            reference.uncertainty.as_ref(),
        ),
    ];
    for (name, true_draw, r) in draws {
        let r = r.expect("value reference");
        for quantile in [None, Some(0.99), Some(0.995), Some(0.999)] {
            let clip = quantile.and_then(|q| tail_clip(&r.values, q, r.k));
            let (curve, _) = cusum_curve(&r.values, r.k, clip, 41).expect("curve");
            let detector = |target: f64| {
                let mut d = r.detector().expect("detector");
                d.set_clip(clip).expect("clip");
                d.set_threshold(curve.threshold(target));
                d
            };
            let mut cells = Vec::new();
            for (i, &(target, reps)) in targets.iter().enumerate() {
                let cap = (10.0 * target) as u64;
                let t = measure_arl_cusum(true_draw, &detector(target), cap, reps, 5000 + i as u64);
                cells.push(format!(
                    "{:.3e} ({:+.1} %)",
                    t.mean,
                    100.0 * (t.mean - target) / target
                ));
            }
            let shift = 2.0 * r.k;
            let shifted = move |rng: &mut SplitMix64| true_draw(rng) + shift;
            let delay = |target: f64| {
                let m = measure_arl_cusum(shifted, &detector(target), 1_000_000, 2000, 6000);
                format!("{:.1} ± {:.1}", m.mean, m.standard_error)
            };
            println!(
                "| {name} | {} | {} | {} | {} |",
                match (quantile, clip) {
                    (None, _) => "none".to_string(),
                    (Some(q), Some(c)) => format!("q{q} = {c:.4}"),
                    (Some(q), None) => format!("q{q}: none possible"),
                },
                cells.join(" / "),
                delay(1e4),
                delay(1e6)
            );
        }
    }
    println!();
    // One lab set is one draw of the lab's error; five show the spread and whether a bias is
    // left (the lab values alone, k = sd/2, the seed of each lab set its own).
    println!(
        "## Five lab sets of {LAB_RECORDS} values per signal: ARL0 error on the true distribution, unclipped → clipped at the {CLIP_QUANTILE} quantile"
    );
    println!("| signal | target | lab set 1 | 2 | 3 | 4 | 5 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, true_draw, _) in draws {
        for (target, reps) in [(1e4, 2000), (1e6, 150)] {
            let mut cells = Vec::new();
            for lab in 1..=5u64 {
                let mut rng = SplitMix64::new(0x1ab0 + lab);
                let values: Vec<f64> = (0..LAB_RECORDS).map(|_| true_draw(&mut rng)).collect();
                let (mean, sd) = sensei::monitor::mean_sd_of(&values).expect("values");
                let k = 0.5 * sd;
                let errors: Vec<String> = [None, tail_clip(&values, CLIP_QUANTILE, k)]
                    .into_iter()
                    .map(|clip| {
                        let (curve, _) = cusum_curve(&values, k, clip, 43).expect("curve");
                        let d = Cusum::new(mean, k, curve.threshold(target))
                            .and_then(|d| d.with_clip(clip))
                            .expect("detector");
                        let cap = (10.0 * target) as u64;
                        let t = measure_arl_cusum(true_draw, &d, cap, reps, 7000 + lab);
                        format!("{:+.0} %", 100.0 * (t.mean - target) / target)
                    })
                    .collect();
                cells.push(errors.join(" → "));
            }
            println!("| {name} | {target:.0e} | {} |", cells.join(" | "));
        }
    }
    println!();
}

/// The windowed tests of one segment's round (KS on confidence, chi-square on the class mix,
/// PSI per feature) on in-control windows of 200 records: the share of rounds with an alarm
/// against α, with the effect-size minimums at 0 (the p-values alone) and at their defaults.
fn windowed() {
    let run = lab_run(7);
    let mut reference_conf = run.confidence.clone();
    reference_conf.sort_unstable_by(f64::total_cmp);
    let mut class_counts = vec![0u64; CLASSES];
    for &p in &run.prediction {
        class_counts[p as usize] += 1;
    }
    let bins: Vec<FeatureBins> = (0..FEATURES)
        .map(|f| {
            let v: Vec<f64> = run.features.iter().map(|x| x[f]).collect();
            FeatureBins::from_baseline(&v, 10, "feature").expect("bins")
        })
        .collect();
    let rounds = 20_000;
    let mut rng = SplitMix64::new(99);
    let alphas = [0.2, 0.05, 0.01];
    let mut alarms_p = [0u64; 3];
    let mut alarms_effect = [0u64; 3];
    let mut per_test = BTreeMap::<String, [u64; 3]>::new();
    for _ in 0..rounds {
        let mut conf = Vec::with_capacity(200);
        let mut classes = vec![0u64; CLASSES];
        let mut features = vec![vec![0u64; 0]; FEATURES];
        for (f, b) in bins.iter().enumerate() {
            features[f] = vec![0; b.counts.len()];
        }
        for _ in 0..200 {
            let d = draw(&mut rng);
            conf.push(d.confidence);
            classes[d.prediction as usize] += 1;
            for (f, b) in bins.iter().enumerate() {
                features[f][b.bin_of(d.features[f])] += 1;
            }
        }
        let mut tests = vec![
            RoundTest {
                segment: "*".into(),
                signal: "confidence".into(),
                test: ks_test(&reference_conf, &conf).expect("ks"),
                min_effect: 0.15,
            },
            RoundTest {
                segment: "*".into(),
                signal: "class_mix".into(),
                test: class_mix_test(&class_counts, &classes).expect("chi"),
                min_effect: 0.1,
            },
        ];
        for (f, b) in bins.iter().enumerate() {
            tests.push(RoundTest {
                segment: "*".into(),
                signal: format!("input_psi[{f}]"),
                test: psi_test(b, &features[f]).expect("psi"),
                min_effect: 0.2,
            });
        }
        let without: Vec<RoundTest> = tests
            .iter()
            .cloned()
            .map(|mut t| {
                t.min_effect = 0.0;
                t
            })
            .collect();
        for (i, &alpha) in alphas.iter().enumerate() {
            let d = evaluate_round(&without, alpha);
            if d.iter().any(|d| d.alarm) {
                alarms_p[i] += 1;
            }
            for (t, d) in without.iter().zip(&d) {
                // Each test on its own at α (no Holm): its own calibration.
                if t.test.p_value <= alpha {
                    per_test
                        .entry(t.signal.split('[').next().unwrap_or("").to_string())
                        .or_default()[i] += 1;
                }
                let _ = d;
            }
            if evaluate_round(&tests, alpha).iter().any(|d| d.alarm) {
                alarms_effect[i] += 1;
            }
        }
    }
    println!(
        "## Windowed rounds: {rounds} in-control rounds of 200 records against a {LAB_RECORDS}-record lab set"
    );
    println!(
        "| α per round | rounds with an alarm, p-values only (Holm, 6 tests) | ARL0 in rounds vs 1/α | KS alone at α | chi-square alone | PSI, one feature alone | with the default effect sizes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, &alpha) in alphas.iter().enumerate() {
        let rate = |n: u64| n as f64 / rounds as f64;
        let psi = per_test.get("input_psi").map_or(0, |v| v[i]) as f64 / FEATURES as f64;
        println!(
            "| {alpha} | {:.4} | {:.1} vs {:.0} | {:.4} | {:.4} | {:.4} | {} |",
            rate(alarms_p[i]),
            rounds as f64 / alarms_p[i].max(1) as f64,
            1.0 / alpha,
            rate(per_test.get("confidence").map_or(0, |v| v[i])),
            rate(per_test.get("class_mix").map_or(0, |v| v[i])),
            psi / rounds as f64,
            alarms_effect[i]
        );
    }
    println!();
}

/// Poisson 95 % interval of a count's mean (exact for small counts via the normal
/// approximation with continuity, adequate for the table).
fn poisson_interval(expected: f64) -> (f64, f64) {
    let sd = expected.sqrt();
    ((expected - 1.96 * sd).max(0.0), expected + 1.96 * sd)
}

/// An in-control soak of the whole monitor: `records` records over [`SEGMENTS`] segments
/// (shares ∝ 1..=20), teacher on 10 %, labels on 5 %, at [`RATE`] records per second.
fn soak(budget: &str, records: u64) {
    let config = config(budget);
    let reference = build_reference(&lab_run(7), &config).expect("reference");
    let mut monitor = DriftMonitor::new(1, reference, &config);
    let mut rng = SplitMix64::new(0x50a4);
    let names: Vec<String> = (0..SEGMENTS).map(|i| format!("s{i:02}")).collect();
    let weight_total = (SEGMENTS * (SEGMENTS + 1) / 2) as f64;
    let mut opened = BTreeMap::<String, u64>::new();
    let mut alarms = BTreeMap::<String, u64>::new();
    let t0 = Instant::now();
    let mut delta = MonitorDelta::default();
    for seq in 1..=records as i64 {
        let mut x = rng.next_f64() * weight_total;
        let mut segment = SEGMENTS - 1;
        for i in 0..SEGMENTS {
            x -= (i + 1) as f64;
            if x < 0.0 {
                segment = i;
                break;
            }
        }
        let d = draw(&mut rng);
        let teacher = rng.next_f64() < TEACHER_RATE;
        let ts_ms = (seq as f64 * 1000.0 / RATE) as i64;
        monitor.observe(
            &Observation {
                seq,
                segment: &names[segment],
                confidence: Some(d.confidence),
                prediction: Some(d.prediction),
                features: &d.features,
                ts_ms: Some(ts_ms),
                disagreement: teacher.then_some(d.disagreement),
                kl: teacher.then_some(d.kl),
                attention_kl: teacher.then_some(d.attention_kl),
            },
            ts_ms,
            &mut delta,
        );
        if rng.next_f64() < LABEL_SHARE {
            monitor.observe_label(
                seq,
                &names[segment],
                d.student_wrong,
                Some(d.teacher_wrong),
                ts_ms,
                &mut delta,
            );
        }
        if delta.changes.len() > 64 || seq as u64 == records {
            for c in delta.changes.drain(..) {
                match c {
                    EventChange::Open(e) => {
                        *opened.entry(family_of(&e.signal, e.detector)).or_default() += 1;
                        *alarms.entry(family_of(&e.signal, e.detector)).or_default() += 1;
                    }
                    EventChange::Repeat(e) => {
                        *alarms.entry(family_of(&e.signal, e.detector)).or_default() += 1;
                    }
                    EventChange::Resolve { .. } => {}
                }
            }
        }
        if seq % 100_000 == 0 {
            delta.states.clear();
        }
    }
    let seconds = records as f64 / RATE;
    let allocation = monitor.budget().allocation.clone().expect("allocation");
    let scale = seconds / allocation.period_seconds;
    println!(
        "## In-control soak, false_alarms = \"{budget}\": {records} records, {SEGMENTS} segments, {:.1} simulated hours ({:.0} s of computing)",
        seconds / 3600.0,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "rate {:.1} records/s ({}); expected events over the soak = budget share × {:.4} periods",
        allocation.records_per_second, allocation.rate_source, scale
    );
    println!(
        "| family | per-detector ARL0 (all segments) | α per round | expected false events | events opened | alarms | 95 % Poisson range of the expectation |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut expected_total = 0.0;
    for f in &allocation.families {
        let expected = f.expected_events * scale;
        expected_total += expected;
        let (lo, hi) = poisson_interval(expected);
        println!(
            "| {} | {} | {} | {:.3} | {} | {} | [{lo:.1}, {hi:.1}] |",
            f.family,
            f.arl0.map_or("-".into(), |a| format!("{a:.3e}")),
            f.alpha.map_or("-".into(), |a| format!("{a:.3e}")),
            expected,
            opened.get(&f.family).copied().unwrap_or(0),
            alarms.get(&f.family).copied().unwrap_or(0),
        );
    }
    let (lo, hi) = poisson_interval(expected_total);
    println!(
        "| **all** | | | {expected_total:.3} | {} | {} | [{lo:.1}, {hi:.1}] |",
        opened.values().sum::<u64>(),
        alarms.values().sum::<u64>()
    );
    println!(
        "per 90 simulated days: {:.3} events opened (budget {:.3})",
        opened.values().sum::<u64>() as f64 * 90.0 * 86_400.0 / seconds,
        allocation.events * 90.0 * 86_400.0 / allocation.period_seconds
    );
    println!();
}

/// The budget family of an event: the windowed tests share the family "windowed".
fn family_of(signal: &str, detector: &str) -> String {
    match detector {
        "ks" | "chi_square" | "psi" => "windowed".to_string(),
        _ => signal.to_string(),
    }
}
