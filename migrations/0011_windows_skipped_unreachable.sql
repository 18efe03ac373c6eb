-- A teacher on an inference server (`[teacher] url`) can be out of reach. A sampled record it
-- could not answer (the server down or refusing, the request timed out, transient errors past
-- the retries, the circuit breaker open) keeps `records.sampled` = 5 and is counted per window
-- beside the budget and queue skips. The student's answer is stored as always.

ALTER TABLE windows ADD COLUMN skipped_unreachable INTEGER NOT NULL DEFAULT 0;

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

-- What each `records.sampled` code means, for queries and charts.
CREATE TABLE sampled_codes (
    code    INTEGER PRIMARY KEY,
    meaning TEXT    NOT NULL
);
INSERT INTO sampled_codes (code, meaning) VALUES
    (0, 'not sampled'),
    (1, 'the teacher answered'),
    (2, 'skipped: over the teacher budget'),
    (3, 'skipped: the teacher''s queue was full'),
    (4, 'the teacher failed'),
    (5, 'skipped: the teacher on the inference server was out of reach');
