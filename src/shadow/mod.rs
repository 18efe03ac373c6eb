//! Shadow models: challengers (`[[challengers]]`) and the latest re-distillation candidate that
//! waits for a decision, run beside the teacher on the records it samples — never on the
//! student's path — and compared with the teacher as the student is.
//!
//! A shadow model from a local file ([`ShadowSet`]) runs on the teacher's thread: the teacher
//! worker hands each of its batches to [`ShadowSet::run`] after the teacher has answered. A
//! challenger on an inference server ([`RemoteShadows`]) runs on a thread of its own after the
//! teacher (`crate::pipeline::shadow`), so a server that is slow or gone delays neither the
//! teacher nor the student; a record it cannot answer is skipped for it and counted
//! (`shadow_skips`), never measured. The answers travel with the teacher's rows to the writer,
//! which commits them with the record (`shadow_samples`, `shadow_totals`, `shadow_skips`), so
//! a record counts once per model even across a crash. A shadow model that cannot be loaded or
//! fails to run is logged, recorded in `shadow_models` and skipped: it never holds up the
//! teacher or the student.
//!
//! The rest is pure and has its own files: [`verdict`](mod@verdict) (the statistics of the sums,
//! the standings and the verdict) and [`parameters`] (a model's parameter count). In short:
//! [`Totals`](crate::store::Totals) are the running sums of one model version, [`Standing`]
//! what `sensei report` shows of each model, and [`verdict()`] picks the smallest model whose
//! agreement with the teacher is, at 95% confidence, at least `[shadow] agreement_floor`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::compare::{Comparer, Comparison, attention_kl};
use crate::config::Config;
use crate::model::{BatchOutput, Interface, Model, ModelError, RemoteModel, Runtime};
use crate::record::{Record, TensorData};
use crate::store::{
    ShadowKind, ShadowMeasure, ShadowModelRow, ShadowResult, ShadowRow, ShadowSkip, TeacherRow,
};

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

    /// Loads every challenger and, when given, the candidate `(job id, path)`: the models run
    /// here, and the challengers on inference servers (their metadata read and checked). A
    /// model that cannot be loaded, or cannot be compared with the teacher, is logged and left
    /// out; every model tried is in the returned rows (for `shadow_models`), with the reason of
    /// a failure. A candidate identical to the serving student (`student_sha256`) is not run.
    pub fn load(
        config: &Config,
        runtime: &Runtime,
        teacher: &dyn Interface,
        student_sha256: &str,
        candidate: Option<(i64, PathBuf)>,
    ) -> (ShadowSet, RemoteShadows, Vec<ShadowModelRow>) {
        let comparer = Comparer {
            task: config.compare.task,
            output_kind: config.compare.output_kind,
            pooling: config.compare.pooling,
        };
        let mut set = ShadowSet {
            models: Vec::new(),
            comparer: comparer.clone(),
            mask_input: config.compare.mask_input.clone(),
        };
        let mut remote = RemoteShadows {
            models: Vec::new(),
            comparer,
            mask_input: config.compare.mask_input.clone(),
            judge: None,
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
            if model_config.remote.is_some() {
                rows.push(remote.connect(config, &name, &model_config, teacher));
                continue;
            }
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
                    .and_then(|m| crate::model::comparable(config, &role, &m, teacher).map(|()| m)),
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
        (set, remote, rows)
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
                        let comparison = compare_one(
                            &self.comparer,
                            teacher.output_of(i),
                            &teacher.output_shape,
                            teacher_attention(teacher, i),
                            &out,
                            i,
                            masks[i],
                        );
                        slot.push(row(ShadowResult::Answered(ShadowMeasure {
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
                        slot.push(row(ShadowResult::Failed(reason.clone())));
                    }
                }
            }
        }
        rows
    }
}

/// The teacher's attention of record `i` of its batch: (per-record shape, data).
fn teacher_attention(teacher: &BatchOutput, i: usize) -> Option<(&[usize], &[f32])> {
    let (shape, _) = teacher.attention.as_ref()?;
    Some((shape.as_slice(), teacher.attention_of(i)?))
}

