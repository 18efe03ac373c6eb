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
//! The rest is pure: [`Totals`] are the running sums of one model version, [`Standing`] what
//! `sensei report` shows of each model, and [`verdict`] picks the smallest model whose agreement
//! with the teacher is, at 95% confidence, at least `[shadow] agreement_floor`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::compare::{Comparer, Comparison, attention_kl};
use crate::config::Config;
use crate::model::{BatchOutput, Model, Runtime};
use crate::record::{Record, TensorData};
use crate::stats::{Interval, weighted_rate_interval};
use crate::store::{ShadowKind, ShadowMeasure, ShadowModelRow, ShadowRow, Totals};

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
        teacher: &Model,
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

// ---------------------------------------------------------------------------------------------
// Parameter count

/// Elements of the floating-point initializers of an ONNX model's main graph: its parameter
/// count. `None` when the bytes are not a well-formed `ModelProto` with a graph.
///
/// Reads the protobuf wire format directly (ModelProto.graph = 7, GraphProto.initializer = 5,
/// TensorProto.dims = 1, TensorProto.data_type = 2): the dims are there even when the weights
/// live in external data. Integer initializers (shapes, indices) are not parameters.
pub fn parameter_count(model: &[u8]) -> Option<u64> {
    let graph = fields(model)?
        .into_iter()
        .find_map(|(field, value)| match (field, value) {
            (7, Wire::Bytes(b)) => Some(b),
            _ => None,
        })?;
    let mut total: u64 = 0;
    for (field, value) in fields(graph)? {
        let (5, Wire::Bytes(tensor)) = (field, value) else {
            continue;
        };
        let mut dims: Vec<u64> = Vec::new();
        let mut data_type = 0;
        for (field, value) in fields(tensor)? {
            match (field, value) {
                (1, Wire::Varint(d)) => dims.push(d),
                (1, Wire::Bytes(packed)) => {
                    let mut r = WireReader {
                        buf: packed,
                        pos: 0,
                    };
                    while r.pos < packed.len() {
                        dims.push(r.varint()?);
                    }
                }
                (2, Wire::Varint(t)) => data_type = t,
                _ => {}
            }
        }
        // FLOAT, FLOAT16, DOUBLE, BFLOAT16 and the FLOAT8 variants.
        if matches!(data_type, 1 | 10 | 11 | 16..=20) {
            let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
            total = total.checked_add(elements)?;
        }
    }
    Some(total)
}

/// One protobuf field value (fixed-width values are skipped, not kept).
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct WireReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> WireReader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }
}

/// Every (field number, value) of one message; `None` if it is malformed.
fn fields(message: &[u8]) -> Option<Vec<(u64, Wire<'_>)>> {
    let mut r = WireReader {
        buf: message,
        pos: 0,
    };
    let mut out = Vec::new();
    while r.pos < message.len() {
        let key = r.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(r.varint()?),
            1 => {
                r.take(8)?;
                Wire::Fixed
            }
            2 => {
                let n = usize::try_from(r.varint()?).ok()?;
                Wire::Bytes(r.take(n)?)
            }
            5 => {
                r.take(4)?;
                Wire::Fixed
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Aggregates and the verdict (pure)

/// The statistics of a model version's shadow sums ([`Totals`] are kept by the store).
impl Totals {
    /// Weighted share of records whose top-1 agrees with the teacher's.
    pub fn agreement_rate(&self) -> Option<f64> {
        (self.agreement_weight > 0.0).then(|| self.agreement / self.agreement_weight)
    }

    /// The Kish effective sample size of the agreement rate, (Σw)² / Σw²: what the weighted
    /// samples are worth as independent unweighted ones.
    pub fn effective_n(&self) -> Option<f64> {
        (self.agreement_weight_sq > 0.0)
            .then(|| self.agreement_weight * self.agreement_weight / self.agreement_weight_sq)
    }

    /// Clopper-Pearson interval of the agreement rate on the effective sample size.
    pub fn agreement_interval(&self) -> Option<Interval> {
        weighted_rate_interval(
            self.agreement_rate()?,
            self.agreement_weight,
            self.agreement_weight_sq,
            1.0 - CONFIDENCE,
        )
    }

    pub fn mean_kl(&self) -> Option<f64> {
        (self.kl_weight > 0.0).then(|| self.kl / self.kl_weight)
    }

    pub fn mean_attention_kl(&self) -> Option<f64> {
        (self.attention_kl_weight > 0.0).then(|| self.attention_kl / self.attention_kl_weight)
    }

    /// Mean per-record latency, µs.
    pub fn mean_latency_us(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.latency_us as f64 / self.samples as f64)
    }

    /// The teacher's mean per-record latency on the same records, µs.
    pub fn mean_teacher_latency_us(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.teacher_latency_us as f64 / self.samples as f64)
    }
}

/// One model in the challengers' table: the serving student or a shadow model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standing {
    pub name: String,
    pub kind: ShadowKind,
    pub sha256: Option<String>,
    /// `serving` (the student), `running` or `failed`.
    pub status: String,
    /// Why it failed.
    pub detail: Option<String>,
    pub size_bytes: Option<u64>,
    pub parameters: Option<u64>,
    /// Teacher-sampled records it answered.
    pub samples: i64,
    /// Effective sample size of the agreement (weighted samples count for less).
    pub effective_n: Option<f64>,
    /// Weighted top-1 agreement with the teacher and its 95% interval.
    pub agreement: Option<Interval>,
    pub mean_kl: Option<f64>,
    pub mean_attention_kl: Option<f64>,
    pub latency_us: Option<f64>,
    /// The teacher's latency on the same records.
    pub teacher_latency_us: Option<f64>,
    /// The agreement's lower bound is at or above the floor.
    pub meets_floor: bool,
}

