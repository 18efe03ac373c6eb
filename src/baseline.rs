//! The lab stage: `sensei baseline DATA…` runs both models on every record of the lab reference
//! set and measures what the field will be compared with — agreement, divergences, confidence,
//! class mix, input summaries, latency and accuracy. The measurements become a
//! [`crate::drift::Reference`], stored as a new baseline version and made active.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::compare::{Comparer, attention_kl, input_features};
use crate::config::Config;
use crate::ingest::format::{self, FormatOptions};
use crate::model::load_models;
use crate::record::{FileContent, Record};

/// Per-record measurements on the lab set (teacher run on every record).
#[derive(Debug, Default, Clone)]
pub struct LabRun {
    pub sources: Vec<PathBuf>,
    pub student_sha: String,
    pub teacher_sha: String,
    pub confidence: Vec<f64>,
    pub entropy: Vec<f64>,
    pub prediction: Vec<i64>,
    pub teacher_prediction: Vec<i64>,
    pub teacher_confidence: Vec<f64>,
    pub disagreement: Vec<bool>,
    pub kl: Vec<f64>,
    pub attention_kl: Vec<f64>,
    pub features: Vec<Vec<f64>>,
    pub labels: Vec<Option<i64>>,
    pub classes: usize,
    pub student_latency_us: f64,
    pub teacher_latency_us: f64,
}

impl LabRun {
    pub fn records(&self) -> usize {
        self.prediction.len()
    }
}

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
                        !crate::ingest::is_ignored_name(&n)
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
    let mut run = LabRun {
        sources: files,
        student_sha: models.student.sha256[..12].to_string(),
        teacher_sha: models.teacher.sha256[..12].to_string(),
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
