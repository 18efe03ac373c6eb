//! A model's parameter count, read from the ONNX file itself (for the report's size column and
//! the verdict's tie-break).

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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
