//! JSON Lines records and late-label files.
//!
//! Each non-blank line is one JSON object, parsed into a `serde_json::Value` (whose recursion
//! limit of 128 bounds nesting) and then walked once: tensor elements are pushed straight into
//! one `Vec` per input, and a path to a bad element is only formatted when there is an error.
//!
//! `null` for an optional key (`id`, `ts`, `segment`, `label`) means "not given", as Python and
//! pandas writers produce for missing values.
//!
//! A key twice in one object (`{"ts": …, "ts": …}`, at any depth) makes the line bad: JSON
//! parsers disagree on which one counts (serde_json and Python keep the last, others the first),
//! so the producer's intent cannot be known.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{FormatError, check_id, check_shape, list_display, parse_ts, quote, spec_names};
use crate::record::{ElemType, InputSpec, LateLabel, Origin, Record, Tensor, TensorData};

/// Reads a JSON Lines file of records.
pub(super) fn read_records(bytes: &[u8], specs: &[InputSpec]) -> Result<Vec<Record>, FormatError> {
    let mut records = Vec::new();
    for (number, raw) in raw_lines(bytes) {
        // Well-formed lines take the fast path; anything it does not accept is parsed again by
        // the general path, which says what is wrong. Both accept the same lines.
        if let Some(record) = fast::record(number, raw, specs) {
            records.push(record);
            continue;
        }
        let (number, object) = parse_line(number, raw)?;
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
    raw_lines(bytes).map(|(number, raw)| parse_line(number, raw))
}

/// The non-blank lines of a file with 1-based line numbers, without their line ends.
fn raw_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    // A UTF-8 byte order mark, as some Windows tools write, is not part of the first record.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, raw)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some((i + 1, raw))
            }
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
    match strict::parse(text) {
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
    if reason.starts_with(strict::DUPLICATE) {
        return format!(
            "{reason} at column {}: a key may appear only once in an object (JSON readers \
             disagree on which one counts)",
            e.column()
        );
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
    let Meta {
        id,
        ts,
        segment,
        label,
    } = meta(at, object)?;
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

/// The optional keys of a record line.
struct Meta {
    id: Option<String>,
    ts: Option<time::OffsetDateTime>,
    segment: BTreeMap<String, String>,
    label: Option<i64>,
}

fn meta(at: Origin, object: &Map<String, Value>) -> Result<Meta, FormatError> {
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
    Ok(Meta {
        id,
        ts,
        segment,
        label,
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
                "unknown input '{}'; the model's inputs are: {}",
                super::clip(unknown),
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
        // Rounded to the nearest float32: "3.4028235e38", f32::MAX as producers print it, is
        // just above f32::MAX as an f64 and rounds to it.
        if x.is_nan() || !(x as f32).is_finite() {
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

/// JSON text into a `Value`, refusing a key repeated in an object.
mod strict {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};

    /// How a duplicate key's error message begins.
    pub(super) const DUPLICATE: &str = "duplicate key ";

    pub(super) fn parse(text: &str) -> Result<Value, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = Seed { at: None }.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }

    /// Where a value is, as a chain of keys and indices up to the line's object; only
    /// formatted into a message on error.
    #[derive(Clone, Copy)]
    struct At<'p> {
        step: Step<'p>,
        parent: Option<&'p At<'p>>,
    }

    #[derive(Clone, Copy)]
    enum Step<'p> {
        Key(&'p str),
        Index(usize),
    }

    /// `segment.line`, `inputs.x[2]`.
    fn path(at: Option<&At<'_>>, key: &str) -> String {
        let mut steps = Vec::new();
        let mut next = at;
        while let Some(a) = next {
            steps.push(a.step);
            next = a.parent;
        }
        let mut out = String::new();
        for step in steps.iter().rev() {
            match step {
                Step::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&super::super::clip(k));
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&super::super::clip(key));
        out
    }

    /// The value here (`at`: where it is).
    pub(super) struct Seed<'p> {
        at: Option<&'p At<'p>>,
    }

    impl Seed<'_> {
        /// A value of the line's object (what its path starts from).
        pub(super) fn top() -> Seed<'static> {
            Seed { at: None }
        }
    }

    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Value;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Value;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            loop {
                let at = At {
                    step: Step::Index(items.len()),
                    parent: self.at,
                };
                match seq.next_element_seed(Seed { at: Some(&at) })? {
                    Some(item) => items.push(item),
                    None => break,
                }
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if object.contains_key(&key) {
                    return Err(de::Error::custom(format!(
                        "{DUPLICATE}\"{}\"",
                        path(self.at, &key)
                    )));
                }
                let at = At {
                    step: Step::Key(&key),
                    parent: self.at,
                };
                let value = map.next_value_seed(Seed { at: Some(&at) })?;
                object.insert(key, value);
            }
            Ok(Value::Object(object))
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_repeated_key_is_refused_with_its_path() {
            let message = |text: &str| super::parse(text).expect_err(text).to_string();
            assert!(message(r#"{"ts":"a","ts":"b"}"#).starts_with("duplicate key \"ts\""));
            assert!(
                message(r#"{"segment":{"line":"A","line":"B"}}"#)
                    .starts_with("duplicate key \"segment.line\"")
            );
            assert!(
                message(r#"{"x":[{"a":1},{"a":1,"a":2}]}"#).starts_with("duplicate key \"x[1].a\"")
            );
            assert_eq!(
                super::parse(r#"{"a":[1,2.5,"s",null,true,{"b":{}}],"c":{"a":1}}"#).unwrap(),
                serde_json::json!({"a":[1,2.5,"s",null,true,{"b":{}}],"c":{"a":1}})
            );
        }
    }
}

/// The fast path for well-formed record lines: the line is deserialised straight into each
/// input's element vector, without a `Value` tree for the tensors (64 numbers make 64 `Value`s
/// and 9 vectors in the general path). It gives up (`None`) at anything unusual: a key twice,
/// an unknown or missing input, a ragged array, a non-number element, a shape the spec does not
/// allow, any bad optional key. The general path then parses the line again and says what is
/// wrong, so the two accept exactly the same lines and build the same records.
mod fast {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    use super::{Meta, check_shape, meta, strict};
    use crate::record::{ElemType, InputSpec, Origin, Record, Tensor, TensorData};

    pub(super) fn record(number: usize, raw: &[u8], specs: &[InputSpec]) -> Option<Record> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let line = LineSeed { specs }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        let at = Origin::Line(number);
        let Meta {
            id,
            ts,
            segment,
            label,
        } = meta(at, &line.optional).ok()?;
        Some(Record {
            id,
            ts,
            segment,
            inputs: line.inputs?,
            label,
            origin: at,
        })
    }

    struct Line {
        /// `id`, `ts`, `segment` and `label` as given (small values, read by [`meta`]).
        optional: Map<String, Value>,
        inputs: Option<BTreeMap<String, Tensor>>,
    }

    /// Any failure: the general path will find and describe it.
    fn give_up<E: de::Error>() -> E {
        E::custom("not on the fast path")
    }

    struct LineSeed<'a> {
        specs: &'a [InputSpec],
    }

    impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
        type Value = Line;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Line, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for LineSeed<'_> {
        type Value = Line;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a record object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
            let mut line = Line {
                optional: Map::new(),
                inputs: None,
            };
            let mut others: Vec<String> = Vec::new();
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Optional(name) => {
                        let value = map.next_value_seed(strict::Seed::top())?;
                        if line.optional.insert(name.to_string(), value).is_some() {
                            return Err(give_up());
                        }
                    }
                    Key::Inputs => {
                        if line.inputs.is_some() {
                            return Err(give_up());
                        }
                        line.inputs = Some(map.next_value_seed(InputsSeed { specs: self.specs })?);
                    }
                    Key::Other(name) => {
                        // Ignored, but a repeated key anywhere in it is the general path's to
                        // describe.
                        if others.contains(&name) {
                            return Err(give_up());
                        }
                        map.next_value_seed(strict::Seed::top())?;
                        others.push(name);
                    }
                }
            }
            Ok(line)
        }
    }

    /// A top-level key. Other keys are ignored, as the general path ignores them, but once each
    /// (a key twice is a bad line on both paths).
    enum Key {
        Optional(&'static str),
        Inputs,
        Other(String),
    }

    impl<'de> de::Deserialize<'de> for Key {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
            struct KeyVisitor;
            impl Visitor<'_> for KeyVisitor {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                    Ok(match key {
                        "id" => Key::Optional("id"),
                        "ts" => Key::Optional("ts"),
                        "segment" => Key::Optional("segment"),
                        "label" => Key::Optional("label"),
                        "inputs" => Key::Inputs,
                        other => Key::Other(other.to_owned()),
                    })
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    struct InputsSeed<'a> {
        specs: &'a [InputSpec],
    }

    impl<'de> DeserializeSeed<'de> for InputsSeed<'_> {
        type Value = BTreeMap<String, Tensor>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for InputsSeed<'_> {
        type Value = BTreeMap<String, Tensor>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of inputs")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut tensors = BTreeMap::new();
            while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let spec = self
                    .specs
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(give_up)?;
                if tensors.contains_key(&spec.name) {
                    return Err(give_up());
                }
                let mut walk = Walk::new(spec);
                map.next_value_seed(Node {
                    walk: &mut walk,
                    depth: 0,
                })?;
                let tensor = walk.finish().ok_or_else(give_up)?;
                tensors.insert(spec.name.clone(), tensor);
            }
            if tensors.len() != self.specs.len() {
                return Err(give_up());
            }
            Ok(tensors)
        }
    }

    /// One input's nested arrays as they stream past: the length seen at each depth (every
    /// array at a depth must have it), the one depth where numbers are, and the elements.
    struct Walk<'a> {
        spec: &'a InputSpec,
        lengths: Vec<Option<usize>>,
        leaf_depth: Option<usize>,
        data: TensorData,
    }

    impl<'a> Walk<'a> {
        fn new(spec: &'a InputSpec) -> Walk<'a> {
            let expected = spec
                .shape
                .iter()
                .try_fold(1usize, |acc, d| acc.checked_mul(d.unwrap_or(1)))
                .unwrap_or(0)
                .min(1 << 20);
            let data = match spec.elem_type {
                ElemType::F32 => TensorData::F32(Vec::with_capacity(expected)),
                ElemType::I64 => TensorData::I64(Vec::with_capacity(expected)),
            };
            Walk {
                spec,
                lengths: Vec::new(),
                leaf_depth: None,
                data,
            }
        }

        fn array_at(&self, depth: usize) -> bool {
            self.leaf_depth.is_none_or(|leaf| depth < leaf)
        }

        fn array_done(&mut self, depth: usize, len: usize) -> bool {
            if self.lengths.len() <= depth {
                self.lengths.resize(depth + 1, None);
            }
            match self.lengths[depth] {
                None => {
                    self.lengths[depth] = Some(len);
                    true
                }
                Some(n) => n == len,
            }
        }

        fn leaf_at(&mut self, depth: usize) -> bool {
            if self.lengths.len() > depth {
                return false;
            }
            match self.leaf_depth {
                None => {
                    self.leaf_depth = Some(depth);
                    true
                }
                Some(leaf) => leaf == depth,
            }
        }

        fn push_f64(&mut self, x: f64) -> bool {
            match &mut self.data {
                TensorData::F32(v) if !x.is_nan() && (x as f32).is_finite() => {
                    v.push(x as f32);
                    true
                }
                _ => false,
            }
        }

        fn push_i64(&mut self, x: i64) -> bool {
            match &mut self.data {
                TensorData::F32(v) => {
                    v.push(x as f64 as f32);
                    true
                }
                TensorData::I64(v) => {
                    v.push(x);
                    true
                }
            }
        }

        fn push_u64(&mut self, x: u64) -> bool {
            match &mut self.data {
                TensorData::F32(v) => {
                    v.push(x as f64 as f32);
                    true
                }
                TensorData::I64(v) => match i64::try_from(x) {
                    Ok(x) => {
                        v.push(x);
                        true
                    }
                    Err(_) => false,
                },
            }
        }

        /// The tensor, if its shape is complete, rectangular and one the spec allows.
        fn finish(self) -> Option<Tensor> {
            let rank = self.leaf_depth.unwrap_or(self.lengths.len());
            let shape: Vec<usize> = self.lengths.into_iter().collect::<Option<_>>()?;
            if shape.len() != rank {
                return None;
            }
            let count = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
            let len = match &self.data {
                TensorData::F32(v) => v.len(),
                TensorData::I64(v) => v.len(),
            };
            if count != len || check_shape(self.spec, &shape).is_err() {
                return None;
            }
            Some(Tensor {
                shape,
                data: self.data,
            })
        }
    }

    /// A value at `depth` inside one input: an array (deeper) or a number (an element).
    struct Node<'w, 'a> {
        walk: &'w mut Walk<'a>,
        depth: usize,
    }

    impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Node<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number or an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            if !self.walk.array_at(self.depth) {
                return Err(give_up());
            }
            let mut len = 0;
            while seq
                .next_element_seed(Node {
                    walk: &mut *self.walk,
                    depth: self.depth + 1,
                })?
                .is_some()
            {
                len += 1;
            }
            if self.walk.array_done(self.depth, len) {
                Ok(())
            } else {
                Err(give_up())
            }
        }
        fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
            ok(self.walk.leaf_at(self.depth) && self.walk.push_f64(x))
        }
        fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
            ok(self.walk.leaf_at(self.depth) && self.walk.push_i64(x))
        }
        fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
            ok(self.walk.leaf_at(self.depth) && self.walk.push_u64(x))
        }
    }

    fn ok<E: de::Error>(accepted: bool) -> Result<(), E> {
        if accepted { Ok(()) } else { Err(give_up()) }
    }

    #[cfg(test)]
    mod tests {
        use super::super::{parse_line, record as general};
        use crate::record::{ElemType, InputSpec};

        fn spec(name: &str, elem_type: ElemType, shape: &[Option<usize>]) -> InputSpec {
            InputSpec {
                name: name.into(),
                elem_type,
                shape: shape.to_vec(),
            }
        }

        /// What the general path makes of a line: the record, or its error message.
        fn slow(line: &str, specs: &[InputSpec]) -> Result<crate::record::Record, String> {
            let (n, object) = parse_line(7, line.as_bytes()).map_err(|e| e.to_string())?;
            general(n, &object, specs).map_err(|e| e.to_string())
        }

        #[test]
        fn well_formed_lines_take_the_fast_path_and_build_the_same_record() {
            let f32_22 = [spec("x", ElemType::F32, &[Some(2), Some(2)])];
            let dynamic = [spec("x", ElemType::F32, &[None])];
            let two = [
                spec("x", ElemType::F32, &[Some(2)]),
                spec("ids", ElemType::I64, &[Some(3)]),
            ];
            let scalar = [spec("x", ElemType::F32, &[])];
            let cases: &[(&str, &[InputSpec])] = &[
                (r#"{"inputs":{"x":[[1,2.5],[-3,4e-3]]}}"#, &f32_22),
                (
                    r#"{"id":"a-1","ts":"2026-03-02T06:00:00Z","segment":{"line":"A","shift":2,"hot":true},"label":3,"extra":[1,{"k":null}],"inputs":{"x":[[0,0],[0,1]]}}"#,
                    &f32_22,
                ),
                (
                    r#"{"id":42,"inputs":{"x":[[1,2],[3,4]]},"label":null}"#,
                    &f32_22,
                ),
                (r#"{"inputs":{"x":[1,2,3,4,5]}}"#, &dynamic),
                (
                    r#"{"inputs":{"ids":[1,-2,9223372036854775807],"x":[0.5,1e30]}}"#,
                    &two,
                ),
                (r#"{"inputs":{"x":3.25}}"#, &scalar),
                (
                    r#"{"inputs":{"x":[[18446744073709551615,1],[-9223372036854775808,0]]}}"#,
                    &f32_22,
                ),
            ];
            for (line, specs) in cases {
                let fast = super::record(7, line.as_bytes(), specs)
                    .unwrap_or_else(|| panic!("fast path refused {line}"));
                assert_eq!(Ok(fast), slow(line, specs), "{line}");
            }
        }

        #[test]
        fn anything_unusual_is_left_to_the_general_path() {
            let f32_22 = [spec("x", ElemType::F32, &[Some(2), Some(2)])];
            let i64_2 = [spec("x", ElemType::I64, &[Some(2)])];
            let dynamic = [spec("x", ElemType::F32, &[None])];
            let cases: &[(&str, &[InputSpec])] = &[
                (r#"{"inputs":{"x":[[1,2],[3]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[[1,2],3]}}"#, &f32_22),
                (r#"{"inputs":{"x":[1,[2,3]]}}"#, &dynamic),
                (r#"{"inputs":{"x":[[1,2],[[3],4]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[[],[1]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[[1],[]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[[1,2],[3,"4"]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[[1,2],[3,null]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[[1,2],[3,4]],"y":[1]}}"#, &f32_22),
                (
                    r#"{"inputs":{"x":[[1,2],[3,4]],"x":[[1,2],[3,4]]}}"#,
                    &f32_22,
                ),
                (r#"{"inputs":{}}"#, &f32_22),
                (r#"{"inputs":[[1,2],[3,4]]}"#, &f32_22),
                (r#"{"id":"a"}"#, &f32_22),
                (r#"{"inputs":{"x":[[1,2,3],[4,5,6]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[[1,2],[3,1e39]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[1.5,2]}}"#, &i64_2),
                (r#"{"inputs":{"x":[1,9223372036854775808]}}"#, &i64_2),
                (r#"{"inputs":{"x":[]}}"#, &dynamic),
                (r#"{"id":1.5,"inputs":{"x":[[1,2],[3,4]]}}"#, &f32_22),
                (
                    r#"{"id":"a","id":"b","inputs":{"x":[[1,2],[3,4]]}}"#,
                    &f32_22,
                ),
                (
                    r#"{"ts":"yesterday","inputs":{"x":[[1,2],[3,4]]}}"#,
                    &f32_22,
                ),
                (
                    r#"{"segment":{"line":[1]},"inputs":{"x":[[1,2],[3,4]]}}"#,
                    &f32_22,
                ),
                (r#"{"label":"cat","inputs":{"x":[[1,2],[3,4]]}}"#, &f32_22),
                (r#"{"inputs":{"x":[[1,2],[3,4]]}} x"#, &f32_22),
                (r#"{"inputs":{"x":[[1,2],[3,NaN]]}}"#, &f32_22),
                (r#"[1,2]"#, &f32_22),
                (
                    r#"{"segment":{"line":"A","line":"B"},"inputs":{"x":[[1,2],[3,4]]}}"#,
                    &f32_22,
                ),
                (
                    r#"{"extra":1,"extra":2,"inputs":{"x":[[1,2],[3,4]]}}"#,
                    &f32_22,
                ),
                (
                    r#"{"extra":{"a":1,"a":2},"inputs":{"x":[[1,2],[3,4]]}}"#,
                    &f32_22,
                ),
            ];
            for (line, specs) in cases {
                let fast = super::record(7, line.as_bytes(), specs);
                match slow(line, specs) {
                    // Refused lines the general path accepts are fine, but a line both accept
                    // must give the same record.
                    Ok(record) => assert!(fast.is_none() || fast == Some(record), "{line}"),
                    Err(_) => assert_eq!(fast, None, "the fast path accepted a bad line: {line}"),
                }
            }
        }
    }
}