impl Standing {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        kind: ShadowKind,
        sha256: Option<String>,
        status: &str,
        detail: Option<String>,
        size_bytes: Option<u64>,
        parameters: Option<u64>,
        totals: Option<&Totals>,
        floor: f64,
    ) -> Standing {
        let agreement = totals.and_then(Totals::agreement_interval);
        Standing {
            name: name.to_string(),
            kind,
            sha256,
            status: status.to_string(),
            detail,
            size_bytes,
            parameters,
            samples: totals.map_or(0, |t| t.samples),
            effective_n: totals.and_then(Totals::effective_n),
            agreement,
            mean_kl: totals.and_then(Totals::mean_kl),
            mean_attention_kl: totals.and_then(Totals::mean_attention_kl),
            latency_us: totals.and_then(Totals::mean_latency_us),
            teacher_latency_us: totals.and_then(Totals::mean_teacher_latency_us),
            meets_floor: agreement.is_some_and(|a| a.low >= floor),
        }
    }
}

/// The smallest model whose agreement meets the floor, and what it saves against the teacher.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub name: String,
    pub kind: ShadowKind,
    pub size_bytes: u64,
    /// The 95% lower bound of its agreement with the teacher.
    pub agreement_low: f64,
    pub latency_us: Option<f64>,
    pub teacher_latency_us: Option<f64>,
    /// 1 − its latency / the teacher's, on the same records.
    pub latency_saving: Option<f64>,
    pub teacher_bytes: Option<u64>,
    /// 1 − its size / the teacher's.
    pub size_saving: Option<f64>,
}

/// The challengers' verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub agreement_floor: f64,
    pub confidence: f64,
    /// `None` when no model meets the floor.
    pub chosen: Option<Choice>,
    pub summary: String,
}

