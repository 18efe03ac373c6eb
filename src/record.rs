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
