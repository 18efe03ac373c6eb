//! `sensei demo`: the bundled demo teacher and student on the bundled clean and drifted field
//! streams, each replayed through the real pipeline into its own SQLite file in a work
//! directory that is kept, with the config each stream ran with (so `sensei -c DIR/NAME.toml
//! status` shows it again) and the pipeline's log. Prints, per stream, what an operator would
//! look at first: records, teacher samples, the disagreement rate with its 95% interval, mean KL
//! and mean attention KL.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::commands::{SegmentReport, status};
use crate::config::Config;
use crate::daemon::replay;
use crate::stats::Interval;

/// Where the demo looks for `teacher.onnx`, `student.onnx` and `streams/`: `--models`, else
/// `models/demo` under the current directory, else beside the binary's repository checkout.
pub fn find_models_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    let mut candidates = vec![PathBuf::from("models/demo")];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/sensei → repository root
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join("models/demo"));
        }
    }
    for c in &candidates {
        if c.join("student.onnx").is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "demo models not found (looked in {}); run from the repository root or pass --models DIR",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The demo's log file in its work directory.
pub const LOG_FILE: &str = "demo.log";

/// The demo's work directory: `explicit` (created; it must be empty if it exists), else a new
/// `sensei-demo-*` directory in the system's temporary directory. Either is kept.
pub fn work_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let Some(dir) = explicit else {
        let dir = tempfile::Builder::new()
            .prefix("sensei-demo-")
            .tempdir()
            .context("creating the demo's work directory")?;
        return Ok(dir.keep());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .next()
        .is_some()
    {
        bail!("the demo's work directory {} is not empty", dir.display());
    }
    Ok(dir.to_path_buf())
}

/// The ONNX Runtime the setup script installs into the repository, when present.
fn repo_runtime(models: &Path) -> Option<PathBuf> {
    let root = models
        .canonicalize()
        .ok()?
        .parent()?
        .parent()?
        .to_path_buf();
    let dir = root.join(".ort");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
        })
        .collect();
    libs.sort();
    libs.pop()
}

