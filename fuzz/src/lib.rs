//! The contracts the fuzz targets hold sensei's parsers of untrusted input to.
//!
//! A target that only calls a parser finds panics; these checks also find a parser that returns
//! `Ok` with something the rest of the pipeline would choke on. Every inbox file is read for
//! each of a few model shapes ([`models`]), because what is valid depends on the model: the same
//! bytes are a good file for an `[8, 8]` model and a wrong-shape file for a text model.
//!
//! What every read must satisfy:
//! - records: at least one; each has exactly the model's inputs, each tensor with the input's
//!   element type, a shape that fits the input's (fixed dimensions equal, dynamic ones of at
//!   least one) and as many elements as its shape says; only finite floats when non-finite
//!   values are rejected (always for JSON, which cannot spell NaN); origins in file order; ids
//!   of 1 to 256 bytes; never more elements than the file's bytes (or the archive's expansion
//!   limit) can hold;
//! - late labels: at least one, ids of 1 to 256 bytes, line numbers increasing within the file;
//! - errors: a non-empty message, rendered to a non-empty line.
//!
//! Panics here are the findings: libFuzzer reports them as crashes with the input that caused
//! them.

use std::sync::OnceLock;

use sensei::config::NonFinitePolicy;
use sensei::format::{FormatError, FormatOptions, read_file};
use sensei::record::{ElemType, FileContent, InputSpec, LateLabel, Origin, Record, TensorData};

/// Upper bound on an `.npz` archive's expansion in the targets: small, so that a zip bomb the
/// fuzzer builds costs a millisecond, not a second.
pub const NPZ_LIMIT: u64 = 1 << 20;

/// Longest id the parsers accept, in bytes (`format`'s limit).
const MAX_ID_BYTES: usize = 256;

/// A model's inputs, as `model` reads them from an ONNX graph.
pub struct Model {
    pub name: &'static str,
    pub specs: Vec<InputSpec>,
}

/// The model shapes every input is read for.
pub fn models() -> &'static [Model] {
    static MODELS: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let spec = |name: &str, elem_type, shape: &[Option<usize>]| InputSpec {
            name: name.to_string(),
            elem_type,
            shape: shape.to_vec(),
        };
        vec![
            // The demo model and the malformed-file corpus: one float32 [8, 8] input.
            Model {
                name: "digits",
                specs: vec![spec("x", ElemType::F32, &[Some(8), Some(8)])],
            },
            // A sensor sequence of any length.
            Model {
                name: "sequence",
                specs: vec![spec("x", ElemType::F32, &[None, Some(8)])],
            },
            // A text model: two int64 inputs of any length.
            Model {
                name: "text",
                specs: vec![
                    spec("input_ids", ElemType::I64, &[None]),
                    spec("attention_mask", ElemType::I64, &[None]),
                ],
            },
            // One number per record (a `[batch]` input).
            Model {
                name: "scalar",
                specs: vec![spec("x", ElemType::F32, &[])],
            },
            // ONNX allows a fixed dimension of length 0, and `model` passes it on as such.
            Model {
                name: "zero-width",
                specs: vec![spec("x", ElemType::F32, &[Some(0)])],
            },
        ]
    })
}

/// Reading options for a target.
pub fn options(non_finite: NonFinitePolicy) -> FormatOptions {
    FormatOptions {
        non_finite,
        max_uncompressed_bytes: NPZ_LIMIT,
    }
}

/// How a record's origin must look for a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origins {
    /// JSON Lines: 1-based line numbers, increasing.
    Lines,
    /// NumPy: the 0-based index along the first axis, which is the record's position.
    Indices,
}

/// Reads `bytes` as the inbox file `name` for `model` and checks the result against the
/// contract of a records file; returns the result for further comparisons.
pub fn read_records(
    name: &str,
    bytes: &[u8],
    model: &Model,
    opts: &FormatOptions,
    origins: Origins,
    max_elements: usize,
) -> Result<Vec<Record>, FormatError> {
    match read_file(name, bytes, &model.specs, opts) {
        Ok(FileContent::Records(records)) => {
            check_records(name, bytes, model, opts, origins, max_elements, &records);
            Ok(records)
        }
        Ok(FileContent::Labels(labels)) => {
            panic!(
                "{name} for model {}: a records file was read as {} late labels",
                model.name,
                labels.len()
            )
        }
        Err(error) => {
            check_error(name, model, &error);
            Err(error)
        }
    }
}

/// Reads `bytes` as the late-labels file `name` and checks the result.
pub fn read_labels(name: &str, bytes: &[u8], model: &Model) -> Result<Vec<LateLabel>, FormatError> {
    match read_file(name, bytes, &model.specs, &options(NonFinitePolicy::Reject)) {
        Ok(FileContent::Labels(labels)) => {
            check_labels(name, bytes, &labels);
            Ok(labels)
        }
        Ok(FileContent::Records(records)) => {
            panic!(
                "{name}: a labels file was read as {} records",
                records.len()
            )
        }
        Err(error) => {
            check_error(name, model, &error);
            Err(error)
        }
    }
}

