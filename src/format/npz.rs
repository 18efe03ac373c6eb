//! NumPy `.npz` archives (as written by `np.savez` / `np.savez_compressed`): one `.npy` member per
//! model input, plus optional per-record `id`, `label`, `ts` and `segment.<key>` columns.
//!
//! An archive is untrusted compressed data, so expansion is bounded twice: the sizes the archive
//! declares must fit the limit before anything is decompressed, and each member is read through
//! `Read::take` so an archive that lies about its sizes still stops at the limit.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};

use zip::ZipArchive;

use super::npy::{Array, batched_shape, input_tensors, py_shape};
use super::{FormatError, FormatOptions, check_id, parse_ts};
use crate::record::{InputSpec, Origin, Record, Tensor};

const OPTIONAL: &str = "id, label, ts, segment.<key>";

/// Reads an `.npz` archive into records.
pub(super) fn read_records(
    bytes: &[u8],
    specs: &[InputSpec],
    opts: &FormatOptions,
) -> Result<Vec<Record>, FormatError> {
    let members = read_members(bytes, specs, opts.max_uncompressed_bytes)?;
    let mut arrays = BTreeMap::new();
    for (name, data) in &members {
        let array = Array::parse(data).map_err(|m| FormatError::array(name.as_str(), m))?;
        arrays.insert(name.as_str(), array);
    }

    // The first input sets the number of records every other array must have.
    let mut inputs: Vec<(&InputSpec, std::vec::IntoIter<Tensor>)> = Vec::new();
    let mut n_from: Option<(usize, &str)> = None;
    for spec in specs {
        let Some(array) = arrays.get(spec.name.as_str()) else {
            let present: Vec<&str> = arrays.keys().copied().collect();
            return Err(FormatError::whole(format!(
                "missing array '{}' (expected {} {}); the archive has: {}",
                spec.name,
                spec.elem_type,
                batched_shape(spec),
                if present.is_empty() {
                    "nothing".to_string()
                } else {
                    present.join(", ")
                }
            )));
        };
        let tensors = input_tensors(spec, &spec.name, array, opts)?;
        same_len(&spec.name, &array.shape, &mut n_from)?;
        inputs.push((spec, tensors.into_iter()));
    }
    let (n, first) = n_from.unwrap_or((0, ""));
    if n == 0 {
        return Err(FormatError::empty());
    }

    let ids = match arrays.get("id") {
        Some(array) => {
            let ids = texts("id", array, n, first)?;
            for (i, id) in ids.iter().enumerate() {
                check_id(id).map_err(|m| FormatError::field(Origin::Index(i), "id", m))?;
            }
            Some(ids)
        }
        None => None,
    };
    let labels = match arrays.get("label") {
        Some(array) => {
            column(array, "label", n, first)?;
            Some(array.integers().ok_or_else(|| {
                FormatError::array(
                    "label",
                    format!(
                        "expected integer labels (<i8), got {}",
                        array.dtype_display()
                    ),
                )
            })?)
        }
        None => None,
    };
    let timestamps = match arrays.get("ts") {
        Some(array) => {
            let texts = texts("ts", array, n, first)?;
            let mut ts = Vec::with_capacity(texts.len());
            for (i, text) in texts.iter().enumerate() {
                ts.push(parse_ts(text).map_err(|m| FormatError::field(Origin::Index(i), "ts", m))?);
            }
            Some(ts)
        }
        None => None,
    };
    let mut segments = Vec::new();
    for (name, array) in &arrays {
        if let Some(key) = name.strip_prefix("segment.") {
            segments.push((key, texts(name, array, n, first)?));
        }
    }

    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let mut record_inputs = BTreeMap::new();
        for (spec, tensors) in &mut inputs {
            if let Some(tensor) = tensors.next() {
                record_inputs.insert(spec.name.clone(), tensor);
            }
        }
        records.push(Record {
            id: ids.as_ref().and_then(|v| v.get(i).cloned()),
            ts: timestamps.as_ref().and_then(|v| v.get(i).copied()),
            segment: segments
                .iter()
                .filter_map(|(key, values)| Some((key.to_string(), values.get(i)?.clone())))
                .collect(),
            inputs: record_inputs,
            label: labels.as_ref().and_then(|v| v.get(i).copied()),
            origin: Origin::Index(i),
        });
    }
    Ok(records)
}

