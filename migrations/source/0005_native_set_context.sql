-- set_context in C where the pubsubpull_context extension (version 1.1) provides it. The PL/pgSQL
-- set_context turns the application's jsonb into text for a transaction-local setting, which the C
-- trigger then parsed back into jsonb; the extension's set_context hands the trigger the jsonb itself
-- (bench/context: a quarter of what the trigger adds to a transaction with a context) and costs the
-- application a plain function call instead of a PL/pgSQL one.
--
-- The extension's function takes the name applications call, pubsubpull.set_context: pubsubpull
-- migrate drops the PL/pgSQL one in the transaction that creates (or updates) the extension, and
-- pubsubpull.restore_set_context() brings it back after the extension is dropped.

-- Creates the PL/pgSQL set_context where there is none (the extension's went with it); returns
-- whether it did. pubsubpull migrate runs it.
CREATE FUNCTION pubsubpull.restore_set_context() RETURNS boolean
LANGUAGE plpgsql AS $restore$
BEGIN
    IF to_regprocedure('pubsubpull.set_context(jsonb)') IS NOT NULL THEN
        RETURN false;
    END IF;
    -- As in 0003: attaches the application's context to every change the current transaction makes,
    -- before or after this call. Transaction-local.
    CREATE FUNCTION pubsubpull.set_context(context jsonb) RETURNS void
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
    RETURN true;
END $restore$;

-- Drops the PL/pgSQL set_context, for the extension to create its own in the same transaction; a
-- set_context of the extension stays.
CREATE FUNCTION pubsubpull.drop_plpgsql_set_context() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_depend
                    WHERE classid = 'pg_proc'::regclass AND objid = to_regprocedure('pubsubpull.set_context(jsonb)')
                      AND refclassid = 'pg_extension'::regclass AND deptype = 'e') THEN
        DROP FUNCTION IF EXISTS pubsubpull.set_context(jsonb);
    END IF;
END $$;
