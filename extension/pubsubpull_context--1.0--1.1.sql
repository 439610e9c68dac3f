\echo Use "ALTER EXTENSION pubsubpull_context UPDATE" to load this file. \quit

-- What the PL/pgSQL pubsubpull.set_context() does, in C, under the same name: pubsubpull migrate
-- drops the PL/pgSQL one in the transaction that creates or updates this extension.
CREATE FUNCTION pubsubpull.set_context(context jsonb) RETURNS void
LANGUAGE c AS 'MODULE_PATHNAME', 'set_context';
