//! Teacher-versus-student metrics for one record, and the label-free statistics of a student
//! output. Pure functions on slices: no model, no clock, no disk.
//!
//! Probabilities are clamped at [`EPS`] inside logarithms so a student that puts exactly zero
//! mass where the teacher puts some yields a large, finite KL instead of infinity (an infinite
//! value would poison every mean and window it enters).

use crate::config::{OutputKind, Pooling, Task};

/// Floor for probabilities inside logarithms.
pub const EPS: f64 = 1e-12;

/// Label-free statistics of one student (or teacher) output.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OutputStats {
    /// Classification: the arg-max class.
    pub prediction: Option<i64>,
    /// Classification: the largest probability.
    pub confidence: Option<f64>,
    /// Classification: entropy of the distribution, in nats.
    pub entropy: Option<f64>,
    /// Regression: the first output value.
    pub value: Option<f64>,
}

/// How one teacher-sampled record's student output compares with the teacher's.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Comparison {
    /// Classification: top-1 classes differ.
    pub disagreement: Option<bool>,
    /// Classification: KL(teacher ‖ student), nats.
    pub kl: Option<f64>,
    /// Classification: total variation distance, 0..=1.
    pub total_variation: Option<f64>,
    /// Embedding: 1 − cosine similarity.
    pub cosine_distance: Option<f64>,
    /// Regression: mean absolute error over output elements.
    pub abs_error: Option<f64>,
    /// Mean over heads and query rows of KL(teacher row ‖ student row).
    pub attention_kl: Option<f64>,
}

/// How outputs are interpreted; built once from the config.
#[derive(Debug, Clone)]
pub struct Comparer {
    pub task: Task,
    pub output_kind: OutputKind,
    pub pooling: Pooling,
}

impl Comparer {
    /// Statistics of one output (`shape` excludes the batch axis). `mask`, for embeddings with
    /// masked mean pooling, has one entry per sequence position.
    pub fn stats(&self, output: &[f32]) -> OutputStats {
        match self.task {
            Task::Classification => {
                if self.output_kind == OutputKind::Logits
                    && let Some(stats) = logit_stats(output)
                {
                    return stats;
                }
                let p = self.probabilities(output);
                let (arg, max) = argmax(p.iter().copied());
                OutputStats {
                    prediction: arg.map(|a| a as i64),
                    confidence: max,
                    entropy: Some(entropy(&p)),
                    value: None,
                }
            }
            Task::Regression => OutputStats {
                value: output.first().map(|&v| v as f64),
                ..OutputStats::default()
            },
            Task::Embedding => OutputStats::default(),
        }
    }

    /// Compares teacher and student outputs of one record. `shape` is the per-record output
    /// shape (needed for embedding pooling); `mask` is the optional pooling mask.
    pub fn compare(
        &self,
        teacher: &[f32],
        student: &[f32],
        shape: &[usize],
        mask: Option<&[i64]>,
    ) -> Comparison {
        let mut c = Comparison::default();
        match self.task {
            Task::Classification => {
                if teacher.len() != student.len() {
                    return c;
                }
                let pt = self.probabilities(teacher);
                let ps = self.probabilities(student);
                c.disagreement = Some(argmax(pt.iter().copied()).0 != argmax(ps.iter().copied()).0);
                c.kl = Some(kl_divergence(&pt, &ps));
                c.total_variation = Some(total_variation(&pt, &ps));
            }
            Task::Embedding => {
                let (t, s) = match self.pooling {
                    Pooling::None => (to_f64(teacher), to_f64(student)),
                    Pooling::Mean => (
                        mean_pool(teacher, shape, mask),
                        mean_pool(student, shape, mask),
                    ),
                };
                if t.len() == s.len() {
                    c.cosine_distance = Some(cosine_distance(&t, &s));
                }
            }
            Task::Regression => {
                if teacher.len() == student.len() && !teacher.is_empty() {
                    let sum: f64 = teacher
                        .iter()
                        .zip(student)
                        .map(|(&t, &s)| (t as f64 - s as f64).abs())
                        .sum();
                    c.abs_error = Some(sum / teacher.len() as f64);
                }
            }
        }
        c
    }

    fn probabilities(&self, output: &[f32]) -> Vec<f64> {
        match self.output_kind {
            OutputKind::Logits => softmax(output),
            OutputKind::Probabilities => to_f64(output),
        }
    }
}

