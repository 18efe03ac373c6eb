//! `sensei export`: the re-distillation dataset (docs/dataset-format.md) from the teacher
//! samples in the database.
//!
//! Rows are the teacher samples answered by the configured teacher (the teacher logits must come
//! from the model named in the manifest), in `seq` order. Student outputs are included only when
//! every row was answered by the configured student: after a promotion, older rows carry another
//! student's outputs, which would mislabel the `student.logits` tensor. A job also holds out a
//! share of the rows, chosen by a hash of the record id, as a second dataset of the same format
//! that the job never sees (the gate's evidence).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::safetensors::{self, Data, Tensor};
use crate::config::{Config, OutputKind, Task};
use crate::store::{ExportSample, Reader};

/// What to export, and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The dataset directory (created; must not already hold a dataset).
    pub out: PathBuf,
    /// Only records with `ts` at or after this (unix ms).
    pub since_ms: Option<i64>,
    /// Only records of segments with this `key=value`.
    pub segment: Option<String>,
    /// Written to `trigger.reason`.
    pub reason: String,
    /// Share of the records held out, and the directory of the held-out dataset.
    pub holdout: Option<(f64, PathBuf)>,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub count: usize,
    /// Records in the held-out dataset (0 when none was asked for).
    pub holdout: usize,
    pub from: String,
    pub to: String,
    /// Whether `student.logits` is included.
    pub student_logits: bool,
    pub attention: bool,
}

/// A model file and its sha256.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub path: PathBuf,
    pub sha256: String,
}

impl ModelFile {
    pub fn read(path: &Path) -> anyhow::Result<ModelFile> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            sha256: crate::model::hex(&Sha256::digest(&bytes)),
        })
    }

    /// The teacher's file, or the address of the teacher on an inference server.
    pub fn teacher(config: &Config) -> anyhow::Result<ModelFile> {
        match &config.teacher.remote {
            Some(remote) => Ok(ModelFile {
                path: PathBuf::from(remote.model_url()),
                sha256: crate::model::remote_sha256(remote),
            }),
            None => ModelFile::read(&config.teacher.path),
        }
    }

    /// The prefix the database records models by.
    pub fn prefix(&self) -> &str {
        &self.sha256[..12]
    }
}

/// Writes the dataset (and the held-out one, if asked) from the database of `config`.
pub fn export(config: &Config, options: &ExportOptions) -> anyhow::Result<ExportSummary> {
    let teacher = ModelFile::teacher(config)?;
    let student = ModelFile::read(&config.student.path)?;
    if !config.store.path.exists() {
        bail!("no database at {}", config.store.path.display());
    }
    let reader = Reader::open(&config.store.path)?;
    let mut samples = reader.export_samples(teacher.prefix(), options.since_ms)?;
    if let Some(filter) = &options.segment {
        samples.retain(|s| s.segment.split(',').any(|kv| kv == filter));
    }
    if samples.is_empty() {
        bail!(
            "no teacher samples of teacher {} match{}{}",
            teacher.prefix(),
            options
                .since_ms
                .map(|t| format!(" since {}", crate::time::rfc3339(t)))
                .unwrap_or_default(),
            options
                .segment
                .as_ref()
                .map(|s| format!(" in segment {s}"))
                .unwrap_or_default()
        );
    }
    let (train, held): (Vec<ExportSample>, Vec<ExportSample>) = match &options.holdout {
        Some((share, _)) => samples
            .into_iter()
            .partition(|s| !held_out(&s.record_id, *share)),
        None => (samples, Vec::new()),
    };
    if train.is_empty() {
        bail!("every matching record fell in the held-out share; nothing left to train on");
    }
    let probabilities = config.compare.task == Task::Classification
        && config.compare.output_kind == OutputKind::Probabilities;
    let models = Models {
        teacher: &teacher,
        student: &student,
    };
    let summary = write_dataset(&options.out, &train, &models, options, probabilities)?;
    let mut holdout = 0;
    if let Some((_, dir)) = &options.holdout
        && !held.is_empty()
    {
        write_dataset(dir, &held, &models, options, probabilities)?;
        holdout = held.len();
    }
    Ok(ExportSummary { holdout, ..summary })
}

