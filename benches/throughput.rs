//! Replay throughput against a plain ONNX Runtime loop, measured in the same run.
//!
//!     cargo bench --bench throughput            # 100k records; BENCH_RECORDS=N to change
//!
//! 1. Baselines: a plain loop of `Session::run` over the same records, pre-stacked into batches
//!    of 32, with the same session options (1 intra-op thread) — for the student (t_student per
//!    record) and the teacher (t_teacher per record).
//! 2. `sensei replay` (the library call behind the command: ingest, validation, student,
//!    sampler, teacher, SQLite writer) over the same records as .npz and as .jsonl files of
//!    1000 records, teacher off (rate 0), each into a fresh database.
//! 3. The same with teacher rate r, against the ideal 1 / (t_student + r × t_teacher).
//! 4. For the explanation, not the ratios: the plain student loop again while a second thread
//!    keeps the other core busy (spinning on registers, or copying memory), which shows how much
//!    a busy neighbour core alone costs the bare loop on this machine.
//!
//! Each figure is the median over rounds (`BENCH_ROUNDS`, 7 by default); the lowest and the
//! highest round are printed too, because on a shared machine the bare loop alone moves by more
//! than the goals' margins from one second to the next. Results print as Markdown tables for
//! docs/performance.md.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use sensei::config::Config;

use support::*;

const BATCH: usize = 32;
/// Rounds unless `BENCH_ROUNDS` says otherwise.
const ROUNDS: usize = 7;

/// The same session options as sensei's (`model::open_session`).
fn open(rt: &sensei::model::Runtime, model: &Path) -> ort::Result<Session> {
    Session::builder(rt.environment())?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?
        .commit_from_file(model)
}

fn plain_loop(rt: &sensei::model::Runtime, model: &Path, rows: &[Vec<f32>], records: usize) -> f64 {
    let mut session = open(rt, model).expect("session");
    let batches: Vec<Vec<f32>> = (0..records.div_ceil(BATCH))
        .map(|b| {
            let n = BATCH.min(records - b * BATCH);
            (b * BATCH..b * BATCH + n)
                .flat_map(|i| row(rows, i).iter().copied())
                .collect()
        })
        .collect();
    let start = Instant::now();
    let mut checksum = 0.0f32;
    {
        for buf in &batches {
            let n = buf.len() / 64;
            let input = TensorRef::from_array_view(([n, 8, 8], buf.as_slice())).expect("tensor");
            let out = session.run(ort::inputs!["x" => input]).expect("run");
            let (_, logits) = out["logits"].try_extract_tensor::<f32>().expect("logits");
            checksum += logits[0];
        }
    }
    std::hint::black_box(checksum);
    start.elapsed().as_secs_f64() / records as f64
}

/// What the other core does while [`plain_loop`] runs in [`plain_loop_beside`].
#[derive(Clone, Copy)]
enum Neighbour {
    /// Arithmetic on registers only: no memory traffic.
    Spin,
    /// Copies between two 8 MiB buffers: memory and shared-cache traffic, as parsing and
    /// SQLite make.
    Copy,
}

/// [`plain_loop`] while a second thread keeps the other core busy. sensei's other stages
/// (ingest, dispatch, writer) must run somewhere while the student runs; on two cores that is
/// the student's neighbour. How much a busy neighbour alone slows the bare loop is the part of
/// the gap to the bare loop that no pipeline design on this machine can close.
fn plain_loop_beside(
    rt: &sensei::model::Runtime,
    model: &Path,
    rows: &[Vec<f32>],
    records: usize,
    neighbour: Neighbour,
) -> f64 {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let busy = std::thread::spawn(move || {
        let (mut a, mut b) = (vec![1u8; 8 << 20], vec![2u8; 8 << 20]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match neighbour {
                Neighbour::Spin => {
                    for _ in 0..100_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                    }
                    std::hint::black_box(x);
                }
                Neighbour::Copy => {
                    a.copy_from_slice(&b);
                    std::mem::swap(&mut a, &mut b);
                    std::hint::black_box(&a);
                }
            }
        }
    });
    let t = plain_loop(rt, model, rows, records);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.join().expect("neighbour thread");
    t
}