/// [`Comparer::stats`] of logits without building the probabilities: with m the largest logit
/// and S = Σ e^(z_i − m), p_i = e^(z_i − m) / S, so the top probability is 1 / S and the entropy
/// −Σ p_i ln p_i is ln S − Σ p_i (z_i − m), one logarithm instead of one per class. `None` when
/// S is not finite (a NaN or +∞ logit), which the general path handles; a −∞ logit is a class
/// with no mass.
fn logit_stats(logits: &[f32]) -> Option<OutputStats> {
    let (Some(arg), Some(max)) = argmax(logits.iter().map(|&z| z as f64)) else {
        return None;
    };
    let (mut sum, mut weighted) = (0.0, 0.0);
    for &z in logits {
        let d = z as f64 - max;
        let e = d.exp();
        sum += e;
        // A class with no mass adds nothing (and e · d would be 0 · −∞ for a −∞ logit).
        if e > 0.0 {
            weighted += e * d;
        }
    }
    if !sum.is_finite() {
        return None;
    }
    Some(OutputStats {
        prediction: Some(arg as i64),
        confidence: Some(1.0 / sum),
        entropy: Some((sum.ln() - weighted / sum).max(0.0)),
        value: None,
    })
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index and value of the largest element (first on ties); `None` for no elements.
pub fn argmax(p: impl IntoIterator<Item = f64>) -> (Option<usize>, Option<f64>) {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in p.into_iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    (best.map(|b| b.0), best.map(|b| b.1))
}

pub fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum::<f64>()
}

/// KL(p ‖ q) in nats, with q clamped at [`EPS`].
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|&(&pi, _)| pi > 0.0)
        .map(|(&pi, &qi)| pi * (pi / qi.max(EPS)).ln())
        .sum::<f64>()
        .max(0.0)
}

pub fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

pub fn cosine_distance(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 0.0 } else { 1.0 };
    }
    (1.0 - dot / (na * nb)).clamp(0.0, 2.0)
}

/// Mean over axis 0 of a `[seq, dim]` output, leaving out positions whose mask is 0.
fn mean_pool(output: &[f32], shape: &[usize], mask: Option<&[i64]>) -> Vec<f64> {
    let (seq, dim) = match shape {
        [seq, dim] => (*seq, *dim),
        _ => return to_f64(output),
    };
    let mut sum = vec![0.0; dim];
    let mut count = 0usize;
    for t in 0..seq {
        if mask.is_some_and(|m| m.get(t).copied().unwrap_or(0) == 0) {
            continue;
        }
        count += 1;
        for (d, s) in sum.iter_mut().enumerate() {
            *s += output[t * dim + d] as f64;
        }
    }
    if count > 0 {
        sum.iter_mut().for_each(|s| *s /= count as f64);
    }
    sum
}

