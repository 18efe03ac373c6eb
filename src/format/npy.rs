//! NumPy `.npy` arrays: the header, the element types sensei accepts, and turning an array of
//! shape `[N, ...]` into N record tensors.
//!
//! The header is parsed here rather than by a crate so that every way it can be wrong gets a
//! message naming the numpy fix. Accepted element types:
//! - inputs: `<f4` for float32 inputs; `<i8` for int64 inputs, and `<i4`, widened losslessly
//!   (numpy on Windows defaults to int32, and a token id fits either way);
//! - `id`, `label`, `segment.*` columns of an `.npz`: `<i8`/`<i4`, and `<U{n}` fixed-width
//!   strings (UTF-32, trailing NULs stripped) for `id`, `ts` and `segment.*`.
//!
//! Everything else is refused with a message naming the dtype found: silently narrowing float64
//! would hide a producer bug, and big-endian or Fortran-ordered data would need a copy that the
//! producer can make more cheaply with `np.ascontiguousarray(arr, dtype='<f4')`.

use super::{FormatError, FormatOptions, check_shape, list_display, non_finite_name, unravel};
use crate::config::NonFinitePolicy;
use crate::record::{ElemType, InputSpec, Origin, Record, Tensor};

/// Headers are a few hundred bytes; anything longer is not a header numpy wrote.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Reads a `.npy` file: one array feeding a single-input model.
pub(super) fn read_records(
    bytes: &[u8],
    specs: &[InputSpec],
    opts: &FormatOptions,
) -> Result<Vec<Record>, FormatError> {
    let [spec] = specs else {
        return Err(FormatError::whole(format!(
            "an .npy file can only feed a single-input model; this model has inputs {}: use .npz",
            super::spec_names(specs)
        )));
    };
    let array = Array::parse(bytes).map_err(FormatError::whole)?;
    let tensors = input_tensors(spec, &spec.name, &array, opts)?;
    if tensors.is_empty() {
        return Err(FormatError::empty());
    }
    Ok(tensors
        .into_iter()
        .enumerate()
        .map(|(i, tensor)| Record {
            id: None,
            ts: None,
            segment: Default::default(),
            inputs: [(spec.name.clone(), tensor)].into(),
            label: None,
            origin: Origin::Index(i),
        })
        .collect())
}

/// The element types sensei reads; anything else is kept as its descr for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dtype {
    F32,
    I64,
    I32,
    /// `<U{n}`: n UTF-32 code units per element.
    Unicode(usize),
    Other,
}

/// One parsed `.npy` array, borrowing its data.
#[derive(Debug)]
pub(super) struct Array<'a> {
    /// As written in the header, e.g. `<f4`, for messages.
    pub descr: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Exactly `shape` × item size bytes for the dtypes in [`Dtype`] other than `Other`.
    pub data: &'a [u8],
}

impl<'a> Array<'a> {
    /// Parses the header and checks that the data is as long as the header says.
    pub fn parse(bytes: &'a [u8]) -> Result<Array<'a>, String> {
        const MAGIC: &[u8] = b"\x93NUMPY";
        if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
            return Err(format!(
                "not a NumPy .npy file: expected the bytes \\x93NUMPY at the start, got {}",
                escape(&bytes[..bytes.len().min(MAGIC.len())])
            ));
        }
        let (major, minor) = (bytes[6], bytes[7]);
        let (header_len, header_start) = match major {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 if bytes.len() >= 12 => {
                let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                (usize::try_from(len).unwrap_or(usize::MAX), 12)
            }
            2 | 3 => return Err("file ends inside the .npy header".to_string()),
            _ => {
                return Err(format!(
                    "unsupported .npy format version {major}.{minor}: expected 1.0, 2.0 or 3.0"
                ));
            }
        };
        if header_len > MAX_HEADER_BYTES {
            return Err(format!(
                ".npy header of {header_len} bytes is too long: expected at most \
                 {MAX_HEADER_BYTES} bytes"
            ));
        }
        let rest = &bytes[header_start..];
        if rest.len() < header_len {
            return Err(format!(
                "file ends inside the .npy header: header length says {header_len} bytes, \
                 file has {}",
                rest.len()
            ));
        }
        let (header, data) = rest.split_at(header_len);
        let header = std::str::from_utf8(header)
            .map_err(|_| "invalid .npy header: expected text, got non-UTF-8 bytes".to_string())?;
        let Header {
            descr,
            fortran_order,
            shape,
        } = Header::parse(header)?;
        if fortran_order {
            return Err(
                "Fortran-ordered arrays (fortran_order: True) are not accepted: expected \
                 C order; save np.ascontiguousarray(arr) instead"
                    .to_string(),
            );
        }
        let dtype = parse_descr(&descr)?;
        let item_size = match dtype {
            Dtype::F32 | Dtype::I32 => Some(4),
            Dtype::I64 => Some(8),
            Dtype::Unicode(n) => n.checked_mul(4),
            Dtype::Other => None,
        };
        if dtype != Dtype::Other {
            let expected = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .and_then(|count| count.checked_mul(item_size?));
            let Some(expected) = expected else {
                return Err(format!(
                    "header says shape {} of {descr}, which is too large to be real",
                    py_shape(&shape)
                ));
            };
            if expected != data.len() {
                return Err(format!(
                    "header says shape {} = {expected} bytes of data, file has {}",
                    py_shape(&shape),
                    data.len()
                ));
            }
            // Records of no elements (a dimension of length 0) take no bytes, so the data
            // does not bound how many there are, and each still costs memory once read. Hold
            // them to one per byte of the file, which every array with data meets anyway.
            if let Some(&records) = shape.first()
                && records > bytes.len()
            {
                return Err(format!(
                    "header says shape {} = {records} records of no data in a file of {} \
                     bytes: expected at most one record per byte of the file",
                    py_shape(&shape),
                    bytes.len()
                ));
            }
        }
        Ok(Array {
            descr,
            dtype,
            shape,
            data,
        })
    }

