//! The distillation buffer's retention policy: which teacher samples to keep once the buffer
//! holds more than its cap.
//!
//! The buffer is the material of the next re-distillation, so it should hold what the student
//! must learn (recent records, records where it disagrees with the teacher) without losing what
//! it already knows: a student fine-tuned on drifted data alone forgets the baseline
//! distribution. So a share of the cap is reserved for agreeing ("in-distribution") records,
//! thinned evenly over the whole history rather than taken from its end, and the rest of the cap
//! goes to disagreeing records first and then to the most recent ones.

use crate::config::BufferPolicy;
use crate::store::{BufferEntry, Store};

/// Prunes the store's distillation buffer to the policy's cap; returns how many samples went.
pub fn prune(store: &mut Store, policy: &BufferPolicy) -> crate::store::Result<usize> {
    store.prune_teacher_samples(policy.max_samples, |entries| to_delete(entries, policy))
}

/// The `seq`s to delete so that at most `policy.max_samples` entries remain. `entries` must be
/// in `seq` order (oldest first).
pub fn to_delete(entries: &[BufferEntry], policy: &BufferPolicy) -> Vec<i64> {
    let cap = policy.max_samples;
    if entries.len() <= cap {
        return Vec::new();
    }
    let disagreeing = disagreeing_flags(entries);
    let agreeing: Vec<usize> = (0..entries.len()).filter(|&i| !disagreeing[i]).collect();
    let reserve = ((policy.in_distribution_share.clamp(0.0, 1.0) * cap as f64).round() as usize)
        .min(agreeing.len())
        .min(cap);
    let mut keep = vec![false; entries.len()];
    // Evenly spaced over the agreeing records' history, oldest and newest included.
    for k in 0..reserve {
        let pos = if reserve == 1 {
            agreeing.len() - 1
        } else {
            k * (agreeing.len() - 1) / (reserve - 1)
        };
        keep[agreeing[pos]] = true;
    }
    let mut rest: Vec<usize> = (0..entries.len()).filter(|&i| !keep[i]).collect();
    // Disagreeing first, then newest first.
    rest.sort_by_key(|&i| (!disagreeing[i], std::cmp::Reverse(entries[i].seq)));
    let kept = keep.iter().filter(|&&k| k).count();
    for &i in rest.iter().take(cap.saturating_sub(kept)) {
        keep[i] = true;
    }
    entries
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|(e, _)| e.seq)
        .collect()
}

