-- The feed (SPEC "Guarantees"): every change of the tracked tables, in commit order, each
-- transaction stored once with its context, written together with the checkpoint that says how
-- far the slot has been stored.

-- One row per stored transaction.
CREATE TABLE pubsubpull.feed_transaction (
    txn bigint PRIMARY KEY,
    xid bigint,
    end_lsn pg_lsn NOT NULL,
    committed_at timestamptz,
    context jsonb
);

-- One row per change, `position` in commit order. `body` is the change object less its position
-- and its transaction's fields, as JSON text: it is served as it was stored.
CREATE TABLE pubsubpull.feed (
    position bigint PRIMARY KEY,
    txn bigint NOT NULL,
    table_name text NOT NULL,
    body text NOT NULL
);
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
