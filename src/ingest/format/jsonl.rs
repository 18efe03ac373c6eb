//! JSON Lines records and late-label files.
//!
//! Each non-blank line is one JSON object, parsed into a `serde_json::Value` (whose recursion
//! limit of 128 bounds nesting) and then walked once: tensor elements are pushed straight into
//! one `Vec` per input, and a path to a bad element is only formatted when there is an error.
//!
//! `null` for an optional key (`id`, `ts`, `segment`, `label`) means "not given", as Python and
//! pandas writers produce for missing values.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{FormatError, check_id, check_shape, list_display, parse_ts, quote, spec_names};
use crate::record::{ElemType, InputSpec, LateLabel, Origin, Record, Tensor, TensorData};

/// Reads a JSON Lines file of records.
pub(super) fn read_records(bytes: &[u8], specs: &[InputSpec]) -> Result<Vec<Record>, FormatError> {
    let mut records = Vec::new();
    for line in lines(bytes) {
        let (number, object) = line?;
        records.push(record(number, &object, specs)?);
    }
    if records.is_empty() {
        return Err(FormatError::empty());
    }
    Ok(records)
}

/// Reads a `*.labels.jsonl` file of late ground truth.
pub(super) fn read_labels(bytes: &[u8]) -> Result<Vec<LateLabel>, FormatError> {
    let mut labels = Vec::new();
    for line in lines(bytes) {
        let (number, object) = line?;
        let at = Origin::Line(number);
        let id = match object.get("id") {
            None | Some(Value::Null) => {
                return Err(FormatError::field(
                    at,
                    "id",
                    "missing id: expected the string or integer id of an earlier record",
                ));
            }
            Some(v) => id(v).map_err(|m| FormatError::field(at, "id", m))?,
        };
        let label = match object.get("label") {
            None | Some(Value::Null) => {
                return Err(FormatError::field(
                    at,
                    "label",
                    "missing label: expected an integer label",
                ));
            }
            Some(v) => label(v).map_err(|m| FormatError::field(at, "label", m))?,
        };
        labels.push(LateLabel {
            id,
            label,
            line: number,
        });
    }
    if labels.is_empty() {
        return Err(FormatError::whole("empty file: no labels"));
    }
    Ok(labels)
}

/// The non-blank lines of a file, each parsed into a JSON object, with 1-based line numbers.
fn lines(bytes: &[u8]) -> impl Iterator<Item = Result<(usize, Map<String, Value>), FormatError>> {
    // A UTF-8 byte order mark, as some Windows tools write, is not part of the first record.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, raw)| {
            let number = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            Some(parse_line(number, raw))
        })
}

fn parse_line(number: usize, raw: &[u8]) -> Result<(usize, Map<String, Value>), FormatError> {
    let at = Origin::Line(number);
    let text = std::str::from_utf8(raw).map_err(|e| {
        FormatError::at(
            at,
            format!(
                "invalid UTF-8 at byte {} of the line: expected UTF-8 encoded JSON text",
                e.valid_up_to() + 1
            ),
        )
    })?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok((number, object)),
        Ok(other) => Err(FormatError::at(
            at,
            format!(
                "expected a JSON object {{\"inputs\": ...}}, got {}",
                describe(&other)
            ),
        )),
        Err(e) => Err(FormatError::at(at, json_error_message(text, &e))),
    }
}

/// Says why a line is not JSON, in terms of this line (serde_json counts lines of its input,
/// which is always 1 here).
fn json_error_message(text: &str, e: &serde_json::Error) -> String {
    if let Some(token) = bare_non_finite(text) {
        return format!(
            "invalid JSON: found {token}, but NaN/Infinity are not valid JSON numbers; expected \
             finite numbers (Python: json.dumps(..., allow_nan=False) catches this)"
        );
    }
    let mut reason = e.to_string();
    if let Some(cut) = reason.rfind(" at line ") {
        reason.truncate(cut);
    }
    if e.is_eof() {
        format!("invalid JSON: the line ends early ({reason}); expected a complete object")
    } else {
        format!("invalid JSON at column {}: {reason}", e.column())
    }
}