/// The archive's members by array name (`x.npy` → `x`), each decompressed within the limit.
fn read_members(
    bytes: &[u8],
    specs: &[InputSpec],
    limit: u64,
) -> Result<BTreeMap<String, Vec<u8>>, FormatError> {
    let mut archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| FormatError::whole(format!("not a valid .npz (zip) archive: {e}")))?;

    // First the names and declared sizes, before decompressing anything.
    let mut names = Vec::with_capacity(archive.len());
    let mut declared: u64 = 0;
    for i in 0..archive.len() {
        let member = archive
            .by_index_raw(i)
            .map_err(|e| FormatError::whole(format!("not a valid .npz (zip) archive: {e}")))?;
        let name = array_name(member.name(), specs)?;
        if names.contains(&name) {
            return Err(FormatError::whole(format!(
                "the archive has two arrays named '{}': expected each array once",
                super::clip(&name)
            )));
        }
        declared = declared.saturating_add(member.size());
        names.push(name);
    }
    if declared > limit {
        return Err(FormatError::whole(format!(
            "archive expands to {declared} bytes: expected at most {limit} bytes \
             (the configured limit)"
        )));
    }

    let mut members = BTreeMap::new();
    let mut budget = limit;
    for (i, name) in names.into_iter().enumerate() {
        let member = archive.by_index(i).map_err(|e| {
            FormatError::array(
                name.as_str(),
                format!("cannot read the archive member: {e}"),
            )
        })?;
        let declared_size = member.size();
        let mut data = Vec::with_capacity(usize::try_from(declared_size.min(budget)).unwrap_or(0));
        member
            .take(budget.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| {
                FormatError::array(
                    name.as_str(),
                    format!("cannot decompress the archive member: {e}"),
                )
            })?;
        let len = data.len() as u64;
        if len > budget {
            return Err(FormatError::array(
                name.as_str(),
                format!(
                    "expands to more than the configured limit of {limit} bytes (the archive \
                     declared {declared_size} bytes for it): expected at most {limit} bytes in all"
                ),
            ));
        }
        budget -= len;
        members.insert(name, data);
    }
    Ok(members)
}

/// The array a member holds, by its name, if it is one sensei reads.
fn array_name(member: &str, specs: &[InputSpec]) -> Result<String, FormatError> {
    let name = member.strip_suffix(".npy").unwrap_or(member);
    let known = specs.iter().any(|s| s.name == name)
        || matches!(name, "id" | "label" | "ts")
        || name
            .strip_prefix("segment.")
            .is_some_and(|key| !key.is_empty());
    if known && member.ends_with(".npy") {
        Ok(name.to_string())
    } else {
        Err(FormatError::whole(format!(
            "unknown array '{}'; expected model inputs ({}) and optional {OPTIONAL}",
            super::clip(name),
            super::spec_names(specs)
        )))
    }
}

/// Checks that an input array has as many records as the ones before it.
fn same_len<'a>(
    name: &'a str,
    shape: &[usize],
    n_from: &mut Option<(usize, &'a str)>,
) -> Result<(), FormatError> {
    let n = shape.first().copied().unwrap_or(0);
    match *n_from {
        None => {
            *n_from = Some((n, name));
            Ok(())
        }
        Some((expected, from)) if expected != n => Err(FormatError::array(
            name,
            format!(
                "expected {expected} records like array {from}, got {n} (shape {})",
                py_shape(shape)
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Checks that a per-record column is one-dimensional with one value per record.
fn column(array: &Array<'_>, name: &str, n: usize, from: &str) -> Result<(), FormatError> {
    if array.shape != [n] {
        return Err(FormatError::array(
            name,
            format!(
                "expected shape ({n},), one value per record like array {from}, got {}",
                py_shape(&array.shape)
            ),
        ));
    }
    Ok(())
}

/// A column of strings: `<U` text, or integers written as text.
fn texts(name: &str, array: &Array<'_>, n: usize, from: &str) -> Result<Vec<String>, FormatError> {
    column(array, name, n, from)?;
    if let Some(strings) = array
        .strings()
        .map_err(|(i, m)| FormatError::field(Origin::Index(i), name, m))?
    {
        return Ok(strings);
    }
    if let Some(ints) = array.integers() {
        return Ok(ints.iter().map(i64::to_string).collect());
    }
    Err(FormatError::array(
        name,
        format!(
            "expected strings (<U) or integers (<i8), got {}",
            array.dtype_display()
        ),
    ))
}
