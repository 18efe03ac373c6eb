//! Tests of every format and every way a file can be rejected. Each asserts the message the
//! technician will read, so a changed or lost explanation fails a test.

use std::io::{Cursor, Write};

use super::*;
use crate::record::{ElemType, LateLabel, Record, Tensor};

fn ts(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("test timestamp")
}

fn spec(name: &str, elem_type: ElemType, shape: &[Option<usize>]) -> InputSpec {
    InputSpec {
        name: name.to_string(),
        elem_type,
        shape: shape.to_vec(),
    }
}

/// The corpus model: one input `x`, float32 [8, 8].
fn x88() -> Vec<InputSpec> {
    vec![spec("x", ElemType::F32, &[Some(8), Some(8)])]
}

fn x22() -> Vec<InputSpec> {
    vec![spec("x", ElemType::F32, &[Some(2), Some(2)])]
}

fn opts() -> FormatOptions {
    FormatOptions {
        non_finite: NonFinitePolicy::Reject,
        max_uncompressed_bytes: 1 << 20,
    }
}

fn records(name: &str, bytes: &[u8], specs: &[InputSpec]) -> Vec<Record> {
    match read_file(name, bytes, specs, &opts()) {
        Ok(FileContent::Records(records)) => records,
        other => panic!("expected records, got {other:?}"),
    }
}

fn error(name: &str, bytes: &[u8], specs: &[InputSpec]) -> FormatError {
    error_with(name, bytes, specs, &opts())
}

fn error_with(name: &str, bytes: &[u8], specs: &[InputSpec], opts: &FormatOptions) -> FormatError {
    match read_file(name, bytes, specs, opts) {
        Err(e) => e,
        Ok(content) => panic!("expected an error, got {content:?}"),
    }
}

/// The error's full text, as written to `<name>.error.txt`.
fn message(name: &str, bytes: &[u8], specs: &[InputSpec]) -> String {
    error(name, bytes, specs).to_string()
}

// ---------------------------------------------------------------------------------------------
// File kinds and error display

#[test]
fn file_kind_by_suffix() {
    assert_eq!(file_kind("a.labels.jsonl"), Some(FileKind::Labels));
    assert_eq!(file_kind("a.jsonl"), Some(FileKind::JsonLines));
    assert_eq!(file_kind("a.ndjson"), Some(FileKind::JsonLines));
    assert_eq!(file_kind("a.npy"), Some(FileKind::Npy));
    assert_eq!(file_kind("a.npz"), Some(FileKind::Npz));
    assert_eq!(file_kind("a.csv"), None);
    assert_eq!(file_kind("a.jsonl.tmp"), None);
}

#[test]
fn unsupported_file_type_is_an_error() {
    let text = message("readings.csv", b"1,2", &x22());
    assert!(
        text.starts_with("unsupported file type 'readings.csv'"),
        "{text}"
    );
}

#[test]
fn display_names_location_and_field() {
    let e = FormatError::field(
        Origin::Line(3),
        "inputs.x",
        "expected shape [8, 8], got [8, 7]",
    );
    assert_eq!(
        e.to_string(),
        "line 3, field inputs.x: expected shape [8, 8], got [8, 7]"
    );
    let e = FormatError::field(Origin::Index(12), "x", "NaN at index [3, 5]");
    assert_eq!(e.to_string(), "record 12, array x: NaN at index [3, 5]");
    assert_eq!(FormatError::array("x", "m").to_string(), "array x: m");
    assert_eq!(
        FormatError::at(Origin::Line(2), "m").to_string(),
        "line 2: m"
    );
    assert_eq!(FormatError::empty().to_string(), "empty file: no records");
}

// ---------------------------------------------------------------------------------------------
// JSON Lines

#[test]
fn jsonl_reads_all_fields() {
    let text = concat!(
        r#"{"id": "r-1", "ts": "2024-05-01T12:00:00Z", "segment": {"line": "A", "n": 3, "ok": true}, "inputs": {"x": [[1, 2.5], [-3, 4e2]]}, "label": 2, "extra": [1]}"#,
        "\n\n  \r\n",
        r#"{"id": 17, "inputs": {"x": [[0, 0], [0, 0]]}, "label": null}"#,
        "\r\n",
    );
    let got = records("a.jsonl", text.as_bytes(), &x22());
    assert_eq!(got.len(), 2);
    let first = &got[0];
    assert_eq!(first.id.as_deref(), Some("r-1"));
    assert_eq!(first.ts, Some(ts("2024-05-01T12:00:00Z")));
    assert_eq!(first.segment["line"], "A");
    assert_eq!(first.segment["n"], "3");
    assert_eq!(first.segment["ok"], "true");
    assert_eq!(first.label, Some(2));
    assert_eq!(first.origin, Origin::Line(1));
    assert_eq!(
        first.inputs["x"],
        Tensor::f32(vec![2, 2], vec![1.0, 2.5, -3.0, 400.0])
    );
    let second = &got[1];
    assert_eq!(second.id.as_deref(), Some("17"));
    assert_eq!(second.label, None);
    assert_eq!(second.ts, None);
    assert_eq!(second.origin, Origin::Line(4));
}

#[test]
fn jsonl_skips_a_byte_order_mark() {
    let text = "\u{FEFF}{\"inputs\": {\"x\": [[1, 2], [3, 4]]}}";
    assert_eq!(records("a.jsonl", text.as_bytes(), &x22()).len(), 1);
}