/// Picks the smallest model (file bytes) whose agreement's 95% lower bound is at least
/// `floor`; among equal sizes the higher lower bound, then the name. Failed models and models
/// of unknown size are not candidates.
pub fn verdict(standings: &[Standing], teacher_bytes: Option<u64>, floor: f64) -> Verdict {
    let eligible = standings
        .iter()
        .filter(|s| s.meets_floor && s.status != "failed")
        .filter_map(|s| Some((s, s.size_bytes?, s.agreement?.low)));
    let best = eligible.min_by(|(a, a_size, a_low), (b, b_size, b_low)| {
        a_size
            .cmp(b_size)
            .then(b_low.total_cmp(a_low))
            .then(a.name.cmp(&b.name))
    });
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let Some((s, size, low)) = best else {
        let summary = if standings.iter().all(|s| s.agreement.is_none()) {
            "No verdict yet: no model has been compared with the teacher on sampled records."
                .to_string()
        } else {
            let closest = standings
                .iter()
                .filter(|s| s.status != "failed")
                .filter_map(|s| Some((s, s.agreement?.low)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match closest {
                Some((s, low)) => format!(
                    "No model meets the agreement floor of {} at {:.0}% confidence; the closest is {} '{}' (lower bound {}).",
                    pct(floor),
                    CONFIDENCE * 100.0,
                    s.kind.as_str(),
                    s.name,
                    pct(low)
                ),
                None => format!("No model meets the agreement floor of {}.", pct(floor)),
            }
        };
        return Verdict {
            agreement_floor: floor,
            confidence: CONFIDENCE,
            chosen: None,
            summary,
        };
    };
    let saving = |part: Option<f64>, whole: Option<f64>| {
        part.zip(whole)
            .and_then(|(p, w)| (w > 0.0).then(|| 1.0 - p / w))
    };
    let choice = Choice {
        name: s.name.clone(),
        kind: s.kind,
        size_bytes: size,
        agreement_low: low,
        latency_us: s.latency_us,
        teacher_latency_us: s.teacher_latency_us,
        latency_saving: saving(s.latency_us, s.teacher_latency_us),
        teacher_bytes,
        size_saving: saving(Some(size as f64), teacher_bytes.map(|b| b as f64)),
    };
    let mut summary = format!(
        "{} '{}' is the smallest model whose agreement with the teacher meets the floor of {} ({:.0}% lower bound {}, effective n {:.0}): {} bytes",
        s.kind.as_str(),
        s.name,
        pct(floor),
        CONFIDENCE * 100.0,
        pct(low),
        s.effective_n.unwrap_or(0.0),
        size
    );
    if let (Some(saved), Some(tb)) = (choice.size_saving, teacher_bytes) {
        summary.push_str(&format!(
            ", {} smaller than the teacher ({tb} bytes)",
            pct(saved)
        ));
    }
    if let (Some(l), Some(saved)) = (choice.latency_us, choice.latency_saving) {
        summary.push_str(&format!(
            "; {l:.0} µs per record, {} {} than the teacher",
            pct(saved.abs()),
            if saved >= 0.0 { "faster" } else { "slower" }
        ));
    }
    summary.push('.');
    Verdict {
        agreement_floor: floor,
        confidence: CONFIDENCE,
        chosen: Some(choice),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(agrees: bool) -> Comparison {
        Comparison {
            disagreement: Some(!agrees),
            kl: Some(if agrees { 0.01 } else { 1.0 }),
            ..Comparison::default()
        }
    }

    /// Totals of `n` records of weight `w`, `k` of which agree.
    fn totals(n: i64, k: i64, w: f64) -> Totals {
        let mut t = Totals::default();
        for i in 0..n {
            t.add(i, w, &agree(i < k), 10, 100);
        }
        t
    }

    fn standing(name: &str, size: u64, t: &Totals, floor: f64) -> Standing {
        Standing::new(
            name,
            ShadowKind::Challenger,
            Some("abc".into()),
            "running",
            None,
            Some(size),
            None,
            Some(t),
            floor,
        )
    }

    #[test]
    fn weighted_agreement_uses_the_weights_and_the_effective_sample_size() {
        let mut t = Totals::default();
        // Three agreeing records of weight 1 and one disagreeing of weight 3: 3 / 6 agree.
        for (seq, w, a) in [
            (5, 1.0, true),
            (2, 1.0, true),
            (9, 1.0, true),
            (7, 3.0, false),
        ] {
            t.add(seq, w, &agree(a), 10, 100);
        }
        assert_eq!(t.samples, 4);
        assert_eq!((t.first_seq, t.last_seq), (2, 9));
        assert!((t.agreement_rate().unwrap() - 0.5).abs() < 1e-12);
        // (Σw)² / Σw² = 36 / 12 = 3, not 4.
        assert!((t.effective_n().unwrap() - 3.0).abs() < 1e-12);
        let kl = (3.0 * 0.01 + 3.0 * 1.0) / 6.0;
        assert!((t.mean_kl().unwrap() - kl).abs() < 1e-12);
        assert_eq!(t.mean_latency_us(), Some(10.0));
        assert_eq!(t.mean_teacher_latency_us(), Some(100.0));
        assert_eq!(t.mean_attention_kl(), None);
    }

    #[test]
    fn equal_weights_give_the_exact_binomial_interval() {
        let t = totals(100, 95, 4.0);
        let i = t.agreement_interval().unwrap();
        let exact = crate::stats::clopper_pearson(95.0, 100.0, 0.05).unwrap();
        assert!((i.low - exact.low).abs() < 1e-9 && (i.high - exact.high).abs() < 1e-9);
        assert!((i.estimate - 0.95).abs() < 1e-12);
    }

    #[test]
    fn records_without_a_usable_weight_or_top1_are_not_counted_as_agreement() {
        let mut t = Totals::default();
        t.add(1, 0.0, &agree(true), 1, 1);
        t.add(2, f64::NAN, &agree(true), 1, 1);
        assert_eq!(t.samples, 0);
        t.add(3, 1.0, &Comparison::default(), 1, 1); // an embedding: no top-1
        assert_eq!(t.samples, 1);
        assert_eq!(t.agreement_rate(), None);
        assert_eq!(t.agreement_interval(), None);
    }

    #[test]
    fn verdict_names_the_smallest_model_whose_lower_bound_meets_the_floor() {
        let floor = 0.9;
        let perfect = totals(200, 200, 1.0);
        let poor = totals(200, 120, 1.0);
        let standings = vec![
            standing("big", 4000, &perfect, floor),
            standing("tiny", 1000, &poor, floor),
            standing("mid", 3000, &perfect, floor),
        ];
        assert!(!standings[1].meets_floor);
        let v = verdict(&standings, Some(6000), floor);
        let c = v.chosen.expect("a choice");
        assert_eq!(c.name, "mid");
        assert_eq!(c.size_bytes, 3000);
        assert!((c.size_saving.unwrap() - 0.5).abs() < 1e-12);
        assert!((c.latency_saving.unwrap() - 0.9).abs() < 1e-12);
        assert!(v.summary.contains("'mid'"), "{}", v.summary);
        assert!(v.summary.contains("50.0% smaller"), "{}", v.summary);
    }

    #[test]
    fn a_high_estimate_on_few_samples_does_not_meet_the_floor() {
        // 10 of 10 agree: the estimate is 1, the 95% lower bound 0.69.
        let few = totals(10, 10, 1.0);
        let s = standing("lucky", 100, &few, 0.9);
        assert_eq!(s.agreement.unwrap().estimate, 1.0);
        assert!(!s.meets_floor);
        // Weighted: 200 samples whose weights make them worth about 10.
        let mut skewed = Totals::default();
        for i in 0..200 {
            skewed.add(i, if i < 10 { 100.0 } else { 0.01 }, &agree(true), 1, 1);
        }
        assert!(skewed.effective_n().unwrap() < 11.0);
        assert!(!standing("skewed", 100, &skewed, 0.9).meets_floor);
    }

    #[test]
    fn verdict_says_when_no_model_meets_the_floor() {
        let poor = totals(200, 150, 1.0);
        let mut failed = standing("broken", 10, &totals(200, 200, 1.0), 0.9);
        failed.status = "failed".into();
        let v = verdict(&[standing("a", 100, &poor, 0.9), failed], Some(1000), 0.9);
        assert_eq!(v.chosen, None);
        assert!(v.summary.starts_with("No model meets"), "{}", v.summary);
        assert!(v.summary.contains("'a'"), "{}", v.summary);
        let none = verdict(&[], None, 0.9);
        assert!(
            none.summary.starts_with("No verdict yet"),
            "{}",
            none.summary
        );
    }

    #[test]
    fn equal_sizes_prefer_the_higher_lower_bound() {
        let floor = 0.8;
        let v = verdict(
            &[
                standing("b", 500, &totals(400, 380, 1.0), floor),
                standing("a", 500, &totals(400, 360, 1.0), floor),
            ],
            None,
            floor,
        );
        assert_eq!(v.chosen.unwrap().name, "b");
    }

    /// A ModelProto with a graph holding `initializers` (dims, data_type), encoded by hand.
    fn model_bytes(initializers: &[(&[u64], u64)], packed: bool) -> Vec<u8> {
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(b);
                    return;
                }
                out.push(b | 0x80);
            }
        }
        fn field(num: u64, bytes: &[u8], out: &mut Vec<u8>) {
            varint(num << 3 | 2, out);
            varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
        let mut graph = Vec::new();
        field(2, b"graph-name", &mut graph);
        for (dims, data_type) in initializers {
            let mut t = Vec::new();
            if packed {
                let mut p = Vec::new();
                for d in *dims {
                    varint(*d, &mut p);
                }
                field(1, &p, &mut t);
            } else {
                for d in *dims {
                    varint(1 << 3, &mut t);
                    varint(*d, &mut t);
                }
            }
            varint(2 << 3, &mut t);
            varint(*data_type, &mut t);
            field(8, b"W", &mut t);
            // raw_data, as fixed-width payload the count must skip.
            field(9, &[0u8; 16], &mut t);
            field(5, &t, &mut graph);
        }
        let mut model = Vec::new();
        varint(1 << 3, &mut model); // ir_version
        varint(8, &mut model);
        field(7, &graph, &mut model);
        model
    }

    #[test]
    fn parameters_are_the_elements_of_floating_point_initializers() {
        let inits: &[(&[u64], u64)] = &[(&[64, 10], 1), (&[2], 7), (&[8, 32], 10)];
        for packed in [true, false] {
            assert_eq!(
                parameter_count(&model_bytes(inits, packed)),
                Some(640 + 256),
                "packed: {packed}"
            );
        }
        assert_eq!(parameter_count(b"\xff\xff garbage"), None);
        assert_eq!(parameter_count(&[]), None);
    }

    #[test]
    fn the_fixture_models_parameter_counts_match_their_weights() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        // W [64, 10] and Q [8, 32]; the int64 shape initializers are not parameters.
        let bytes = std::fs::read(dir.join("teacher.onnx")).unwrap();
        assert_eq!(parameter_count(&bytes), Some(640 + 256));
        let bytes = std::fs::read(dir.join("no_attention.onnx")).unwrap();
        assert_eq!(parameter_count(&bytes), Some(640 + 256));
    }
}
