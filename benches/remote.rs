//! A teacher on an inference server: JSON against binary tensors; `sensei replay` with the
//! remote teacher against the local one and against the server's own throughput; a server ten
//! times slower.
//!
//!     cargo bench --bench remote        # REMOTE_PARTS=encoding,replay,slow (default: all three)
//!
//! Starts NVIDIA Triton (`tests/servers/triton_teacher.py`, `.venv/oip-triton`) and KServe's
//! model server (`tests/servers/kserve_teacher.py`, `.venv/oip-kserve`) on loopback, each serving
//! `models/demo/teacher.onnx` with ONNX Runtime (`scripts/test.sh` installs both).
//!
//! 1. `encoding`, on both servers and in both tensor forms, batches of 32 demo records, one
//!    request at a time (`REMOTE_BATCHES` per case, 300 by default):
//!    - `plain`: the server's own throughput, a plain client loop posting the same prebuilt body
//!      again and again and reading the answer whole, nothing encoded or decoded;
//!    - `sensei`: the remote teacher's `run`, one batch after another: the request encoded, the
//!      answer decoded and checked, as the teacher thread does.
//! 2. `replay`, on Triton with binary tensors: `sensei replay` (`daemon::replay`, the library
//!    call behind the command) over `REMOTE_RECORDS` demo records (40 000 by default) in .npz
//!    files of 1000, at teacher rate 0.1 and 1.0, with the teacher on the server and with the
//!    same model run locally, each into a fresh database; and the plain client loop on the same
//!    server, one batch of 32 at a time and the teacher's `in_flight` (2) at a time.
//! 3. `slow`: a second Triton whose model sleeps 9× the first one's time per batch before each
//!    answer (`--delay`, the median of five short plain loops before the rounds), so that it
//!    answers about ten times slower (the benchmark measures it in every round); the replay at
//!    rate 0.1 under a budget of 300 samples per minute (less than the slow server answers in
//!    the replay, so that the budget binds) and a queue of 64 (less than the budget, so that the
//!    queue fills first), against the same replay with the teacher off, twice (before and after:
//!    their ratio is the run-to-run noise). After each replay the counts come from `sensei status`
//!    (the database): samples answered, skipped over the budget, skipped on a full queue, skipped
//!    with the server out of reach; the benchmark asserts that they add up to the records the
//!    sampling policy chose and that the answered ones stay within the budget.
//!
//! Parts 2 and 3 run `BENCH_ROUNDS` interleaved rounds (3 by default) and print every round's
//! ratios and their medians as Markdown tables for docs/performance.md.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sensei::config::{Config, ModelConfig, RemoteConfig, TensorEncoding};
use sensei::model::RemoteModel;
use sensei::record::{Origin, Record, Tensor};
use support::*;

