-- The feed (SPEC "Guarantees"): every change of the tracked tables, in commit order, each
-- transaction stored once with its context, written together with the checkpoint that says how
-- far the slot has been stored.
--
-- Retention drops whole segments: the writer opens a new segment every retention / 8 and drops
-- the segments whose last change is older than the retention. Each segment is one partition of
-- `feed` and one of `feed_transaction` (created by the writer, named `feed_N` and
-- `feed_transaction_N`), so removing old changes is a DROP TABLE, not a DELETE that would slow
-- capture and bloat the tables.

-- One row per segment; `first_position` is the first position the segment may hold, so the
-- oldest segment's is the feed's oldest retained position.
CREATE TABLE pubsubpull.feed_segment (
    segment int PRIMARY KEY,
    first_position bigint NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now()
);

-- One row per stored transaction, in the segment of its changes.
CREATE TABLE pubsubpull.feed_transaction (
    segment int NOT NULL,
    txn bigint NOT NULL,
    xid bigint,
    end_lsn pg_lsn NOT NULL,
    committed_at timestamptz,
    context jsonb
) PARTITION BY LIST (segment);
CREATE INDEX feed_transaction_txn ON pubsubpull.feed_transaction (txn);

-- One row per change, `position` in commit order (unique: the one writer numbers them; a unique
-- index would have to include the segment). `body` is the change object less its position and
-- its transaction's fields, as JSON text: it is served as it was stored.
CREATE TABLE pubsubpull.feed (
    segment int NOT NULL,
    position bigint NOT NULL,
    txn bigint NOT NULL,
    table_name text NOT NULL,
    body text NOT NULL
) PARTITION BY LIST (segment);
CREATE INDEX feed_position ON pubsubpull.feed (position);
CREATE INDEX feed_table_position ON pubsubpull.feed (table_name, position);

-- How far each slot's stream is stored: the end of the last stored transaction (where the stream
-- restarts) and the last transaction and position given.
CREATE TABLE pubsubpull.feed_checkpoint (
    slot text PRIMARY KEY,
    end_lsn pg_lsn NOT NULL,
    last_txn bigint NOT NULL,
    last_position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