#[test]
fn jsonl_int64_input() {
    let specs = [spec("ids", ElemType::I64, &[None])];
    let got = records(
        "a.jsonl",
        br#"{"inputs": {"ids": [101, -7, 9007199254740993]}}"#,
        &specs,
    );
    assert_eq!(
        got[0].inputs["ids"],
        Tensor::i64(vec![3], vec![101, -7, 9007199254740993])
    );
    let e = error("a.jsonl", br#"{"inputs": {"ids": [1, 1.5]}}"#, &specs);
    assert_eq!(
        e.to_string(),
        "line 1, field inputs.ids: expected int64 at index [1], got 1.5"
    );
    let text = message(
        "a.jsonl",
        br#"{"inputs": {"ids": [18446744073709551615]}}"#,
        &specs,
    );
    assert!(
        text.ends_with("got 18446744073709551615 (outside the int64 range)"),
        "{text}"
    );
    let text = message("a.jsonl", br#"{"inputs": {"ids": [true]}}"#, &specs);
    assert!(
        text.ends_with("expected int64 at index [0], got bool true"),
        "{text}"
    );
}

#[test]
fn jsonl_dynamic_dimension_takes_any_positive_length() {
    let specs = [spec("x", ElemType::F32, &[None, Some(2)])];
    let got = records(
        "a.jsonl",
        br#"{"inputs": {"x": [[1, 2], [3, 4], [5, 6]]}}"#,
        &specs,
    );
    assert_eq!(got[0].inputs["x"].shape, vec![3, 2]);
    let e = error("a.jsonl", br#"{"inputs": {"x": []}}"#, &specs);
    assert_eq!(
        e.message,
        "expected shape [?, 2] (? = any length of at least 1), got [0]"
    );
}

#[test]
fn jsonl_scalar_input() {
    let specs = [spec("t", ElemType::F32, &[])];
    let got = records("a.jsonl", br#"{"inputs": {"t": 21.5}}"#, &specs);
    assert_eq!(got[0].inputs["t"], Tensor::f32(vec![], vec![21.5]));
}

#[test]
fn jsonl_empty_file() {
    assert_eq!(message("a.jsonl", b"", &x22()), "empty file: no records");
    assert_eq!(
        message("a.jsonl", b"\n  \n\r\n", &x22()),
        "empty file: no records"
    );
}

#[test]
fn jsonl_invalid_utf8_names_the_line() {
    let bytes = b"{\"inputs\": {\"x\": [[1, 2], [3, 4]]}}\n{\"id\": \"\xff\xfe\"}\n";
    let e = error("a.jsonl", bytes, &x22());
    assert_eq!(e.location, Some(Origin::Line(2)));
    assert!(
        e.to_string()
            .starts_with("line 2: invalid UTF-8 at byte 9 of the line"),
        "{e}"
    );
}

#[test]
fn jsonl_nan_tokens_are_explained() {
    let text = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[NaN, 1], [2, 3]]}}"#,
        &x22(),
    );
    assert!(
        text.starts_with(
            "line 1: invalid JSON: found NaN, but NaN/Infinity are not valid JSON numbers"
        ),
        "{text}"
    );
    let text = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[-Infinity, 1], [2, 3]]}}"#,
        &x22(),
    );
    assert!(text.contains("found -Infinity"), "{text}");
    // A NaN inside a string is text, not a number token.
    let text = message(
        "a.jsonl",
        br#"{"id": "NaN", "inputs": {"x": [[1, 2], [3,"#,
        &x22(),
    );
    assert!(!text.contains("NaN/Infinity"), "{text}");
}

#[test]
fn jsonl_truncated_line() {
    let text = concat!(
        r#"{"inputs": {"x": [[1, 2], [3, 4]]}}"#,
        "\n",
        r#"{"inputs": {"x": [[1, 2], [3"#
    );
    let e = message("a.jsonl", text.as_bytes(), &x22());
    assert!(
        e.starts_with("line 2: invalid JSON: the line ends early"),
        "{e}"
    );
}