const BATCH: usize = 32;
/// Rounds of parts 2 and 3 unless `BENCH_ROUNDS` says otherwise.
const ROUNDS: usize = 3;
/// The slow server's budget per minute and queue in part 3.
const SLOW_BUDGET: u32 = 300;
const SLOW_QUEUE: usize = 64;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// An inference server, killed by its pid when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `name` server (`triton` or `kserve`) on `port`, with `extra` arguments to its
/// script, and waits until it is ready.
fn start(
    name: &str,
    port: u16,
    dir: &Path,
    extra: &[String],
    rt: &tokio::runtime::Runtime,
) -> Server {
    let python = repo().join(format!(".venv/oip-{name}/bin/python"));
    assert!(
        python.is_file(),
        "{} missing: run scripts/test.sh",
        python.display()
    );
    let log = std::fs::File::create(dir.join(format!("{name}-{port}.log"))).expect("log");
    let mut command = Command::new(python);
    command
        .arg(repo().join(format!("tests/servers/{name}_teacher.py")))
        .args(["--http_port", &port.to_string()])
        .arg("--model")
        .arg(format!("teacher={}", demo_model("teacher.onnx").display()))
        .args(extra);
    if name == "triton" {
        let work = dir.join(format!("triton-{port}"));
        std::fs::create_dir_all(&work).expect("triton dir");
        command.arg("--workdir").arg(work);
    }
    let child = command
        .env("ORT_DISABLE_TELEMETRY", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the server");
    let mut server = Server(child);
    let url = format!("http://127.0.0.1:{port}/v2/health/ready");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("the {name} server exited: {status}");
        }
        let ready = rt.block_on(async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        if ready {
            return server;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the {name} server is not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn teacher(port: u16, tensors: TensorEncoding) -> RemoteModel {
    let config = ModelConfig {
        path: Default::default(),
        remote: Some(RemoteConfig {
            section: "teacher".into(),
            url: format!("http://127.0.0.1:{port}"),
            model: "teacher".into(),
            version: None,
            timeout: Duration::from_secs(30),
            retries: 0,
            backoff: Duration::ZERO,
            in_flight: 1,
            breaker_after: 1000,
            breaker_open: Duration::from_secs(1),
            tensors,
            ca_file: None,
            client_identity: None,
            token: None,
        }),
        threads: 1,
        max_batch: BATCH,
        max_wait: Duration::ZERO,
        inputs: Vec::new(),
        output: "logits".into(),
        attention: Some("attention".into()),
    };
    RemoteModel::connect("teacher", &config).unwrap_or_else(|e| panic!("{e}"))
}

/// The same prebuilt request posted again and again, straight to the server.
struct PlainClient {
    client: reqwest::Client,
    url: String,
    body: Vec<u8>,
    header_length: Option<usize>,
}

impl PlainClient {
    fn new(model: &RemoteModel, batch: &[Record]) -> PlainClient {
        let refs: Vec<&Record> = batch.iter().collect();
        let (body, header_length) = model.encode_request(&refs).expect("encode");
        PlainClient {
            client: reqwest::Client::new(),
            url: format!("{}/infer", model.location),
            body,
            header_length,
        }
    }

    /// Posts the body once and reads the answer whole; its length.
    async fn post(&self) -> usize {
        let mut post = self.client.post(&self.url).body(self.body.clone());
        post = match self.header_length {
            None => post.header("Content-Type", "application/json"),
            Some(length) => post
                .header("Content-Type", "application/octet-stream")
                .header("Inference-Header-Content-Length", length),
        };
        let response = post.send().await.expect("post");
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.expect("answer").len()
    }

    /// Milliseconds per batch over `n` batches, `at_once` requests in flight at a time.
    fn ms_per_batch(&self, rt: &tokio::runtime::Runtime, n: usize, at_once: usize) -> f64 {
        let started = Instant::now();
        rt.block_on(async {
            let lanes = (0..at_once).map(|lane| async move {
                for _ in (lane..n).step_by(at_once) {
                    std::hint::black_box(self.post().await);
                }
            });
            futures_join_all(lanes).await;
        });
        started.elapsed().as_secs_f64() * 1e3 / n as f64
    }
}

/// Runs the futures concurrently on the current task, to completion.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

struct Measured {
    request: usize,
    answer: usize,
    plain_ms: f64,
    sensei_ms: f64,
}

fn measure(
    rt: &tokio::runtime::Runtime,
    model: &mut RemoteModel,
    batches: &[Vec<Record>],
    n: usize,
) -> Measured {
    let refs: Vec<Vec<&Record>> = batches.iter().map(|b| b.iter().collect()).collect();
    let plain = PlainClient::new(model, &batches[0]);
    let request = plain.body.len();
    // Warm up both loops, then time them.
    let answer = rt.block_on(async {
        let mut size = 0;
        for _ in 0..20 {
            size = plain.post().await;
        }
        size
    });
    for batch in refs.iter().take(20) {
        model.run(batch).expect("run");
    }
    let plain_ms = plain.ms_per_batch(rt, n, 1);
    let started = Instant::now();
    for i in 0..n {
        let out = model.run(&refs[i % refs.len()]).expect("run");
        assert_eq!(out.batch, BATCH);
    }
    let sensei_ms = started.elapsed().as_secs_f64() * 1e3 / n as f64;
    Measured {
        request,
        answer,
        plain_ms,
        sensei_ms,
    }
}

fn demo_batches(count: usize) -> Vec<Vec<Record>> {
    let rows = field_rows();
    (0..count)
        .map(|b| {
            (0..BATCH)
                .map(|i| Record {
                    id: None,
                    ts: None,
                    segment: Default::default(),
                    inputs: [(
                        "x".to_string(),
                        Tensor::f32(vec![8, 8], row(&rows, b * BATCH + i).to_vec()),
                    )]
                    .into(),
                    label: None,
                    origin: Origin::Line(i + 1),
                })
                .collect()
        })
        .collect()
}

/// Part 1: JSON against binary tensors, on both servers.
fn encoding(rt: &tokio::runtime::Runtime, dir: &Path, batches: &[Vec<Record>], n: usize) {
    println!(
        "## JSON against binary tensors\n\n{n} batches of {BATCH} demo records per case, one request at a time, on loopback \
         (output logits [10] and attention [4, 8, 8] asked for)\n"
    );
    println!(
        "| server | tensors | request B | answer B | plain ms/batch | sensei ms/batch | plain rec/s | sensei rec/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut summaries = Vec::new();
    for name in ["triton", "kserve"] {
        let port = free_port();
        let _server = start(name, port, dir, &[], rt);
        let mut results = Vec::new();
        for (label, tensors) in [
            ("json", TensorEncoding::Json),
            ("binary", TensorEncoding::Binary),
        ] {
            let mut model = teacher(port, tensors);
            let m = measure(rt, &mut model, batches, n);
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} |",
                name,
                label,
                m.request,
                m.answer,
                m.plain_ms,
                m.sensei_ms,
                BATCH as f64 * 1e3 / m.plain_ms,
                BATCH as f64 * 1e3 / m.sensei_ms
            );
            results.push(m);
        }
        let (json, binary) = (&results[0], &results[1]);
        summaries.push(format!(
            "{name} binary/json: request bytes {:.3}, answer bytes {:.3}, plain time {:.3}, sensei time {:.3}; \
             sensei's own cost per batch outside the server (sensei − plain): json {:.2} ms, binary {:.2} ms",
            binary.request as f64 / json.request as f64,
            binary.answer as f64 / json.answer as f64,
            binary.plain_ms / json.plain_ms,
            binary.sensei_ms / json.sensei_ms,
            json.sensei_ms - json.plain_ms,
            binary.sensei_ms - binary.plain_ms,
        ));
    }
    println!();
    for s in summaries {
        println!("{s}");
    }
    println!();
}

/// How one replay went.
struct Replayed {
    /// Records per second over the whole call, start-up included.
    wall: f64,
    /// Records per second from the first file's commit to the last one's.
    steady: f64,
    /// Records per second of the student's thread over its active time (the first file to the
    /// hand-off of the last batch), which does not wait for the teacher.
    student: f64,
    seconds: f64,
    status: sensei::commands::status::StatusReport,
}

/// `sensei replay` of `data` with the config `toml` (its state under `state`), into a fresh
/// database.
fn replay(state: &Path, toml: &str, data: &Path, records: usize) -> Replayed {
    std::fs::remove_dir_all(state).ok();
    let config =
        Config::from_toml(toml, &state.with_extension("toml")).unwrap_or_else(|e| panic!("{e}"));
    let (report, seconds, steady) = timed_replay(&config, data, records);
    let student = &report.student;
    let status = sensei::commands::status::status(&config).expect("status");
    assert_eq!(status.records as usize, records, "records in the database");
    Replayed {
        wall: records as f64 / seconds,
        steady,
        student: student.records as f64 / student.active.as_secs_f64(),
        seconds,
        status,
    }
}

/// The benchmarks' config with the teacher on the server at `port` (binary tensors) instead of
/// the local file.
fn remote_toml(local: &str, port: u16) -> String {
    let path_line = format!(
        "path = {:?}",
        demo_model("teacher.onnx").display().to_string()
    );
    assert!(local.contains(&path_line), "the teacher's path in {local}");
    local.replacen(
        &path_line,
        &format!("url = \"http://127.0.0.1:{port}\"\nmodel = \"teacher\"\ntensors = \"binary\""),
        1,
    )
}

fn write_npz(dir: &Path, records: usize) {
    let rows = field_rows();
    std::fs::create_dir_all(dir).expect("data dir");
    for (f, first) in (0..records).step_by(1000).enumerate() {
        let count = 1000.min(records - first);
        std::fs::write(
            dir.join(format!("part-{f:05}.npz")),
            npz(&rows, "r", first, count),
        )
        .expect("write npz");
    }
}

fn low_high(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// A table of per-round values with their median and range, `decimals` after the point.
fn print_rounds(rows: &[(String, Vec<f64>)], decimals: usize) {
    let rounds = rows.first().map_or(0, |r| r.1.len());
    println!(
        "| measure | {} | median | lowest–highest |",
        (1..=rounds)
            .map(|r| format!("round {r}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}---:|---:|", "---:|".repeat(rounds));
    for (name, values) in rows {
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
        let (low, high) = low_high(values);
        println!(
            "| {name} | {} | {:.decimals$} | {low:.decimals$}–{high:.decimals$} |",
            cells.join(" | "),
            median(values.clone())
        );
    }
    println!();
}

fn main() {
    let parts = std::env::var("REMOTE_PARTS").unwrap_or_else(|_| "encoding,replay,slow".into());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    for p in &parts {
        assert!(
            ["encoding", "replay", "slow"].contains(p),
            "REMOTE_PARTS: unknown part {p:?} (encoding, replay, slow)"
        );
    }
    let n = env_number("REMOTE_BATCHES", 300);
    let records = env_number("REMOTE_RECORDS", 40_000);
    let rounds = env_number("BENCH_ROUNDS", ROUNDS);
    let batches = demo_batches(16);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    if parts.contains(&"encoding") {
        encoding(&rt, tmp.path(), &batches, n);
    }
    let (with_replay, with_slow) = (parts.contains(&"replay"), parts.contains(&"slow"));
    if !with_replay && !with_slow {
        return;
    }

    let data = tmp.path().join("npz");
    write_npz(&data, records);
    let state = tmp.path().join("state");
    let port = free_port();
    let _server = start("triton", port, tmp.path(), &[], &rt);
    let plain = PlainClient::new(&teacher(port, TensorEncoding::Binary), &batches[0]);
    rt.block_on(async {
        for _ in 0..50 {
            plain.post().await;
        }
    });
    let plain_batches = 200;
    // The median of a few short loops: one long loop on a shared machine can catch a burst of
    // other load and set the slow server's delay far off.
    let t_batch = median((0..5).map(|_| plain.ms_per_batch(&rt, 60, 1)).collect());
    // The slow server: the same model, sleeping 9× the first server's time per batch before
    // each answer.
    let delay = 9.0 * t_batch / 1e3;
    let slow_port = free_port();
    let (_slow_server, slow_plain) = if with_slow {
        let server = start(
            "triton",
            slow_port,
            tmp.path(),
            &["--delay".into(), format!("{delay:.4}")],
            &rt,
        );
        let client = PlainClient::new(&teacher(slow_port, TensorEncoding::Binary), &batches[0]);
        rt.block_on(async {
            for _ in 0..3 {
                client.post().await;
            }
        });
        (Some(server), Some(client))
    } else {
        (None, None)
    };

    let local = |rate: f64| config_toml(&state, rate, "");
    let slow_toml = remote_toml(&local(0.1), slow_port)
        .replace(
            "max_per_minute = 100000000",
            &format!("max_per_minute = {SLOW_BUDGET}"),
        )
        .replace("queue = 100000", &format!("queue = {SLOW_QUEUE}"));
    let in_flight = 2; // the remote teacher's default `in_flight`

    // Per round: rec/s of each replay and of the plain loops.
    let mut a: Vec<(String, Vec<f64>)> = [
        "remote/local, rate 0.1, wall",
        "remote/local, rate 0.1, steady",
        "remote/local, rate 1.0, wall",
        "remote/local, rate 1.0, steady",
        "remote rate 1.0 (steady) / server plain loop, 1 at a time",
        "remote rate 1.0 (steady) / server plain loop, 2 at a time",
        "local rate 1.0 (steady) / server plain loop, 1 at a time",
    ]
    .iter()
    .map(|s| (s.to_string(), Vec::new()))
    .collect();
    let mut a_speeds: Vec<(String, Vec<f64>)> = [
        "replay, local teacher, rate 0.1 (steady)",
        "replay, remote teacher, rate 0.1 (steady)",
        "replay, local teacher, rate 1.0 (steady)",
        "replay, remote teacher, rate 1.0 (steady)",
        "server plain loop, 1 batch at a time",
        "server plain loop, 2 batches at a time",
    ]
    .iter()
    .map(|s| (s.to_string(), Vec::new()))
    .collect();
    let mut b: Vec<(String, Vec<f64>)> = [
        "slow server vs teacher off (before): student thread",
        "slow server vs teacher off (before): wall",
        "slow server vs teacher off (before): steady",
        "teacher off, after vs before (noise): student thread",
        "teacher off, after vs before (noise): wall",
        "teacher off, after vs before (noise): steady",
        "slow server / first server, plain loop ms per batch",
    ]
    .iter()
    .map(|s| (s.to_string(), Vec::new()))
    .collect();
    let mut counts = Vec::new();
    let mut chosen = None;

    for _ in 0..rounds {
        if with_slow {
            let off_before = replay(&state, &local(0.0), &data, records);
            let slow = replay(&state, &slow_toml, &data, records);
            let off_after = replay(&state, &local(0.0), &data, records);
            let slow_ms = slow_plain
                .as_ref()
                .expect("slow client")
                .ms_per_batch(&rt, 40, 1);
            let fast_ms = plain.ms_per_batch(&rt, plain_batches, 1);
            for (k, v) in [
                slow.student / off_before.student,
                slow.wall / off_before.wall,
                slow.steady / off_before.steady,
                off_after.student / off_before.student,
                off_after.wall / off_before.wall,
                off_after.steady / off_before.steady,
                slow_ms / fast_ms,
            ]
            .into_iter()
            .enumerate()
            {
                b[k].1.push(v);
            }
            counts.push(slow);
        }
        if with_replay || chosen.is_none() {
            // The local replay at rate 0.1 also gives the records the policy chooses: with an
            // unbounded budget and queue, the teacher answers every one.
            let local_01 = replay(&state, &local(0.1), &data, records);
            let s = &local_01.status;
            assert_eq!(
                (s.skipped_budget, s.skipped_queue, s.skipped_unreachable),
                (0, 0, 0),
                "nothing skipped without limits"
            );
            chosen = Some(s.teacher_samples);
            if !with_replay {
                continue;
            }
            let remote_01 = replay(&state, &remote_toml(&local(0.1), port), &data, records);
            let local_10 = replay(&state, &local(1.0), &data, records);
            let remote_10 = replay(&state, &remote_toml(&local(1.0), port), &data, records);
            for r in [&remote_01, &remote_10] {
                let s = &r.status;
                assert_eq!(
                    (s.skipped_budget, s.skipped_queue, s.skipped_unreachable),
                    (0, 0, 0),
                    "nothing skipped on the server without limits"
                );
            }
            assert_eq!(
                remote_01.status.teacher_samples,
                local_01.status.teacher_samples
            );
            assert_eq!(remote_10.status.teacher_samples as usize, records);
            let one = BATCH as f64 * 1e3 / plain.ms_per_batch(&rt, plain_batches, 1);
            let two = BATCH as f64 * 1e3 / plain.ms_per_batch(&rt, plain_batches, in_flight);
            for (k, v) in [
                remote_01.wall / local_01.wall,
                remote_01.steady / local_01.steady,
                remote_10.wall / local_10.wall,
                remote_10.steady / local_10.steady,
                remote_10.steady / one,
                remote_10.steady / two,
                local_10.steady / one,
            ]
            .into_iter()
            .enumerate()
            {
                a[k].1.push(v);
            }
            for (k, v) in [
                local_01.steady,
                remote_01.steady,
                local_10.steady,
                remote_10.steady,
                one,
                two,
            ]
            .into_iter()
            .enumerate()
            {
                a_speeds[k].1.push(v);
            }
        }
    }

    println!(
        "{records} demo records in .npz files of 1000; batch {BATCH}; {rounds} interleaved rounds; \
         Triton with binary tensors, one batch of {BATCH} takes {t_batch:.2} ms in the plain loop \
         (before the rounds)\n"
    );
    if with_replay {
        println!("## Replay with the teacher on the server\n");
        println!("records per second:\n");
        print_rounds(&a_speeds, 0);
        println!("ratios:\n");
        print_rounds(&a, 3);
    }
    if with_slow {
        let chosen = chosen.expect("the records chosen");
        println!(
            "## A server ten times slower\n\nthe slow server sleeps {:.1} ms before each answer; rate 0.1, \
             budget {SLOW_BUDGET} per minute, queue {SLOW_QUEUE}; the policy chooses {chosen} of the {records} records\n",
            delay * 1e3
        );
        print_rounds(&b, 3);
        println!(
            "| round | replay s | answered | skipped, budget | skipped, queue | skipped, out of reach | budget allows at most |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for (i, r) in counts.iter().enumerate() {
            let s = &r.status;
            // The bucket starts full and refills at the budget per minute; a sample the queue
            // refused gives its token back.
            let allowed = SLOW_BUDGET as f64 * (1.0 + r.seconds / 60.0);
            println!(
                "| {} | {:.2} | {} | {} | {} | {} | {:.0} |",
                i + 1,
                r.seconds,
                s.teacher_samples,
                s.skipped_budget,
                s.skipped_queue,
                s.skipped_unreachable,
                allowed
            );
            assert_eq!(
                s.teacher_samples + s.skipped_budget + s.skipped_queue + s.skipped_unreachable,
                chosen,
                "every chosen record is answered or counted as skipped"
            );
            assert!(
                (s.teacher_samples + s.skipped_unreachable) as f64 <= allowed.ceil(),
                "the budget holds"
            );
        }
        println!();
    }
}

// The same allocator as the `sensei` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
