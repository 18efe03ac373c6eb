//! Late-label files (`*.labels.jsonl`): `{"id": ..., "label": ...}` per line.
//!
//! Besides the labels contract: the model's inputs play no part in reading labels, so every
//! model shape reads a labels file the same way.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensei_fuzz::{models, read_labels};

fuzz_target!(|bytes: &[u8]| {
    let [first, rest @ ..] = models() else {
        return;
    };
    let labels = read_labels("fuzz.labels.jsonl", bytes, first);
    for model in rest {
        let again = read_labels("fuzz.labels.jsonl", bytes, model);
        assert!(
            labels == again,
            "model {} reads labels differently from model {}",
            model.name,
            first.name
        );
    }
    let ndjson = read_labels("fuzz.labels.ndjson", bytes, first);
    assert!(
        labels == ndjson,
        ".labels.jsonl and .labels.ndjson read differently"
    );
});
