//! A teacher on an inference server: JSON against binary tensors, on the demo teacher.
//!
//!     cargo bench --bench remote        # REMOTE_BATCHES=N batches per case (default 300)
//!
//! Starts NVIDIA Triton (`tests/servers/triton_teacher.py`, `.venv/oip-triton`) and KServe's
//! model server (`tests/servers/kserve_teacher.py`, `.venv/oip-kserve`) on loopback, each serving
//! `models/demo/teacher.onnx` with ONNX Runtime (`scripts/test.sh` installs both). For each
//! server and each tensor form, batches of 32 demo records, one request at a time:
//!
//! - `plain`: the server's own throughput, a plain client loop posting the same prebuilt body
//!   again and again and reading the answer whole, nothing encoded or decoded;
//! - `sensei`: the remote teacher's `run`, one batch after another: the request encoded, the
//!   answer decoded and checked, as the teacher thread does.
//!
//! Prints the request and answer bytes of one batch, the mean milliseconds per batch and the
//! records per second, and the binary/JSON ratios.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sensei::config::{ModelConfig, RemoteConfig, TensorEncoding};
use sensei::model::RemoteModel;
use sensei::record::{Origin, Record, Tensor};
use support::*;

const BATCH: usize = 32;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An inference server, killed by its pid when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(name: &str, port: u16, dir: &Path, rt: &tokio::runtime::Runtime) -> Server {
    let python = repo().join(format!(".venv/oip-{name}/bin/python"));
    assert!(
        python.is_file(),
        "{} missing: run scripts/test.sh",
        python.display()
    );
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let mut command = Command::new(python);
    command
        .arg(repo().join(format!("tests/servers/{name}_teacher.py")))
        .args(["--http_port", &port.to_string()])
        .arg("--model")
        .arg(format!("teacher={}", demo_model("teacher.onnx").display()));
    if name == "triton" {
        let work = dir.join("triton");
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
    let (body, header_length) = model.encode_request(&refs[0]).expect("encode");
    let request = body.len();
    let url = format!("{}/infer", model.location);
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        let mut post = client.post(&url).body(body);
        post = match header_length {
            None => post.header("Content-Type", "application/json"),
            Some(length) => post
                .header("Content-Type", "application/octet-stream")
                .header("Inference-Header-Content-Length", length),
        };
        post
    };
    // Warm up both loops, then time them.
    let answer = rt.block_on(async {
        let mut size = 0;
        for _ in 0..20 {
            let response = post(body.clone()).send().await.expect("post");
            assert!(response.status().is_success(), "{}", response.status());
            size = response.bytes().await.expect("answer").len();
        }
        size
    });
    for batch in refs.iter().take(20) {
        model.run(batch).expect("run");
    }
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            let response = post(body.clone()).send().await.expect("post");
            let bytes = response.bytes().await.expect("answer");
            std::hint::black_box(bytes);
        }
    });
    let plain_ms = started.elapsed().as_secs_f64() * 1e3 / n as f64;
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

fn main() {
    let n: usize = std::env::var("REMOTE_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rows = field_rows();
    let batches: Vec<Vec<Record>> = (0..16)
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
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    println!(
        "{n} batches of {BATCH} demo records per case, one request at a time, on loopback \
         (output logits [10] and attention [4, 8, 8] asked for)\n"
    );
    println!(
        "{:<8} {:<7} {:>9} {:>9} {:>10} {:>10} {:>11} {:>11}",
        "server",
        "tensors",
        "req B",
        "answer B",
        "plain ms",
        "sensei ms",
        "plain rec/s",
        "sensei rec/s"
    );
    for name in ["triton", "kserve"] {
        let port = free_port();
        let _server = start(name, port, tmp.path(), &rt);
        let mut results = Vec::new();
        for (label, tensors) in [
            ("json", TensorEncoding::Json),
            ("binary", TensorEncoding::Binary),
        ] {
            let mut model = teacher(port, tensors);
            let m = measure(&rt, &mut model, &batches, n);
            println!(
                "{:<8} {:<7} {:>9} {:>9} {:>10.2} {:>10.2} {:>11.0} {:>11.0}",
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
        println!(
            "{:<8} binary/json: request bytes {:.3}, answer bytes {:.3}, plain time {:.3}, sensei time {:.3}",
            name,
            binary.request as f64 / json.request as f64,
            binary.answer as f64 / json.answer as f64,
            binary.plain_ms / json.plain_ms,
            binary.sensei_ms / json.sensei_ms
        );
    }
}
