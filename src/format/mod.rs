//! File formats of field data: turns the bytes of one dropped file into validated records (or late
//! labels), or into one error that says what was wrong and where.
//!
//! This module is responsible for everything between "these are the bytes of `name`" and "these
//! are records whose every input tensor has the model's element type and shape". It does no I/O:
//! the watcher reads the file, and the quarantine writer puts [`FormatError`]'s `Display` into
//! `<name>.error.txt`, so every message says what was expected and what was found, in words a
//! maintenance technician can act on.
//!
//! A file is all-or-nothing: the first problem rejects the whole file. Half-ingesting a file
//! would leave the producer unsure which records were counted when they fix and resend it.
//!
//! Formats, one submodule each:
//! - `jsonl`: JSON Lines records (`*.jsonl`, `*.ndjson`), one object per line, and late labels
//!   (`*.labels.jsonl`), `{"id": ..., "label": ...}` per line;
//! - `npy`: NumPy `.npy` arrays of shape `[N, ...input shape]` for single-input models;
//! - `npz`: `.npz` archives of one array per input plus optional `id`, `label`, `ts` and
//!   `segment.<key>` columns.

mod jsonl;
mod npy;
mod npz;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::config::NonFinitePolicy;
use crate::record::{FileContent, InputSpec, Origin};

/// Whether a file name is one ingest ignores (temporary or hidden files being written).
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

/// How strict reading is; set from the model's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatOptions {
    /// Whether NaN/Infinity in float inputs reject the file (only `.npy`/`.npz` can carry them;
    /// JSON has no such numbers).
    pub non_finite: NonFinitePolicy,
    /// Upper bound on the bytes an `.npz` archive may expand to, so a small archive of zeros
    /// cannot exhaust memory.
    pub max_uncompressed_bytes: u64,
}

/// The kinds of file the inbox accepts, told apart by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    JsonLines,
    Labels,
    Npy,
    Npz,
}

/// The kind of file `name` is, by its suffix; `None` for files sensei does not read.
///
/// `*.labels.jsonl` is checked before `*.jsonl`: a labels file is also a JSON Lines file by name.
pub fn file_kind(name: &str) -> Option<FileKind> {
    if name.ends_with(".labels.jsonl") || name.ends_with(".labels.ndjson") {
        Some(FileKind::Labels)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Some(FileKind::JsonLines)
    } else if name.ends_with(".npy") {
        Some(FileKind::Npy)
    } else if name.ends_with(".npz") {
        Some(FileKind::Npz)
    } else {
        None
    }
}

/// Reads one inbox file into records (or late labels) for a model with inputs `specs`.
///
/// Every record returned has exactly the inputs in `specs`, each with the spec's element type and
/// a shape matching the spec. The first problem found rejects the whole file.
pub fn read_file(
    name: &str,
    bytes: &[u8],
    specs: &[InputSpec],
    opts: &FormatOptions,
) -> Result<FileContent, FormatError> {
    match file_kind(name) {
        Some(FileKind::JsonLines) => jsonl::read_records(bytes, specs).map(FileContent::Records),
        Some(FileKind::Labels) => jsonl::read_labels(bytes).map(FileContent::Labels),
        Some(FileKind::Npy) => npy::read_records(bytes, specs, opts).map(FileContent::Records),
        Some(FileKind::Npz) => npz::read_records(bytes, specs, opts).map(FileContent::Records),
        None => Err(FormatError::whole(format!(
            "unsupported file type '{name}': expected a name ending in .jsonl, .ndjson, \
             .labels.jsonl, .npy or .npz"
        ))),
    }
}

/// Why a file was rejected, and where.
///
/// Displayed as `line 3, field inputs.x: expected shape [8, 8], got [8, 7]` for JSON Lines,
/// `record 12, array x: NaN at index [3, 5]` for NumPy files, `array x: ...` for a problem with a
/// whole array, or just the message for a problem with the whole file. `field` is called a
/// "field" when the location is a line and an "array" otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FormatError {
    pub location: Option<Origin>,
    pub field: Option<String>,
    pub message: String,
}

