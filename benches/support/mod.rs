//! Shared by the benchmarks: the demo models, field records replicated to any count, and
//! writers for the inbox formats.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use sensei::config::NonFinitePolicy;
use sensei::format::{FormatOptions, read_file};
use sensei::record::{FileContent, InputSpec, TensorData};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn ort_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".ort/libonnxruntime.so.1.32.0"))
}

pub fn demo_model(name: &str) -> PathBuf {
    repo().join("models/demo").join(name)
}

/// The demo field records (the clean stream), as flat `[8 * 8]` float rows.
pub fn field_rows() -> Vec<Vec<f32>> {
    let path = repo().join("models/demo/streams/clean.npz");
    let bytes = std::fs::read(&path).expect("read clean.npz");
    let spec = InputSpec {
        name: "x".into(),
        elem_type: sensei::record::ElemType::F32,
        shape: vec![Some(8), Some(8)],
    };
    let opts = FormatOptions {
        non_finite: NonFinitePolicy::Reject,
        max_uncompressed_bytes: 1 << 30,
    };
    let FileContent::Records(records) =
        read_file("clean.npz", &bytes, &[spec], &opts).expect("parse")
    else {
        panic!("clean.npz holds no records");
    };
    records
        .into_iter()
        .map(|r| match &r.inputs["x"].data {
            TensorData::F32(v) => v.clone(),
            TensorData::I64(_) => panic!("x is float32"),
        })
        .collect()
}

/// The `n`-th record of an endless field stream: the demo rows, cycled.
pub fn row(rows: &[Vec<f32>], n: usize) -> &[f32] {
    &rows[n % rows.len()]
}

pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// An `.npz` of records `first..first + count`: `x` [count, 8, 8] and `id` (`<U16`), plus
/// `segment.line` alternating A/B.
pub fn npz(rows: &[Vec<f32>], prefix: &str, first: usize, count: usize) -> Vec<u8> {
    let mut x = Vec::with_capacity(count * 256);
    let mut ids = Vec::with_capacity(count * 64);
    let mut lines = Vec::with_capacity(count * 4);
    for n in first..first + count {
        for v in row(rows, n) {
            x.extend(v.to_le_bytes());
        }
        let id = format!("{prefix}{n}");
        let mut chars: Vec<char> = id.chars().collect();
        chars.resize(16, '\0');
        for c in chars {
            ids.extend((c as u32).to_le_bytes());
        }
        lines.extend((if n % 2 == 0 { 'A' } else { 'B' } as u32).to_le_bytes());
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in [
            ("x.npy", npy("<f4", &[count, 8, 8], &x)),
            ("id.npy", npy("<U16", &[count], &ids)),
            ("segment.line.npy", npy("<U1", &[count], &lines)),
        ] {
            zip.start_file(name, opts).expect("zip entry");
            zip.write_all(&bytes).expect("zip write");
        }
        zip.finish().expect("zip finish");
    }
    buf.into_inner()
}

/// A JSON Lines file of the same records as [`npz`].
pub fn jsonl(rows: &[Vec<f32>], prefix: &str, first: usize, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 600);
    for n in first..first + count {
        let r = row(rows, n);
        let x: Vec<&[f32]> = r.chunks(8).collect();
        let rec = serde_json::json!({
            "id": format!("{prefix}{n}"),
            "segment": {"line": if n % 2 == 0 { "A" } else { "B" }},
            "inputs": {"x": x},
        });
        writeln!(out, "{rec}").expect("write");
    }
    out
}

/// A config for the demo models with the given sampling rate, state under `state`.
pub fn config_toml(state: &Path, rate: f64, extra: &str) -> String {
    format!(
        r#"state_dir = {state:?}
[onnxruntime]
library = {lib:?}
[student]
path = {student:?}
attention = "attention"
max_batch = 32
threads = 1
[teacher]
path = {teacher:?}
attention = "attention"
max_batch = 32
threads = 1
[sampling]
rate = {rate}
seed = 1
max_per_minute = 100000000
queue = 100000
[segments]
keys = ["line"]
{extra}
"#,
        state = state.display().to_string(),
        lib = ort_library().display().to_string(),
        student = demo_model("student.onnx").display().to_string(),
        teacher = demo_model("teacher.onnx").display().to_string(),
    )
}

/// A site for the real daemon under `root`: the config (demo models, teacher rate 0.1 under a
/// budget of 6000 per minute and a queue of 256, `inbox_extra` appended to its `[inbox]` section
/// that deletes done files), the state directory with its inbox, and a staging directory on the
/// same file system to rename files in from.
pub struct DaemonSite {
    pub config: PathBuf,
    pub state: PathBuf,
    pub inbox: PathBuf,
    pub staging: PathBuf,
}

impl DaemonSite {
    pub fn new(root: &Path, inbox_extra: &str) -> DaemonSite {
        let state = root.join("state");
        let config = root.join("sensei.toml");
        let toml = config_toml(
            &state,
            0.1,
            &format!("[inbox]\non_done = \"delete\"\n{inbox_extra}"),
        )
        .replace("max_per_minute = 100000000", "max_per_minute = 6000")
        .replace("queue = 100000", "queue = 256");
        std::fs::write(&config, toml).expect("config");
        let inbox = state.join("inbox");
        let staging = root.join("staging");
        std::fs::create_dir_all(&inbox).expect("inbox");
        std::fs::create_dir_all(&staging).expect("staging");
        DaemonSite {
            config,
            state,
            inbox,
            staging,
        }
    }
}

/// Median of a few measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The real `sensei run` daemon on `config`, logging only warnings.
pub fn start_daemon(config: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_sensei"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("SENSEI_LOG", "warn,ort=error")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start sensei run")
}

/// `sensei replay` of `data` (into the config's state), timed: the pipeline's report, the
/// seconds it took, and its steady rate in records per second — the records after the first
/// committed file over the time from that commit to the last (the whole replay's rate when only
/// one file committed). Every one of `records` must be committed.
pub fn timed_replay(
    config: &sensei::config::Config,
    data: &Path,
    records: usize,
) -> (sensei::pipeline::WriterReport, f64, f64) {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let commits: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
    let seen = commits.clone();
    let on_file: sensei::pipeline::FileCallback = Box::new(move |_, outcome| {
        if let sensei::pipeline::FileOutcome::Committed { records, .. } = outcome
            && let Ok(mut v) = seen.lock()
        {
            v.push((Instant::now(), *records));
        }
    });
    let start = Instant::now();
    let report =
        sensei::daemon::replay(config, &[data.to_path_buf()], Some(on_file)).expect("replay");
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(
        report.records_committed as usize, records,
        "every record committed"
    );
    let commits = commits.lock().expect("commits");
    let steady = match (commits.first(), commits.last()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            let after_first: usize = commits.iter().skip(1).map(|c| c.1).sum();
            after_first as f64 / (last.0 - first.0).as_secs_f64()
        }
        _ => records as f64 / seconds,
    };
    (report, seconds, steady)
}