/// The first bare `NaN`, `Infinity` or `-Infinity` outside strings, as Python's `json.dumps`
/// writes by default.
fn bare_non_finite(text: &str) -> Option<&'static str> {
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
        } else if b == b'"' {
            in_string = true;
            i += 1;
        } else if b.is_ascii_alphabetic() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let negative = start > 0 && bytes[start - 1] == b'-';
            match &text[start..i] {
                "NaN" => return Some("NaN"),
                "Infinity" if negative => return Some("-Infinity"),
                "Infinity" => return Some("Infinity"),
                _ => {}
            }
        } else {
            i += 1;
        }
    }
    None
}

fn record(
    number: usize,
    object: &Map<String, Value>,
    specs: &[InputSpec],
) -> Result<Record, FormatError> {
    let at = Origin::Line(number);
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(id(v).map_err(|m| FormatError::field(at, "id", m))?),
    };
    let ts = match object.get("ts") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_ts(s).map_err(|m| FormatError::field(at, "ts", m))?),
        Some(other) => {
            return Err(FormatError::field(
                at,
                "ts",
                format!(
                    "expected an RFC 3339 timestamp string, got {}",
                    describe(other)
                ),
            ));
        }
    };
    let segment = match object.get("segment") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => segment(at, v)?,
    };
    let label = match object.get("label") {
        None | Some(Value::Null) => None,
        Some(v) => Some(label(v).map_err(|m| FormatError::field(at, "label", m))?),
    };
    let inputs = match object.get("inputs") {
        Some(Value::Object(inputs)) => inputs,
        Some(other) => {
            return Err(FormatError::field(
                at,
                "inputs",
                format!(
                    "expected an object of the model's inputs ({}), got {}",
                    spec_names(specs),
                    describe(other)
                ),
            ));
        }
        None => {
            return Err(FormatError::at(
                at,
                format!(
                    "missing \"inputs\": expected an object of the model's inputs ({})",
                    spec_names(specs)
                ),
            ));
        }
    };
    Ok(Record {
        id,
        ts,
        segment,
        inputs: tensors(at, inputs, specs)?,
        label,
        origin: at,
    })
}

fn id(v: &Value) -> Result<String, String> {
    let id = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        other => {
            return Err(format!(
                "expected a string or integer id, got {}",
                describe(other)
            ));
        }
    };
    check_id(&id)?;
    Ok(id)
}

fn label(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("expected an integer (int64) label, got {n}")),
        other => Err(format!(
            "expected an integer (int64) label, got {}",
            describe(other)
        )),
    }
}

fn segment(at: Origin, v: &Value) -> Result<BTreeMap<String, String>, FormatError> {
    let Value::Object(object) = v else {
        return Err(FormatError::field(
            at,
            "segment",
            format!(
                "expected an object such as {{\"line\": \"A\"}}, got {}",
                describe(v)
            ),
        ));
    };
    let mut segment = BTreeMap::new();
    for (key, value) in object {
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(FormatError::field(
                    at,
                    format!("segment.{key}"),
                    format!("expected a string, number or bool, got {}", describe(other)),
                ));
            }
        };
        segment.insert(key.clone(), value);
    }
    Ok(segment)
}

fn tensors(
    at: Origin,
    inputs: &Map<String, Value>,
    specs: &[InputSpec],
) -> Result<BTreeMap<String, Tensor>, FormatError> {
    if let Some(unknown) = inputs.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
        return Err(FormatError::field(
            at,
            format!("inputs.{unknown}"),
            format!(
                "unknown input '{unknown}'; the model's inputs are: {}",
                spec_names(specs)
            ),
        ));
    }
    let mut tensors = BTreeMap::new();
    for spec in specs {
        let field = || format!("inputs.{}", spec.name);
        let Some(value) = inputs.get(&spec.name) else {
            return Err(FormatError::field(
                at,
                field(),
                format!(
                    "missing input '{}' (expected {} {})",
                    spec.name,
                    spec.elem_type,
                    spec.shape_display()
                ),
            ));
        };
        let tensor = tensor(spec, value).map_err(|m| FormatError::field(at, field(), m))?;
        tensors.insert(spec.name.clone(), tensor);
    }
    Ok(tensors)
}

