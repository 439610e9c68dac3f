\echo Use "CREATE EXTENSION pubsubpull_context" to load this file. \quit

-- What pubsubpull.capture_context() does, in C: pubsubpull.track installs this one when it exists.
CREATE FUNCTION pubsubpull.capture_context_native() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'capture_context';