/// Mean over heads and query rows of KL(teacher row ‖ student row) for attention probabilities of
/// shape `[heads, seq, seq]`. `None` when the shapes differ (models with different head counts
/// or sequence lengths are not comparable).
pub fn attention_kl(
    teacher: &[f32],
    teacher_shape: &[usize],
    student: &[f32],
    student_shape: &[usize],
) -> Option<f64> {
    if teacher_shape != student_shape || teacher_shape.len() != 3 || teacher.len() != student.len()
    {
        return None;
    }
    let seq = teacher_shape[2];
    if seq == 0 {
        return None;
    }
    let rows = teacher.len() / seq;
    // Each ratio's logarithm in single precision, the precision of the attention values
    // themselves (it adds an error of about 1e-7 to the mean); the sums in double.
    let mut total = 0.0;
    for r in 0..rows {
        let t = &teacher[r * seq..(r + 1) * seq];
        let s = &student[r * seq..(r + 1) * seq];
        total += t
            .iter()
            .zip(s)
            .filter(|&(&ti, _)| ti > 0.0)
            .map(|(&ti, &si)| ti as f64 * (ti / si.max(EPS as f32)).ln() as f64)
            .sum::<f64>();
    }
    Some((total / rows as f64).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Comparer {
        Comparer {
            task: Task::Classification,
            output_kind: OutputKind::Logits,
            pooling: Pooling::None,
        }
    }

    #[test]
    fn identical_outputs_agree_with_zero_divergence() {
        let c = classifier().compare(&[1.0, 2.0, 0.5], &[1.0, 2.0, 0.5], &[3], None);
        assert_eq!(c.disagreement, Some(false));
        assert!(c.kl.unwrap().abs() < 1e-12);
        assert!(c.total_variation.unwrap().abs() < 1e-12);
    }

    #[test]
    fn kl_matches_a_hand_computed_value() {
        // p = (0.5, 0.5), q = (0.9, 0.1): KL = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5108256...
        let kl = kl_divergence(&[0.5, 0.5], &[0.9, 0.1]);
        assert!((kl - 0.510_825_623_765_990_7).abs() < 1e-12, "{kl}");
        assert!((total_variation(&[0.5, 0.5], &[0.9, 0.1]) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn different_top_class_is_a_disagreement() {
        let c = classifier().compare(&[3.0, 0.0], &[0.0, 3.0], &[2], None);
        assert_eq!(c.disagreement, Some(true));
        assert!(c.kl.unwrap() > 1.0);
    }

    #[test]
    fn zero_student_mass_gives_finite_kl() {
        let kl = kl_divergence(&[0.5, 0.5], &[1.0, 0.0]);
        assert!(kl.is_finite() && kl > 10.0);
    }

    #[test]
    fn stats_report_confidence_and_entropy() {
        let s = classifier().stats(&[0.0, 0.0]);
        assert_eq!(s.prediction, Some(0));
        assert!((s.confidence.unwrap() - 0.5).abs() < 1e-12);
        assert!((s.entropy.unwrap() - std::f64::consts::LN_2).abs() < 1e-12);
    }

    /// The statistics of logits, computed without the probabilities, equal those of the
    /// probabilities themselves: ties, one class, huge and tiny spreads, a −∞ logit; a NaN or
    /// +∞ logit takes the general path.
    #[test]
    fn logit_statistics_equal_those_of_the_softmax() {
        let mut cases: Vec<Vec<f32>> = vec![
            vec![0.0, 0.0],
            vec![3.0],
            vec![1.0, 5.0, 5.0, -2.0],
            vec![-1e30, 0.0, 1e30],
            vec![100.0, -100.0, 0.5],
            vec![1e-7, 0.0, -1e-7],
            vec![2.0, f32::NEG_INFINITY, 1.0],
        ];
        // A fixed linear congruential sequence: 200 ten-class outputs spread over ±20.
        let mut x: u64 = 20_261_128;
        for _ in 0..200 {
            cases.push(
                (0..10)
                    .map(|_| {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
                    })
                    .collect(),
            );
        }
        for z in &cases {
            let fast = logit_stats(z).expect("finite logits");
            let p = softmax(z);
            let (arg, max) = argmax(p.iter().copied());
            assert_eq!(fast.prediction, arg.map(|a| a as i64), "{z:?}");
            assert!(
                (fast.confidence.unwrap() - max.unwrap()).abs() < 1e-12,
                "{z:?}"
            );
            assert!((fast.entropy.unwrap() - entropy(&p)).abs() < 1e-12, "{z:?}");
        }
        assert_eq!(logit_stats(&[]), None);
        for bad in [f32::NAN, f32::INFINITY] {
            let z = [0.0, bad, 1.0];
            assert_eq!(logit_stats(&z), None);
            let p = softmax(&z);
            let general = classifier().stats(&z);
            assert_eq!(
                general.prediction,
                argmax(p.iter().copied()).0.map(|a| a as i64)
            );
        }
    }

    /// Single-precision logarithms of the ratios stay within 1e-7 of the double-precision
    /// mean, on attention rows from peaked to flat, near-equal to far apart.
    #[test]
    fn attention_kl_matches_double_precision() {
        let (heads, seq) = (4, 8);
        let mut x: u64 = 7;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 40) as f64 / (1u64 << 24) as f64
        };
        for spread in [0.01, 1.0, 5.0, 20.0] {
            let mut rows = |n: usize| -> Vec<f32> {
                let mut out = Vec::with_capacity(n * seq);
                for _ in 0..n {
                    let z: Vec<f32> = (0..seq).map(|_| (next() * spread) as f32).collect();
                    out.extend(softmax(&z).iter().map(|&p| p as f32));
                }
                out
            };
            let t = rows(heads * seq);
            let s = rows(heads * seq);
            let shape = [heads, seq, seq];
            let fast = attention_kl(&t, &shape, &s, &shape).unwrap();
            let exact: f64 = t
                .chunks(seq)
                .zip(s.chunks(seq))
                .map(|(t, s)| {
                    t.iter()
                        .zip(s)
                        .map(|(&a, &b)| a as f64 * ((a as f64).ln() - (b as f64).ln()))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / (heads * seq) as f64;
            assert!(
                (fast - exact).abs() < 1e-7,
                "spread {spread}: {fast} vs {exact}"
            );
        }
    }

    #[test]
    fn attention_kl_is_zero_for_equal_and_none_for_mismatched_shapes() {
        let a = [0.5f32, 0.5, 1.0, 0.0];
        assert_eq!(attention_kl(&a, &[1, 2, 2], &a, &[1, 2, 2]), Some(0.0));
        assert_eq!(attention_kl(&a, &[1, 2, 2], &a, &[2, 1, 2]), None);
        // Row 0: KL((.5,.5) ‖ (.9,.1)); row 1: KL((1,0) ‖ (1,0)) = 0. Mean over 2 rows.
        let s = [0.9f32, 0.1, 1.0, 0.0];
        let v = attention_kl(&a, &[1, 2, 2], &s, &[1, 2, 2]).unwrap();
        assert!((v - 0.510_825_6 / 2.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn cosine_distance_with_masked_mean_pooling() {
        let c = Comparer {
            task: Task::Embedding,
            output_kind: OutputKind::Logits,
            pooling: Pooling::Mean,
        };
        // Two positions of dim 2; the second is masked out, so only the first counts.
        let t = [1.0f32, 0.0, 0.0, 1.0];
        let s = [1.0f32, 0.0, 5.0, -5.0];
        let masked = c.compare(&t, &s, &[2, 2], Some(&[1, 0]));
        assert!(masked.cosine_distance.unwrap().abs() < 1e-12);
        let unmasked = c.compare(&t, &s, &[2, 2], None);
        assert!(unmasked.cosine_distance.unwrap() > 0.5);
    }

    #[test]
    fn regression_absolute_error() {
        let c = Comparer {
            task: Task::Regression,
            output_kind: OutputKind::Logits,
            pooling: Pooling::None,
        };
        let r = c.compare(&[1.0, 3.0], &[2.0, 1.0], &[2], None);
        assert_eq!(r.abs_error, Some(1.5));
    }
}

/// The input summary of one record: for every float32 input, the mean over all axes but the
/// last, i.e. one value per feature (channel) — `[T, C]` gives C values. At most
/// [`MAX_FEATURES`] values in all, so a model with wide inputs does not carry thousands of
/// drift tests; int64 inputs (token ids) have no meaningful mean and are skipped.
pub fn input_features(record: &crate::record::Record) -> Vec<f64> {
    let mut out = Vec::new();
    for tensor in record.inputs.values() {
        if out.len() >= MAX_FEATURES {
            break;
        }
        let crate::record::TensorData::F32(data) = &tensor.data else {
            continue;
        };
        let width = tensor.shape.last().copied().unwrap_or(1).max(1);
        let rows = data.len() / width;
        if rows == 0 {
            continue;
        }
        // Row by row, each channel summed in row order: contiguous reads the compiler can
        // vectorise, and the same sums as adding up each channel on its own.
        let start = out.len();
        let take = width.min(MAX_FEATURES - start);
        out.resize(start + take, 0.0);
        let sums = &mut out[start..];
        for row in data.chunks_exact(width) {
            for (sum, &v) in sums.iter_mut().zip(row) {
                *sum += v as f64;
            }
        }
        for sum in sums.iter_mut() {
            *sum /= rows as f64;
        }
    }
    out
}

/// Upper bound on the input features summarised per record.
pub const MAX_FEATURES: usize = 64;

#[cfg(test)]
mod feature_tests {
    use super::*;
    use crate::record::{Origin, Record, Tensor};

    #[test]
    fn features_are_per_channel_means() {
        let record = Record {
            id: None,
            ts: None,
            segment: Default::default(),
            inputs: [(
                "x".to_string(),
                Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 3.0, 4.0, 5.0]),
            )]
            .into(),
            label: None,
            origin: Origin::Index(0),
        };
        assert_eq!(input_features(&record), vec![2.0, 3.0, 4.0]);
    }

    #[test]
    fn features_stop_at_the_bound_across_inputs_and_match_channel_by_channel_sums() {
        // Two inputs of 40 channels: all of the first, 24 of the second.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut values = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 10_000) as f32 / 7.0 - 500.0
                })
                .collect()
        };
        let (a, b) = (values(5 * 40), values(3 * 40));
        let record = Record {
            id: None,
            ts: None,
            segment: Default::default(),
            inputs: [
                ("a".to_string(), Tensor::f32(vec![5, 40], a.clone())),
                ("b".to_string(), Tensor::f32(vec![3, 40], b.clone())),
            ]
            .into(),
            label: None,
            origin: Origin::Index(0),
        };
        let mean = |data: &[f32], rows: usize, f: usize| -> f64 {
            (0..rows).map(|r| data[r * 40 + f] as f64).sum::<f64>() / rows as f64
        };
        let expected: Vec<f64> = (0..40)
            .map(|f| mean(&a, 5, f))
            .chain((0..24).map(|f| mean(&b, 3, f)))
            .collect();
        assert_eq!(input_features(&record), expected);
    }
}
