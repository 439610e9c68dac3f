-- pubsubpull.context partitioned by day (of created_at, in UTC) and without a primary key. The key
-- cost every transaction that changes a tracked table about 7,500 instructions, two fifths of what
-- the C trigger adds to it (bench/context): an index entry, its WAL record and its lock. What the
-- key served is now done without one:
-- - pruning by age drops whole days, partition by partition, rather than deleting rows along the
--   key (so pruning no longer writes WAL the streamer reads back either);
-- - set_context after the transaction's first change updates the row where the trigger wrote it:
--   the partition of the transaction's start time (created_at = now()) and the tuple id, which the
--   trigger keeps (the PL/pgSQL one in the transaction-local pubsubpull.context_written);
-- - the replica identity that publishing that update needs is the whole row.
-- The streamer takes the rows of every partition (pubsubpull.context_*) as context rows: all three
-- plugins name the partition, not the partitioned table. Days are created ahead (two days here,
-- then by the streamer's pruning); a default partition takes the rows of a day that is missing.

ALTER PUBLICATION pubsubpull DROP TABLE pubsubpull.context;
ALTER TABLE pubsubpull.context RENAME TO context_until_partitioned;
ALTER INDEX pubsubpull.context_pkey RENAME TO context_until_partitioned_pkey;
DROP FUNCTION pubsubpull.prune_context(interval);
DROP TABLE pubsubpull.context_horizon;

CREATE TABLE pubsubpull.context (
    xid xid8 NOT NULL,
    app jsonb,
    db_user text NOT NULL,
    application_name text,
    client_addr inet,
    created_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);
COMMENT ON TABLE pubsubpull.context IS
    'One row per transaction that changed a tracked table: who made it, through which request. Partitioned by day (UTC).';
ALTER TABLE pubsubpull.context REPLICA IDENTITY FULL;
CREATE TABLE pubsubpull.context_default PARTITION OF pubsubpull.context DEFAULT;
ALTER TABLE pubsubpull.context_default REPLICA IDENTITY FULL;
ALTER PUBLICATION pubsubpull ADD TABLE pubsubpull.context;
-- As before, and what set_context finds the row by.
GRANT SELECT (xid, created_at, ctid), INSERT, UPDATE (app) ON pubsubpull.context TO PUBLIC;

-- Creates the partitions of today and the next `days` days (UTC) that are missing; returns how
-- many it created. A day whose rows went to the default partition meanwhile stays there.
CREATE FUNCTION pubsubpull.create_context_partitions(days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day date;
    partition text;
    created integer := 0;
BEGIN
    FOR offset_days IN 0 .. days LOOP
        day := today + offset_days;
        partition := 'context_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(format('pubsubpull.%I', partition)) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE TABLE pubsubpull.%I PARTITION OF pubsubpull.context FOR VALUES FROM (%L) TO (%L)',
                           partition, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
            EXECUTE format('ALTER TABLE pubsubpull.%I REPLICA IDENTITY FULL', partition);
            created := created + 1;
        EXCEPTION
            WHEN check_violation THEN NULL;  -- rows of that day are in the default partition
            WHEN invalid_object_definition THEN NULL;  -- another partition covers (part of) that day
            WHEN duplicate_table THEN NULL;  -- created meanwhile by another session
            WHEN lock_not_available THEN  -- under a lock_timeout: left to the next pruning
                RAISE WARNING 'pubsubpull: the context table is in use, partition % left to the next pruning', partition;
        END;
    END LOOP;
    RETURN created;
END $$;

-- The rows written before this migration stay where they are, as the partition of the days up to
-- the last one they reach (and pruned with it); an empty table goes.
DO $$
DECLARE
    newest timestamptz := (SELECT max(created_at) FROM pubsubpull.context_until_partitioned);
BEGIN
    IF newest IS NULL THEN
        DROP TABLE pubsubpull.context_until_partitioned;
    ELSE
        EXECUTE format('ALTER TABLE pubsubpull.context ATTACH PARTITION pubsubpull.context_until_partitioned '
                       'FOR VALUES FROM (MINVALUE) TO (%L)',
                       ((newest AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC');
    END IF;
END $$;
SELECT pubsubpull.create_context_partitions(2);

-- Creates the coming days' partitions, then drops those wholly older than `retention` and deletes
-- the default partition's rows older than it; the streamer calls it every hour.
CREATE FUNCTION pubsubpull.prune_context(retention interval, OUT dropped_partitions integer,
                                         OUT deleted_rows bigint)
LANGUAGE plpgsql AS $$
DECLARE
    horizon timestamptz := now() - retention;
    partition record;
BEGIN
    -- Creating or dropping a partition waits for the context table's lock, and writers of tracked
    -- tables that go through it would wait behind: rather than make them wait long, leave it to
    -- the next pruning.
    PERFORM set_config('lock_timeout', '1s', true);
    PERFORM pubsubpull.create_context_partitions(2);
    dropped_partitions := 0;
    FOR partition IN
        SELECT c.oid::regclass AS name,
               substring(pg_get_expr(c.relpartbound, c.oid) FROM ' TO \(''([^'']+)''\)$')::timestamptz AS upper
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'pubsubpull.context'::regclass
    LOOP
        CONTINUE WHEN partition.upper IS NULL OR partition.upper > horizon;
        BEGIN
            EXECUTE format('DROP TABLE %s', partition.name);
            dropped_partitions := dropped_partitions + 1;
        EXCEPTION WHEN lock_not_available THEN
            RAISE WARNING 'pubsubpull: the context table is in use, partition % left to the next pruning', partition.name;
        END;
    END LOOP;
    DELETE FROM pubsubpull.context_default WHERE created_at < horizon;
    GET DIAGNOSTICS deleted_rows = ROW_COUNT;
END $$;

-- The PL/pgSQL trigger: as in 0004, with the row's tuple id as the "row written" marker.
CREATE OR REPLACE FUNCTION pubsubpull.capture_context() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    written text := current_setting('pubsubpull.context_written', true);
BEGIN
    IF coalesce(written, '') = '' THEN
        INSERT INTO pubsubpull.context (xid, app, db_user, application_name, client_addr)
        VALUES (pg_current_xact_id(), nullif(current_setting('pubsubpull.context', true), '')::jsonb,
                current_user, nullif(current_setting('application_name', true), ''), inet_client_addr())
        RETURNING ctid INTO written;
        written := set_config('pubsubpull.context_written', written, true);
    END IF;
    RETURN NULL;
END $$;

-- As in 0005, with the PL/pgSQL set_context finding the row by its tuple id.
CREATE OR REPLACE FUNCTION pubsubpull.restore_set_context() RETURNS boolean
LANGUAGE plpgsql AS $restore$
BEGIN
    IF to_regprocedure('pubsubpull.set_context(jsonb)') IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Attaches the application's context to every change the current transaction makes, before
    -- or after this call. Transaction-local.
    CREATE FUNCTION pubsubpull.set_context(context jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
        written text := current_setting('pubsubpull.context_written', true);
    BEGIN
        PERFORM set_config('pubsubpull.context', coalesce(context::text, ''), true);
        -- The row is written already: the context applies to the changes made so far too.
        IF written <> '' THEN
            UPDATE pubsubpull.context SET app = set_context.context
             WHERE created_at = now() AND ctid = written::tid
            RETURNING ctid INTO written;
            PERFORM set_config('pubsubpull.context_written', written, true);
        END IF;
    END $$;
    RETURN true;
END $restore$;
SELECT pubsubpull.drop_plpgsql_set_context();
SELECT pubsubpull.restore_set_context();
