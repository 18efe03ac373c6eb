//! `[detect]`: the drift detectors' false-alarm rate, smallest shifts worth an alert and the windowed tests.

use super::super::DetectConfig;
use super::super::raw;
use super::Check;

impl Check<'_> {
    pub(super) fn detect(&mut self, raw: raw::RawDetect) -> DetectConfig {
        DetectConfig {
            arl0: self.integer("detect.arl0", raw.arl0, 10_000, 100, 10_000_000),
            min_shift_disagreement: self.fraction(
                "detect.min_shift_disagreement",
                raw.min_shift_disagreement,
                0.05,
            ),
            min_shift_error: self.fraction("detect.min_shift_error", raw.min_shift_error, 0.05),
            min_shift_sd: self.positive("detect.min_shift_sd", raw.min_shift_sd, 1.0),
            window_records: self.integer(
                "detect.window_records",
                raw.window_records,
                200,
                20,
                1_000_000,
            ),
            family_alpha: self.fraction("detect.family_alpha", raw.family_alpha, 0.01),
            min_ks: self.fraction("detect.min_ks", raw.min_ks, 0.15),
            min_class_shift: self.fraction("detect.min_class_shift", raw.min_class_shift, 0.1),
            min_psi: self.positive("detect.min_psi", raw.min_psi, 0.2),
            seed: self.integer("detect.seed", raw.seed, 1, 0, i64::MAX),
        }
    }
}
