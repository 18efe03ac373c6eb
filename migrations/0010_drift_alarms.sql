-- Every alarm of every detector, not only the one that opened an event. An event stays open
-- until its detector is back in control (docs/detection.md, "Events"); each alarm meanwhile is
-- a row here and counts on its event, so a drift that follows a false alarm stays visible.
ALTER TABLE drift_events ADD COLUMN alarms INTEGER NOT NULL DEFAULT 1;  -- alarms counted on the event, the first included
ALTER TABLE drift_events ADD COLUMN last_alarm_at INTEGER;              -- unix ms of its latest alarm
ALTER TABLE drift_events ADD COLUMN last_alarm_record INTEGER;          -- records.seq of its latest alarm
UPDATE drift_events SET last_alarm_at = detected_at, last_alarm_record = detected_at_record;

CREATE TABLE drift_alarms (
    id                      INTEGER PRIMARY KEY,
    event_id                INTEGER NOT NULL REFERENCES drift_events (id),
    detected_at             INTEGER NOT NULL,  -- unix ms
    detected_at_record      INTEGER NOT NULL,  -- records.seq of the record that completed the evidence
    estimated_change_record INTEGER,           -- records.seq where this alarm's excursion began
    statistic               REAL    NOT NULL,
    threshold               REAL    NOT NULL,
    current_value           REAL,
    p_value                 REAL
);
CREATE INDEX drift_alarms_by_event ON drift_alarms (event_id);

-- The events stored before this migration: their one alarm each.
INSERT INTO drift_alarms (event_id, detected_at, detected_at_record, estimated_change_record,
                          statistic, threshold, current_value, p_value)
SELECT id, detected_at, detected_at_record, estimated_change_record, statistic, threshold,
       current_value, p_value
FROM drift_events;
