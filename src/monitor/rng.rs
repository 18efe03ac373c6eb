//! The seeded pseudo-random generator behind every simulation in the monitor: calibration,
//! bootstrap resampling and the verification of false-alarm rates.
//!
//! SplitMix64 (Steele, Lea & Flood 2014) is one add, two multiplies and three shifts per draw,
//! passes BigCrush, and its whole state is one `u64`, so a calibration is reproducible from its
//! seed alone and a stream is trivially re-created on another machine (the peer benchmark in
//! `tools/peers/` re-implements it in Python to read the same streams). It is not a
//! cryptographic generator and is not used as one.

use serde::{Deserialize, Serialize};

/// SplitMix64 generator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A generator for the `index`-th independent replication of a simulation seeded with
    /// `seed`. Mixing (rather than adding) the index keeps neighbouring replications from
    /// sharing overlapping stretches of the same sequence.
    pub fn for_replication(seed: u64, index: u64) -> SplitMix64 {
        let mut mixer = SplitMix64::new(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        SplitMix64::new(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Uniform index in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for any
    /// realistic `n`, far under the Monte Carlo error of anything it feeds). `n` must be > 0.
    pub fn index(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // First outputs of the reference C implementation for seed 0.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn uniform_is_in_range_and_centred() {
        let mut rng = SplitMix64::new(7);
        let n = 100_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        assert!((sum / n as f64 - 0.5).abs() < 0.01);
        assert!(rng.index(3) < 3);
    }
}