    /// `<f8 (float64)`, for "expected ..., got ..." messages.
    pub fn dtype_display(&self) -> String {
        format!("{} ({})", self.descr, dtype_name(&self.descr))
    }

    /// Integer elements, `<i4` widened; `None` if the array is not of an integer type.
    pub fn integers(&self) -> Option<Vec<i64>> {
        decode_integers(self.data, self.dtype)
    }

    /// String elements of a `<U{n}` array; `Ok(None)` if it is not one, `Err((i, message))` for
    /// an element that is not valid Unicode.
    pub fn strings(&self) -> Result<Option<Vec<String>>, (usize, String)> {
        let Dtype::Unicode(width) = self.dtype else {
            return Ok(None);
        };
        let count = self.shape.iter().product::<usize>();
        let mut out = Vec::with_capacity(count);
        if width == 0 {
            out.resize(count, String::new());
            return Ok(Some(out));
        }
        for (i, item) in self.data.chunks_exact(width * 4).enumerate() {
            let mut s = String::new();
            for unit in item.chunks_exact(4) {
                let code = u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]]);
                let c = char::from_u32(code).ok_or_else(|| {
                    (
                        i,
                        format!("expected Unicode text, got invalid code point {code:#x}"),
                    )
                })?;
                s.push(c);
            }
            // numpy pads shorter strings with NULs and strips them when reading, so do we.
            s.truncate(s.trim_end_matches('\0').len());
            out.push(s);
        }
        Ok(Some(out))
    }
}

/// Checks an input array against its spec and splits it into one tensor per record.
///
/// `name` is the array's name in messages (the input name, or the `.npz` member).
pub(super) fn input_tensors(
    spec: &InputSpec,
    name: &str,
    array: &Array<'_>,
    opts: &FormatOptions,
) -> Result<Vec<Tensor>, FormatError> {
    let dtype_ok = match spec.elem_type {
        ElemType::F32 => array.dtype == Dtype::F32,
        ElemType::I64 => matches!(array.dtype, Dtype::I64 | Dtype::I32),
    };
    if !dtype_ok {
        let want = match spec.elem_type {
            ElemType::F32 => "float32 (<f4)",
            ElemType::I64 => "int64 (<i8)",
        };
        // NumPy makes float64 arrays unless told otherwise: say how to write what the model takes.
        let hint = if matches!(spec.elem_type, ElemType::F32) && array.descr == "<f8" {
            "; NumPy saves float64 by default: save the array as float32, e.g. np.save(path, x.astype(np.float32))"
        } else {
            ""
        };
        return Err(FormatError::array(
            name,
            format!("expected {want}, got {}{hint}", array.dtype_display()),
        ));
    }
    let Some((&n, record_shape)) = array.shape.split_first() else {
        return Err(FormatError::array(name, shape_mismatch(spec, &array.shape)));
    };
    if n > 0 && check_shape(spec, record_shape).is_err() {
        return Err(FormatError::array(name, shape_mismatch(spec, &array.shape)));
    }
    let per_record: usize = record_shape.iter().product();
    let mut tensors = Vec::with_capacity(n);
    match array.dtype {
        Dtype::F32 => {
            let reject = opts.non_finite == NonFinitePolicy::Reject;
            for (i, chunk) in record_chunks(array.data, n, per_record * 4).enumerate() {
                let data: Vec<f32> = chunk
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                if reject && let Some((k, what)) = first_non_finite(&data) {
                    return Err(FormatError::field(
                        Origin::Index(i),
                        name,
                        format!(
                            "{what} at index {}: expected finite numbers (this model rejects \
                             NaN/Infinity)",
                            list_display(&unravel(k, record_shape))
                        ),
                    ));
                }
                tensors.push(Tensor::f32(record_shape.to_vec(), data));
            }
        }
        Dtype::I64 | Dtype::I32 => {
            let size = if array.dtype == Dtype::I64 { 8 } else { 4 };
            for chunk in record_chunks(array.data, n, per_record * size) {
                let data = decode_integers(chunk, array.dtype).unwrap_or_default();
                tensors.push(Tensor::i64(record_shape.to_vec(), data));
            }
        }
        Dtype::Unicode(_) | Dtype::Other => {}
    }
    Ok(tensors)
}

