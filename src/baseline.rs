//! The lab stage: `sensei baseline DATA…` runs both models on every record of the lab reference
//! set and measures what the field will be compared with — agreement, divergences, confidence,
//! class mix, input summaries, latency and accuracy ([`run_lab`]). [`measure`] turns them into a
//! [`crate::drift::Reference`] with calibrated detectors and stores it as a new baseline version,
//! made active (`sensei baseline`, and a promotion or rollback of the student).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::compare::{Comparer, attention_kl, input_features};
use crate::config::Config;
use crate::format::{self, FormatOptions};
use crate::model::load_models;
use crate::monitor::lab::LabRun;
use crate::record::{FileContent, Record};

/// Files named directly, plus the data files of named directories.
fn data_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        !crate::format::is_ignored_name(&n)
                            && matches!(
                                format::file_kind(&n),
                                Some(
                                    format::FileKind::JsonLines
                                        | format::FileKind::Npy
                                        | format::FileKind::Npz
                                )
                            )
                    })
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        bail!("no lab data files given (JSON Lines, .npy or .npz)");
    }
    Ok(out)
}

/// Runs student and teacher over every lab record. Any invalid file is an error: a baseline
/// measured on part of the data would be silently wrong.
pub fn run_lab(config: &Config, paths: &[PathBuf]) -> anyhow::Result<LabRun> {
    let mut models = load_models(config).map_err(|p| anyhow::anyhow!("{}", p.join("\n")))?;
    let comparer = Comparer {
        task: config.compare.task,
        output_kind: config.compare.output_kind,
        pooling: config.compare.pooling,
    };
    let options = FormatOptions {
        non_finite: config.compare.non_finite,
        max_uncompressed_bytes: config.inbox.max_file_bytes.saturating_mul(4),
    };
    let files = data_files(paths)?;
    let mut records: Vec<Record> = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match format::read_file(&name, &bytes, &models.student.inputs, &options)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        {
            FileContent::Records(r) => records.extend(r),
            FileContent::Labels(_) => bail!("{}: a labels file is not lab data", file.display()),
        }
    }
    let ts: Vec<f64> = records
        .iter()
        .filter_map(|r| r.ts)
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
        .collect();
    let ts_range = (!ts.is_empty()).then(|| {
        (
            ts.iter().copied().fold(f64::INFINITY, f64::min),
            ts.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    });
    let mut run = LabRun {
        sources: files,
        ts_range,
        student_sha: models.student.sha256[..12].to_string(),
        teacher_sha: models.teacher.sha256()[..12].to_string(),
        ..LabRun::default()
    };
    let (mut student_time, mut teacher_time) = (0.0, 0.0);
    let batch = config.student.max_batch.max(1);
    for chunk in records.chunks(batch) {
        // Equal shapes per call: split the chunk where a shape changes.
        let mut start = 0;
        while start < chunk.len() {
            let shape = |r: &Record| {
                r.inputs
                    .values()
                    .map(|t| t.shape.clone())
                    .collect::<Vec<_>>()
            };
            let first = shape(&chunk[start]);
            let end = start
                + chunk[start..]
                    .iter()
                    .take_while(|r| shape(r) == first)
                    .count();
            let group: Vec<&Record> = chunk[start..end].iter().collect();
            let t0 = Instant::now();
            let s = models.student.run(&group)?;
            student_time += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let t = models.teacher.run(&group)?;
            teacher_time += t1.elapsed().as_secs_f64();
            for (i, record) in group.iter().enumerate() {
                let so = s.output_of(i);
                let to = t.output_of(i);
                let ss = comparer.stats(so);
                let ts = comparer.stats(to);
                let c = comparer.compare(to, so, &s.output_shape, None);
                run.classes = run.classes.max(so.len());
                run.confidence.push(ss.confidence.unwrap_or(0.0));
                run.entropy.push(ss.entropy.unwrap_or(0.0));
                run.prediction.push(ss.prediction.unwrap_or(0));
                run.teacher_prediction.push(ts.prediction.unwrap_or(0));
                run.teacher_confidence.push(ts.confidence.unwrap_or(0.0));
                run.disagreement.push(c.disagreement.unwrap_or(false));
                run.kl.push(c.kl.unwrap_or(0.0));
                if let (Some((sa_shape, _)), Some((ta_shape, _))) = (&s.attention, &t.attention)
                    && let (Some(sa), Some(ta)) = (s.attention_of(i), t.attention_of(i))
                    && let Some(a) = attention_kl(ta, ta_shape, sa, sa_shape)
                {
                    run.attention_kl.push(a);
                }
                run.features.push(input_features(record));
                run.labels.push(record.label);
            }
            start = end;
        }
    }
    let n = records.len().max(1) as f64;
    run.student_latency_us = student_time * 1e6 / n;
    run.teacher_latency_us = teacher_time * 1e6 / n;
    Ok(run)
}

