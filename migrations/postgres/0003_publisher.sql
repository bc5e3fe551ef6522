-- A reader that talks to the outside world (the AWS publisher) cannot hold its checkpoint
-- row locked while it waits on the network, so it holds a lease instead: the instance
-- named in `owner` may move the checkpoint until `lease_until_ms`.
ALTER TABLE checkpoints ADD COLUMN owner text;
ALTER TABLE checkpoints ADD COLUMN lease_until_ms bigint NOT NULL DEFAULT 0;

-- What AWS refused for good, so that it is visible and does not block the stream.
CREATE TABLE publish_failures
(
    id             bigserial PRIMARY KEY,
    target         text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    reason         text   NOT NULL,
    failed_at_ms   bigint NOT NULL
);
