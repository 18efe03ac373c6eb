-- Alerts: rule state, the notification outbox, and actions requested by rules (docs/alerts.md).

-- How far the alert evaluator has read drift_events (one row).
CREATE TABLE alert_cursor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL,           -- highest drift_events.id evaluated
    evaluated_at  INTEGER NOT NULL            -- unix ms of the last evaluation
);

-- The state of each rule's alert (one group per rule).
CREATE TABLE alert_state (
    rule          TEXT    PRIMARY KEY,        -- [[rules]] name
    status        TEXT    NOT NULL,           -- inactive, pending, firing, resolved
    pending_since INTEGER,                    -- unix ms: start of the earliest pending drift
    fired_at      INTEGER,                    -- unix ms: when the current (or last) episode fired
    resolved_at   INTEGER,                    -- unix ms: when it resolved
    last_sent_at  INTEGER,                    -- unix ms: the last notification of the episode
    sent          INTEGER NOT NULL DEFAULT 0, -- notifications in the episode
    members       TEXT    NOT NULL,           -- JSON array: the drifts as last announced
    updated_at    INTEGER NOT NULL
);

-- Every notification, written before it is sent, in the same transaction as the state change
-- that made it.
CREATE TABLE alert_outbox (
    id              INTEGER PRIMARY KEY,
    dedup_key       TEXT    NOT NULL,         -- <rule>.<fired_at>.<n>: the same on every retry
    alert_id        TEXT    NOT NULL,         -- <rule>.<fired_at>: the episode
    receiver        TEXT    NOT NULL,         -- [receivers.NAME]
    rule            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,         -- firing, update, repeat, resolved
    payload         TEXT    NOT NULL,         -- JSON notification document (docs/alerts.md)
    created_at      INTEGER NOT NULL,         -- unix ms
    status          TEXT    NOT NULL DEFAULT 'pending', -- pending, sent
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,         -- unix ms
    last_attempt_at INTEGER,
    last_error      TEXT,
    sent_at         INTEGER,
    UNIQUE (dedup_key, receiver)
);
CREATE INDEX alert_outbox_pending ON alert_outbox (receiver, id) WHERE status = 'pending';

-- Actions rules asked for (action = "redistill"), for the component that carries them out.
-- The consumer moves status on and fills the rest.
CREATE TABLE alert_actions (
    id           INTEGER PRIMARY KEY,
    action       TEXT    NOT NULL,            -- redistill
    rule         TEXT    NOT NULL,
    alert_id     TEXT    NOT NULL,            -- the alert episode that asked
    requested_at INTEGER NOT NULL,            -- unix ms
    drifts       TEXT    NOT NULL,            -- JSON array: the drifts that fired
    status       TEXT    NOT NULL DEFAULT 'requested', -- requested, started, done, failed, skipped
    updated_at   INTEGER NOT NULL,
    detail       TEXT,                        -- consumer's note (job id, error)
    UNIQUE (alert_id, action)
);
