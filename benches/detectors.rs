//! Detector benchmark: calibration speed, false-alarm verification, detection delay on
//! Bernoulli step changes (the streams are also written for the peer comparison in
//! `tools/peers/detectors.py`), and the teacher budget of uniform vs uncertainty-weighted
//! sampling. Run with `cargo bench --bench detectors`; docs/detection.md quotes its output.

use std::io::Write;
use std::time::Instant;

use sensei::monitor::BankReference;
use sensei::monitor::bank::measure_arl_bank;
use sensei::monitor::calibrate::{
    calibrate_bernoulli, calibrate_cusum, measure_arl_bernoulli, measure_arl_cusum,
};
use sensei::monitor::rng::SplitMix64;
use sensei::monitor::sampling::{UncertaintyPolicy, rate_under_policy};
use sensei::monitor::{BernoulliCusum, Cusum, mean_sd_of};

/// Shared with tools/peers/detectors.py.
const P0: f64 = 0.03;
const CHANGES: [f64; 3] = [0.05, 0.08, 0.15];
const STREAMS: usize = 300;
const CHANGE_AT: usize = 2000;
const LENGTH: usize = 12_000;
const PEER_ARL0: f64 = 5000.0;
const STREAM_SEED: u64 = 20_240_601;

fn main() {
    // `cargo bench --bench detectors -- bank`: only the bank's calibration check.
    if std::env::args().any(|a| a == "bank") {
        bank_verification();
        return;
    }
    verification();
    bank_verification();
    bootstrap_verification();
    let out = std::env::var("SENSEI_PEER_STREAMS")
        .unwrap_or_else(|_| "target/peer-streams.bin".to_string());
    step_changes(&out);
    sampling_policies();
}

fn verification() {
    println!("## Bernoulli CUSUM: calibration and false-alarm verification");
    println!(
        "| p0 | p1 | target ARL0 | h | calibrated ARL0 ± se | calibration time | measured ARL0 ± se (2000 fresh streams) | error |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (p0, p1) in [
        (0.03, 0.05),
        (0.03, 0.08),
        (0.03, 0.15),
        (0.10, 0.15),
        (0.5, 0.6),
    ] {
        for target in [1000.0, 10_000.0, 20_000.0] {
            let t = Instant::now();
            let c = calibrate_bernoulli(p0, p1, target, 1).expect("valid parameters");
            let elapsed = t.elapsed();
            let m =
                measure_arl_bernoulli(p0, (p0, p1, c.threshold), (10.0 * target) as u64, 2000, 99)
                    .expect("valid parameters");
            println!(
                "| {p0} | {p1} | {target} | {:.4} | {:.0} ± {:.0} | {:.0} ms | {:.0} ± {:.0} | {:+.1} % |",
                c.threshold,
                c.arl0,
                c.standard_error,
                elapsed.as_secs_f64() * 1e3,
                m.mean,
                m.standard_error,
                100.0 * (m.mean / target - 1.0)
            );
        }
    }
    println!();
}

/// The bank of CUSUMs (`monitor::bank`): its level from the curve — simulated up to 10⁴,
/// extrapolated beyond — against the ARL0 measured on fresh in-control streams, and the
/// Bonferroni bound (members at k × target each) for comparison.
fn bank_verification() {
    println!("## Bank of Bernoulli CUSUMs: level from the curve, verified on fresh streams");
    println!(
        "| p0 | shift | target ARL0 | level t (from) | curves built in | measured ARL0 ± se (paths) | error | Siegmund's form would give | Bonferroni level |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (p0, shift) in [(0.03, 0.05), (0.0277, 0.05), (0.10, 0.05)] {
        let t = Instant::now();
        let reference = BankReference::calibrate(p0, shift, 1).expect("valid parameters");
        let built = t.elapsed();
        let (members, curve) = (&reference.members, &reference.curve);
        for (target, paths) in [
            (10_000.0, 2000),
            (100_000.0, 1000),
            (1_000_000.0, 300),
            (6_207_425.0, 0),
        ] {
            let level = reference.level(target);
            let from = if target > curve.simulated_up_to() {
                "extrapolated"
            } else {
                "simulated"
            };
            let bonferroni = reference.bonferroni_level(target).unwrap_or(f64::NAN);
            if paths == 0 {
                // The budget's ARL0 of the demo's disagreement detector: the level only (a
                // measurement would take hours).
                println!(
                    "| {p0} | {shift} | {target} | {level:.3} ({from}) | | not measured | | {:.3} | {bonferroni:.3} |",
                    curve.threshold(target)
                );
                continue;
            }
            let m = measure_arl_bank(p0, (p0, members, level), (10.0 * target) as u64, paths, 99)
                .expect("valid parameters");
            println!(
                "| {p0} | {shift} | {target} | {level:.3} ({from}) | {:.0} ms | {:.0} ± {:.0} ({paths}) | {:+.1} % | {:.3} | {bonferroni:.3} |",
                built.as_secs_f64() * 1e3,
                m.mean,
                m.standard_error,
                100.0 * (m.mean / target - 1.0),
                curve.threshold(target)
            );
        }
    }
    println!();
}

