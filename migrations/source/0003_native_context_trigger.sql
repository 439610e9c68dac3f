-- The audit-context trigger in C (extension/, the pubsubpull_context extension): where the server
-- has it installed, pubsubpull migrate creates the extension and tracked tables use its
-- pubsubpull.capture_context_native() in place of the PL/pgSQL pubsubpull.capture_context().
-- bench/context measures both.

-- The trigger function tracked tables get: the C one when its extension is created.
CREATE FUNCTION pubsubpull.context_trigger() RETURNS regprocedure
LANGUAGE sql STABLE AS $$
    SELECT coalesce(to_regprocedure('pubsubpull.capture_context_native()'),
                    'pubsubpull.capture_context()'::regprocedure)
$$;

-- The C trigger keeps its "row written" marker in the backend, not in the PL/pgSQL trigger's
-- transaction-local setting, so set_context no longer asks that setting whether the row exists: a
-- transaction with an id may have written it, and updating by the primary key finds it if so.
CREATE OR REPLACE FUNCTION pubsubpull.set_context(context jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current xid8 := pg_current_xact_id_if_assigned();
BEGIN
    PERFORM set_config('pubsubpull.context', coalesce(context::text, ''), true);
    -- The transaction's row may be written already: the context applies to the changes made so far too.
    IF current IS NOT NULL THEN
        UPDATE pubsubpull.context SET app = set_context.context WHERE xid = current;
    END IF;
END $$;

-- Installs (or re-points) the context trigger of a tracked table; `function` is for measuring one
-- against the other (bench/context).
CREATE FUNCTION pubsubpull.install_context_trigger(target regclass,
                                                   function regprocedure DEFAULT pubsubpull.context_trigger())
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE OR REPLACE TRIGGER pubsubpull_context BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s', target, function);
END $$;

-- As in 0001, but the trigger runs pubsubpull.context_trigger().
CREATE OR REPLACE FUNCTION pubsubpull.track(target regclass, full_identity boolean DEFAULT false) RETURNS void
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
    PERFORM pubsubpull.install_context_trigger(target);
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                    WHERE p.pubname = 'pubsubpull' AND pr.prrelid = target) THEN
        EXECUTE format('ALTER PUBLICATION pubsubpull ADD TABLE %s', target);
    END IF;
    INSERT INTO pubsubpull.tracked (relid, schema_name, table_name) VALUES (target, rel.nspname, rel.relname)
        ON CONFLICT (relid) WHERE untracked_lsn IS NULL DO NOTHING;
END $$;


-- Gives every tracked table whose trigger is missing or runs another function the trigger of
-- pubsubpull.context_trigger() (after the extension was created, or dropped with its triggers);
-- returns how many it installed.
CREATE FUNCTION pubsubpull.refresh_context_triggers() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    target regclass;
    changed integer := 0;
BEGIN
    FOR target IN
        SELECT t.relid::regclass FROM pubsubpull.tracked t
          JOIN pg_class c ON c.oid = t.relid  -- a tracked table dropped since has nothing to fix
          LEFT JOIN pg_trigger tg ON tg.tgrelid = t.relid AND tg.tgname = 'pubsubpull_context'
         WHERE t.untracked_lsn IS NULL AND tg.tgfoid IS DISTINCT FROM pubsubpull.context_trigger()
    LOOP
        PERFORM pubsubpull.install_context_trigger(target);
        changed := changed + 1;
    END LOOP;
    RETURN changed;
END $$;