/// One drift event as the demo reports it; record numbers count from 0 within the stream.
#[derive(Debug, Clone, Serialize)]
pub struct DemoEvent {
    pub signal: String,
    pub segment: String,
    pub detector: String,
    pub detected_at_record: i64,
    pub estimated_change_record: Option<i64>,
    pub baseline_value: Option<f64>,
    pub current_value: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub name: String,
    /// Where the stream's documented drift begins (`models/demo/metrics.json`); null when clean.
    pub drift_starts_at_record: Option<i64>,
    pub drift_events: Vec<DemoEvent>,
    pub records: i64,
    pub teacher_samples: i64,
    pub skipped_budget: i64,
    pub quarantined: i64,
    pub disagreement: Option<Interval>,
    pub kl_mean: Option<f64>,
    pub attention_kl_mean: Option<f64>,
    pub mean_confidence: Option<f64>,
    pub segments: Vec<SegmentReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub models: PathBuf,
    /// Where the log, the configs and the databases are.
    pub work_dir: PathBuf,
    pub log: PathBuf,
    /// The lab baseline every stream is compared with.
    pub baseline: BaselineSummary,
    pub onnxruntime: String,
    pub sampling_rate: f64,
    pub streams: Vec<StreamReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaselineSummary {
    pub records: u64,
    pub agreement: f64,
    pub student_accuracy: Option<f64>,
    pub teacher_accuracy: Option<f64>,
    /// The largest ARL0 the thresholds were simulated at (beyond it they are extrapolated).
    pub arl0: f64,
    /// `[detect] false_alarms`: the site-wide budget the armed thresholds follow.
    pub false_alarms: String,
}

/// The documented drift start of each stream, from the model card's measurements.
fn drift_starts(models: &Path) -> std::collections::BTreeMap<String, Option<i64>> {
    let text = std::fs::read_to_string(models.join("metrics.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["streams"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, s)| (k.clone(), s["drift_start"].as_i64()))
                .collect()
        })
        .unwrap_or_default()
}

/// The demo config for one stream, as TOML (what an operator would write).
fn demo_config(models: &Path, state: &Path, library: Option<&Path>) -> String {
    let lib = library.map_or(String::new(), |l| {
        format!("[onnxruntime]\nlibrary = {:?}\n", l.display().to_string())
    });
    format!(
        r#"state_dir = {state:?}
{lib}
[student]
path = {student:?}
output = "logits"
attention = "attention"
max_batch = 32

[teacher]
path = {teacher:?}
output = "logits"
attention = "attention"
max_batch = 32

[sampling]
rate = 0.5
seed = 7
# A replay runs far faster than real time; the demo does not ration the teacher.
max_per_minute = 1000000
queue = 4096

[segments]
keys = ["line"]
"#,
        state = state.display().to_string(),
        student = models.join("student.onnx").display().to_string(),
        teacher = models.join("teacher.onnx").display().to_string(),
    )
}

/// Runs the demo in `work` (see [`work_dir`]).
pub fn run(models: &Path, work: &Path) -> anyhow::Result<DemoReport> {
    let models = models
        .canonicalize()
        .with_context(|| format!("demo models {}", models.display()))?;
    let streams_dir = models.join("streams");
    let mut streams: Vec<PathBuf> = std::fs::read_dir(&streams_dir)
        .with_context(|| format!("listing {}", streams_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.ends_with(".jsonl") && !n.ends_with(".labels.jsonl")
        })
        .collect();
    // clean first, then the drifted streams in name order
    streams.sort_by_key(|p| (p.file_stem().is_none_or(|s| s != "clean"), p.clone()));
    if streams.is_empty() {
        bail!("no demo streams (*.jsonl) in {}", streams_dir.display());
    }
    let work = work
        .canonicalize()
        .with_context(|| format!("the demo's work directory {}", work.display()))?;
    let library = repo_runtime(&models);
    let starts = drift_starts(&models);
    // The lab stage, once: both models on the lab set, detectors calibrated.
    let lab_config = write_config(
        &work.join("lab.toml"),
        &demo_config(&models, &work.join("lab"), library.as_deref()),
    )?;
    let lab = crate::baseline::measure(&lab_config, &[models.join("lab.jsonl")])?;
    let profile = serde_json::to_string(&lab.reference)?;
    let mut report = DemoReport {
        baseline: BaselineSummary {
            records: lab.records,
            agreement: lab.reference.agreement,
            student_accuracy: lab.reference.student_accuracy,
            teacher_accuracy: lab.reference.teacher_accuracy,
            arl0: lab.reference.arl0,
            false_alarms: lab_config.detect.false_alarms.text.clone(),
        },
        models: models.clone(),
        log: work.join(LOG_FILE),
        work_dir: work.clone(),
        onnxruntime: String::new(),
        sampling_rate: 0.0,
        streams: Vec::new(),
    };
    for stream in streams {
        let name = stream
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let state = work.join(&name);
        let config = write_config(
            &work.join(format!("{name}.toml")),
            &demo_config(&models, &state, library.as_deref()),
        )?;
        report.sampling_rate = config.sampling.rate;
        {
            std::fs::create_dir_all(&config.state_dir)?;
            let mut store = crate::store::Store::open(&config.store.path)?;
            store.insert_baseline(
                "demo",
                "demo",
                lab.records as i64,
                "[\"lab.jsonl\"]",
                &profile,
                crate::time::now_ms(),
            )?;
        }
        let summary = replay(&config, std::slice::from_ref(&stream), None)
            .with_context(|| format!("replaying {}", stream.display()))?;
        if report.onnxruntime.is_empty()
            && let Ok(rt) = crate::model::runtime(&config.onnxruntime)
        {
            report.onnxruntime = format!("{} ({})", rt.library.display(), rt.version);
        }
        let st = status(&config)?;
        let all = st
            .segments
            .iter()
            .find(|s| s.segment == crate::record::ALL_SEGMENTS)
            .cloned();
        let events = crate::store::Reader::open(&config.store.path)?.recent_events(i64::MAX)?;
        report.streams.push(StreamReport {
            drift_starts_at_record: starts.get(&name).copied().flatten(),
            drift_events: events
                .into_iter()
                .map(|e| DemoEvent {
                    signal: e.signal,
                    segment: e.segment,
                    detector: e.detector,
                    // A fresh database numbers the stream's records from 1.
                    detected_at_record: e.detected_at_record - 1,
                    estimated_change_record: e.estimated_change_record.map(|c| c - 1),
                    baseline_value: e.baseline_value,
                    current_value: e.current_value,
                })
                .collect(),
            name,
            records: st.records,
            teacher_samples: st.teacher_samples,
            skipped_budget: st.skipped_budget,
            quarantined: summary.files_quarantined as i64,
            disagreement: all.as_ref().and_then(|a| a.disagreement),
            kl_mean: all.as_ref().and_then(|a| a.kl_mean),
            attention_kl_mean: all.as_ref().and_then(|a| a.attention_kl_mean),
            mean_confidence: all.as_ref().and_then(|a| a.mean_confidence),
            segments: st
                .segments
                .into_iter()
                .filter(|s| s.segment != crate::record::ALL_SEGMENTS)
                .collect(),
        });
    }
    Ok(report)
}

/// Writes a stream's config where the operator can use it again, and validates it.
fn write_config(path: &Path, toml: &str) -> anyhow::Result<Config> {
    std::fs::write(path, toml).with_context(|| format!("writing {}", path.display()))?;
    Config::from_toml(toml, path).map_err(|e| anyhow::anyhow!("{e}"))
}

impl DemoReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "sensei demo: models {}", self.models.display());
        let _ = writeln!(s, "ONNX Runtime: {}", self.onnxruntime);
        let _ = writeln!(
            s,
            "teacher sampling rate {:.2}; disagreement = share of teacher-sampled records where the top-1 classes differ\n",
            self.sampling_rate
        );
        let _ = writeln!(
            s,
            "{:<16} {:>8} {:>8} {:>28} {:>9} {:>9} {:>10}",
            "stream",
            "records",
            "teacher",
            "disagreement [95% CI]",
            "mean KL",
            "attn KL",
            "confidence"
        );
        for st in &self.streams {
            let d = st.disagreement.map_or("-".to_string(), |i| {
                format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.low, i.high)
            });
            let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
            let _ = writeln!(
                s,
                "{:<16} {:>8} {:>8} {:>28} {:>9} {:>9} {:>10}",
                st.name,
                st.records,
                st.teacher_samples,
                d,
                f(st.kl_mean, 4),
                f(st.attention_kl_mean, 4),
                f(st.mean_confidence, 3)
            );
        }
        let _ = writeln!(
            s,
            "\ndrift detection (baseline: {} lab records, agreement {:.1}%; false-alarm budget {} for every detector together):",
            self.baseline.records,
            100.0 * self.baseline.agreement,
            self.baseline.false_alarms
        );
        for st in &self.streams {
            let start = st
                .drift_starts_at_record
                .map_or("no drift".to_string(), |r| format!("drift from record {r}"));
            match st.drift_events.iter().min_by_key(|e| e.detected_at_record) {
                None => {
                    let _ = writeln!(s, "  {:<16} {start:<22} no drift event", st.name);
                }
                Some(first) => {
                    let segments: std::collections::BTreeSet<&str> =
                        st.drift_events.iter().map(|e| e.segment.as_str()).collect();
                    let _ = writeln!(
                        s,
                        "  {:<16} {start:<22} {} events; first: {} on {} at record {} (estimated change from {}); segments: {}",
                        st.name,
                        st.drift_events.len(),
                        first.signal,
                        if first.segment == crate::record::ALL_SEGMENTS {
                            "(all)"
                        } else {
                            &first.segment
                        },
                        first.detected_at_record,
                        first
                            .estimated_change_record
                            .map_or("-".to_string(), |c| c.to_string()),
                        segments
                            .into_iter()
                            .map(|x| if x == crate::record::ALL_SEGMENTS {
                                "(all)"
                            } else {
                                x
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        let _ = writeln!(s, "\nper segment:");
        for st in &self.streams {
            for seg in &st.segments {
                let d = seg.disagreement.map_or("-".to_string(), |i| {
                    format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.low, i.high)
                });
                let _ = writeln!(
                    s,
                    "  {:<16} {:<10} {:>6} records {:>5} teacher  disagreement {}",
                    st.name, seg.segment, seg.records, seg.teacher_samples, d
                );
            }
        }
        let example = self
            .streams
            .last()
            .map_or("clean".to_string(), |st| st.name.clone());
        let _ = writeln!(
            s,
            "\nwork directory: {} (the log: {}; each stream's database and config, e.g. `sensei -c {} status`)",
            self.work_dir.display(),
            self.log.display(),
            self.work_dir.join(format!("{example}.toml")).display()
        );
        s
    }
}