fn bootstrap_verification() {
    println!("## Real-valued CUSUM (k = 0.5 sd): bootstrap calibration and verification");
    println!(
        "Streams drawn from the baseline (resampled), and from the true distribution behind five independent baselines."
    );
    println!();
    println!(
        "| signal model | baseline n | target ARL0 | calibration time | measured, streams from the baseline | measured, true distribution: median [min, max] of 5 baselines |"
    );
    println!("|---|---|---|---|---|---|");
    // KL-like (exponential) and confidence-like (1 − U², bounded, skewed) signals.
    let exponential = |rng: &mut SplitMix64| -0.2 * (1.0 - rng.next_f64()).ln();
    let one_minus_conf = |rng: &mut SplitMix64| 0.3 * rng.next_f64().powi(2);
    for (name, draw) in [
        (
            "KL ~ Exp(mean 0.2)",
            &exponential as &dyn Fn(&mut SplitMix64) -> f64,
        ),
        ("1 − confidence ~ 0.3·U²", &one_minus_conf),
    ] {
        for (n, target) in [
            (5000, 1000.0),
            (5000, 10_000.0),
            (5000, 20_000.0),
            (1000, 10_000.0),
        ] {
            let mut on_truth = Vec::new();
            let mut on_baseline = None;
            let mut elapsed = 0.0;
            for b in 0..5u64 {
                let mut rng = SplitMix64::new(3 + b);
                let baseline: Vec<f64> = (0..n).map(|_| draw(&mut rng)).collect();
                let (mean, sd) = mean_sd_of(&baseline).expect("non-degenerate");
                let k = 0.5 * sd;
                let t = Instant::now();
                let c = calibrate_cusum(&baseline, k, target, 1).expect("valid");
                elapsed += t.elapsed().as_secs_f64() / 5.0;
                let cap = (10.0 * target) as u64;
                let detector = Cusum::new(mean, k, c.threshold).expect("valid");
                let m = measure_arl_cusum(draw, &detector, cap, 1000, 98 + b);
                on_truth.push(m.mean / target - 1.0);
                if b == 0 {
                    let resample = |rng: &mut SplitMix64| baseline[rng.index(baseline.len())];
                    on_baseline = Some(measure_arl_cusum(resample, &detector, cap, 2000, 97));
                }
            }
            let own = on_baseline.expect("first baseline measured");
            let lo = on_truth.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = on_truth.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "| {name} | {n} | {target} | {:.0} ms | {:.0} ± {:.0} ({:+.1} %) | {:+.0} % [{:+.0} %, {:+.0} %] |",
                elapsed * 1e3,
                own.mean,
                own.standard_error,
                100.0 * (own.mean / target - 1.0),
                100.0 * median(&mut on_truth),
                100.0 * lo,
                100.0 * hi
            );
        }
    }
    println!();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The same streams the Python peers read: scenario-major, stream-major, one byte per record.
fn stream(scenario: usize, index: usize) -> Vec<u8> {
    let mut rng = SplitMix64::for_replication(STREAM_SEED + scenario as u64, index as u64);
    (0..LENGTH)
        .map(|t| {
            let p = if t < CHANGE_AT { P0 } else { CHANGES[scenario] };
            u8::from(rng.next_f64() < p)
        })
        .collect()
}