impl FormatError {
    /// A problem with the file as a whole.
    fn whole(message: impl Into<String>) -> FormatError {
        FormatError {
            location: None,
            field: None,
            message: message.into(),
        }
    }

    /// A problem at one line or record, not tied to one field.
    fn at(location: Origin, message: impl Into<String>) -> FormatError {
        FormatError {
            location: Some(location),
            field: None,
            message: message.into(),
        }
    }

    /// A problem with one field of one line or record. A field path longer than
    /// [`MAX_NAME_CHARS`] is cut short: its key comes from the file.
    fn field(location: Origin, field: impl Into<String>, message: impl Into<String>) -> Self {
        FormatError {
            location: Some(location),
            field: Some(clip(&field.into())),
            message: message.into(),
        }
    }

    /// A problem with a whole array of a NumPy file (the name cut short like a field path).
    fn array(name: impl Into<String>, message: impl Into<String>) -> FormatError {
        FormatError {
            location: None,
            field: Some(clip(&name.into())),
            message: message.into(),
        }
    }

    fn empty() -> FormatError {
        FormatError::whole("empty file: no records")
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field_word = match self.location {
            Some(Origin::Line(_)) => "field",
            _ => "array",
        };
        match (&self.location, &self.field) {
            (Some(loc), Some(field)) => write!(f, "{loc}, {field_word} {field}: ")?,
            (Some(loc), None) => write!(f, "{loc}: ")?,
            (None, Some(field)) => write!(f, "{field_word} {field}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// Checks a record's input shape against its spec: same rank, fixed dimensions equal, dynamic
/// dimensions at least 1. Returns the message for a mismatch.
fn check_shape(spec: &InputSpec, got: &[usize]) -> Result<(), String> {
    let fits = spec.shape.len() == got.len()
        && spec.shape.iter().zip(got).all(|(want, &got)| match want {
            Some(n) => *n == got,
            None => got >= 1,
        });
    if fits {
        Ok(())
    } else {
        let dynamic = if spec.shape.iter().any(Option::is_none) {
            " (? = any length of at least 1)"
        } else {
            ""
        };
        Err(format!(
            "expected shape {}{dynamic}, got {}",
            spec.shape_display(),
            list_display(got)
        ))
    }
}

/// `[3, 5]`: a shape or an index, the way messages print one.
fn list_display(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// The model's input names for messages: `x, mask`.
fn spec_names(specs: &[InputSpec]) -> String {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    names.join(", ")
}

/// Longest id accepted, in bytes: ids are stored and joined on, not documents.
const MAX_ID_BYTES: usize = 256;

/// Checks a producer's record id; returns the message for a bad one.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        Err("expected a non-empty id, got an empty string".to_string())
    } else if id.len() > MAX_ID_BYTES {
        Err(format!(
            "expected an id of at most {MAX_ID_BYTES} bytes, got {} bytes",
            id.len()
        ))
    } else {
        Ok(())
    }
}

/// Parses an RFC 3339 timestamp; returns the message for a bad one.
fn parse_ts(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
        format!(
            "expected an RFC 3339 timestamp such as \"2024-05-01T12:00:00Z\", got {}",
            quote(s)
        )
    })
}

/// The most characters of a name from the file (an input key, a segment key, an array name)
/// that a message repeats: a hostile file may use a name of 64 KiB.
const MAX_NAME_CHARS: usize = 64;

/// A name from the file, cut short for a message if long ("..." marks the cut).
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_NAME_CHARS) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// A string quoted for a message, cut short if long: a bad value may be a whole document.
fn quote(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{:?}...", head)
    } else {
        format!("{head:?}")
    }
}

/// The message for a non-finite float, or `None` if `v` is finite.
fn non_finite_name(v: f32) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f32::INFINITY {
        Some("Infinity")
    } else if v == f32::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// Turns a flat row-major offset into a multi-index for `shape`.
fn unravel(mut offset: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *slot = offset % dim;
            offset /= dim;
        }
    }
    index
}
