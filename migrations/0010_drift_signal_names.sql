-- One naming of signals: the family, and an index for per-feature families (input_psi[4]).
-- The KS test on the student's confidence was stored as the signal `confidence_ks`; it is the
-- signal `confidence`, told apart from the CUSUM on it by its detector (`ks`).
UPDATE drift_events SET signal = 'confidence' WHERE signal = 'confidence_ks';
UPDATE detector_state SET signal = 'confidence' WHERE signal = 'confidence_ks';
