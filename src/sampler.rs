//! Which records the teacher sees, and with what weight.
//!
//! The decision for a record is a hash of the configured seed and the record id, compared with
//! the sampling rate: the same record is sampled the same way after a restart or in a replay, and
//! no random state needs persisting. A token bucket enforces the budget (teacher records per
//! minute); a sampled record the budget or the teacher's queue cannot take is counted as skipped,
//! never silently dropped from the statistics. The inverse-probability weight `1 / rate` travels
//! with every sample so that estimates stay unbiased if the policy changes.

use std::time::Instant;

use crate::config::SamplingConfig;
use crate::monitor::UncertaintyPolicy;

/// The outcome for one record, stored with it (`records.sampled`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Not chosen for the teacher.
    NotSampled,
    /// Chosen, and sent to the teacher with this inverse-probability weight.
    Sampled { weight: f64 },
    /// Chosen, but over the per-minute budget.
    SkippedBudget,
    /// Chosen, but the teacher's queue was full (the teacher is slower than the budget assumes).
    SkippedQueue,
}

impl Decision {
    /// The code stored in `records.sampled` (see docs/schema.md).
    pub fn code(self) -> i64 {
        match self {
            Decision::NotSampled => 0,
            Decision::Sampled { .. } => 1,
            Decision::SkippedBudget => 2,
            Decision::SkippedQueue => 3,
        }
    }
}