fn decode_integers(data: &[u8], dtype: Dtype) -> Option<Vec<i64>> {
    match dtype {
        Dtype::I64 => Some(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::I32 => Some(
            data.chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        _ => None,
    }
}

/// `n` consecutive chunks of `size` bytes (empty ones when `size` is 0).
fn record_chunks(data: &[u8], n: usize, size: usize) -> impl Iterator<Item = &[u8]> {
    (0..n).map(move |i| data.get(i * size..(i + 1) * size).unwrap_or_default())
}

fn first_non_finite(data: &[f32]) -> Option<(usize, &'static str)> {
    // The common case is all finite; test that without branching per element first.
    if data.iter().all(|v| v.is_finite()) {
        return None;
    }
    data.iter()
        .enumerate()
        .find_map(|(k, &v)| non_finite_name(v).map(|what| (k, what)))
}

fn shape_mismatch(spec: &InputSpec, got: &[usize]) -> String {
    format!(
        "expected shape {} (N records of {} {}), got {}",
        batched_shape(spec),
        spec.elem_type,
        spec.shape_display(),
        py_shape(got)
    )
}

/// `[N, 8, 8]`: the shape of an array of N records of `spec`.
pub(super) fn batched_shape(spec: &InputSpec) -> String {
    let per_record = spec.shape_display();
    let inner = &per_record[1..per_record.len() - 1];
    if inner.is_empty() {
        "[N]".to_string()
    } else {
        format!("[N, {inner}]")
    }
}

/// A shape the way numpy prints it: `(3, 8, 8)`, `(3,)`, `()`.
pub(super) fn py_shape(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", parts.join(", "))
        }
    }
}

fn parse_descr(descr: &str) -> Result<Dtype, String> {
    let name = dtype_name(descr);
    if name == "object" {
        return Err(format!(
            "object arrays (pickled) are not accepted: expected a numeric or fixed-width string \
             array, got {descr}"
        ));
    }
    if let Some(rest) = descr.strip_prefix('>') {
        return Err(format!(
            "big-endian data is not accepted: expected little-endian <{rest}, got {descr} \
             ({name}); convert with arr.astype('<{rest}')"
        ));
    }
    Ok(match descr {
        "<f4" => Dtype::F32,
        "<i8" => Dtype::I64,
        "<i4" => Dtype::I32,
        _ => match descr
            .strip_prefix("<U")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Dtype::Unicode(n),
            None => Dtype::Other,
        },
    })
}

/// The numpy name of a descr, for messages.
fn dtype_name(descr: &str) -> &'static str {
    let body = descr.trim_start_matches(['<', '>', '|', '=']);
    let (kind, size) = body.split_at(
        body.find(|c: char| c.is_ascii_digit())
            .unwrap_or(body.len()),
    );
    match (kind, size) {
        ("f", "2") => "float16",
        ("f", "4") => "float32",
        ("f", "8") => "float64",
        ("f", _) => "extended float",
        ("i", "1") => "int8",
        ("i", "2") => "int16",
        ("i", "4") => "int32",
        ("i", "8") => "int64",
        ("u", "1") => "uint8",
        ("u", "2") => "uint16",
        ("u", "4") => "uint32",
        ("u", "8") => "uint64",
        ("b", "1") => "bool",
        ("c", _) => "complex",
        ("U", _) => "string",
        ("S", _) | ("a", _) => "bytes",
        ("O", _) => "object",
        ("V", _) => "void",
        _ if body.starts_with('M') => "datetime64",
        _ if body.starts_with('m') => "timedelta64",
        _ => "unknown type",
    }
}

fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