/// Compares record `i` of a shadow model's batch with the teacher's answer on that record
/// (`teacher`, shaped `teacher_shape`, with its attention when it has one).
fn compare_one(
    comparer: &Comparer,
    teacher: &[f32],
    teacher_shape: &[usize],
    teacher_attention: Option<(&[usize], &[f32])>,
    shadow: &BatchOutput,
    i: usize,
    mask: Option<&[i64]>,
) -> Comparison {
    let mut c = comparer.compare(teacher, shadow.output_of(i), teacher_shape, mask);
    if let (Some((ts, td)), Some((ss, _))) = (teacher_attention, &shadow.attention)
        && let Some(sd) = shadow.attention_of(i)
    {
        c.attention_kl = attention_kl(td, ts, sd, ss);
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Challengers on inference servers

/// One challenger on an inference server.
struct RemoteShadow {
    name: String,
    /// First 12 hex digits of the sha256 of its address (`crate::model::remote_sha256`).
    sha256: String,
    state: Connection,
    /// Why it failed after a late connection, until the next records carry it to the
    /// database (`shadow_models.status = 'failed'`).
    failure: Option<String>,
    /// Whether the last batch ended in an error the server answered: the next one in a row
    /// is not logged again.
    erring: bool,
}

/// Where a challenger on a server stands.
// One per challenger: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Connection {
    Ready(RemoteModel),
    /// Its server did not answer when the pipeline started (down, or still starting): its
    /// metadata is read again at `next_try`, every `breaker_open`, and its samples are skipped
    /// as out of reach until then.
    Waiting {
        config: crate::config::ModelConfig,
        next_try: Instant,
    },
    /// Its server answered, but the model cannot be used (none by that name, not comparable
    /// with the teacher): reported once, then left out.
    Failed,
}

/// What a challenger on a server is checked against when it connects late: the config and the
/// teacher's inputs and outputs.
struct Judge {
    config: Config,
    inputs: Vec<crate::record::InputSpec>,
    output: crate::model::OutputSpec,
    attention: Option<crate::model::OutputSpec>,
}

impl Interface for Judge {
    fn inputs(&self) -> &[crate::record::InputSpec] {
        &self.inputs
    }
    fn output(&self) -> &crate::model::OutputSpec {
        &self.output
    }
    fn attention(&self) -> Option<&crate::model::OutputSpec> {
        self.attention.as_ref()
    }
}

impl Judge {
    /// The model, or why it cannot be compared with the teacher.
    fn judge(&self, role: &str, model: RemoteModel) -> Result<RemoteModel, String> {
        crate::model::comparable(&self.config, role, &model, self).map(|()| model)
    }
}

/// The challengers on inference servers of one pipeline, owned by the remote shadow worker
/// (`crate::pipeline::shadow`). Each model's timeout, retries and circuit breaker bound the
/// time it takes; a record it cannot answer is skipped for it ([`ShadowSkip`]) and the model
/// stays in service for the next.
pub struct RemoteShadows {
    models: Vec<RemoteShadow>,
    comparer: Comparer,
    /// Embedding pooling mask input (`[compare] mask_input`).
    mask_input: Option<String>,
    /// `None` until the first challenger on a server is configured.
    judge: Option<Judge>,
}

impl RemoteShadows {
    /// Whether any challenger on a server runs (or waits for its server).
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The most batches one of them takes at once (its `in_flight`).
    pub fn in_flight(&self) -> usize {
        self.models
            .iter()
            .map(|m| match &m.state {
                Connection::Ready(model) => model.in_flight(),
                Connection::Waiting { config, .. } => {
                    config.remote.as_ref().map_or(1, |r| r.in_flight.max(1))
                }
                Connection::Failed => 1,
            })
            .max()
            .unwrap_or(1)
    }

    /// Each challenger's row for a record it has no answer for, for `reason`.
    pub fn skipped(&self, reason: ShadowSkip) -> Vec<ShadowRow> {
        self.models
            .iter()
            .map(|m| ShadowRow {
                model: m.name.clone(),
                sha256: m.sha256.clone(),
                kind: ShadowKind::Challenger,
                result: ShadowResult::Skipped(reason),
            })
            .collect()
    }

    /// Reads a challenger's metadata from its server and checks it against the teacher; the
    /// row for `shadow_models` says whether it runs. A server that does not answer yet is
    /// tried again while the pipeline runs.
    fn connect(
        &mut self,
        config: &Config,
        name: &str,
        model_config: &crate::config::ModelConfig,
        teacher: &dyn Interface,
    ) -> ShadowModelRow {
        let role = format!("challenger '{name}'");
        let judge = self.judge.get_or_insert_with(|| Judge {
            config: config.clone(),
            inputs: teacher.inputs().to_vec(),
            output: teacher.output().clone(),
            attention: teacher.attention().cloned(),
        });
        let sha256 = model_config
            .remote
            .as_ref()
            .map(|r| crate::model::remote_sha256(r)[..12].to_string());
        let (state, failure) = match RemoteModel::try_connect(&role, model_config) {
            Ok(model) => match judge.judge(&role, model) {
                Ok(model) => {
                    tracing::info!(
                        shadow = %name,
                        url = %model.location,
                        served_by = %model.served_by,
                        "Shadow model on an inference server connected; it runs on the teacher-sampled records on a thread of its own."
                    );
                    (Some(Connection::Ready(model)), None)
                }
                Err(reason) => (None, Some(reason)),
            },
            Err(f) if !f.answered => {
                tracing::warn!(
                    shadow = %name,
                    error = %f.error,
                    "The inference server of a shadow model does not answer yet; its comparisons are skipped as out of reach until it does. The student and the teacher are unaffected."
                );
                let state = Connection::Waiting {
                    config: model_config.clone(),
                    next_try: Instant::now() + retry_every(model_config),
                };
                (Some(state), None)
            }
            Err(f) => (None, Some(f.error.to_string())),
        };
        match state {
            Some(state) => self.models.push(RemoteShadow {
                name: name.to_string(),
                sha256: sha256.clone().unwrap_or_default(),
                state,
                failure: None,
                erring: false,
            }),
            None => tracing::warn!(
                shadow = %name,
                error = failure.as_deref().unwrap_or_default(),
                "Shadow model skipped: its inference server could not be used. The student and the teacher are unaffected."
            ),
        }
        ShadowModelRow {
            name: name.to_string(),
            kind: ShadowKind::Challenger,
            path: model_config.location(),
            sha256,
            size_bytes: None,
            parameters: None,
            failure,
            job_id: None,
        }
    }

    /// Runs every challenger on the teacher's answered batches (`batches`, each of equal input
    /// shapes, as the teacher ran them) and adds its row to each record's `shadow`: the
    /// comparison with the teacher, or the reason it has none. Each challenger sends at most
    /// its `in_flight` batches at once.
    pub fn run(&mut self, batches: &mut [Vec<&mut TeacherRow>]) {
        if self.models.is_empty() {
            return;
        }
        let records: Vec<Vec<Record>> = batches
            .iter()
            .map(|b| b.iter().map(|row| record_of(row)).collect())
            .collect();
        for shadow in &mut self.models {
            shadow.connect_when_due(self.judge.as_ref());
            let waiting = match &shadow.state {
                Connection::Ready(_) => None,
                Connection::Failed => shadow.failure.take().map(ShadowResult::Failed),
                Connection::Waiting { .. } => Some(ShadowResult::Skipped(ShadowSkip::Unreachable)),
            };
            if let Some(result) = waiting {
                let row = shadow.row(result);
                for t in batches.iter_mut().flat_map(|b| b.iter_mut()) {
                    t.shadow.push(row.clone());
                }
                continue;
            }
            let Connection::Ready(model) = &mut shadow.state else {
                continue;
            };
            let in_flight = model.in_flight();
            let mut results: Vec<Result<BatchOutput, ModelError>> = Vec::new();
            for chunk in records.chunks(in_flight) {
                let refs: Vec<Vec<&Record>> = chunk.iter().map(|b| b.iter().collect()).collect();
                results.extend(model.run_many(&refs));
            }
            // The breaker's changes are in the log; the teacher's reach is what drift events
            // track.
            let _ = model.take_reach_change();
            for ((batch, records), result) in batches.iter_mut().zip(&records).zip(results) {
                let rows = shadow.answer(
                    &self.comparer,
                    self.mask_input.as_deref(),
                    records,
                    batch,
                    result,
                );
                for (row, shadow_row) in batch.iter_mut().zip(rows) {
                    row.shadow.push(shadow_row);
                }
            }
        }
    }
}

/// How often a challenger whose server did not answer at the start is tried again: its
/// breaker's `breaker_open`.
fn retry_every(config: &crate::config::ModelConfig) -> Duration {
    config
        .remote
        .as_ref()
        .map_or(Duration::from_secs(30), |r| r.breaker_open)
}

impl RemoteShadow {
    fn row(&self, result: ShadowResult) -> ShadowRow {
        ShadowRow {
            model: self.name.clone(),
            sha256: self.sha256.clone(),
            kind: ShadowKind::Challenger,
            result,
        }
    }

    /// For a challenger whose server did not answer at the start: reads its metadata again
    /// when it is due. A model that turns out unusable is marked failed in the database by a
    /// `Failed` row on the records at hand (see [`RemoteShadows::run`]).
    fn connect_when_due(&mut self, judge: Option<&Judge>) {
        let Connection::Waiting { config, next_try } = &mut self.state else {
            return;
        };
        if Instant::now() < *next_try {
            return;
        }
        let role = format!("challenger '{}'", self.name);
        match RemoteModel::try_connect(&role, config) {
            Err(f) if !f.answered => {
                *next_try = Instant::now() + retry_every(config);
            }
            Err(f) => self.fail(f.error.to_string()),
            Ok(model) => match judge.map(|j| j.judge(&role, model)) {
                Some(Ok(model)) => {
                    tracing::info!(
                        shadow = %self.name,
                        url = %model.location,
                        served_by = %model.served_by,
                        "The inference server of a shadow model answers; the model runs on the teacher-sampled records from now on."
                    );
                    self.state = Connection::Ready(model);
                }
                Some(Err(reason)) => self.fail(reason),
                None => self.fail("no teacher to compare it with".into()),
            },
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::warn!(
            shadow = %self.name,
            error = %reason,
            "Shadow model skipped: its inference server could not be used. The student and the teacher are unaffected."
        );
        self.state = Connection::Failed;
        self.failure = Some(reason);
    }

    /// One row per record of a batch: its comparison with the teacher, or why it has none.
    fn answer(
        &mut self,
        comparer: &Comparer,
        mask_input: Option<&str>,
        records: &[Record],
        teacher_rows: &[&mut TeacherRow],
        result: Result<BatchOutput, ModelError>,
    ) -> Vec<ShadowRow> {
        let (name, sha256) = (self.name.clone(), self.sha256.clone());
        let row = |result| ShadowRow {
            model: name.clone(),
            sha256: sha256.clone(),
            kind: ShadowKind::Challenger,
            result,
        };
        let n = teacher_rows.len();
        let out = match result {
            Ok(out) if out.batch == n => out,
            other => {
                let (reason, message) = match other {
                    Err(e) if e.is_unreachable() => (ShadowSkip::Unreachable, e.to_string()),
                    Err(e) => (ShadowSkip::Error, e.to_string()),
                    Ok(out) => (
                        ShadowSkip::Error,
                        format!("it answered {} records of a batch of {n}", out.batch),
                    ),
                };
                // Out of reach is logged by the model when its breaker opens and closes; an
                // error once per run of them.
                if reason == ShadowSkip::Error && !self.erring {
                    tracing::error!(
                        shadow = %self.name,
                        error = %message,
                        "Shadow model on an inference server failed; its comparisons are skipped (counted in shadow_skips) while it fails. The student and the teacher are unaffected."
                    );
                }
                self.erring = reason == ShadowSkip::Error;
                return (0..n).map(|_| row(ShadowResult::Skipped(reason))).collect();
            }
        };
        self.erring = false;
        let per_record_us = out.elapsed.as_micros() as i64 / out.batch.max(1) as i64;
        teacher_rows
            .iter()
            .zip(records)
            .enumerate()
            .map(|(i, (t, record))| {
                let mask = mask_input.and_then(|name| match &record.inputs.get(name)?.data {
                    TensorData::I64(v) => Some(v.as_slice()),
                    TensorData::F32(_) => None,
                });
                let attention = t
                    .teacher_attention
                    .as_ref()
                    .map(|(shape, data)| (shape.as_slice(), data.as_slice()));
                let comparison = compare_one(
                    comparer,
                    &t.teacher_output,
                    &t.output_shape,
                    attention,
                    &out,
                    i,
                    mask,
                );
                row(ShadowResult::Answered(ShadowMeasure {
                    comparison,
                    latency_us: per_record_us,
                }))
            })
            .collect()
    }
}

/// The record a teacher row was made from, as a model takes it (its inputs).
fn record_of(row: &TeacherRow) -> Record {
    Record {
        id: None,
        ts: None,
        segment: Default::default(),
        inputs: row.inputs.iter().cloned().collect(),
        label: None,
        origin: crate::record::Origin::Index(0),
    }
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
