-- One naming of signals: the family, and an index for per-feature families (input_psi[4]).
-- The KS test on the student's confidence was stored as the signal `confidence_ks`; it is the
-- signal `confidence`, told apart from the CUSUM on it by its detector (`ks`).
UPDATE drift_events SET signal = 'confidence' WHERE signal = 'confidence_ks';
UPDATE detector_state SET signal = 'confidence' WHERE signal = 'confidence_ks';

-- A windowed test's standing was stored as its adjusted p-value against α, which reads upside
-- down beside every other detector (statistic / threshold was 100 for a test in control). It is
-- now its margin towards an alarm against a threshold of 1; the next round writes the margin,
-- until then an open test stands at 1 and a closed one at 0.
UPDATE detector_state
   SET statistic = CASE WHEN state = 'open' THEN 1.0 ELSE 0.0 END, threshold = 1.0
 WHERE detector LIKE 'windowed:%';
