//! Shadow models: challengers (`[[challengers]]`) and the latest re-distillation candidate that
//! waits for a decision, run beside the teacher on the records it samples — never on the
//! student's path — and compared with the teacher as the student is.
//!
//! The teacher worker hands each of its batches to [`ShadowSet::run`] after the teacher has
//! answered; the answers travel with the teacher's rows to the writer, which commits them with
//! the record (`shadow_samples`, `shadow_totals`), so a record counts once per model even across
//! a crash. A shadow model that cannot be loaded or fails to run is logged, recorded in
//! `shadow_models` and skipped: it never holds up the teacher or the student.
//!
//! The rest is pure and has its own files: [`verdict`](mod@verdict) (the statistics of the sums,
//! the standings and the verdict) and [`parameters`] (a model's parameter count). In short:
//! [`Totals`](crate::store::Totals) are the running sums of one model version, [`Standing`]
//! what `sensei report` shows of each model, and [`verdict()`] picks the smallest model whose
//! agreement with the teacher is, at 95% confidence, at least `[shadow] agreement_floor`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::compare::{Comparer, Comparison, attention_kl};
use crate::config::Config;
use crate::model::{BatchOutput, Interface, Model, Runtime};
use crate::record::{Record, TensorData};
use crate::store::{ShadowKind, ShadowMeasure, ShadowModelRow, ShadowRow};

pub mod parameters;
pub mod verdict;

pub use parameters::parameter_count;
pub use verdict::{Choice, Standing, Verdict, verdict};

pub use crate::config::{CANDIDATE_PREFIX, STUDENT};
/// Confidence of the agreement intervals and of the verdict.
pub const CONFIDENCE: f64 = 0.95;

// ---------------------------------------------------------------------------------------------
// Running the shadow models

/// One loaded shadow model.
struct Shadow {
    name: String,
    /// First 12 hex digits of the file's sha256.
    sha256: String,
    kind: ShadowKind,
    model: Model,
    /// Set after its first inference error: it is skipped from then on.
    failed: bool,
}

/// The shadow models of one pipeline, owned by the teacher worker.
pub struct ShadowSet {
    models: Vec<Shadow>,
    comparer: Comparer,
    /// Embedding pooling mask input (`[compare] mask_input`).
    mask_input: Option<String>,
}

impl ShadowSet {
    /// No shadow models.
    pub fn empty(comparer: Comparer) -> ShadowSet {
        ShadowSet {
            models: Vec::new(),
            comparer,
            mask_input: None,
        }
    }