/// A sample counts as disagreeing when its top-1 class differs, or (without a class) when its
/// divergence is above the buffer's median.
fn disagreeing_flags(entries: &[BufferEntry]) -> Vec<bool> {
    let mut divergences: Vec<f64> = entries
        .iter()
        .filter(|e| e.disagreement.is_none())
        .filter_map(|e| e.divergence)
        .filter(|d| d.is_finite())
        .collect();
    divergences.sort_by(f64::total_cmp);
    let median = divergences.get(divergences.len() / 2).copied();
    entries
        .iter()
        .map(|e| match (e.disagreement, e.divergence, median) {
            (Some(d), _, _) => d,
            (None, Some(x), Some(m)) => x > m,
            _ => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, disagree: bool) -> BufferEntry {
        BufferEntry {
            seq,
            disagreement: Some(disagree),
            divergence: None,
        }
    }

    #[test]
    fn nothing_is_deleted_under_the_cap() {
        let entries: Vec<_> = (1..=10).map(|s| entry(s, false)).collect();
        let policy = BufferPolicy {
            max_samples: 10,
            in_distribution_share: 0.3,
        };
        assert!(to_delete(&entries, &policy).is_empty());
    }

    #[test]
    fn keeps_disagreeing_and_recent_records_and_a_spread_of_agreeing_ones() {
        // 1000 samples; every 10th disagrees (100 of them); cap 300 with 20% (60) reserved.
        let entries: Vec<_> = (1..=1000).map(|s| entry(s, s % 10 == 0)).collect();
        let policy = BufferPolicy {
            max_samples: 300,
            in_distribution_share: 0.2,
        };
        let doomed = to_delete(&entries, &policy);
        assert_eq!(doomed.len(), 700);
        let kept: Vec<i64> = (1..=1000).filter(|s| !doomed.contains(s)).collect();
        // Every disagreeing record stays.
        assert!((1..=100).all(|k| kept.contains(&(k * 10))));
        // The newest agreeing records fill what the reserve and the disagreements leave.
        assert!(kept.contains(&999) && kept.contains(&998));
        // The reserve reaches back to the oldest records: in-distribution examples survive.
        assert!(kept.contains(&1));
        let old_agreeing = kept.iter().filter(|&&s| s < 500 && s % 10 != 0).count();
        assert!(
            old_agreeing >= 25,
            "{old_agreeing} old agreeing records kept"
        );
        // Without the reserve, nothing old and agreeing would be kept.
        let no_reserve = to_delete(
            &entries,
            &BufferPolicy {
                max_samples: 300,
                in_distribution_share: 0.0,
            },
        );
        let kept: Vec<i64> = (1..=1000).filter(|s| !no_reserve.contains(s)).collect();
        assert_eq!(kept.iter().filter(|&&s| s < 500 && s % 10 != 0).count(), 0);
    }

    /// The policy applied to a real database: the cap holds, the kept rows are the ones the
    /// policy chose, and the inputs of deleted samples go with them.
    #[test]
    fn the_store_prunes_the_buffer_to_its_cap_with_the_inputs() {
        use crate::compare::Comparison;
        use crate::record::Tensor;
        use crate::store::{FileCommit, RecordRow, Store, TeacherRow};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sensei.db");
        let mut store = Store::open(&path).unwrap();
        let records = (0..200)
            .map(|i| {
                let disagree = i % 20 == 0;
                RecordRow {
                    record_id: format!("r{i}"),
                    features: Vec::new(),
                    ts_ms: 1_000 * i,
                    segment: String::new(),
                    prediction: Some(1),
                    confidence: Some(0.9),
                    entropy: Some(0.1),
                    value: None,
                    latency_us: 10,
                    sampled: 1,
                    label: None,
                    teacher: Some(TeacherRow {
                        weight: 2.0,
                        teacher_prediction: Some(i64::from(!disagree)),
                        teacher_confidence: Some(0.8),
                        comparison: Comparison {
                            disagreement: Some(disagree),
                            kl: Some(0.1),
                            ..Comparison::default()
                        },
                        latency_us: 100,
                        output_shape: vec![2],
                        teacher_output: vec![0.1, 0.9],
                        student_output: vec![0.2, 0.8],
                        teacher_attention: None,
                        inputs: vec![("x".into(), Tensor::f32(vec![2], vec![1.0, 2.0]))],
                        shadow: Vec::new(),
                    }),
                }
            })
            .collect();
        let file = FileCommit {
            first_seq: store.next_seq().unwrap(),
            name: "a.jsonl".into(),
            sha256: "a".into(),
            size: 1,
            kind: "jsonl",
            student: "s".into(),
            teacher: "t".into(),
            records,
            ..FileCommit::default()
        };
        store.commit_file(&file, 60_000, 0, None).unwrap();
        let policy = BufferPolicy {
            max_samples: 50,
            in_distribution_share: 0.2,
        };
        assert_eq!(prune(&mut store, &policy).unwrap(), 150);
        assert_eq!(prune(&mut store, &policy).unwrap(), 0);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM teacher_samples"), 50);
        assert_eq!(count("SELECT COUNT(*) FROM teacher_sample_inputs"), 50);
        assert_eq!(
            count("SELECT COUNT(*) FROM teacher_samples WHERE disagreement = 1"),
            10
        );
        // The oldest record survives through the in-distribution reserve.
        assert_eq!(
            count("SELECT COUNT(*) FROM teacher_samples WHERE record_id = 'r1'"),
            1
        );
        // Records themselves are not the buffer's business.
        assert_eq!(count("SELECT COUNT(*) FROM records"), 200);
    }

    #[test]
    fn without_classes_the_more_divergent_half_counts_as_disagreeing() {
        let entries: Vec<_> = (1..=100)
            .map(|s| BufferEntry {
                seq: s,
                disagreement: None,
                divergence: Some(if s <= 20 { 5.0 } else { 0.1 }),
            })
            .collect();
        let policy = BufferPolicy {
            max_samples: 30,
            in_distribution_share: 0.0,
        };
        let doomed = to_delete(&entries, &policy);
        assert_eq!(doomed.len(), 70);
        // The 20 divergent old samples stay, and the 10 newest.
        assert!((1..=20).all(|s| !doomed.contains(&s)));
        assert!((91..=100).all(|s| !doomed.contains(&s)));
    }
}