struct Models<'a> {
    teacher: &'a ModelFile,
    student: &'a ModelFile,
}

/// Whether a record belongs to the held-out share: a hash of its id, so the split is the same
/// on every export and independent of arrival order.
pub fn held_out(record_id: &str, share: f64) -> bool {
    let digest = Sha256::digest(record_id.as_bytes());
    let x = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    (x as f64 / u64::MAX as f64) < share
}

fn f32s(blob: &[u8]) -> impl Iterator<Item = f32> + '_ {
    blob.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn shape(text: &str, what: &str, record: &str) -> anyhow::Result<Vec<usize>> {
    serde_json::from_str(text).with_context(|| format!("record {record}: {what} shape {text}"))
}

/// Stacks rows of one per-record shape into `[N, …]`, naming the first record that differs.
struct Stack {
    name: String,
    shape: Option<Vec<usize>>,
    data: Data,
}

impl Stack {
    fn new(name: &str, int: bool) -> Stack {
        Stack {
            name: name.to_string(),
            shape: None,
            data: if int {
                Data::I64(Vec::new())
            } else {
                Data::F32(Vec::new())
            },
        }
    }

    fn check(&mut self, shape: Vec<usize>, record: &str, values: usize) -> anyhow::Result<()> {
        if shape.iter().product::<usize>() != values {
            bail!(
                "record {record}: {} holds {values} values, not shape {shape:?}",
                self.name
            );
        }
        match &self.shape {
            None => self.shape = Some(shape),
            Some(s) if *s == shape => {}
            Some(s) => bail!(
                "record {record}: {} has shape {shape:?}, earlier records {s:?}; export records of one shape (--since, --segment)",
                self.name
            ),
        }
        Ok(())
    }

    fn push_f32(
        &mut self,
        shape: Vec<usize>,
        record: &str,
        values: Vec<f32>,
    ) -> anyhow::Result<()> {
        self.check(shape, record, values.len())?;
        match &mut self.data {
            Data::F32(v) => v.extend(values),
            Data::I64(_) => bail!("record {record}: {} mixes dtypes", self.name),
        }
        Ok(())
    }

    fn push_i64(&mut self, shape: Vec<usize>, record: &str, blob: &[u8]) -> anyhow::Result<()> {
        let values: Vec<i64> = blob
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        self.check(shape, record, values.len())?;
        match &mut self.data {
            Data::I64(v) => v.extend(values),
            Data::F32(_) => bail!("record {record}: {} mixes dtypes", self.name),
        }
        Ok(())
    }

    fn finish(self, rows: usize) -> Tensor {
        let mut shape = vec![rows];
        shape.extend(self.shape.unwrap_or_default());
        Tensor {
            shape,
            data: self.data,
        }
    }
}

/// Output values as logits: probabilities become log-probabilities (softmax gives them back).
fn as_logits(values: Vec<f32>, probabilities: bool) -> Vec<f32> {
    if probabilities {
        values.into_iter().map(|p| p.max(1e-30).ln()).collect()
    } else {
        values
    }
}