/// Seconds per record of sensei's own model wrapper (`Model::run`) in a loop on this thread:
/// separates the cost of the wrapper from the cost of the pipeline around it.
fn model_loop(config: &Config, rows: &[Vec<f32>], records: usize) -> f64 {
    let rt = sensei::model::runtime(&config.onnxruntime).expect("runtime");
    let mut model = sensei::model::Model::load(rt, "student", &config.student).expect("student");
    let recs: Vec<sensei::record::Record> = (0..records)
        .map(|i| sensei::record::Record {
            id: None,
            ts: None,
            segment: Default::default(),
            inputs: [(
                "x".to_string(),
                sensei::record::Tensor::f32(vec![8, 8], row(rows, i).to_vec()),
            )]
            .into(),
            label: None,
            origin: sensei::record::Origin::Index(i),
        })
        .collect();
    let start = Instant::now();
    for chunk in recs.chunks(BATCH) {
        let refs: Vec<&sensei::record::Record> = chunk.iter().collect();
        std::hint::black_box(model.run(&refs).expect("run"));
    }
    start.elapsed().as_secs_f64() / records as f64
}

fn write_files(dir: &Path, rows: &[Vec<f32>], records: usize, json: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for (f, first) in (0..records).step_by(1000).enumerate() {
        let count = 1000.min(records - first);
        let (name, bytes) = if json {
            (format!("part-{f:05}.jsonl"), jsonl(rows, "b", first, count))
        } else {
            (format!("part-{f:05}.npz"), npz(rows, "b", first, count))
        };
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Seconds per record of `sensei replay` over `data`, teacher rate `rate`, into a fresh
/// database: (wall time including start-up, steady state between the first and the last file
/// commit). Start-up (ONNX Runtime sessions for both models, the database and its migrations)
/// is a fixed cost the plain loop does not pay, so both are reported. Also the student thread's
/// time as the replay reports it.
fn replay(
    tmp: &Path,
    data: &Path,
    rate: f64,
    records: usize,
) -> (f64, f64, sensei::pipeline::StudentTime) {
    let state = tmp.join("state");
    std::fs::remove_dir_all(&state).ok();
    let config =
        Config::from_toml(&config_toml(&state, rate, ""), &tmp.join("bench.toml")).expect("config");
    let (report, seconds, steady) = timed_replay(&config, data, records);
    let wall = seconds / records as f64;
    let steady = 1.0 / steady;
    (wall, steady, report.student.clone())
}

fn main() {
    // `cargo bench` passes --bench; there are no other options.
    let records: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ROUNDS);
    let rate = 0.1;
    let rows = field_rows();
    let tmp = tempfile::tempdir().unwrap();
    let npz_dir = tmp.path().join("npz");
    let json_dir = tmp.path().join("jsonl");
    write_files(&npz_dir, &rows, records, false);
    write_files(&json_dir, &rows, records, true);

    let probe = Config::from_toml(
        &config_toml(&tmp.path().join("probe"), 0.0, ""),
        &tmp.path().join("p.toml"),
    )
    .unwrap();
    let rt = sensei::model::runtime(&probe.onnxruntime)
        .expect("ONNX Runtime (run scripts/setup-onnxruntime.sh)");
    eprintln!("ONNX Runtime {} at {}", rt.version, rt.library.display());

    // Rounds interleave every measurement, so that slow drifts of the machine (other load, disk
    // write-back of the generated files) hit the baseline and sensei alike; each ratio is taken
    // within a round, and the median over rounds is reported.
    let (mut ts, mut tt, mut tm) = (Vec::new(), Vec::new(), Vec::new());
    let (mut t_spin, mut t_copy) = (Vec::new(), Vec::new());
    let mut ratios: [Vec<f64>; 4] = Default::default();
    let mut speeds: [Vec<f64>; 4] = Default::default();
    let mut steady_ratios: [Vec<f64>; 4] = Default::default();
    // Inside the replays: the model's share of the student thread's active time, and the plain
    // loop's time per record over the model's inside the pipeline.
    let mut shares: [Vec<f64>; 4] = Default::default();
    let mut model_speeds: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        let t_student = plain_loop(rt, &demo_model("student.onnx"), &rows, records);
        let t_teacher = plain_loop(rt, &demo_model("teacher.onnx"), &rows, 4096.min(records));
        tm.push(model_loop(&probe, &rows, records));
        let student = demo_model("student.onnx");
        t_spin.push(plain_loop_beside(
            rt,
            &student,
            &rows,
            records,
            Neighbour::Spin,
        ));
        t_copy.push(plain_loop_beside(
            rt,
            &student,
            &rows,
            records,
            Neighbour::Copy,
        ));
        let plain = 1.0 / t_student;
        let ideal = 1.0 / (t_student + rate * t_teacher);
        let runs = [
            (&npz_dir, 0.0, plain),
            (&json_dir, 0.0, plain),
            (&npz_dir, rate, ideal),
            (&json_dir, rate, ideal),
        ];
        for (k, (dir, r, baseline)) in runs.into_iter().enumerate() {
            let (wall, steady, student) = replay(tmp.path(), dir, r, records);
            shares[k].push(student.model_share());
            model_speeds[k]
                .push(t_student / (student.model.as_secs_f64() / student.records as f64));
            speeds[k].push(1.0 / wall);
            ratios[k].push(1.0 / wall / baseline);
            steady_ratios[k].push(1.0 / steady / baseline);
        }
        ts.push(t_student);
        tt.push(t_teacher);
    }
    let names = [
        "replay .npz, teacher off, vs plain loop".to_string(),
        "replay .jsonl, teacher off, vs plain loop".to_string(),
        format!("replay .npz, teacher rate {rate}, vs 1/(t_s + r·t_t)"),
        format!("replay .jsonl, teacher rate {rate}, vs 1/(t_s + r·t_t)"),
    ];
    println!("ratio (steady state) in each round:\n");
    println!(
        "| measure | {} |",
        (1..=rounds)
            .map(|r| format!("round {r}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---:|".repeat(rounds));
    for k in 0..4 {
        let cells: Vec<String> = steady_ratios[k].iter().map(|r| format!("{r:.3}")).collect();
        println!("| {} | {} |", names[k], cells.join(" | "));
    }
    println!();

    let (t_student, t_teacher, t_model) = (median(ts), median(tt), median(tm));
    let plain = 1.0 / t_student;
    let ideal = 1.0 / (t_student + rate * t_teacher);
    let speeds = speeds.map(median);
    let ranges = steady_ratios.clone().map(|v| {
        let low = v.iter().copied().fold(f64::INFINITY, f64::min);
        let high = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    });
    let ratios = ratios.map(median);
    let steady_ratios = steady_ratios.map(median);

    println!(
        "records: {records}; batch {BATCH}; 1 intra-op thread per model; {rounds} interleaved rounds, medians; ratio = median of per-round ratios"
    );
    println!(
        "t_student = {:.1} µs/record, t_teacher = {:.1} µs/record (plain ONNX Runtime loop)",
        t_student * 1e6,
        t_teacher * 1e6
    );
    println!(
        "sensei's Model::run alone in a loop: {:.1} µs/record",
        t_model * 1e6
    );
    let (t_spin, t_copy) = (median(t_spin), median(t_copy));
    println!(
        "the plain student loop while the other core is busy: {:.1} µs/record beside a spinning thread ({:.3} of the plain loop's speed), {:.1} beside a copying thread ({:.3})\n",
        t_spin * 1e6,
        t_student / t_spin,
        t_copy * 1e6,
        t_student / t_copy
    );
    println!(
        "| measure | sensei records/s | baseline records/s | ratio | ratio, steady state | steady, lowest–highest round |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let baselines = [plain, plain, ideal, ideal];
    for k in 0..4 {
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3}–{:.3} |",
            names[k],
            speeds[k],
            baselines[k],
            ratios[k],
            steady_ratios[k],
            ranges[k].0,
            ranges[k].1
        );
    }
    println!(
        "\nthe student thread inside each replay (medians over rounds): the model's share of its time from the first file to the last batch, and the model's speed there against the plain loop of the same round\n"
    );
    println!("| measure | model's share of the student thread | model's speed vs the plain loop |");
    println!("|---|---:|---:|");
    let shares = shares.map(median);
    let model_speeds = model_speeds.map(median);
    for k in 0..4 {
        println!(
            "| {} | {:.3} | {:.3} |",
            names[k], shares[k], model_speeds[k]
        );
    }
}

// The same allocator as the `sensei` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