/// Walks one input's nested arrays once, checking they are rectangular and pushing elements as
/// the spec's element type, then checks the shape against the spec.
fn tensor(spec: &InputSpec, value: &Value) -> Result<Tensor, String> {
    // The shape is read along the first elements; the walk then holds every array to it.
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    // Never reserve more than the elements that can exist: a ragged array's first-element shape
    // may multiply out to far more than it holds.
    let capacity = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX)
        .min(1 << 20);
    let mut walk = Walk {
        spec,
        shape: &shape,
        index: Vec::with_capacity(shape.len()),
    };
    let data = match spec.elem_type {
        ElemType::F32 => {
            let mut out = Vec::with_capacity(capacity);
            walk.visit(value, &mut |v, w| w.push_f32(v, &mut out))?;
            TensorData::F32(out)
        }
        ElemType::I64 => {
            let mut out = Vec::with_capacity(capacity);
            walk.visit(value, &mut |v, w| w.push_i64(v, &mut out))?;
            TensorData::I64(out)
        }
    };
    check_shape(spec, &shape)?;
    Ok(Tensor { shape, data })
}

struct Walk<'a> {
    spec: &'a InputSpec,
    shape: &'a [usize],
    /// The index of the value being visited; only formatted into a message on error.
    index: Vec<usize>,
}

impl Walk<'_> {
    fn visit<F>(&mut self, value: &Value, leaf: &mut F) -> Result<(), String>
    where
        F: FnMut(&Value, &Walk<'_>) -> Result<(), String>,
    {
        let depth = self.index.len();
        match (value, self.shape.get(depth)) {
            (Value::Array(items), Some(&len)) if items.len() == len => {
                self.index.push(0);
                for (i, item) in items.iter().enumerate() {
                    if let Some(last) = self.index.last_mut() {
                        *last = i;
                    }
                    self.visit(item, leaf)?;
                }
                self.index.pop();
                Ok(())
            }
            (Value::Array(items), Some(&len)) => Err(format!(
                "ragged array: {} has {} elements, {} has {len}",
                self.path(&self.index),
                items.len(),
                self.path(&vec![0; depth]),
            )),
            (Value::Array(_), None) => Err(format!(
                "ragged array: {} is an array, {} is not",
                self.path(&self.index),
                self.path(&vec![0; depth]),
            )),
            (other, Some(&len)) => Err(format!(
                "ragged array: {} is {}, {} is an array of {len}",
                self.path(&self.index),
                describe(other),
                self.path(&vec![0; depth]),
            )),
            (other, None) => leaf(other, self),
        }
    }

    /// `inputs.x[3][2]`.
    fn path(&self, index: &[usize]) -> String {
        let mut path = format!("inputs.{}", self.spec.name);
        for i in index {
            path.push_str(&format!("[{i}]"));
        }
        path
    }

    fn at(&self) -> String {
        if self.index.is_empty() {
            String::new()
        } else {
            format!(" at index {}", list_display(&self.index))
        }
    }

    fn push_f32(&self, v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
        let Value::Number(n) = v else {
            return Err(format!(
                "expected float32 number{}, got {}",
                self.at(),
                describe(v)
            ));
        };
        // Without serde_json's arbitrary_precision every number has an f64 value.
        let x = n.as_f64().unwrap_or(f64::NAN);
        if x.is_nan() || x.abs() > f64::from(f32::MAX) {
            return Err(format!(
                "expected float32 number{} within ±{:e}, got {n} (outside the float32 range)",
                self.at(),
                f32::MAX
            ));
        }
        out.push(x as f32);
        Ok(())
    }

    fn push_i64(&self, v: &Value, out: &mut Vec<i64>) -> Result<(), String> {
        match v {
            Value::Number(n) => match n.as_i64() {
                Some(x) => {
                    out.push(x);
                    Ok(())
                }
                None if n.is_u64() => Err(format!(
                    "expected int64{}, got {n} (outside the int64 range)",
                    self.at()
                )),
                None => Err(format!("expected int64{}, got {n}", self.at())),
            },
            other => Err(format!(
                "expected int64{}, got {}",
                self.at(),
                describe(other)
            )),
        }
    }
}

/// A JSON value as a message names it: `string "abc"`, `1.5`, `null`, `array of 3`.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("string {}", quote(s)),
        Value::Array(items) => format!("an array of {}", items.len()),
        Value::Object(_) => "an object".to_string(),
    }
}