fn step_changes(out: &str) {
    let mut file = std::fs::File::create(out).map(std::io::BufWriter::new).ok();
    println!(
        "## Step changes from p0 = {P0}: {STREAMS} streams each, change at record {CHANGE_AT}, ARL0 = {PEER_ARL0}"
    );
    println!(
        "| detector | change | median delay | mean delay | missed (no alarm in {} records) | false alarms per 10k in-control records |",
        LENGTH - CHANGE_AT
    );
    println!("|---|---|---|---|---|---|");
    for (label, p1) in [
        ("sensei Bernoulli CUSUM, p1 = 0.05", None),
        ("sensei Bernoulli CUSUM, p1 = true rate", Some(())),
    ] {
        for (scenario, &change) in CHANGES.iter().enumerate() {
            let p1 = if p1.is_some() { change } else { 0.05 };
            let h = calibrate_bernoulli(P0, p1, PEER_ARL0, 1)
                .expect("valid")
                .threshold;
            let (mut delays, mut missed, mut false_alarms) = (Vec::new(), 0, 0u64);
            for i in 0..STREAMS {
                let s = stream(scenario, i);
                if let (true, Some(f)) = (label.ends_with("0.05"), file.as_mut()) {
                    let _ = f.write_all(&s);
                }
                let mut d = BernoulliCusum::new(P0, p1, h).expect("valid");
                let mut detected = None;
                for (t, &x) in s.iter().enumerate() {
                    if d.update(x == 1, t as u64).is_some() {
                        if t < CHANGE_AT {
                            false_alarms += 1;
                        } else {
                            detected = Some(t);
                            break;
                        }
                    }
                }
                match detected {
                    Some(t) => delays.push((t - CHANGE_AT + 1) as f64),
                    None => missed += 1,
                }
            }
            let mean = delays.iter().sum::<f64>() / delays.len().max(1) as f64;
            println!(
                "| {label} | {P0} → {change} | {:.0} | {mean:.0} | {missed} | {:.2} |",
                median(&mut delays),
                1e4 * false_alarms as f64 / (STREAMS * CHANGE_AT) as f64
            );
        }
    }
    // Long in-control streams for the false-alarm rate at the calibrated threshold.
    let h = calibrate_bernoulli(P0, 0.05, PEER_ARL0, 1)
        .expect("valid")
        .threshold;
    let mut d = BernoulliCusum::new(P0, 0.05, h).expect("valid");
    let mut rng = SplitMix64::new(STREAM_SEED ^ 0xFA);
    let n = 20_000_000u64;
    let alarms = (0..n)
        .filter(|&t| d.update(rng.next_f64() < P0, t).is_some())
        .count();
    println!(
        "\nsensei (p1 = 0.05, h = {h:.4}) on {n} in-control records: {alarms} alarms = {:.3} per 10k (target {:.3}), ARL0 {:.0}",
        1e4 * alarms as f64 / n as f64,
        1e4 / PEER_ARL0,
        n as f64 / alarms.max(1) as f64
    );
    if file.is_some() {
        println!(
            "streams written to {out} ({} scenarios × {STREAMS} × {LENGTH} bytes)",
            CHANGES.len()
        );
    }
    println!();
}

fn sampling_policies() {
    // A student whose uncertainty u = 1 − confidence is mostly small; disagreement rises with
    // u. The drift doubles the disagreement of uncertain records (the typical failure: inputs
    // near the decision boundary move), leaving confident records as they were.
    println!("## Teacher budget: uniform vs uncertainty-weighted sampling (floor 0.2 × rate)");
    println!(
        "| policy | rate | p0 under policy | p1 under policy | median delay (records) | teacher inferences until detection |"
    );
    println!("|---|---|---|---|---|---|");
    let mut rng = SplitMix64::new(17);
    let u: Vec<f64> = (0..20_000).map(|_| 0.6 * rng.next_f64().powi(3)).collect();
    let before = |u: f64| 0.01 + 0.2 * u;
    let after = |u: f64| 0.01 + 0.4 * u;
    let x0: Vec<f64> = u.iter().map(|&u| before(u)).collect();
    let x1: Vec<f64> = u.iter().map(|&u| after(u)).collect();
    let arl0_records = 20_000.0;
    for rate in [0.02, 0.05, 0.1, 0.2] {
        for weighted in [false, true] {
            let policy = if weighted {
                UncertaintyPolicy::fit(&u, rate, 0.2 * rate).expect("fits")
            } else {
                UncertaintyPolicy::uniform(rate).expect("valid")
            };
            // Expected rates among sampled records (the policy applied to the probabilities).
            let p0 = rate_under_policy(&x0, &u, &policy).expect("valid");
            let p1 = rate_under_policy(&x1, &u, &policy).expect("valid");
            let c = calibrate_bernoulli(p0, p1, arl0_records * rate, 5).expect("valid");
            // Zero-state delay in records: simulate records, sample by the policy.
            let mut delays = Vec::new();
            for r in 0..400 {
                let mut rng = SplitMix64::for_replication(23, r);
                let mut d = BernoulliCusum::new(p0, p1, c.threshold).expect("valid");
                for t in 1..2_000_000u64 {
                    let ui = u[rng.index(u.len())];
                    if rng.next_f64() < policy.inclusion_probability(ui)
                        && d.update(rng.next_f64() < after(ui), t).is_some()
                    {
                        delays.push(t as f64);
                        break;
                    }
                }
            }
            let delay = median(&mut delays);
            println!(
                "| {} | {rate} | {p0:.4} | {p1:.4} | {delay:.0} | {:.0} |",
                if weighted {
                    "uncertainty-weighted"
                } else {
                    "uniform"
                },
                delay * rate
            );
        }
    }
    println!();
}
