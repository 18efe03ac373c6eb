//! Field records as sensei sees them once a file has been read: named input tensors plus the
//! optional id, timestamp, segment and label that came with them.
//!
//! This module owns the in-memory shape of data only. Reading files into records lives in
//! `format`; running records through a model lives in `model`.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;

/// The segment name of the all-segments aggregate: every record counts in it beside its own
/// segment (windows, detectors, drift events, alert rules).
pub const ALL_SEGMENTS: &str = "*";

/// The all-segments aggregate as a label value outside sensei (Prometheus metrics, Alertmanager
/// alerts): `segment="all"`, which reads well in a selector and cannot be taken for a glob. No
/// segment has this name: a segment is `key=value` pairs, or `""` for none.
pub const ALL_SEGMENTS_LABEL: &str = "all";

/// A stored segment name as a label value: the aggregate is [`ALL_SEGMENTS_LABEL`], every other
/// segment its own name.
pub fn segment_label(segment: &str) -> &str {
    if segment == ALL_SEGMENTS {
        ALL_SEGMENTS_LABEL
    } else {
        segment
    }
}

/// Whether a character of a segment value is stored as `%XX` escapes of its UTF-8 bytes: the
/// characters that separate the stored segment (`,` between keys, `=` after a key), the escape
/// itself (`%`), control characters (newlines, escape sequences) and the invisible characters
/// that hide or reorder text on a screen (zero-width, bidirectional overrides). Every other
/// character is stored as it is, so `line=A` stays `line=A`.
pub fn escaped_in_segment(c: char) -> bool {
    matches!(c, '%' | ',' | '=')
        || c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Marks a segment value that was cut: what was kept, then `%~` and the first 8 hex digits of
/// the sha256 of the whole value. An escaped value never holds `%~` otherwise.
pub const SEGMENT_CUT_MARK: &str = "%~";

/// Bytes the cut mark and its hash take.
const SEGMENT_CUT_BYTES: usize = SEGMENT_CUT_MARK.len() + 8;

/// A segment value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentValue {
    pub text: String,
    /// The value was longer than the limit and was cut.
    pub cut: bool,
}

/// A producer's segment value as stored: escaped ([`escaped_in_segment`]), and, when that is
/// longer than `max_bytes`, cut at a character to leave room for the cut mark and the hash
/// ([`SEGMENT_CUT_MARK`]), so that the stored value is at most `max_bytes` long and two long
/// values that differ stay two segments.
pub fn segment_value(value: &str, max_bytes: usize) -> SegmentValue {
    use std::fmt::Write as _;
    let keep = max_bytes.saturating_sub(SEGMENT_CUT_BYTES);
    let mut text = String::with_capacity(value.len().min(max_bytes + 12));
    let mut cut_at = 0;
    for c in value.chars() {
        if escaped_in_segment(c) {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(text, "%{b:02X}");
            }
        } else {
            text.push(c);
        }
        if text.len() <= keep {
            cut_at = text.len();
        }
        if text.len() > max_bytes {
            break;
        }
    }
    if text.len() <= max_bytes {
        return SegmentValue { text, cut: false };
    }
    text.truncate(cut_at);
    text.push_str(SEGMENT_CUT_MARK);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(value.as_bytes());
    for b in &digest[..4] {
        let _ = write!(text, "{b:02x}");
    }
    SegmentValue { text, cut: true }
}

/// Element types sensei can feed to a model. ONNX models in the field take `float32` tensors
/// (sensor and image models) or `int64` token ids and masks (text models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    I64,
}

impl ElemType {
    /// The name numpy and ONNX users know this type by.
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "float32",
            ElemType::I64 => "int64",
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Flat, row-major tensor data.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl TensorData {
    pub fn elem_type(&self) -> ElemType {
        match self {
            TensorData::F32(_) => ElemType::F32,
            TensorData::I64(_) => ElemType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One input tensor of one record. `shape` excludes the batch axis: a record of an `[batch, 8, 8]`
/// model has shape `[8, 8]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: TensorData::I64(data),
        }
    }
}

/// What a model expects of one named input, as read from the ONNX graph. `shape` excludes the
/// batch axis; `None` marks a dynamic dimension (any positive length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub elem_type: ElemType,
    pub shape: Vec<Option<usize>>,
}

impl InputSpec {
    /// `[8, 8]` or `[?, 128]`, the way error messages print an expected shape.
    pub fn shape_display(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

/// Where in its file a record came from: the 1-based line of a JSON Lines file, or the 0-based
/// index along the first axis of an NPY/NPZ file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Line(usize),
    Index(usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(n) => write!(f, "line {n}"),
            Origin::Index(n) => write!(f, "record {n}"),
        }
    }
}

/// One field record: the inputs for one model call plus what came with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The producer's id; records without one get `<file sha256 prefix>:<origin>` at ingest.
    pub id: Option<String>,
    pub ts: Option<OffsetDateTime>,
    /// Segment key → value, as given by the producer (filtered to the configured keys later).
    pub segment: BTreeMap<String, String>,
    pub inputs: BTreeMap<String, Tensor>,
    pub label: Option<i64>,
    pub origin: Origin,
}

/// A late ground-truth label from a `*.labels.jsonl` file, joined to an earlier record by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateLabel {
    pub id: String,
    pub label: i64,
    pub line: usize,
}

/// What one inbox file holds once read and validated.
#[derive(Debug, Clone, PartialEq)]
pub enum FileContent {
    Records(Vec<Record>),
    Labels(Vec<LateLabel>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_values_that_hold_separators_stay_apart() {
        let v = |s: &str| segment_value(s, 64).text;
        assert_eq!(v("A"), "A");
        assert_eq!(v("Zürich 3"), "Zürich 3");
        // {"line": "a=b,c"} and {"line": "a", "b,c": ...} or {"line": "a=b", "c": ...} no longer
        // write the same string.
        assert_eq!(v("a=b,c"), "a%3Db%2Cc");
        assert_eq!(v("50%"), "50%25");
        assert_eq!(v("%3D"), "%253D");
        assert_eq!(v("x\ny\u{1b}[2J"), "x%0Ay%1B[2J");
        assert_eq!(v("ab\u{202E}cd"), "ab%E2%80%AEcd");
        assert!(!v("x").contains(SEGMENT_CUT_MARK));
    }

    #[test]
    fn long_segment_values_are_cut_to_the_limit_and_stay_distinct() {
        let long_a = "a".repeat(1 << 20);
        let long_b = format!("{}b", "a".repeat(1 << 20));
        let a = segment_value(&long_a, 64);
        let b = segment_value(&long_b, 64);
        assert!(a.cut && b.cut);
        assert_eq!(a.text.len(), 64);
        assert!(a.text.starts_with(&"a".repeat(54)), "{}", a.text);
        assert_eq!(&a.text[54..56], SEGMENT_CUT_MARK);
        assert_ne!(a.text, b.text);
        // At the limit: kept whole.
        let exact = segment_value(&"c".repeat(64), 64);
        assert!(!exact.cut);
        assert_eq!(exact.text.len(), 64);
        // Never in the middle of a character or of an escape.
        let wide = segment_value(&"é,".repeat(40), 64);
        assert!(wide.cut);
        assert!(wide.text.len() <= 64);
        let kept = wide.text.split(SEGMENT_CUT_MARK).next().unwrap();
        assert!(kept.ends_with("%2C") || kept.ends_with('é'), "{kept}");
    }
}
