-- Records a shadow model on an inference server did not answer ([[challengers]] url): each is
-- counted here, once, in the transaction that commits the record, and left out of the model's
-- shadow_samples and shadow_totals (docs/redistill.md).
CREATE TABLE shadow_skips (
    model      TEXT    NOT NULL,             -- shadow_models.name
    sha256     TEXT    NOT NULL,             -- the model version (on a server: of its address), first 12 hex digits
    reason     TEXT    NOT NULL CHECK (reason IN ('unreachable', 'error', 'busy')),
    records    INTEGER NOT NULL,             -- teacher-sampled records skipped for this reason
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,             -- unix ms
    PRIMARY KEY (model, sha256, reason)
);
