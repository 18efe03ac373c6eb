//! NumPy `.npz` archives, read for every model shape under both non-finite policies, with a
//! small expansion limit so that zip bombs are cheap to try.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensei_fuzz::{NPZ_LIMIT, models, read_numpy};

fuzz_target!(|bytes: &[u8]| {
    // Every element read is at least four decompressed bytes, and decompression stops at the
    // limit.
    let max_elements = usize::try_from(NPZ_LIMIT / 4).unwrap_or(usize::MAX);
    for model in models() {
        read_numpy("fuzz.npz", bytes, model, max_elements);
    }
});
