-- Partitioned tables. A statement-level trigger fires only for statements on its own table: the
-- one on a partitioned table misses what is written straight into a partition. So every partition
-- below a tracked table gets the context trigger too: track installs it on those there are, an
-- event trigger on those created or attached later (where pubsubpull migrate may create it: a
-- superuser's right), and migrate or track run again otherwise. Their changes reach the
-- publication with the partitioned table, and the streamer gives them under the tracked table's
-- name: it learns the partitions when it starts, then from the event trigger's messages in the
-- stream (without the event trigger: anew when a table it does not know appears).

-- The partitions below tracked tables (at every level, with the tracked table above each, the
-- nearest first) as [partition schema, partition name, tracked schema, tracked name] rows.
CREATE FUNCTION pubsubpull.tracked_partitions() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_array(pn.nspname, pc.relname, t.schema_name, t.table_name) ORDER BY p.level), '[]')
      FROM (SELECT DISTINCT relid, schema_name, table_name FROM pubsubpull.tracked) t
     CROSS JOIN LATERAL pg_partition_tree(t.relid::regclass) p
      JOIN pg_class pc ON pc.oid = p.relid
      JOIN pg_namespace pn ON pn.oid = pc.relnamespace
     WHERE p.level > 0
$$;

-- A table and every partition below it, at every level.
CREATE FUNCTION pubsubpull.with_partitions(target regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE AS $$
    SELECT target UNION SELECT relid FROM pg_partition_tree(target)
$$;

-- A table and every partitioned table above it (pg_partition_ancestors lists none for a table that
-- is not a partition, not even the table itself).
CREATE FUNCTION pubsubpull.with_ancestors(target regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE AS $$
    SELECT target UNION SELECT relid FROM pg_partition_ancestors(target)
$$;

-- As in 0003, with the trigger on the table's partitions as well, the partitions told to the
-- streamer (as the event trigger below does), and a partition of a tracked table refused (or the
-- partitioned table of a tracked partition).
CREATE OR REPLACE FUNCTION pubsubpull.track(target regclass, full_identity boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    rel record;
    overlap regclass;
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
    -- A change is captured under one name: a partition's, or its partitioned table's, not both.
    SELECT t.relid::regclass INTO overlap FROM pubsubpull.tracked t
     WHERE t.untracked_lsn IS NULL AND t.relid <> target
       AND (t.relid IN (SELECT pubsubpull.with_ancestors(target)) OR t.relid IN (SELECT pubsubpull.with_partitions(target)))
     LIMIT 1;
    IF overlap IS NOT NULL THEN
        RAISE EXCEPTION 'cannot track %: % is tracked, and the one is a partition of the other', target, overlap
            USING HINT = format('A partitioned table''s changes include its partitions'': track either, not both (pubsubpull untrack %s first).', overlap);
    END IF;
    IF rel.relreplident <> 'f' AND NOT rel.has_identity THEN
        IF NOT full_identity THEN
            RAISE EXCEPTION 'cannot track %: it has no primary key or replica identity, so publishing it would make its UPDATE and DELETE statements fail', target
                USING HINT = format('Add a primary key, or track it with REPLICA IDENTITY FULL: pubsubpull track --replica-identity-full %s (in SQL: SELECT pubsubpull.track(%L, full_identity => true)).', target, target);
        END IF;
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', target);
    END IF;
    PERFORM pubsubpull.install_context_trigger(t) FROM pubsubpull.with_partitions(target) t;
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                    WHERE p.pubname = 'pubsubpull' AND pr.prrelid = target) THEN
        EXECUTE format('ALTER PUBLICATION pubsubpull ADD TABLE %s', target);
    END IF;
    INSERT INTO pubsubpull.tracked (relid, schema_name, table_name) VALUES (target, rel.nspname, rel.relname)
        ON CONFLICT (relid) WHERE untracked_lsn IS NULL DO NOTHING;
    PERFORM pg_logical_emit_message(true, 'pubsubpull.partitions', pubsubpull.tracked_partitions()::text);
END $$;

-- As in 0001, with the trigger dropped from the table's partitions as well, but for those that
-- another tracked table still needs it on (the partition itself, or a table above it).
CREATE OR REPLACE FUNCTION pubsubpull.untrack(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT pubsubpull.with_partitions(target) LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pubsubpull.tracked tr
                               WHERE tr.untracked_lsn IS NULL AND tr.relid <> target
                                 AND tr.relid IN (SELECT pubsubpull.with_ancestors(t)));
        EXECUTE format('DROP TRIGGER IF EXISTS pubsubpull_context ON %s', t);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                WHERE p.pubname = 'pubsubpull' AND pr.prrelid = target) THEN
        EXECUTE format('ALTER PUBLICATION pubsubpull DROP TABLE %s', target);
    END IF;
    UPDATE pubsubpull.tracked SET untracked_lsn = pg_current_wal_insert_lsn()
     WHERE relid = target AND untracked_lsn IS NULL;
END $$;

-- As in 0003, for the tracked tables' partitions as well (those added since they were tracked).
CREATE OR REPLACE FUNCTION pubsubpull.refresh_context_triggers() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    target regclass;
    changed integer := 0;
BEGIN
    FOR target IN
        SELECT DISTINCT p.p FROM pubsubpull.tracked t
          JOIN pg_class c ON c.oid = t.relid  -- a tracked table dropped since has nothing to fix
          CROSS JOIN LATERAL pubsubpull.with_partitions(t.relid::regclass) p
          LEFT JOIN pg_trigger tg ON tg.tgrelid = p.p AND tg.tgname = 'pubsubpull_context'
         WHERE t.untracked_lsn IS NULL AND tg.tgfoid IS DISTINCT FROM pubsubpull.context_trigger()
    LOOP
        PERFORM pubsubpull.install_context_trigger(target);
        changed := changed + 1;
    END LOOP;
    RETURN changed;
END $$;
-- pubsubpull migrate runs it after the migrations: tables tracked before this one get the trigger
-- on their partitions then.

-- After CREATE TABLE ... PARTITION OF, ALTER TABLE ... ATTACH or DETACH PARTITION (and any other
-- CREATE or ALTER TABLE in a tracked table's tree): the context trigger on partitions below tracked
-- tables that lack it, none on those detached from them, and a transactional message with the
-- tracked tables' partitions as they are now, which the streamer takes at this point of the
-- stream. It must not make anyone's DDL fail: what it cannot do is a warning.
CREATE FUNCTION pubsubpull.trigger_new_partitions() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    partition record;
    seen boolean := false;
BEGIN
    FOR partition IN
        SELECT DISTINCT p.p AS relid, tg.tgrelid IS NULL AS untriggered
          FROM pg_event_trigger_ddl_commands() command
         CROSS JOIN LATERAL pubsubpull.with_partitions(command.objid::regclass) p
          LEFT JOIN pg_trigger tg ON tg.tgrelid = p.p AND tg.tgname = 'pubsubpull_context'
         WHERE command.classid = 'pg_class'::regclass AND command.objsubid = 0
           AND EXISTS (SELECT 1 FROM pubsubpull.tracked t
                        WHERE t.untracked_lsn IS NULL AND t.relid IN (SELECT pubsubpull.with_ancestors(p.p)))
    LOOP
        IF partition.untriggered THEN
            PERFORM pubsubpull.install_context_trigger(partition.relid);
        END IF;
        seen := true;
    END LOOP;
    -- A partition detached from a tracked table keeps no trigger of its own (of those that this
    -- user may drop it from).
    FOR partition IN
        SELECT tg.tgrelid::regclass AS relid FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
         WHERE tg.tgname = 'pubsubpull_context' AND pg_has_role(c.relowner, 'USAGE')
           AND NOT EXISTS (SELECT 1 FROM pubsubpull.tracked t
                            WHERE t.untracked_lsn IS NULL AND t.relid IN (SELECT pubsubpull.with_ancestors(tg.tgrelid)))
    LOOP
        EXECUTE format('DROP TRIGGER pubsubpull_context ON %s', partition.relid);
    END LOOP;
    IF seen THEN
        PERFORM pg_logical_emit_message(true, 'pubsubpull.partitions', pubsubpull.tracked_partitions()::text);
    END IF;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pubsubpull: a new partition of a tracked table may have no context trigger: %', SQLERRM
        USING HINT = 'Run pubsubpull migrate, or pubsubpull track on the partitioned table again.';
END $$;

-- Creates the event trigger unless it exists; pubsubpull migrate runs it, as a superuser only.
CREATE FUNCTION pubsubpull.watch_new_partitions() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pubsubpull_new_partitions') THEN
        CREATE EVENT TRIGGER pubsubpull_new_partitions ON ddl_command_end
            WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
            EXECUTE FUNCTION pubsubpull.trigger_new_partitions();
    END IF;
END $$;
