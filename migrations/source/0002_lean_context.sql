-- A cheaper context trigger (bench/context: the trigger's extra instructions per transaction fell
-- by a fifth). Writers no longer pay for a BRIN index (every context row widened the last range's
-- summary), an ON CONFLICT check (the transaction-local marker already makes the row unique: a
-- savepoint rolled back takes row and marker away together) or PERFORM's extra query.
--
-- Pruning by age keeps an index: it now walks the primary key. Each pruning records the current
-- transaction id with the time in context_horizon; rows older than the retention are those whose
-- xid is below the newest horizon recorded before the retention.

DROP INDEX pubsubpull.context_created_at;

CREATE TABLE pubsubpull.context_horizon (
    xid xid8 PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pubsubpull.context_horizon IS
    'Transaction ids seen at known times, so that context rows can be pruned by age along their primary key.';

CREATE OR REPLACE FUNCTION pubsubpull.capture_context() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    current xid8 := pg_current_xact_id();
    marker text := current::text;
BEGIN
    IF current_setting('pubsubpull.context_xid', true) IS DISTINCT FROM marker THEN
        INSERT INTO pubsubpull.context (xid, app, db_user, application_name, client_addr)
        VALUES (current, nullif(current_setting('pubsubpull.context', true), '')::jsonb, current_user,
                nullif(current_setting('application_name', true), ''), inet_client_addr());
        marker := set_config('pubsubpull.context_xid', marker, true);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION pubsubpull.prune_context(retention interval) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    horizon xid8;
    pruned bigint;
BEGIN
    INSERT INTO pubsubpull.context_horizon (xid) VALUES (pg_current_xact_id());
    SELECT max(xid) INTO horizon FROM pubsubpull.context_horizon WHERE at < now() - retention;
    IF horizon IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM pubsubpull.context WHERE xid < horizon;
    GET DIAGNOSTICS pruned = ROW_COUNT;
    DELETE FROM pubsubpull.context_horizon WHERE xid < horizon;
    RETURN pruned;
END $$;