fn write_dataset(
    dir: &Path,
    rows: &[ExportSample],
    models: &Models<'_>,
    options: &ExportOptions,
    probabilities: bool,
) -> anyhow::Result<ExportSummary> {
    for name in ["manifest.json", "data.safetensors"] {
        if dir.join(name).exists() {
            bail!(
                "{} already holds a dataset ({name}); choose another directory",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let input_names: Vec<String> = rows[0].inputs.iter().map(|i| i.name.clone()).collect();
    let mut inputs: Vec<Stack> = rows[0]
        .inputs
        .iter()
        .map(|i| Stack::new(&format!("inputs.{}", i.name), i.dtype == "int64"))
        .collect();
    let mut teacher = Stack::new("teacher.logits", false);
    let mut student = Stack::new("student.logits", false);
    let student_logits = rows.iter().all(|r| r.student == models.student.prefix());
    let attention = rows.iter().all(|r| r.teacher_attention.is_some());
    let mut att = Stack::new("teacher.attention", false);
    let mut weight = Vec::with_capacity(rows.len());
    let mut label = Vec::with_capacity(rows.len());
    for r in rows {
        let id = &r.record_id;
        let names: Vec<&str> = r.inputs.iter().map(|i| i.name.as_str()).collect();
        if names != input_names {
            bail!("record {id}: inputs {names:?}, earlier records {input_names:?}");
        }
        for (stack, input) in inputs.iter_mut().zip(&r.inputs) {
            let s = shape(&input.shape, &stack.name, id)?;
            match input.dtype.as_str() {
                "int64" => stack.push_i64(s, id, &input.data)?,
                "float32" => stack.push_f32(s, id, f32s(&input.data).collect())?,
                other => bail!("record {id}: input {} has dtype {other}", input.name),
            }
        }
        let out_shape = shape(&r.output_shape, "output", id)?;
        teacher.push_f32(
            out_shape.clone(),
            id,
            as_logits(f32s(&r.teacher_output).collect(), probabilities),
        )?;
        if student_logits {
            student.push_f32(
                out_shape,
                id,
                as_logits(f32s(&r.student_output).collect(), probabilities),
            )?;
        }
        if attention && let (Some(s), Some(blob)) = (&r.attention_shape, &r.teacher_attention) {
            att.push_f32(shape(s, "attention", id)?, id, f32s(blob).collect())?;
        }
        weight.push(r.weight as f32);
        label.push(r.label.unwrap_or(-1));
    }
    let n = rows.len();
    let mut tensors = BTreeMap::new();
    for stack in inputs {
        tensors.insert(stack.name.clone(), stack.finish(n));
    }
    tensors.insert("teacher.logits".into(), teacher.finish(n));
    if student_logits {
        tensors.insert("student.logits".into(), student.finish(n));
    }
    if attention {
        tensors.insert("teacher.attention".into(), att.finish(n));
    }
    tensors.insert(
        "weight".into(),
        Tensor {
            shape: vec![n],
            data: Data::F32(weight),
        },
    );
    tensors.insert(
        "label".into(),
        Tensor {
            shape: vec![n],
            data: Data::I64(label),
        },
    );
    for (name, t) in &tensors {
        if let Data::F32(v) = &t.data
            && let Some(i) = v.iter().position(|x| !x.is_finite())
        {
            let row = i / (v.len() / n).max(1);
            bail!(
                "record {}: {name} holds a non-finite value",
                rows[row.min(n - 1)].record_id
            );
        }
    }
    safetensors::write(&dir.join("data.safetensors"), &tensors)?;

    let from = rows.iter().map(|r| r.ts_ms).min().unwrap_or_default();
    let to = rows.iter().map(|r| r.ts_ms).max().unwrap_or_default();
    let created = crate::time::rfc3339(crate::time::now_ms());
    let manifest = serde_json::json!({
        "schema_version": 1,
        "created": created,
        "inputs": input_names,
        "models": {
            "teacher": {"path": models.teacher.path, "sha256": models.teacher.sha256},
            "student": {"path": models.student.path, "sha256": models.student.sha256},
        },
        "record_ids": rows.iter().map(|r| r.record_id.as_str()).collect::<Vec<_>>(),
        "time_range": {
            "from": crate::time::rfc3339(from),
            "to": crate::time::rfc3339(to),
        },
        "trigger": {"reason": options.reason},
        "count": n,
        "filters": {
            "since": options.since_ms.map(crate::time::rfc3339),
            "segment": options.segment,
        },
        "teacher_sample_seqs": rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
    });
    let path = dir.join("manifest.json");
    let tmp = dir.join("manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(ExportSummary {
        out: dir.to_path_buf(),
        count: n,
        holdout: 0,
        from: crate::time::rfc3339(from),
        to: crate::time::rfc3339(to),
        student_logits,
        attention,
    })
}

/// The options of `sensei export` from its arguments.
pub fn options(
    out: PathBuf,
    since: Option<String>,
    segment: Option<String>,
    reason: String,
) -> anyhow::Result<ExportOptions> {
    let since_ms = match since {
        Some(text) => Some(crate::time::parse(&text).ok_or_else(|| {
            anyhow!("--since takes an RFC 3339 time such as 2026-03-03T06:00:00Z, got {text:?}")
        })?),
        None => None,
    };
    Ok(ExportOptions {
        out,
        since_ms,
        segment: segment.as_deref().map(parse_segment).transpose()?,
        reason,
        holdout: None,
    })
}

impl ExportSummary {
    /// One line for people.
    pub fn text(&self) -> String {
        let mut extras = Vec::new();
        if self.attention {
            extras.push("teacher attention");
        }
        if self.student_logits {
            extras.push("student logits");
        }
        format!(
            "wrote {}: {} records from {} to {}{}",
            self.out.display(),
            self.count,
            self.from,
            self.to,
            if extras.is_empty() {
                String::new()
            } else {
                format!(", with {}", extras.join(" and "))
            }
        )
    }
}

/// Parses `--segment K=V` into the segment's stored form. The value may be typed as the
/// producer sent it (`line=a=b`, escaped here as it was at ingest: `line=a%3Db`) or as `status`
/// shows it (`line=a%3Db`, taken as it is): a value whose every `%` starts an escape (`%XX`, or
/// the cut mark `%~`) and that holds nothing else ingest escapes is already in stored form.
pub fn parse_segment(text: &str) -> anyhow::Result<String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() && !text.contains(',') => {
            if stored_form(v) {
                Ok(text.to_string())
            } else {
                // Escaped only: a value typed on the command line is not cut.
                let value = crate::record::segment_value(v, 1 << 20);
                Ok(format!("{k}={}", value.text))
            }
        }
        _ => bail!("--segment takes KEY=VALUE (for example line=B), got {text:?}"),
    }
}

