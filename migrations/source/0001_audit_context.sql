-- The audit-context surface (SPEC "SQL surface"): the context table that a statement-level trigger
-- on every tracked table fills once per transaction, set_context for applications, the registry of
-- tracked tables, and track/untrack, which keep trigger, publication and registry in step.

CREATE TABLE pubsubpull.context (
    xid xid8 PRIMARY KEY,
    app jsonb,
    db_user text NOT NULL,
    application_name text,
    client_addr inet,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Pruning by age scans this cheaply; a BRIN index costs writers next to nothing.
CREATE INDEX context_created_at ON pubsubpull.context USING brin (created_at);
COMMENT ON TABLE pubsubpull.context IS
    'One row per transaction that changed a tracked table: who made it, through which request.';

-- The tables pubsubpull captures, with the WAL positions from which and until which it did: a
-- stream read later (or again) passes on a change only if its table was tracked at that position.
CREATE TABLE pubsubpull.tracked (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid oid NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    tracked_lsn pg_lsn NOT NULL DEFAULT pg_current_wal_insert_lsn(),
    untracked_lsn pg_lsn
);
CREATE UNIQUE INDEX tracked_now ON pubsubpull.tracked (relid) WHERE untracked_lsn IS NULL;
COMMENT ON TABLE pubsubpull.tracked IS 'The tables pubsubpull captures, and since when (see pubsubpull.track).';

-- The streamer reads the context and the registry through the slot, in step with the changes.
CREATE PUBLICATION pubsubpull FOR TABLE pubsubpull.context, pubsubpull.tracked;

-- Any role may write its own transaction's context; the streamer joins a context row only with the
-- changes of the transaction that wrote it, so a row cannot speak for another transaction.
GRANT USAGE ON SCHEMA pubsubpull TO PUBLIC;
GRANT SELECT (xid), INSERT, UPDATE (app) ON pubsubpull.context TO PUBLIC;
GRANT SELECT ON pubsubpull.tracked TO PUBLIC;

-- Attaches the application's context (user, request, ...) to every change the current transaction
-- makes, before or after this call. Transaction-local.
CREATE FUNCTION pubsubpull.set_context(context jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('pubsubpull.context', coalesce(context::text, ''), true);
    -- The transaction's row is already written: the context applies to the changes made so far too.
    IF current_setting('pubsubpull.context_xid', true) = pg_current_xact_id_if_assigned()::text THEN
        UPDATE pubsubpull.context SET app = set_context.context WHERE xid = pg_current_xact_id();
    END IF;
END $$;

-- Before each statement on a tracked table: writes the transaction's context row once. The marker
-- is a transaction-local setting, so a savepoint rolled back takes row and marker away together.
CREATE FUNCTION pubsubpull.capture_context() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    current xid8 := pg_current_xact_id();
BEGIN
    IF current_setting('pubsubpull.context_xid', true) IS DISTINCT FROM current::text THEN
        INSERT INTO pubsubpull.context (xid, app, db_user, application_name, client_addr)
        VALUES (current, nullif(current_setting('pubsubpull.context', true), '')::jsonb, current_user,
                nullif(current_setting('application_name', true), ''), inet_client_addr())
        ON CONFLICT (xid) DO NOTHING;
        PERFORM set_config('pubsubpull.context_xid', current::text, true);
    END IF;
    RETURN NULL;
END $$;

-- Starts capturing a table: context trigger, publication membership, registry row. Refuses a table
-- whose UPDATE and DELETE statements the publication would break (no primary key or replica
-- identity), unless full_identity asks to set REPLICA IDENTITY FULL.
CREATE FUNCTION pubsubpull.track(target regclass, full_identity boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    rel record;
BEGIN
    SELECT c.relkind, c.relreplident, n.nspname, c.relname,
           EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                   AND (i.indisprimary AND c.relreplident = 'd' OR i.indisreplident AND c.relreplident = 'i'))
               AS has_identity
      INTO rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = target;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'cannot track %: it is not a table', target;
    END IF;
    IF rel.nspname = 'pubsubpull' THEN
        RAISE EXCEPTION 'cannot track %: pubsubpull''s own tables are not captured', target;
    END IF;
    IF rel.relreplident <> 'f' AND NOT rel.has_identity THEN
        IF NOT full_identity THEN
            RAISE EXCEPTION 'cannot track %: it has no primary key or replica identity, so publishing it would make its UPDATE and DELETE statements fail', target
                USING HINT = format('Add a primary key, or track it with REPLICA IDENTITY FULL: pubsubpull track --replica-identity-full %s (in SQL: SELECT pubsubpull.track(%L, full_identity => true)).', target, target);
        END IF;
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', target);
    END IF;
    EXECUTE format('CREATE OR REPLACE TRIGGER pubsubpull_context BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pubsubpull.capture_context()', target);
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                    WHERE p.pubname = 'pubsubpull' AND pr.prrelid = target) THEN
        EXECUTE format('ALTER PUBLICATION pubsubpull ADD TABLE %s', target);
    END IF;
    INSERT INTO pubsubpull.tracked (relid, schema_name, table_name) VALUES (target, rel.nspname, rel.relname)
        ON CONFLICT (relid) WHERE untracked_lsn IS NULL DO NOTHING;
END $$;

-- Stops capturing a table: the reverse of track. Its replica identity is left as it is.
CREATE FUNCTION pubsubpull.untrack(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS pubsubpull_context ON %s', target);
    IF EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                WHERE p.pubname = 'pubsubpull' AND pr.prrelid = target) THEN
        EXECUTE format('ALTER PUBLICATION pubsubpull DROP TABLE %s', target);
    END IF;
    UPDATE pubsubpull.tracked SET untracked_lsn = pg_current_wal_insert_lsn()
     WHERE relid = target AND untracked_lsn IS NULL;
END $$;

-- Removes context rows older than `retention`; the streamer calls it.
CREATE FUNCTION pubsubpull.prune_context(retention interval) RETURNS bigint
LANGUAGE sql AS $$
    WITH pruned AS (DELETE FROM pubsubpull.context WHERE created_at < now() - retention RETURNING 1)
    SELECT count(*) FROM pruned
$$;