#[test]
fn jsonl_syntax_error_names_the_column() {
    let e = message("a.jsonl", br#"{"inputs" {}}"#, &x22());
    assert_eq!(e, "line 1: invalid JSON at column 11: expected `:`");
}

#[test]
fn jsonl_deep_nesting_is_refused() {
    let text = format!(
        r#"{{"inputs": {{"x": {}{}}}}}"#,
        "[".repeat(500),
        "]".repeat(500)
    );
    let e = message("a.jsonl", text.as_bytes(), &x22());
    assert!(e.starts_with("line 1: invalid JSON"), "{e}");
    assert!(e.contains("recursion limit exceeded"), "{e}");
}

#[test]
fn jsonl_line_must_be_an_object() {
    let e = message("a.jsonl", b"[1, 2]", &x22());
    assert_eq!(
        e,
        "line 1: expected a JSON object {\"inputs\": ...}, got an array of 2"
    );
}

#[test]
fn jsonl_missing_inputs() {
    let e = message("a.jsonl", br#"{"id": "a"}"#, &x22());
    assert_eq!(
        e,
        "line 1: missing \"inputs\": expected an object of the model's inputs (x)"
    );
    let e = message("a.jsonl", br#"{"inputs": [1]}"#, &x22());
    assert_eq!(
        e,
        "line 1, field inputs: expected an object of the model's inputs (x), got an array of 1"
    );
}

#[test]
fn jsonl_unknown_input() {
    let e = error(
        "a.jsonl",
        br#"{"inputs": {"x": [[1, 2], [3, 4]], "y": 1}}"#,
        &x22(),
    );
    assert_eq!(e.field.as_deref(), Some("inputs.y"));
    assert_eq!(e.message, "unknown input 'y'; the model's inputs are: x");
}

#[test]
fn jsonl_missing_input() {
    let specs = [
        spec("x", ElemType::F32, &[Some(8), Some(8)]),
        spec("mask", ElemType::I64, &[None]),
    ];
    let e = message("a.jsonl", br#"{"inputs": {"x": []}}"#, &specs);
    assert_eq!(e, "line 1, field inputs.x: expected shape [8, 8], got [0]");
    let e = message("a.jsonl", br#"{"inputs": {"mask": [1]}}"#, &specs);
    assert_eq!(
        e,
        "line 1, field inputs.x: missing input 'x' (expected float32 [8, 8])"
    );
}

#[test]
fn jsonl_ragged_arrays_name_the_path() {
    let e = message("a.jsonl", br#"{"inputs": {"x": [[1, 2], [3]]}}"#, &x22());
    assert_eq!(
        e,
        "line 1, field inputs.x: ragged array: inputs.x[1] has 1 elements, inputs.x[0] has 2"
    );
    let specs = [spec("x", ElemType::F32, &[Some(2), Some(2), Some(2)])];
    let e = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[[1, 2], [3, 4]], [[5, 6], [7, 8, 9]]]}}"#,
        &specs,
    );
    assert!(
        e.ends_with("ragged array: inputs.x[1][1] has 3 elements, inputs.x[0][0] has 2"),
        "{e}"
    );
    let e = message("a.jsonl", br#"{"inputs": {"x": [[1, 2], 3]}}"#, &x22());
    assert!(
        e.ends_with("ragged array: inputs.x[1] is 3, inputs.x[0] is an array of 2"),
        "{e}"
    );
    let e = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[1, 2], [3, [4]]]}}"#,
        &x22(),
    );
    assert!(
        e.ends_with("ragged array: inputs.x[1][1] is an array, inputs.x[0][0] is not"),
        "{e}"
    );
}

#[test]
fn jsonl_wrong_shape() {
    let e = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[1, 2, 3], [4, 5, 6]]}}"#,
        &x22(),
    );
    assert_eq!(
        e,
        "line 1, field inputs.x: expected shape [2, 2], got [2, 3]"
    );
    let e = message("a.jsonl", br#"{"inputs": {"x": [1, 2, 3, 4]}}"#, &x22());
    assert_eq!(e, "line 1, field inputs.x: expected shape [2, 2], got [4]");
}

#[test]
fn jsonl_wrong_element_type() {
    let e = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[1, "abc"], [3, 4]]}}"#,
        &x22(),
    );
    assert_eq!(
        e,
        "line 1, field inputs.x: expected float32 number at index [0, 1], got string \"abc\""
    );
    let e = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[1, 2], [null, 4]]}}"#,
        &x22(),
    );
    assert!(
        e.ends_with("expected float32 number at index [1, 0], got null"),
        "{e}"
    );
}

#[test]
fn jsonl_float32_max_as_printed_is_a_float32() {
    // f32::MAX and -f32::MAX the way producers print them (shortest round trip), which as
    // f64 values lie just outside them.
    let r = records(
        "a.jsonl",
        br#"{"inputs": {"x": [[3.4028235e38, -3.4028235e38], [3, 4]]}}"#,
        &x22(),
    );
    let crate::record::TensorData::F32(v) = &r[0].inputs["x"].data else {
        panic!("not float32");
    };
    assert_eq!(v[..2], [f32::MAX, f32::MIN]);
}

#[test]
fn jsonl_number_outside_float32() {
    let e = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[1, 2], [3, -1e39]]}}"#,
        &x22(),
    );
    assert!(
        e.starts_with("line 1, field inputs.x: expected float32 number at index [1, 1]"),
        "{e}"
    );
    assert!(e.ends_with("got -1e+39 (outside the float32 range)"), "{e}");
    // Beyond f64 serde_json itself refuses the number.
    let e = message(
        "a.jsonl",
        br#"{"inputs": {"x": [[1e400, 2], [3, 4]]}}"#,
        &x22(),
    );
    assert!(e.contains("number out of range"), "{e}");
}