/// Whether a typed segment value is already escaped as sensei stores it.
fn stored_form(value: &str) -> bool {
    let bytes = value.as_bytes();
    let escape_at = |i: usize| {
        bytes.get(i + 1) == Some(&b'~')
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    };
    value.char_indices().all(|(i, c)| {
        if c == '%' {
            escape_at(i)
        } else {
            !crate::record::escaped_in_segment(c)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_out_share_is_stable_and_about_its_size() {
        let ids: Vec<String> = (0..2000).map(|i| format!("rec-{i}")).collect();
        let held = ids.iter().filter(|id| held_out(id, 0.2)).count();
        assert!((330..470).contains(&held), "{held}");
        assert!(ids.iter().all(|id| held_out(id, 0.2) == held_out(id, 0.2)));
        assert!(!ids.iter().any(|id| held_out(id, 0.0)));
    }

    #[test]
    fn segment_filters_need_key_and_value() {
        assert_eq!(parse_segment("line=B").unwrap(), "line=B");
        assert!(parse_segment("line").is_err());
        assert!(parse_segment("=B").is_err());
        assert!(parse_segment("line=B,shift=2").is_err());
        // A value typed as the producer sent it is escaped as ingest stores it; one typed as
        // `status` shows it is taken as it is.
        assert_eq!(parse_segment("line=a=b").unwrap(), "line=a%3Db");
        assert_eq!(parse_segment("line=a%3Db").unwrap(), "line=a%3Db");
        assert_eq!(parse_segment("load=50%").unwrap(), "load=50%25");
        assert_eq!(parse_segment("tag=x\ty").unwrap(), "tag=x%09y");
    }
}
