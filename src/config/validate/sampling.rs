//! `[sampling]` (which records the teacher sees, under what budget) and `[segments]` (which keys
//! of a record's segment are monitored).

use super::super::raw;
use super::super::{SamplingConfig, SamplingPolicy, SegmentConfig};
use super::Check;

const DEFAULT_MAX_PER_MINUTE: i64 = 600;
const DEFAULT_QUEUE: i64 = 256;
const DEFAULT_MAX_SEGMENT_VALUES: i64 = 100;

impl Check<'_> {
    pub(super) fn sampling(&mut self, sampling: raw::RawSampling) -> SamplingConfig {
        let rate = sampling.rate.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&rate) {
            self.problem("sampling.rate", format!("must be within 0..=1, got {rate}"));
        }
        let floor = sampling.floor.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&floor) {
            self.problem(
                "sampling.floor",
                format!("must be within 0..=1, got {floor}"),
            );
        }
        SamplingConfig {
            policy: self.choice(
                "sampling.policy",
                sampling.policy,
                SamplingPolicy::Uniform,
                &[
                    ("uniform", SamplingPolicy::Uniform),
                    ("uncertainty", SamplingPolicy::Uncertainty),
                ],
            ),
            floor,
            rate,
            seed: self.integer("sampling.seed", sampling.seed, 0, 0, i64::MAX),
            max_per_minute: self.integer(
                "sampling.max_per_minute",
                sampling.max_per_minute,
                DEFAULT_MAX_PER_MINUTE,
                1,
                i64::from(u32::MAX),
            ),
            queue: self.integer("sampling.queue", sampling.queue, DEFAULT_QUEUE, 1, i64::MAX),
        }
    }

    pub(super) fn segments(&mut self, segments: raw::RawSegments) -> SegmentConfig {
        let keys = self.names("segments.keys", segments.keys.unwrap_or_default());
        for (index, key) in keys.iter().enumerate() {
            if let Some(c) = key.chars().find(|&c| crate::record::escaped_in_segment(c)) {
                self.problem(
                    &format!("segments.keys[{index}]"),
                    format!(
                        "{:?} contains {c:?}: a segment key may not contain ',', '=', '%' or control characters, which separate and escape the stored segment",
                        key
                    ),
                );
            }
        }
        SegmentConfig {
            keys,
            max_values: self.integer(
                "segments.max_values",
                segments.max_values,
                DEFAULT_MAX_SEGMENT_VALUES,
                1,
                i64::MAX,
            ),
            max_value_bytes: self.integer(
                "segments.max_value_bytes",
                segments.max_value_bytes,
                DEFAULT_MAX_SEGMENT_VALUE_BYTES,
                16,
                4096,
            ),
        }
    }
}

/// `[segments] max_value_bytes` unless set.
const DEFAULT_MAX_SEGMENT_VALUE_BYTES: i64 = 64;
