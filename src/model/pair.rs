//! The student and the teacher as a pair: loading both (side by side), and what makes a model
//! impossible to compare with the teacher under the config (inputs, outputs, attention). The
//! daemon, `sensei check`, the lab stage, shadow models and the re-distillation gate all ask the
//! same questions.

use crate::config::{Config, Task};
use crate::record::{InputSpec, Record, Tensor};

use super::{Interface, Model, Runtime, Teacher};

/// The loaded runtime and both models.
pub struct Models {
    pub runtime: &'static Runtime,
    pub student: Model,
    pub teacher: Teacher,
}

/// Loads ONNX Runtime and both models; the error lists every problem found.
pub fn load_models(config: &Config) -> Result<Models, Vec<String>> {
    let runtime = crate::model::runtime(&config.onnxruntime).map_err(|e| vec![e.to_string()])?;
    // Side by side: building the sessions is most of the start-up time.
    let (student, teacher) = std::thread::scope(|scope| {
        let teacher = scope.spawn(|| Teacher::load(runtime, &config.teacher));
        let student = Model::load(runtime, "student", &config.student);
        let teacher = teacher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (student, teacher)
    });
    match (student, teacher) {
        (Ok(student), Ok(teacher)) => {
            let problems = compatibility_problems(config, &student, &teacher);
            if problems.is_empty() {
                Ok(Models {
                    runtime,
                    student,
                    teacher,
                })
            } else {
                Err(problems)
            }
        }
        (s, t) => Err([s.err(), t.err()]
            .into_iter()
            .flatten()
            .map(|e| e.to_string())
            .collect()),
    }
}

/// What makes a teacher and a student impossible to compare under this config.
pub fn compatibility_problems(
    config: &Config,
    student: &Model,
    teacher: &dyn Interface,
) -> Vec<String> {
    model_problems(config, "student", student, teacher)
}

/// [`model_problems`] as one error, for a shadow model that is left out when it has any:
/// `"{role} cannot be compared with the teacher: …"`.
pub fn comparable(
    config: &Config,
    role: &str,
    model: &dyn Interface,
    teacher: &dyn Interface,
) -> Result<(), String> {
    let problems = model_problems(config, role, model, teacher);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{role} cannot be compared with the teacher: {}",
            problems.join("; ")
        ))
    }
}

/// What makes `model` (the student, a challenger or a candidate, called `role` in the
/// messages) impossible to compare with the teacher under this config.
pub fn model_problems(
    config: &Config,
    role: &str,
    student: &dyn Interface,
    teacher: &dyn Interface,
) -> Vec<String> {
    let mut problems = Vec::new();
    for t in teacher.inputs() {
        match student.inputs().iter().find(|s| s.name == t.name) {
            None => problems.push(format!(
                "teacher input '{}' is not a {role} input: both models must take the same inputs",
                t.name
            )),
            Some(s) if s.elem_type != t.elem_type || !shapes_compatible(&s.shape, &t.shape) => {
                problems.push(format!(
                    "input '{}': {role} takes {} {}, teacher takes {} {}",
                    t.name,
                    s.elem_type,
                    s.shape_display(),
                    t.elem_type,
                    t.shape_display()
                ))
            }
            Some(_) => {}
        }
    }
    for s in student.inputs() {
        if !teacher.inputs().iter().any(|t| t.name == s.name) {
            problems.push(format!(
                "{role} input '{}' is not a teacher input: both models must take the same inputs",
                s.name
            ));
        }
    }
    let (so, to) = (&student.output().shape, &teacher.output().shape);
    match config.compare.task {
        Task::Classification | Task::Regression => {
            if so.len() != to.len() || !shapes_compatible(so, to) {
                problems.push(format!(
                    "outputs are not comparable: {role} '{}' is {}, teacher '{}' is {}",
                    student.output().name,
                    shape_display(so),
                    teacher.output().name,
                    shape_display(to)
                ));
            }
        }
        Task::Embedding => {
            // Pooled embeddings compare on the last axis only.
            if so.last() != to.last()
                && so.last().copied().flatten().is_some()
                && to.last().copied().flatten().is_some()
            {
                problems.push(format!(
                    "embeddings are not comparable: {role} dimension {}, teacher dimension {}",
                    shape_display(so),
                    shape_display(to)
                ));
            }
        }
    }
    if let Some(mask) = &config.compare.mask_input
        && !student.inputs().iter().any(|i| &i.name == mask)
    {
        problems.push(format!(
            "compare.mask_input '{mask}' is not an input of the models"
        ));
    }
    problems
}

/// Notes that are not errors: attention present on one side only or with different shapes.
pub fn compatibility_notes(student: &Model, teacher: &dyn Interface) -> Vec<String> {
    match (student.attention.as_ref(), teacher.attention()) {
        (Some(s), Some(t)) if !shapes_compatible(&s.shape, &t.shape) => vec![format!(
            "attention shapes differ (student {}, teacher {}): attention KL is not computed",
            shape_display(&s.shape),
            shape_display(&t.shape)
        )],
        (Some(_), None) | (None, Some(_)) => {
            vec!["only one model exposes attention: attention KL is not computed".into()]
        }
        _ => Vec::new(),
    }
}

fn shapes_compatible(a: &[Option<usize>], b: &[Option<usize>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.is_none() || y.is_none() || x == y)
}

/// `[4, 8, 8]` or `[?, 10]`.
pub fn shape_display(shape: &[Option<usize>]) -> String {
    InputSpec {
        name: String::new(),
        elem_type: crate::record::ElemType::F32,
        shape: shape.to_vec(),
    }
    .shape_display()
}

/// Runs both models on `records`, `batch` at a time (equal input shapes per call), the way the
/// pipeline runs them: a model that loads but fails at inference is found here, before it
/// serves. Without records, one record of zeros shaped as the student's inputs (dynamic
/// dimensions 1) stands in. Returns how many records were run.
pub fn trial_run(models: &mut Models, records: &[Record], batch: usize) -> Result<usize, String> {
    let stand_in;
    let records = if records.is_empty() {
        stand_in = [zeros(&models.student.inputs)];
        &stand_in[..]
    } else {
        records
    };
    let shape = |r: &Record| {
        r.inputs
            .values()
            .map(|t| t.shape.clone())
            .collect::<Vec<_>>()
    };
    let mut start = 0;
    while start < records.len() {
        let first = shape(&records[start]);
        let end = start
            + records[start..]
                .iter()
                .take(batch.max(1))
                .take_while(|r| shape(r) == first)
                .count();
        let group: Vec<&Record> = records[start..end].iter().collect();
        models.student.run(&group).map_err(|e| e.to_string())?;
        models.teacher.run(&group).map_err(|e| e.to_string())?;
        start = end;
    }
    Ok(records.len())
}

/// A record of zeros for the given inputs (dynamic dimensions of length 1).
fn zeros(specs: &[InputSpec]) -> Record {
    let inputs = specs
        .iter()
        .map(|s| {
            let shape: Vec<usize> = s.shape.iter().map(|d| d.unwrap_or(1)).collect();
            let n = shape.iter().product();
            let tensor = match s.elem_type {
                crate::record::ElemType::F32 => Tensor::f32(shape, vec![0.0; n]),
                crate::record::ElemType::I64 => Tensor::i64(shape, vec![0; n]),
            };
            (s.name.clone(), tensor)
        })
        .collect();
    Record {
        id: None,
        ts: None,
        segment: Default::default(),
        inputs,
        label: None,
        origin: crate::record::Origin::Index(0),
    }
}
