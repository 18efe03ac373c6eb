//! A safetensors file writer (and the reader the tests and the gate use).
//!
//! The format is small enough to write directly: an 8-byte little-endian header length, a JSON
//! header mapping each tensor name to its dtype, shape and `[begin, end)` byte offsets into the
//! data section, then the data, little-endian and row-major. The header is padded with spaces
//! to a multiple of 8 bytes so that the data is aligned for zero-copy readers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

/// One tensor's data.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Data {
    fn dtype(&self) -> &'static str {
        match self {
            Data::F32(_) => "F32",
            Data::I64(_) => "I64",
        }
    }

    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    fn bytes(&self) -> usize {
        self.len() * 4 * (1 + usize::from(matches!(self, Data::I64(_))))
    }
}

/// A named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Writes `tensors` to `path` (through a temporary file renamed into place).
pub fn write(path: &Path, tensors: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        if t.shape.iter().product::<usize>() != t.data.len() {
            bail!(
                "tensor {name}: shape {:?} does not hold {} values",
                t.shape,
                t.data.len()
            );
        }
        let end = offset + t.data.bytes();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": t.data.dtype(), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header)?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for t in tensors.values() {
        match &t.data {
            Data::F32(v) => v.iter().try_for_each(|x| out.write_all(&x.to_le_bytes()))?,
            Data::I64(v) => v.iter().try_for_each(|x| out.write_all(&x.to_le_bytes()))?,
        }
    }
    out.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Reads every F32 and I64 tensor of a safetensors file.
pub fn read(path: &Path) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .context("shorter than its header length")?;
    let header = bytes.get(8..8 + n).context("truncated header")?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).context("header is not JSON")?;
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, meta) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = meta["dtype"].as_str().unwrap_or_default();
        let shape: Vec<usize> = serde_json::from_value(meta["shape"].clone())
            .with_context(|| format!("{name}: shape"))?;
        let offsets: [usize; 2] = serde_json::from_value(meta["data_offsets"].clone())
            .with_context(|| format!("{name}: data_offsets"))?;
        let raw = data
            .get(offsets[0]..offsets[1])
            .with_context(|| format!("{name}: offsets out of range"))?;
        let data = match dtype {
            "F32" => Data::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            "I64" => Data::I64(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            other => bail!("{name}: unsupported dtype {other}"),
        };
        out.insert(name, Tensor { shape, data });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tensors_read_back_with_aligned_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "a.x".to_string(),
            Tensor {
                shape: vec![2, 3],
                data: Data::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]),
            },
        );
        tensors.insert(
            "label".to_string(),
            Tensor {
                shape: vec![2],
                data: Data::I64(vec![-1, 7]),
            },
        );
        write(&path, &tensors).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(bytes.len(), 8 + n + 6 * 4 + 2 * 8);
        assert_eq!(read(&path).unwrap(), tensors);
    }

    #[test]
    fn a_shape_that_does_not_fit_the_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "w".to_string(),
            Tensor {
                shape: vec![3],
                data: Data::F32(vec![1.0]),
            },
        );
        assert!(write(&dir.path().join("t.safetensors"), &tensors).is_err());
    }
}
