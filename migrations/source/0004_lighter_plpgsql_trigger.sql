-- A lighter PL/pgSQL context trigger (bench/context: an eighth fewer of the instructions it adds to
-- a transaction). Its "row written" marker no longer holds the transaction id, which every call
-- computed and turned into text to compare: a transaction-local setting already ends with its
-- transaction and goes back with a rolled-back savepoint, so "on" says as much. The transaction id
-- is now read only by the INSERT.

CREATE OR REPLACE FUNCTION pubsubpull.capture_context() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    written text;  -- an assignment costs less than PERFORM, which runs a query
BEGIN
    IF current_setting('pubsubpull.context_written', true) IS DISTINCT FROM 'on' THEN
        INSERT INTO pubsubpull.context (xid, app, db_user, application_name, client_addr)
        VALUES (pg_current_xact_id(), nullif(current_setting('pubsubpull.context', true), '')::jsonb,
                current_user, nullif(current_setting('application_name', true), ''), inet_client_addr());
        written := set_config('pubsubpull.context_written', 'on', true);
    END IF;
    RETURN NULL;
END $$;