/// Token bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Debug, Clone)]
pub struct Budget {
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Budget {
    pub fn per_minute(capacity: u32) -> Budget {
        Budget {
            capacity: capacity as f64,
            tokens: capacity as f64,
            last: None,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.capacity / 60.0).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives a token back (the teacher's queue refused the sample).
    pub fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }
}

/// The sampling policy of the running pipeline.
#[derive(Debug, Clone)]
pub struct Sampler {
    rate: f64,
    seed: u64,
    budget: Budget,
    /// Uncertainty-weighted inclusion probabilities, fitted on the lab set; uniform when `None`.
    policy: Option<UncertaintyPolicy>,
}

impl Sampler {
    pub fn new(config: &SamplingConfig, policy: Option<UncertaintyPolicy>) -> Sampler {
        Sampler {
            rate: config.rate,
            seed: config.seed,
            budget: Budget::per_minute(config.max_per_minute),
            policy,
        }
    }

    /// The inclusion probability of a record whose student uncertainty (1 − confidence) is `u`.
    pub fn inclusion_probability(&self, uncertainty: Option<f64>) -> f64 {
        match (&self.policy, uncertainty) {
            (Some(p), Some(u)) => p.inclusion_probability(u),
            _ => self.rate,
        }
    }

    /// Whether the policy picks `record_id`, before the budget. Deterministic in (seed, id).
    pub fn picks(&self, record_id: &str, uncertainty: Option<f64>) -> bool {
        let pi = self.inclusion_probability(uncertainty);
        pi > 0.0 && unit_hash(self.seed, record_id) < pi
    }

    /// The decision for one record at `now`, spending budget when it is sampled.
    pub fn decide(&mut self, record_id: &str, uncertainty: Option<f64>, now: Instant) -> Decision {
        if !self.picks(record_id, uncertainty) {
            return Decision::NotSampled;
        }
        if !self.budget.try_take(now) {
            return Decision::SkippedBudget;
        }
        Decision::Sampled {
            weight: 1.0 / self.inclusion_probability(uncertainty),
        }
    }

    /// Records that a sampled record could not be queued: the token is returned.
    pub fn queue_refused(&mut self) -> Decision {
        self.budget.refund();
        Decision::SkippedQueue
    }
}

/// A stable hash of (seed, text) mapped to [0, 1). FNV-1a then a SplitMix64 finaliser: stable
/// across Rust versions and platforms, unlike `std`'s `DefaultHasher`.
pub fn unit_hash(seed: u64, text: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// `records.sampled` code of a record whose teacher run failed.
pub const TEACHER_FAILED: i64 = 4;

/// `records.sampled` code of a record the teacher on an inference server could not answer:
/// unreachable, timed out, transient errors past the retries, or the circuit breaker open.
pub const TEACHER_UNREACHABLE: i64 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    impl Sampler {
        fn new_uniform(config: &SamplingConfig) -> Sampler {
            Sampler::new(config, None)
        }
    }

    #[test]
    fn uncertain_records_are_sampled_more_and_weighted_less() {
        let lab: Vec<f64> = (0..1000).map(|i| (i % 100) as f64 / 200.0).collect();
        let policy = UncertaintyPolicy::fit(&lab, 0.1, 0.02).unwrap();
        let s = Sampler::new(&config(0.1, 1_000_000), Some(policy));
        let share = |u: f64| {
            (0..20_000)
                .filter(|i| s.picks(&format!("r{i}"), Some(u)))
                .count() as f64
                / 20_000.0
        };
        let (confident, uncertain) = (share(0.0), share(0.45));
        assert!((confident - 0.02).abs() < 0.006, "{confident}");
        assert!(uncertain > 3.0 * confident, "{uncertain} vs {confident}");
        assert!((s.inclusion_probability(Some(0.0)) - 0.02).abs() < 1e-12);
    }

    fn config(rate: f64, per_minute: u32) -> SamplingConfig {
        SamplingConfig {
            policy: crate::config::SamplingPolicy::Uniform,
            floor: 0.2,
            rate,
            seed: 7,
            max_per_minute: per_minute,
            queue: 16,
        }
    }

    #[test]
    fn sampling_is_deterministic_and_close_to_the_rate() {
        let s = Sampler::new_uniform(&config(0.2, 1_000_000));
        let picked: Vec<bool> = (0..20_000)
            .map(|i| s.picks(&format!("r{i}"), None))
            .collect();
        let again: Vec<bool> = (0..20_000)
            .map(|i| s.picks(&format!("r{i}"), None))
            .collect();
        assert_eq!(picked, again);
        let rate = picked.iter().filter(|&&p| p).count() as f64 / 20_000.0;
        // Binomial sd at n=20000, p=0.2 is 0.0028: 4 sd.
        assert!((rate - 0.2).abs() < 0.012, "rate {rate}");
    }

    #[test]
    fn different_seeds_pick_different_records() {
        let a = Sampler::new_uniform(&config(0.5, 1000));
        let mut b_cfg = config(0.5, 1000);
        b_cfg.seed = 8;
        let b = Sampler::new_uniform(&b_cfg);
        let differ = (0..1000)
            .filter(|i| a.picks(&format!("r{i}"), None) != b.picks(&format!("r{i}"), None))
            .count();
        assert!(differ > 300, "{differ}");
    }

    #[test]
    fn budget_caps_samples_per_minute_and_refills() {
        let mut s = Sampler::new_uniform(&config(1.0, 10));
        let t0 = Instant::now();
        let sampled = (0..50)
            .filter(|i| {
                matches!(
                    s.decide(&format!("r{i}"), None, t0),
                    Decision::Sampled { .. }
                )
            })
            .count();
        assert_eq!(sampled, 10);
        assert_eq!(s.decide("late", None, t0), Decision::SkippedBudget);
        // Half a minute later, half the budget is back.
        let t1 = t0 + Duration::from_secs(30);
        let refilled = (0..50)
            .filter(|i| {
                matches!(
                    s.decide(&format!("q{i}"), None, t1),
                    Decision::Sampled { .. }
                )
            })
            .count();
        assert_eq!(refilled, 5);
    }

    #[test]
    fn weight_is_inverse_rate_and_rate_zero_never_samples() {
        let mut s = Sampler::new_uniform(&config(0.25, 1000));
        let w = (0..100)
            .find_map(|i| match s.decide(&format!("r{i}"), None, Instant::now()) {
                Decision::Sampled { weight } => Some(weight),
                _ => None,
            })
            .unwrap();
        assert_eq!(w, 4.0);
        let never = Sampler::new_uniform(&config(0.0, 1000));
        assert!((0..1000).all(|i| !never.picks(&format!("r{i}"), None)));
    }
}
