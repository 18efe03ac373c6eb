//! NumPy `.npy` files, read for every model shape under both non-finite policies.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensei_fuzz::{models, read_numpy};

fuzz_target!(|bytes: &[u8]| {
    // Every element read is at least four bytes of the file (int32 is widened, never narrowed).
    let max_elements = bytes.len() / 4;
    for model in models() {
        read_numpy("fuzz.npy", bytes, model, max_elements);
    }
});
