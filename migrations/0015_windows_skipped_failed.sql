-- A sampled record the teacher failed on keeps `records.sampled` = 4 and is now counted per
-- window too, beside the budget, queue and out-of-reach skips: a local teacher whose run
-- failed, or a teacher on an inference server that answered with an error that is not
-- transient (HTTP 400, 404, 500, …) or with an answer sensei refuses (not Open Inference
-- Protocol JSON, an output missing, of the wrong shape or datatype). Such an answer is never
-- compared with the student. The student's answer is stored as always.

ALTER TABLE windows ADD COLUMN skipped_failed INTEGER NOT NULL DEFAULT 0;

DROP VIEW window_stats;
CREATE VIEW window_stats AS
SELECT
    start,
    strftime('%Y-%m-%dT%H:%M:%SZ', start / 1000, 'unixepoch') AS start_utc,
    segment,
    records,
    teacher_samples,
    skipped_budget,
    skipped_queue,
    skipped_unreachable,
    skipped_failed,
    confidence_sum / NULLIF(records, 0)                 AS mean_confidence,
    entropy_sum / NULLIF(records, 0)                    AS mean_entropy,
    latency_us_sum * 1.0 / NULLIF(records, 0)           AS mean_latency_us,
    disagreement_wsum / NULLIF(weight_sum, 0)           AS disagreement_rate,
    kl_wsum / NULLIF(weight_sum, 0)                     AS mean_kl,
    total_variation_wsum / NULLIF(weight_sum, 0)        AS mean_total_variation,
    attention_kl_wsum / NULLIF(attention_kl_weight, 0)  AS mean_attention_kl,
    cosine_distance_wsum / NULLIF(weight_sum, 0)        AS mean_cosine_distance,
    abs_error_wsum / NULLIF(weight_sum, 0)              AS mean_abs_error,
    teacher_latency_us_sum * 1.0 / NULLIF(teacher_samples, 0) AS mean_teacher_latency_us
FROM windows;

UPDATE sampled_codes
SET meaning = 'skipped: the teacher failed (a local run''s error; an inference server''s error answer, or an answer of the wrong shape, datatype or format)'
WHERE code = 4;