    /// Loads every challenger and, when given, the candidate `(job id, path)`. A model that
    /// cannot be loaded, or cannot be compared with the teacher, is logged and left out; every
    /// model tried is in the returned rows (for `shadow_models`), with the reason of a failure.
    /// A candidate identical to the serving student (`student_sha256`) is not run.
    pub fn load(
        config: &Config,
        runtime: &Runtime,
        teacher: &dyn Interface,
        student_sha256: &str,
        candidate: Option<(i64, PathBuf)>,
    ) -> (ShadowSet, Vec<ShadowModelRow>) {
        let comparer = Comparer {
            task: config.compare.task,
            output_kind: config.compare.output_kind,
            pooling: config.compare.pooling,
        };
        let mut set = ShadowSet {
            models: Vec::new(),
            comparer,
            mask_input: config.compare.mask_input.clone(),
        };
        let mut rows = Vec::new();
        let mut wanted: Vec<(String, ShadowKind, crate::config::ModelConfig, Option<i64>)> = config
            .challengers
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    ShadowKind::Challenger,
                    c.model_config(&config.teacher),
                    None,
                )
            })
            .collect();
        if let Some((job, path)) = candidate {
            let mut model = config.student.clone();
            model.path = path;
            wanted.push((
                format!("{CANDIDATE_PREFIX}{job}"),
                ShadowKind::Candidate,
                model,
                Some(job),
            ));
        }
        for (name, kind, model_config, job_id) in wanted {
            let file = ModelFile::read(&model_config.path);
            let role = format!("{} '{name}'", kind.as_str());
            let loaded = match &file {
                Err(e) => Err(e.clone()),
                Ok(f) if kind == ShadowKind::Candidate && student_sha256.starts_with(&f.sha256) => {
                    tracing::info!(shadow = %name, "The candidate is the serving student; it does not run in shadow.");
                    continue;
                }
                Ok(_) => Model::load(runtime, &role, &model_config)
                    .map_err(|e| e.to_string())
                    .and_then(|m| {
                        let problems = crate::model::model_problems(config, &role, &m, teacher);
                        if problems.is_empty() {
                            Ok(m)
                        } else {
                            Err(format!(
                                "{role} cannot be compared with the teacher: {}",
                                problems.join("; ")
                            ))
                        }
                    }),
            };
            let file = file.ok();
            let failure = match loaded {
                Ok(model) => {
                    tracing::info!(
                        shadow = %name,
                        kind = kind.as_str(),
                        path = %model_config.path.display(),
                        sha256 = %&model.sha256[..12],
                        bytes = model.size_bytes,
                        "Shadow model loaded; it runs on the teacher-sampled records."
                    );
                    set.models.push(Shadow {
                        name: name.clone(),
                        sha256: model.sha256[..12].to_string(),
                        kind,
                        model,
                        failed: false,
                    });
                    None
                }
                Err(reason) => {
                    tracing::warn!(
                        shadow = %name,
                        error = %reason,
                        "Shadow model skipped: it could not be loaded. The student and the teacher are unaffected."
                    );
                    Some(reason)
                }
            };
            rows.push(ShadowModelRow {
                name,
                kind,
                path: model_config.path.display().to_string(),
                sha256: file.as_ref().map(|f| f.sha256.clone()),
                size_bytes: file.as_ref().map(|f| f.size_bytes),
                parameters: file.as_ref().and_then(|f| f.parameters),
                failure,
                job_id,
            });
        }
        (set, rows)
    }

    /// Whether any shadow model runs.
    pub fn is_empty(&self) -> bool {
        self.models.iter().all(|m| m.failed)
    }

    /// Runs every working shadow model on the teacher's batch (`records`, equal input shapes)
    /// and compares each answer with the teacher's (`teacher`). Returns one list per record.
    /// A model that fails is reported once (an `Err` on each record of this batch, which marks it
    /// failed in the database) and skipped from then on.
    pub fn run(&mut self, records: &[&Record], teacher: &BatchOutput) -> Vec<Vec<ShadowRow>> {
        let mut rows: Vec<Vec<ShadowRow>> = (0..records.len()).map(|_| Vec::new()).collect();
        if self.is_empty() || records.len() != teacher.batch {
            return rows;
        }
        let masks: Vec<Option<&[i64]>> = records
            .iter()
            .map(|r| {
                let name = self.mask_input.as_ref()?;
                match &r.inputs.get(name)?.data {
                    TensorData::I64(v) => Some(v.as_slice()),
                    TensorData::F32(_) => None,
                }
            })
            .collect();
        for shadow in self.models.iter_mut().filter(|m| !m.failed) {
            let result = shadow.model.run(records);
            let row = |result| ShadowRow {
                model: shadow.name.clone(),
                sha256: shadow.sha256.clone(),
                kind: shadow.kind,
                result,
            };
            match result {
                Ok(out) if out.batch == records.len() => {
                    // Measured as the teacher's is, so the two compare on the same batches.
                    let per_record_us = out.elapsed.as_micros() as i64 / out.batch.max(1) as i64;
                    for (i, slot) in rows.iter_mut().enumerate() {
                        let comparison = compare_one(&self.comparer, teacher, &out, i, masks[i]);
                        slot.push(row(Ok(ShadowMeasure {
                            comparison,
                            latency_us: per_record_us,
                        })));
                    }
                }
                other => {
                    let reason = match other {
                        Err(e) => e.to_string(),
                        Ok(out) => format!(
                            "{} model answered {} records of a batch of {}",
                            shadow.kind.as_str(),
                            out.batch,
                            records.len()
                        ),
                    };
                    tracing::error!(
                        shadow = %shadow.name,
                        error = %reason,
                        "Shadow model failed; it is skipped from now on. The student and the teacher are unaffected."
                    );
                    shadow.failed = true;
                    for slot in rows.iter_mut() {
                        slot.push(row(Err(reason.clone())));
                    }
                }
            }
        }
        rows
    }
}

/// Compares record `i` of a shadow model's batch with the teacher's.
fn compare_one(
    comparer: &Comparer,
    teacher: &BatchOutput,
    shadow: &BatchOutput,
    i: usize,
    mask: Option<&[i64]>,
) -> Comparison {
    let mut c = comparer.compare(
        teacher.output_of(i),
        shadow.output_of(i),
        &teacher.output_shape,
        mask,
    );
    if let (Some((ts, _)), Some((ss, _))) = (&teacher.attention, &shadow.attention)
        && let (Some(td), Some(sd)) = (teacher.attention_of(i), shadow.attention_of(i))
    {
        c.attention_kl = attention_kl(td, ts, sd, ss);
    }
    c
}

/// What sensei reads of a model file before loading it.
#[derive(Debug, Clone)]
struct ModelFile {
    sha256: String,
    size_bytes: u64,
    parameters: Option<u64>,
}

impl ModelFile {
    fn read(path: &Path) -> Result<ModelFile, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(ModelFile {
            sha256: crate::model::hex(&Sha256::digest(&bytes))[..12].to_string(),
            size_bytes: bytes.len() as u64,
            parameters: parameter_count(&bytes),
        })
    }
}