/// Where a baseline's lab data came from, as stored.
pub fn sources_json(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
}

/// What `sensei baseline` stored.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub version: i64,
    pub records: u64,
    pub sources: Vec<PathBuf>,
    pub reference: crate::drift::Reference,
}

/// Runs the lab stage and stores the result as the new active baseline.
pub fn measure(config: &Config, paths: &[PathBuf]) -> anyhow::Result<BaselineReport> {
    let run = run_lab(config, paths)?;
    let reference = crate::drift::build_reference(&run, config)
        .map_err(|e| anyhow::anyhow!("baseline refused: {e}"))?;
    if let Some(parent) = config.store.path.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    let mut store = crate::store::Store::open(&config.store.path)?;
    let version = store.insert_baseline(
        &run.student_sha,
        &run.teacher_sha,
        run.records() as i64,
        &sources_json(&run.sources),
        &serde_json::to_string(&reference)?,
        crate::time::now_ms(),
    )?;
    Ok(BaselineReport {
        version,
        records: run.records() as u64,
        sources: run.sources,
        reference,
    })
}

impl BaselineReport {
    pub fn text(&self) -> String {
        let r = &self.reference;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "baseline version {} (active), {} lab records",
            self.version, self.records
        );
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
        let _ = writeln!(
            s,
            "accuracy: student {}, teacher {}; top-1 agreement {:.1}%",
            pct(r.student_accuracy),
            pct(r.teacher_accuracy),
            100.0 * r.agreement
        );
        let _ = writeln!(
            s,
            "latency per record: student {:.1} µs, teacher {:.1} µs",
            r.student_latency_us, r.teacher_latency_us
        );
        let _ = writeln!(
            s,
            "thresholds simulated up to ARL0 = {} samples between false alarms (shown: h at that ARL0); the running detectors are armed from each threshold curve at the ARL0 the false-alarm budget gives them (`sensei status`):",
            r.arl0
        );
        let rate = |name: &str, x: &Option<crate::drift::RateReference>, s: &mut String| {
            if let Some(x) = x {
                let _ = writeln!(
                    s,
                    "  {name:<14} Bernoulli CUSUM  p0 {:.4} → p1 {:.4}  h {:.3}  (simulated ARL0 {:.0})",
                    x.p0, x.p1, x.threshold, x.simulated_arl0
                );
            }
        };
        let value = |name: &str, x: &Option<crate::drift::ValueReference>, s: &mut String| {
            if let Some(x) = x {
                let _ = writeln!(
                    s,
                    "  {name:<14} CUSUM  mean {:.4} sd {:.4} k {:.4} clip {}  h {:.3}  (simulated ARL0 {:.0})",
                    x.mean,
                    x.sd,
                    x.k,
                    x.clip.map_or("none".to_string(), |c| format!("{c:.4}")),
                    x.threshold,
                    x.simulated_arl0
                );
            }
        };
        rate("disagreement", &r.disagreement, &mut s);
        value("kl", &r.kl, &mut s);
        value("attention_kl", &r.attention_kl, &mut s);
        value("1-confidence", &r.uncertainty, &mut s);
        rate("student_error", &r.student_error, &mut s);
        rate("teacher_error", &r.teacher_error, &mut s);
        let _ = writeln!(
            s,
            "windowed tests: KS on confidence, chi-square on {} classes, PSI on {} input features",
            r.class_counts.len(),
            r.features.iter().filter(|f| f.is_some()).count()
        );
        for w in &r.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}
