-- The event store of postgres-es 0.5.0, plus a commit-ordered log of every event.
--
-- postgres-es inserts events one statement at a time and keeps no global order. The
-- trigger below copies each event's key into event_log in the same transaction, with a
-- position and the inserting transaction's id. Readers (projector, publisher) only read
-- rows whose transaction is older than every running one, so a row can never appear
-- behind a checkpoint (a plain BIGSERIAL poll would lose rows committed out of order).

CREATE TABLE IF NOT EXISTS events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- Kept so postgres-es finds the table it expects; snapshots live in aggregate_snapshots.
CREATE TABLE IF NOT EXISTS snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

CREATE TABLE event_log
(
    position       bigserial PRIMARY KEY,
    tx_id          bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    recorded_at_ms bigint NOT NULL DEFAULT (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX event_log_order ON event_log (tx_id, position);

CREATE FUNCTION skafu_log_event() RETURNS trigger AS
$$
BEGIN
    INSERT INTO event_log (aggregate_type, aggregate_id, sequence)
    VALUES (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_to_log
    AFTER INSERT
    ON events
    FOR EACH ROW
EXECUTE FUNCTION skafu_log_event();

-- Snapshots written by our own store (the 0.5.0 snapshot store double-applies events).
-- A snapshot is a cache: losing one costs a longer load, never correctness.
CREATE TABLE aggregate_snapshots
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    payload        text   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Where each reader of event_log has got to.
CREATE TABLE checkpoints
(
    name     text PRIMARY KEY,
    tx_id    bigint NOT NULL,
    position bigint NOT NULL
);