/// The three keys of a `.npy` header dict.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    /// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 8, 8), }`.
    fn parse(text: &str) -> Result<Header, String> {
        let invalid = |why: &str| {
            format!(
                "invalid .npy header: {why}; got {}",
                super::quote(text.trim_end())
            )
        };
        let mut parser = Literal {
            text: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value(0).map_err(|why| invalid(&why))?;
        parser.skip_space();
        if parser.pos != parser.text.len() {
            return Err(invalid("expected the header to end after the dict"));
        }
        let Py::Dict(entries) = value else {
            return Err(invalid("expected a dict"));
        };
        let get = |key: &str| {
            entries.iter().find_map(|(k, v)| match k {
                Py::Str(k) if k == key => Some(v),
                _ => None,
            })
        };
        let descr = match get("descr") {
            Some(Py::Str(s)) => s.clone(),
            Some(Py::List) => {
                return Err(
                    "structured arrays (record dtypes) are not accepted: expected a plain \
                     numeric or string array"
                        .to_string(),
                );
            }
            _ => return Err(invalid("expected a 'descr' string")),
        };
        let fortran_order = match get("fortran_order") {
            Some(Py::Bool(b)) => *b,
            _ => return Err(invalid("expected 'fortran_order': True or False")),
        };
        let shape = match get("shape") {
            Some(Py::Tuple(dims)) => dims
                .iter()
                .map(|d| match d {
                    Py::Int(n) => usize::try_from(*n).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| invalid("expected 'shape' as a tuple of sizes"))?,
            _ => return Err(invalid("expected 'shape' as a tuple of sizes")),
        };
        Ok(Header {
            descr,
            fortran_order,
            shape,
        })
    }
}

/// The Python literals a `.npy` header can contain.
enum Py {
    Str(String),
    Int(u64),
    Bool(bool),
    Tuple(Vec<Py>),
    /// Only a structured dtype's descr is a list; its items are not needed.
    List,
    Dict(Vec<(Py, Py)>),
}

/// A recursive-descent reader of Python literals, nesting bounded so a hostile header cannot
/// overflow the stack.
struct Literal<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Literal<'_> {
    const MAX_DEPTH: usize = 16;

    fn skip_space(&mut self) {
        while self.text.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.pos).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Py, String> {
        if depth > Self::MAX_DEPTH {
            return Err("expected at most 16 levels of nesting".to_string());
        }
        match self.peek() {
            Some(b'{') => {
                let items = self.sequence(b'}', depth, true)?;
                let mut entries = Vec::with_capacity(items.len() / 2);
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    entries.push((k, v));
                }
                Ok(Py::Dict(entries))
            }
            Some(b'(') => Ok(Py::Tuple(self.sequence(b')', depth, false)?)),
            Some(b'[') => self.sequence(b']', depth, false).map(|_| Py::List),
            Some(quote @ (b'\'' | b'"')) => {
                let start = self.pos + 1;
                let len = self.text[start..]
                    .iter()
                    .position(|&b| b == quote)
                    .ok_or("expected a closing quote")?;
                self.pos = start + len + 1;
                let s = std::str::from_utf8(&self.text[start..start + len])
                    .map_err(|_| "expected text in a string")?;
                Ok(Py::Str(s.to_string()))
            }
            Some(b) if b.is_ascii_alphanumeric() => {
                let start = self.pos;
                while self
                    .text
                    .get(self.pos)
                    .is_some_and(u8::is_ascii_alphanumeric)
                {
                    self.pos += 1;
                }
                let word = std::str::from_utf8(&self.text[start..self.pos]).unwrap_or_default();
                match word {
                    "True" => Ok(Py::Bool(true)),
                    "False" => Ok(Py::Bool(false)),
                    // Python 2 wrote long integers as `3L`.
                    _ => word
                        .trim_end_matches('L')
                        .parse()
                        .map(Py::Int)
                        .map_err(|_| format!("unexpected '{word}'")),
                }
            }
            Some(b) => Err(format!("unexpected '{}'", char::from(b))),
            None => Err("the header ends early".to_string()),
        }
    }

    /// Items up to `close`, comma-separated with an optional trailing comma; in a dict,
    /// `key: value` pairs flattened.
    fn sequence(&mut self, close: u8, depth: usize, dict: bool) -> Result<Vec<Py>, String> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(items);
            }
            items.push(self.value(depth + 1)?);
            if dict {
                if self.peek() != Some(b':') {
                    return Err("expected ':' after a dict key".to_string());
                }
                self.pos += 1;
                items.push(self.value(depth + 1)?);
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b) if b == close => {}
                _ => return Err(format!("expected ',' or '{}'", char::from(close))),
            }
        }
    }
}