#[test]
fn jsonl_bad_id() {
    let e = error(
        "a.jsonl",
        br#"{"id": "", "inputs": {"x": [[1, 2], [3, 4]]}}"#,
        &x22(),
    );
    assert_eq!(
        e.to_string(),
        "line 1, field id: expected a non-empty id, got an empty string"
    );
    let long = format!(r#"{{"id": "{}", "inputs": {{}}}}"#, "a".repeat(300));
    let e = message("a.jsonl", long.as_bytes(), &x22());
    assert_eq!(
        e,
        "line 1, field id: expected an id of at most 256 bytes, got 300 bytes"
    );
    let e = message("a.jsonl", br#"{"id": 1.5, "inputs": {}}"#, &x22());
    assert_eq!(
        e,
        "line 1, field id: expected a string or integer id, got 1.5"
    );
}

#[test]
fn jsonl_bad_ts() {
    let e = message("a.jsonl", br#"{"ts": "yesterday", "inputs": {}}"#, &x22());
    assert_eq!(
        e,
        "line 1, field ts: expected an RFC 3339 timestamp such as \"2024-05-01T12:00:00Z\", \
         got \"yesterday\""
    );
    let e = message("a.jsonl", br#"{"ts": 1714564800, "inputs": {}}"#, &x22());
    assert_eq!(
        e,
        "line 1, field ts: expected an RFC 3339 timestamp string, got 1714564800"
    );
}

#[test]
fn jsonl_bad_segment() {
    let e = error(
        "a.jsonl",
        br#"{"segment": {"line": ["A"]}, "inputs": {}}"#,
        &x22(),
    );
    assert_eq!(e.field.as_deref(), Some("segment.line"));
    assert_eq!(
        e.message,
        "expected a string, number or bool, got an array of 1"
    );
    let e = message("a.jsonl", br#"{"segment": "A", "inputs": {}}"#, &x22());
    assert_eq!(
        e,
        "line 1, field segment: expected an object such as {\"line\": \"A\"}, got string \"A\""
    );
}

#[test]
fn jsonl_bad_label() {
    let e = message("a.jsonl", br#"{"label": 2.5, "inputs": {}}"#, &x22());
    assert_eq!(
        e,
        "line 1, field label: expected an integer (int64) label, got 2.5"
    );
    let e = message("a.jsonl", br#"{"label": "cat", "inputs": {}}"#, &x22());
    assert_eq!(
        e,
        "line 1, field label: expected an integer (int64) label, got string \"cat\""
    );
}

#[test]
fn long_strings_are_cut_short_in_messages() {
    let text = format!(r#"{{"label": "{}", "inputs": {{}}}}"#, "b".repeat(1000));
    let e = message("a.jsonl", text.as_bytes(), &x22());
    assert!(e.len() < 150, "{e}");
    assert!(e.ends_with("..."), "{e}");
}

#[test]
fn labels_file() {
    let text = "{\"id\": \"r-1\", \"label\": 2}\n\n{\"id\": 7, \"label\": 0, \"note\": \"x\"}\n";
    let got = read_file("a.labels.jsonl", text.as_bytes(), &x22(), &opts());
    assert_eq!(
        got.ok(),
        Some(FileContent::Labels(vec![
            LateLabel {
                id: "r-1".to_string(),
                label: 2,
                line: 1
            },
            LateLabel {
                id: "7".to_string(),
                label: 0,
                line: 3
            },
        ]))
    );
}

#[test]
fn labels_file_errors() {
    let e = message("a.labels.jsonl", b"", &x22());
    assert_eq!(e, "empty file: no labels");
    let e = message("a.labels.jsonl", br#"{"id": "a"}"#, &x22());
    assert_eq!(
        e,
        "line 1, field label: missing label: expected an integer label"
    );
    let e = message("a.labels.jsonl", br#"{"label": 1}"#, &x22());
    assert!(e.starts_with("line 1, field id: missing id"), "{e}");
    let e = message(
        "a.labels.jsonl",
        b"{\"id\": \"a\", \"label\": 1}\n{\"id\": \"b\", \"label\": true}",
        &x22(),
    );
    assert_eq!(
        e,
        "line 2, field label: expected an integer (int64) label, got bool true"
    );
}

// ---------------------------------------------------------------------------------------------
// NPY

/// An `.npy` file with a version 1.0 header, as numpy writes it.
fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let order = if fortran { "True" } else { "False" };
    let header = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    npy_with_header(1, &header, data)
}

fn npy_with_header(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let mut header = header.to_string();
    let prefix = if major == 1 { 10 } else { 12 };
    while !(prefix + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([major, 0]);
    if major == 1 {
        out.extend((header.len() as u16).to_le_bytes());
    } else {
        out.extend((header.len() as u32).to_le_bytes());
    }
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn f4(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i8s(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `<U{width}` data: UTF-32 little-endian, NUL-padded.
fn unicode(values: &[&str], width: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        let mut chars: Vec<u32> = v.chars().map(u32::from).collect();
        chars.resize(width, 0);
        out.extend(chars.iter().flat_map(|c| c.to_le_bytes()));
    }
    out
}

fn seq(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

#[test]
fn npy_reads_records() {
    let bytes = npy("<f4", false, &[3, 2, 2], &f4(&seq(12)));
    let got = records("a.npy", &bytes, &x22());
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].origin, Origin::Index(1));
    assert_eq!(
        got[1].inputs["x"],
        Tensor::f32(vec![2, 2], vec![4.0, 5.0, 6.0, 7.0])
    );
    assert_eq!(
        (got[1].id.as_ref(), got[1].label, got[1].ts),
        (None, None, None)
    );
}

#[test]
fn npy_version_2_header() {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2), }";
    let bytes = npy_with_header(2, header, &f4(&seq(4)));
    assert_eq!(records("a.npy", &bytes, &x22()).len(), 1);
}

#[test]
fn npy_int64_input_and_widened_int32() {
    let specs = [spec("ids", ElemType::I64, &[Some(3)])];
    let got = records(
        "a.npy",
        &npy("<i8", false, &[1, 3], &i8s(&[1, -2, 3])),
        &specs,
    );
    assert_eq!(got[0].inputs["ids"], Tensor::i64(vec![3], vec![1, -2, 3]));
    let data: Vec<u8> = [5i32, -6, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    let got = records("a.npy", &npy("<i4", false, &[1, 3], &data), &specs);
    assert_eq!(got[0].inputs["ids"], Tensor::i64(vec![3], vec![5, -6, 7]));
    let e = message(
        "a.npy",
        &npy("<f4", false, &[1, 3], &f4(&[1.0, 2.0, 3.0])),
        &specs,
    );
    assert_eq!(e, "array ids: expected int64 (<i8), got <f4 (float32)");
}

#[test]
fn npy_needs_a_single_input_model() {
    let specs = [
        spec("x", ElemType::F32, &[Some(2)]),
        spec("mask", ElemType::I64, &[Some(2)]),
    ];
    let e = message(
        "a.npy",
        &npy("<f4", false, &[1, 2], &f4(&[1.0, 2.0])),
        &specs,
    );
    assert_eq!(
        e,
        "an .npy file can only feed a single-input model; this model has inputs x, mask: use .npz"
    );
}

#[test]
fn npy_wrong_dtype() {
    let data: Vec<u8> = [0f64; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let e = message("a.npy", &npy("<f8", false, &[1, 2, 2], &data), &x22());
    assert_eq!(
        e,
        "array x: expected float32 (<f4), got <f8 (float64); NumPy saves float64 by default: \
         save the array as float32, e.g. np.save(path, x.astype(np.float32))"
    );
    let e = message("a.npy", &npy("|u1", false, &[1, 2, 2], &[0; 4]), &x22());
    assert_eq!(e, "array x: expected float32 (<f4), got |u1 (uint8)");
}

#[test]
fn npy_big_endian_is_refused() {
    let e = message("a.npy", &npy(">f4", false, &[1, 2, 2], &[0; 16]), &x22());
    assert_eq!(
        e,
        "big-endian data is not accepted: expected little-endian <f4, got >f4 (float32); \
         convert with arr.astype('<f4')"
    );
}

#[test]
fn npy_fortran_order_is_refused() {
    let e = message("a.npy", &npy("<f4", true, &[1, 2, 2], &f4(&seq(4))), &x22());
    assert!(
        e.starts_with("Fortran-ordered arrays (fortran_order: True) are not accepted"),
        "{e}"
    );
}

#[test]
fn npy_lying_header() {
    let e = message(
        "a.npy",
        &npy("<f4", false, &[3, 2, 2], &f4(&seq(10))),
        &x22(),
    );
    assert_eq!(
        e,
        "header says shape (3, 2, 2) = 48 bytes of data, file has 40"
    );
    let huge = npy("<f4", false, &[usize::MAX / 2, 4, 4], &[]);
    let e = message("a.npy", &huge, &x22());
    assert!(e.ends_with("which is too large to be real"), "{e}");
}

#[test]
fn npy_wrong_shape() {
    let e = message(
        "a.npy",
        &npy("<f4", false, &[2, 2, 3], &f4(&seq(12))),
        &x22(),
    );
    assert_eq!(
        e,
        "array x: expected shape [N, 2, 2] (N records of float32 [2, 2]), got (2, 2, 3)"
    );
    let e = message("a.npy", &npy("<f4", false, &[], &f4(&[1.0])), &x22());
    assert!(e.ends_with("got ()"), "{e}");
}

#[test]
fn npy_empty() {
    let e = message("a.npy", &npy("<f4", false, &[0, 2, 2], &[]), &x22());
    assert_eq!(e, "empty file: no records");
}

/// A model may have a fixed dimension of length 0; its records hold no data, so only the file
/// size can bound how many a header may declare. This header used to make the reader try to
/// allocate 22 TB and abort; the fuzz corpus keeps it as `regression-zero-width-records`.
#[test]
fn npy_records_of_no_elements_are_bounded_by_the_file() {
    let zero_width = vec![spec("x", ElemType::F32, &[Some(0)])];
    let got = records("a.npy", &npy("<f4", false, &[4, 0], &[]), &zero_width);
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|r| r.inputs["x"].shape == [0]));

    let bytes = npy("<f4", false, &[400_000_000_000, 0], &[]);
    let e = message("a.npy", &bytes, &zero_width);
    assert_eq!(
        e,
        format!(
            "header says shape (400000000000, 0) = 400000000000 records of no data in a file \
             of {} bytes: expected at most one record per byte of the file",
            bytes.len()
        )
    );
    let archive = npz(&[("x.npy", bytes)]);
    let e = message("a.npz", &archive, &zero_width);
    assert!(
        e.starts_with("array x: header says shape (400000000000, 0)"),
        "{e}"
    );
}

#[test]
fn npy_non_finite_rejected_or_allowed() {
    let mut values = seq(8);
    values[6] = f32::NAN;
    let bytes = npy("<f4", false, &[2, 2, 2], &f4(&values));
    let e = error("a.npy", &bytes, &x22());
    assert_eq!(e.location, Some(Origin::Index(1)));
    assert_eq!(
        e.to_string(),
        "record 1, array x: NaN at index [1, 0]: expected finite numbers (this model rejects \
         NaN/Infinity)"
    );
    values[6] = 0.0;
    values[1] = f32::NEG_INFINITY;
    let bytes = npy("<f4", false, &[2, 2, 2], &f4(&values));
    assert!(
        message("a.npy", &bytes, &x22())
            .starts_with("record 0, array x: -Infinity at index [0, 1]")
    );
    let allow = FormatOptions {
        non_finite: NonFinitePolicy::Allow,
        ..opts()
    };
    let got = read_file("a.npy", &bytes, &x22(), &allow);
    assert!(matches!(got, Ok(FileContent::Records(r)) if r.len() == 2));
}

#[test]
fn npy_bad_magic_and_headers() {
    let e = message("a.npy", b"PK\x03\x04 not numpy at all", &x22());
    assert_eq!(
        e,
        "not a NumPy .npy file: expected the bytes \\x93NUMPY at the start, got PK\\x03\\x04 n"
    );
    let mut bytes = npy("<f4", false, &[1, 2, 2], &f4(&seq(4)));
    bytes[6] = 9;
    assert_eq!(
        message("a.npy", &bytes, &x22()),
        "unsupported .npy format version 9.0: expected 1.0, 2.0 or 3.0"
    );
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend(u32::MAX.to_le_bytes());
    assert_eq!(
        message("a.npy", &bytes, &x22()),
        ".npy header of 4294967295 bytes is too long: expected at most 65536 bytes"
    );
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend(100u16.to_le_bytes());
    bytes.extend(b"{'descr'");
    assert_eq!(
        message("a.npy", &bytes, &x22()),
        "file ends inside the .npy header: header length says 100 bytes, file has 8"
    );
    let bytes = npy_with_header(1, "{'descr': '<f4', 'shape': (1, 2, 2)}", &f4(&seq(4)));
    let e = message("a.npy", &bytes, &x22());
    assert!(
        e.starts_with("invalid .npy header: expected 'fortran_order': True or False; got"),
        "{e}"
    );
    let bytes = npy_with_header(
        1,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2)",
        &[],
    );
    let e = message("a.npy", &bytes, &x22());
    assert!(
        e.starts_with("invalid .npy header: expected ',' or '}'"),
        "{e}"
    );
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let bytes = npy_with_header(1, &deep, &[]);
    let e = message("a.npy", &bytes, &x22());
    assert!(
        e.starts_with("invalid .npy header: expected at most 16 levels of nesting"),
        "{e}"
    );
}

#[test]
fn npy_structured_and_object_dtypes_are_refused() {
    let header = "{'descr': [('a', '<f4'), ('b', '<i8')], 'fortran_order': False, 'shape': (1,), }";
    let e = message("a.npy", &npy_with_header(1, header, &[0; 12]), &x22());
    assert!(
        e.starts_with("structured arrays (record dtypes) are not accepted"),
        "{e}"
    );
    let e = message("a.npy", &npy("|O", false, &[1], b"\x80\x04pickle"), &x22());
    assert!(
        e.starts_with("object arrays (pickled) are not accepted"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// NPZ

fn npz(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (i, (name, data)) in members.iter().enumerate() {
        // Alternate stored and deflated members: np.savez and np.savez_compressed.
        let method = if i % 2 == 0 {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        writer.start_file(*name, options).expect("start member");
        writer.write_all(data).expect("write member");
    }
    writer.finish().expect("finish archive").into_inner()
}

fn x_npy(n: usize) -> Vec<u8> {
    npy("<f4", false, &[n, 2, 2], &f4(&seq(n * 4)))
}

#[test]
fn npz_reads_inputs_and_columns() {
    let bytes = npz(&[
        ("x.npy", x_npy(2)),
        (
            "id.npy",
            npy("<U3", false, &[2], &unicode(&["a-1", "b"], 3)),
        ),
        ("label.npy", npy("<i8", false, &[2], &i8s(&[4, 0]))),
        (
            "ts.npy",
            npy(
                "<U20",
                false,
                &[2],
                &unicode(&["2024-05-01T12:00:00Z", "2024-05-01T12:00:01Z"], 20),
            ),
        ),
        (
            "segment.line.npy",
            npy("<U1", false, &[2], &unicode(&["A", "B"], 1)),
        ),
        ("segment.shift.npy", npy("<i8", false, &[2], &i8s(&[1, 2]))),
    ]);
    let got = records("a.npz", &bytes, &x22());
    assert_eq!(got.len(), 2);
    let second = &got[1];
    assert_eq!(second.id.as_deref(), Some("b"));
    assert_eq!(second.label, Some(0));
    assert_eq!(second.ts, Some(ts("2024-05-01T12:00:01Z")));
    assert_eq!(second.segment["line"], "B");
    assert_eq!(second.segment["shift"], "2");
    assert_eq!(second.origin, Origin::Index(1));
    assert_eq!(
        second.inputs["x"],
        Tensor::f32(vec![2, 2], vec![4.0, 5.0, 6.0, 7.0])
    );
}

#[test]
fn npz_two_inputs() {
    let specs = [
        spec("x", ElemType::F32, &[Some(2), Some(2)]),
        spec("mask", ElemType::I64, &[None]),
    ];
    let bytes = npz(&[
        ("x.npy", x_npy(2)),
        ("mask.npy", npy("<i8", false, &[2, 1], &i8s(&[1, 0]))),
    ]);
    let got = records("a.npz", &bytes, &specs);
    assert_eq!(got[1].inputs["mask"], Tensor::i64(vec![1], vec![0]));
    let bytes = npz(&[
        ("x.npy", x_npy(2)),
        ("mask.npy", npy("<i8", false, &[3, 1], &i8s(&[1, 0, 1]))),
    ]);
    assert_eq!(
        message("a.npz", &bytes, &specs),
        "array mask: expected 2 records like array x, got 3 (shape (3, 1))"
    );
}

#[test]
fn npz_unknown_array() {
    let bytes = npz(&[("x.npy", x_npy(1)), ("foo.npy", x_npy(1))]);
    assert_eq!(
        message("a.npz", &bytes, &x22()),
        "unknown array 'foo'; expected model inputs (x) and optional id, label, ts, segment.<key>"
    );
    let bytes = npz(&[("x.npy", x_npy(1)), ("segment..npy", x_npy(1))]);
    assert!(message("a.npz", &bytes, &x22()).starts_with("unknown array 'segment.'"));
    let bytes = npz(&[("x.txt", x_npy(1))]);
    assert!(message("a.npz", &bytes, &x22()).starts_with("unknown array 'x.txt'"));
    // A 60,000-character member name is repeated cut short.
    let long = format!("{}.npy", "f".repeat(60_000));
    let bytes = npz(&[("x.npy", x_npy(1)), (long.as_str(), x_npy(1))]);
    let text = message("a.npz", &bytes, &x22());
    assert!(
        text.starts_with(&format!("unknown array '{}...'; expected", "f".repeat(64))),
        "{}",
        &text[..200]
    );
    assert!(text.len() < 200);
    // A segment array of that name is known, and named cut short in its own error.
    let long = format!("segment.{}.npy", "s".repeat(60_000));
    let bytes = npz(&[("x.npy", x_npy(2)), (long.as_str(), x_npy(2))]);
    let text = message("a.npz", &bytes, &x22());
    assert!(text.len() < 300, "{}", &text[..300]);
    assert!(
        text.starts_with(&format!("array segment.{}...: ", "s".repeat(56))),
        "{text}"
    );
}

#[test]
fn npz_missing_input() {
    let bytes = npz(&[("label.npy", npy("<i8", false, &[1], &i8s(&[1])))]);
    assert_eq!(
        message("a.npz", &bytes, &x22()),
        "missing array 'x' (expected float32 [N, 2, 2]); the archive has: label"
    );
}

#[test]
fn npz_column_checks() {
    let bytes = npz(&[
        ("x.npy", x_npy(2)),
        ("label.npy", npy("<i8", false, &[3], &i8s(&[1, 2, 3]))),
    ]);
    assert_eq!(
        message("a.npz", &bytes, &x22()),
        "array label: expected shape (2,), one value per record like array x, got (3,)"
    );
    let bytes = npz(&[
        ("x.npy", x_npy(1)),
        ("label.npy", npy("<f4", false, &[1], &f4(&[1.0]))),
    ]);
    assert_eq!(
        message("a.npz", &bytes, &x22()),
        "array label: expected integer labels (<i8), got <f4 (float32)"
    );
    let bytes = npz(&[
        ("x.npy", x_npy(2)),
        ("id.npy", npy("<U1", false, &[2], &unicode(&["a", ""], 1))),
    ]);
    assert_eq!(
        message("a.npz", &bytes, &x22()),
        "record 1, array id: expected a non-empty id, got an empty string"
    );
    let bytes = npz(&[
        ("x.npy", x_npy(1)),
        ("ts.npy", npy("<U3", false, &[1], &unicode(&["now"], 3))),
    ]);
    assert!(
        message("a.npz", &bytes, &x22()).starts_with("record 0, array ts: expected an RFC 3339")
    );
    let bytes = npz(&[
        ("x.npy", x_npy(1)),
        ("id.npy", npy("<f4", false, &[1], &f4(&[1.0]))),
    ]);
    assert_eq!(
        message("a.npz", &bytes, &x22()),
        "array id: expected strings (<U) or integers (<i8), got <f4 (float32)"
    );
    let mut bad = unicode(&["a"], 1);
    bad[2] = 0x11; // code point 0x110061 is beyond Unicode
    let bytes = npz(&[
        ("x.npy", x_npy(1)),
        ("id.npy", npy("<U1", false, &[1], &bad)),
    ]);
    assert_eq!(
        message("a.npz", &bytes, &x22()),
        "record 0, array id: expected Unicode text, got invalid code point 0x110061"
    );
}

#[test]
fn npz_member_errors_name_the_array() {
    let bytes = npz(&[("x.npy", npy("|O", false, &[1], b"\x80\x04pickle"))]);
    assert_eq!(
        message("a.npz", &bytes, &x22()),
        "array x: object arrays (pickled) are not accepted: expected a numeric or fixed-width \
         string array, got |O"
    );
    let mut values = seq(8);
    values[7] = f32::INFINITY;
    let bytes = npz(&[("x.npy", npy("<f4", false, &[2, 2, 2], &f4(&values)))]);
    assert!(
        message("a.npz", &bytes, &x22()).starts_with("record 1, array x: Infinity at index [1, 1]")
    );
    let bytes = npz(&[("x.npy", x_npy(0))]);
    assert_eq!(message("a.npz", &bytes, &x22()), "empty file: no records");
}

#[test]
fn npz_not_a_zip() {
    let e = message("a.npz", b"this is not a zip file", &x22());
    assert!(e.starts_with("not a valid .npz (zip) archive: "), "{e}");
}

#[test]
fn npz_declared_size_over_the_limit() {
    let bytes = npz(&[("x.npy", x_npy(1)), ("id.npy", vec![0; 4000])]);
    let small = FormatOptions {
        max_uncompressed_bytes: 2000,
        ..opts()
    };
    let e = error_with("a.npz", &bytes, &x22(), &small);
    assert_eq!(
        e.to_string(),
        format!(
            "archive expands to {} bytes: expected at most 2000 bytes (the configured limit)",
            x_npy(1).len() + 4000
        )
    );
}

#[test]
fn npz_lying_sizes_stop_at_the_limit() {
    // A deflated member that declares 100 bytes but expands to 1 MB.
    let mut bytes = npz(&[("x.npy", x_npy(1)), ("id.npy", vec![0; 1 << 20])]);
    let declared = ((1u32 << 20).to_le_bytes(), 100u32.to_le_bytes());
    let mut patched = 0;
    for i in 0..bytes.len().saturating_sub(4) {
        if bytes[i..i + 4] == declared.0 && (bytes[i - 4..i] != declared.0) {
            bytes[i..i + 4].copy_from_slice(&declared.1);
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "local header and central directory");
    let small = FormatOptions {
        max_uncompressed_bytes: 10_000,
        ..opts()
    };
    let e = error_with("a.npz", &bytes, &x22(), &small);
    assert_eq!(e.field.as_deref(), Some("id"));
    assert!(
        e.message
            .starts_with("expands to more than the configured limit of 10000 bytes"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// The malformed-file corpus

#[test]
fn corpus_files_are_rejected_with_their_reason() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let expected = std::fs::read_to_string(dir.join("EXPECTED.tsv")).expect("EXPECTED.tsv");
    let corpus_opts = FormatOptions {
        non_finite: NonFinitePolicy::Reject,
        max_uncompressed_bytes: 8 << 20,
    };
    let mut checked = 0;
    for line in expected
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (file, fragment) = line.split_once('\t').expect("file<TAB>expected substring");
        let bytes = std::fs::read(dir.join(file)).expect(file);
        let e = error_with(file, &bytes, &x88(), &corpus_opts);
        assert!(
            e.to_string().contains(fragment),
            "{file}: expected {fragment:?} in {:?}",
            e.to_string()
        );
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} corpus files");
}

#[test]
fn corpus_valid_files_written_by_numpy_are_read() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid");
    for name in ["ok.jsonl", "ok.npy", "ok.npz", "ok_compressed.npz"] {
        let bytes = std::fs::read(dir.join(name)).expect(name);
        let got = records(name, &bytes, &x88());
        assert_eq!(got.len(), 3, "{name}");
        let x = &got[2].inputs["x"];
        assert_eq!(x.shape, vec![8, 8], "{name}");
        // make_corpus.py fills record i with i * 64 + (0..64) / 4.
        assert_eq!(
            x.data,
            crate::record::TensorData::F32((0..64).map(|k| 128.0 + k as f32 / 4.0).collect()),
            "{name}"
        );
    }
    let bytes = std::fs::read(dir.join("ok.npz")).expect("ok.npz");
    let got = records("ok.npz", &bytes, &x88());
    assert_eq!(got[1].id.as_deref(), Some("rec-1"));
    assert_eq!(got[1].label, Some(1));
    assert_eq!(got[1].segment["line"], "B");
    assert_eq!(got[1].ts, Some(ts("2024-05-01T12:00:01Z")));
}

#[test]
fn names_from_the_file_are_cut_short_in_messages() {
    // A hostile file may name an input, a segment key or an array with 60,000 characters; the
    // message (the quarantine note, the log line, the ledger) repeats 64 of them.
    let long = "k".repeat(60_000);
    let cut = format!("{}...", "k".repeat(64));
    let unknown = message(
        "a.jsonl",
        format!("{{\"inputs\": {{\"{long}\": 1}}}}\n").as_bytes(),
        &x22(),
    );
    // The field path is cut at 64 characters too: "inputs." and 57 of the key's.
    assert_eq!(
        unknown,
        format!(
            "line 1, field inputs.{}...: unknown input '{cut}'; the model's inputs are: x",
            "k".repeat(57)
        )
    );
    let segment = message(
        "a.jsonl",
        format!("{{\"inputs\": {{\"x\": [[1,2],[3,4]]}}, \"segment\": {{\"{long}\": []}}}}\n")
            .as_bytes(),
        &x22(),
    );
    assert!(segment.len() < 200, "{segment}");
    assert!(
        segment.ends_with("expected a string, number or bool, got an array of 0"),
        "{segment}"
    );
    // Short names are whole.
    let short = message("a.jsonl", b"{\"inputs\": {\"y\": 1}}\n", &x22());
    assert_eq!(
        short,
        "line 1, field inputs.y: unknown input 'y'; the model's inputs are: x"
    );
}
