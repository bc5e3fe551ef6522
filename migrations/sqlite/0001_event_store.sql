-- The event store of sqlite-es 0.5.0, plus a commit-ordered log of every event.
--
-- sqlite-es keeps no global order. The trigger copies each event's key into event_log
-- inside the inserting transaction; SQLite has a single writer, so position order is
-- commit order and a reader can never see a gap fill in behind its checkpoint. The
-- primary key stays (type, id, sequence): sqlite-es recognises conflicts only by the
-- primary-key error code.

CREATE TABLE IF NOT EXISTS events
(
    aggregate_type text                          NOT NULL,
    aggregate_id   text                          NOT NULL,
    sequence       integer CHECK (sequence >= 0) NOT NULL,
    event_type     text                          NOT NULL,
    event_version  text                          NOT NULL,
    payload        text                          NOT NULL,
    metadata       text                          NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE TABLE IF NOT EXISTS snapshots
(
    aggregate_type   text                                  NOT NULL,
    aggregate_id     text                                  NOT NULL,
    last_sequence    integer CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL,
    payload          text                                  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
) STRICT;

CREATE TABLE event_log
(
    position       integer PRIMARY KEY AUTOINCREMENT,
    tx_id          integer NOT NULL DEFAULT 0,
    recorded_at_ms integer NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS integer)),
    aggregate_type text    NOT NULL,
    aggregate_id   text    NOT NULL,
    sequence       integer NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE TRIGGER events_to_log
    AFTER INSERT
    ON events
BEGIN
    INSERT INTO event_log (aggregate_type, aggregate_id, sequence)
    VALUES (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence);
END;

CREATE TABLE aggregate_snapshots
(
    aggregate_type text    NOT NULL,
    aggregate_id   text    NOT NULL,
    sequence       integer NOT NULL,
    payload        text    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
) STRICT;

CREATE TABLE checkpoints
(
    name     text PRIMARY KEY,
    tx_id    integer NOT NULL,
    position integer NOT NULL
) STRICT;
