//! JSON Lines records (`*.jsonl`, `*.ndjson`), read for every model shape.
//!
//! Besides the records contract: a UTF-8 byte order mark in front changes nothing, and the two
//! suffixes read the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensei::config::NonFinitePolicy;
use sensei_fuzz::{Origins, models, options, read_records};

const BOM: &[u8] = b"\xEF\xBB\xBF";

fuzz_target!(|bytes: &[u8]| {
    // Every element of a record is at least one byte of JSON text.
    let max_elements = bytes.len();
    for model in models() {
        let opts = options(NonFinitePolicy::Reject);
        let plain = read_records(
            "fuzz.jsonl",
            bytes,
            model,
            &opts,
            Origins::Lines,
            max_elements,
        );
        let ndjson = read_records(
            "fuzz.ndjson",
            bytes,
            model,
            &opts,
            Origins::Lines,
            max_elements,
        );
        assert!(
            plain == ndjson,
            "model {}: .jsonl and .ndjson read differently",
            model.name
        );
        if !bytes.starts_with(BOM) {
            let marked = [BOM, bytes].concat();
            let with_bom = read_records(
                "fuzz.jsonl",
                &marked,
                model,
                &opts,
                Origins::Lines,
                marked.len(),
            );
            assert!(
                plain == with_bom,
                "model {}: a byte order mark changed the result: {plain:?} vs {with_bom:?}",
                model.name
            );
        }
    }
});