fn check_records(
    name: &str,
    bytes: &[u8],
    model: &Model,
    opts: &FormatOptions,
    origins: Origins,
    max_elements: usize,
    records: &[Record],
) {
    let at = |i: usize| format!("{name} for model {}, record {i}", model.name);
    assert!(
        !records.is_empty(),
        "{name} for model {}: Ok with no records",
        model.name
    );
    let lines = line_count(bytes);
    let mut elements = 0usize;
    let mut previous_line = 0;
    for (i, record) in records.iter().enumerate() {
        match (origins, record.origin) {
            (Origins::Lines, Origin::Line(line)) => {
                assert!(
                    line > previous_line && line <= lines,
                    "{}: line {line} after line {previous_line} of {lines}",
                    at(i)
                );
                previous_line = line;
            }
            (Origins::Indices, Origin::Index(index)) => {
                assert_eq!(index, i, "{}: origin is not the record's position", at(i));
            }
            (_, origin) => panic!("{}: origin {origin:?} for {origins:?}", at(i)),
        }
        if let Some(id) = &record.id {
            assert!(
                !id.is_empty() && id.len() <= MAX_ID_BYTES,
                "{}: id of {} bytes accepted",
                at(i),
                id.len()
            );
        }
        if name.ends_with(".npy") {
            assert!(
                record.id.is_none()
                    && record.ts.is_none()
                    && record.label.is_none()
                    && record.segment.is_empty(),
                "{}: an .npy file cannot carry ids, timestamps, labels or segments",
                at(i)
            );
        }
        let names: Vec<&str> = record.inputs.keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = model.specs.iter().map(|s| s.name.as_str()).collect();
        expected.sort_unstable();
        assert_eq!(names, expected, "{}: inputs are not the model's", at(i));
        for spec in &model.specs {
            let tensor = &record.inputs[&spec.name];
            let fits = tensor.shape.len() == spec.shape.len()
                && spec
                    .shape
                    .iter()
                    .zip(&tensor.shape)
                    .all(|(want, &got)| match want {
                        Some(n) => *n == got,
                        None => got >= 1,
                    });
            assert!(
                fits,
                "{}: input {} has shape {:?}, the model expects {}",
                at(i),
                spec.name,
                tensor.shape,
                spec.shape_display()
            );
            assert_eq!(
                tensor.data.elem_type(),
                spec.elem_type,
                "{}: input {} has the wrong element type",
                at(i),
                spec.name
            );
            let count = tensor.shape.iter().product::<usize>();
            assert_eq!(
                tensor.data.len(),
                count,
                "{}: input {} of shape {:?} holds {} elements",
                at(i),
                spec.name,
                tensor.shape,
                tensor.data.len()
            );
            elements += count;
            let finite_only =
                opts.non_finite == NonFinitePolicy::Reject || origins == Origins::Lines;
            if finite_only && let TensorData::F32(values) = &tensor.data {
                assert!(
                    values.iter().all(|v| v.is_finite()),
                    "{}: input {} holds a non-finite value that should have rejected the file",
                    at(i),
                    spec.name
                );
            }
        }
    }
    assert!(
        elements <= max_elements,
        "{name} for model {}: {elements} elements from {} bytes (at most {max_elements} possible)",
        model.name,
        bytes.len()
    );
}

fn check_labels(name: &str, bytes: &[u8], labels: &[LateLabel]) {
    assert!(!labels.is_empty(), "{name}: Ok with no labels");
    let lines = line_count(bytes);
    let mut previous = 0;
    for label in labels {
        assert!(
            !label.id.is_empty() && label.id.len() <= MAX_ID_BYTES,
            "{name}, line {}: id of {} bytes accepted",
            label.line,
            label.id.len()
        );
        assert!(
            label.line > previous && label.line <= lines,
            "{name}: line {} after line {previous} of {lines}",
            label.line
        );
        previous = label.line;
    }
}

/// An error must say something: it becomes `<name>.error.txt` in the quarantine.
pub fn check_error(name: &str, model: &Model, error: &FormatError) {
    assert!(
        !error.message.trim().is_empty(),
        "{name} for model {}: error with an empty message: {error:?}",
        model.name
    );
    let text = error.to_string();
    assert!(
        text.ends_with(&error.message),
        "{name} for model {}: the rendered error {text:?} drops its message",
        model.name
    );
}

/// Whether any float input of any record is NaN or infinite.
pub fn has_non_finite(records: &[Record]) -> bool {
    records.iter().any(|record| {
        record.inputs.values().any(|tensor| match &tensor.data {
            TensorData::F32(values) => values.iter().any(|v| !v.is_finite()),
            TensorData::I64(_) => false,
        })
    })
}

/// Reads a NumPy file under both non-finite policies and checks that they agree: rejecting
/// NaN/Infinity may refuse a file only because it holds one, and must not change what is read
/// otherwise.
pub fn read_numpy(name: &str, bytes: &[u8], model: &Model, max_elements: usize) {
    let reject = read_records(
        name,
        bytes,
        model,
        &options(NonFinitePolicy::Reject),
        Origins::Indices,
        max_elements,
    );
    let allow = read_records(
        name,
        bytes,
        model,
        &options(NonFinitePolicy::Allow),
        Origins::Indices,
        max_elements,
    );
    match (&reject, &allow) {
        (Ok(rejecting), Ok(allowing)) => assert!(
            rejecting == allowing,
            "{name} for model {}: the non-finite policy changed the records read",
            model.name
        ),
        (Err(_), Ok(allowing)) => assert!(
            has_non_finite(allowing),
            "{name} for model {}: refused under non_finite = reject ({}) but holds no NaN or \
             Infinity",
            model.name,
            reject
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
        (Ok(_), Err(error)) => panic!(
            "{name} for model {}: read under non_finite = reject but refused under allow: {error}",
            model.name
        ),
        (Err(_), Err(_)) => {}
    }
}

/// 1 + the number of newlines: the last line number a JSON Lines record can have.
fn line_count(bytes: &[u8]) -> usize {
    1 + bytes.iter().filter(|&&b| b == b'\n').count()
}
