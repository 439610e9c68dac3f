//! `pubsubpull migrate`, `track` and `untrack` as a user runs them: idempotent and concurrent
//! migrations, tables refused with the fix in the message, the publication kept equal to the
//! tracked set, untracked tables kept out of the output, and old context rows pruned.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::TestDb;

fn pubsubpull(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pubsubpull")).args(args).output().expect("run pubsubpull")
}

/// Migrates the database and tracks a new table `t (id int PRIMARY KEY)`.
fn migrate_and_track_t(url: &str, db: &TestDb) {
    ok(pubsubpull(&["migrate", "--database-url", url]));
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    ok(pubsubpull(&["track", "--database-url", url, "t"]));
}

fn ok(output: Output) -> Output {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

#[test]
fn migrate_is_idempotent_and_safe_to_run_concurrently() {
    let db = TestDb::new();
    let url = db.url();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
                .args(["migrate", "--database-url", &url])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut run in runs {
        assert!(run.wait().unwrap().success());
    }
    ok(pubsubpull(&["migrate", "--database-url", &url]));
    assert_eq!(
        db.sql("SELECT target, version FROM pubsubpull.schema_migrations ORDER BY target, version"),
        "feed|1\nfeed|2\nsource|1\nsource|2\nsource|3\nsource|4\nsource|5\nsource|6\nsource|7"
    );
    assert_eq!(db.sql("SELECT count(*) FROM pg_extension WHERE extname = 'pubsubpull_context'"), "1");
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication WHERE pubname = 'pubsubpull'"), "1");
}

#[test]
fn track_keeps_trigger_publication_and_registry_in_step() {
    let db = TestDb::new();
    let url = db.url();
    let not_migrated = pubsubpull(&["track", "--database-url", &url, "t"]);
    assert!(String::from_utf8_lossy(&not_migrated.stderr).contains("run `pubsubpull migrate` first"));
    ok(pubsubpull(&["migrate", "--database-url", &url]));
    db.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE \"Odd Name\" (id int PRIMARY KEY); CREATE TABLE keyless (v text)");

    ok(pubsubpull(&["track", "--database-url", &url, "t", "\"Odd Name\""]));
    let published = "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables \
                     WHERE pubname = 'pubsubpull' AND schemaname = 'public'";
    assert_eq!(db.sql(published), "Odd Name,t");
    assert_eq!(db.sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'pubsubpull_context'"), "2");
    let registry = "SELECT string_agg(relid::regclass::text, ',' ORDER BY relid::regclass::text) \
                    FROM pubsubpull.tracked WHERE untracked_lsn IS NULL";
    assert_eq!(db.sql(registry), "\"Odd Name\",t");

    let refused = pubsubpull(&["track", "--database-url", &url, "keyless"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("no primary key or replica identity") && message.contains("--replica-identity-full"),
        "{message}"
    );
    let missing =
        String::from_utf8_lossy(&pubsubpull(&["track", "--database-url", &url, "nope"]).stderr).into_owned();
    assert!(missing.contains("relation \"nope\" does not exist"), "{missing}");
    // A name as the user sees it, not as SQL reads it: the message says how to spell it.
    for unquoted in ["odd name", "ODD NAME", "public.Odd Name"] {
        let misspelled = pubsubpull(&["track", "--database-url", &url, unquoted]);
        let message = String::from_utf8_lossy(&misspelled.stderr);
        assert!(message.contains("did you mean \"Odd Name\"?"), "{message}");
    }
    // All or none: a table refused leaves the ones before it untracked.
    db.sql("CREATE TABLE u (id int PRIMARY KEY)");
    let partly = pubsubpull(&["track", "--database-url", &url, "u", "keyless"]);
    let message = String::from_utf8_lossy(&partly.stderr);
    assert!(!partly.status.success() && message.contains("no table was tracked: keyless:"), "{message}");
    assert_eq!(db.sql(registry), "\"Odd Name\",t");
    assert_eq!(db.sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'pubsubpull_context'"), "2");
    ok(pubsubpull(&["track", "--database-url", &url, "--replica-identity-full", "keyless"]));
    assert_eq!(db.sql("SELECT relreplident FROM pg_class WHERE relname = 'keyless'"), "f");

    let partly = pubsubpull(&["untrack", "--database-url", &url, "t", "nope"]);
    assert!(!partly.status.success(), "{}", String::from_utf8_lossy(&partly.stderr));
    assert_eq!(db.sql(registry), "\"Odd Name\",keyless,t");

    let untracked = ok(pubsubpull(&["untrack", "--database-url", &url, "t", "keyless", "u"]));
    let message = String::from_utf8_lossy(&untracked.stderr);
    assert!(message.contains("was not tracked table=\"u\""), "{message}");
    assert_eq!(db.sql(published), "Odd Name");
    assert_eq!(db.sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'pubsubpull_context'"), "1");
    assert_eq!(db.sql(registry), "\"Odd Name\"");
}

#[test]
fn only_tracked_tables_reach_the_output_as_tracking_changes() {
    for plugin in ["pgoutput", "test_decoding"] {
        let db = TestDb::new();
        let url = db.url();
        ok(pubsubpull(&["migrate", "--database-url", &url]));
        db.sql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)");
        ok(pubsubpull(&["track", "--database-url", &url, "a"]));
        let slot = db.slot(plugin);
        db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', '{plugin}')"));
        db.sql("INSERT INTO a VALUES (1)");
        db.sql("INSERT INTO b VALUES (1)");
        ok(pubsubpull(&["untrack", "--database-url", &url, "a"]));
        ok(pubsubpull(&["track", "--database-url", &url, "b"]));
        db.sql("INSERT INTO a VALUES (2)");
        db.sql("INSERT INTO b VALUES (2)");
        let output = ok(pubsubpull(&[
            "tail",
            "--database-url",
            &url,
            "--plugin",
            plugin,
            "--slot",
            &slot,
            "--endpos",
            &db.current_lsn(),
        ]));
        let seen: Vec<(String, i64)> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .map(|c| (c["table"].as_str().unwrap().to_owned(), c["new"]["id"].as_i64().unwrap()))
            .collect();
        assert_eq!(seen, [("public.a".to_owned(), 1), ("public.b".to_owned(), 2)], "{plugin}");
    }
}

#[test]
fn a_consumer_of_a_permanent_slot_prunes_old_context_rows() {
    let db = TestDb::new();
    let url = db.url();
    migrate_and_track_t(&url, &db);
    db.sql("INSERT INTO t VALUES (1)");
    // Rows of three days ago, in a partition of their own, and of five days ago, in the default
    // partition (no partition of that day).
    db.sql(
        "CREATE TABLE pubsubpull.context_old PARTITION OF pubsubpull.context
             FOR VALUES FROM (now() - interval '4 days') TO (now() - interval '3 days');
         INSERT INTO pubsubpull.context (xid, db_user, created_at)
             VALUES ('1', 'old', now() - interval '3 days 12 hours'), ('2', 'older', now() - interval '5 days')",
    );
    let partitions = "SELECT string_agg(relname, ' ' ORDER BY relname) FROM pg_class
                       WHERE relispartition AND relnamespace = 'pubsubpull'::regnamespace";
    let day = |offset: i64| {
        db.sql(&format!("SELECT to_char((now() AT TIME ZONE 'UTC')::date + {offset}, 'YYYYMMDD')"))
    };
    let (today, tomorrow, after) = (day(0), day(1), day(2));
    assert_eq!(
        db.sql(partitions),
        format!("context_{today} context_{tomorrow} context_{after} context_default context_old")
    );
    db.sql("INSERT INTO t VALUES (2)");
    let slot = db.slot("prune");
    ok(pubsubpull(&[
        "tail",
        "--database-url",
        &url,
        "--slot",
        &slot,
        "--retention",
        "1d",
        "--endpos",
        &db.current_lsn(),
    ]));
    assert_eq!(
        db.sql("SELECT string_agg(db_user, ' ') FROM pubsubpull.context WHERE db_user <> current_user"),
        "",
        "the old rows pruned"
    );
    assert_eq!(db.sql("SELECT count(*) FROM pubsubpull.context"), "2", "the recent ones kept");
    assert_eq!(
        db.sql(partitions),
        format!("context_{today} context_{tomorrow} context_{after} context_default"),
        "the old day's partition dropped"
    );
}

/// A database migrated before the context table was partitioned keeps its context rows: the old
/// table becomes the partition of the days up to its newest row's, pruned with them.
#[test]
fn migrate_keeps_the_rows_of_the_context_table_from_before_partitions() {
    let db = TestDb::new();
    let url = db.url();
    // The schema as migrations 1 to 5 left it (the table pubsubpull migrate records them in, as it
    // creates it), with rows of three and two days ago.
    db.sql(&format!(
        "CREATE SCHEMA pubsubpull;
         CREATE TABLE pubsubpull.schema_migrations (target text NOT NULL, version int NOT NULL, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (target, version));
         {}{}{}{}{}
         INSERT INTO pubsubpull.schema_migrations (target, version, name) SELECT 'source', v, '' FROM generate_series(1, 5) v;
         INSERT INTO pubsubpull.context (xid, db_user, created_at)
             VALUES ('1', 'three days ago', now() - interval '3 days'), ('2', 'two days ago', now() - interval '2 days')",
        include_str!("../migrations/source/0001_audit_context.sql"),
        include_str!("../migrations/source/0002_lean_context.sql"),
        include_str!("../migrations/source/0003_native_context_trigger.sql"),
        include_str!("../migrations/source/0004_lighter_plpgsql_trigger.sql"),
        include_str!("../migrations/source/0005_native_set_context.sql"),
    ));
    ok(pubsubpull(&["migrate", "--database-url", &url]));
    let before = "pubsubpull.context_until_partitioned";
    assert_eq!(
        db.sql(&format!(
            "SELECT pg_get_expr(relpartbound, oid) = format('FOR VALUES FROM (MINVALUE) TO (%L)',
                    (((now() - interval '2 days') AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC')
               FROM pg_class WHERE oid = '{before}'::regclass"
        )),
        "t",
        "the old rows' partition ends with the day of the newest"
    );
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    ok(pubsubpull(&["track", "--database-url", &url, "t"]));
    db.sql("INSERT INTO t VALUES (1)");
    assert_eq!(
        db.sql("SELECT string_agg(db_user || ' ' || (tableoid = 'pubsubpull.context_until_partitioned'::regclass), ', '
                  ORDER BY created_at) FROM pubsubpull.context"),
        "three days ago true, two days ago true, postgres false"
    );
    db.sql("SELECT pubsubpull.prune_context('1 day')");
    assert_eq!(db.sql(&format!("SELECT to_regclass('{before}') IS NULL")), "t", "pruned as one day");
    assert_eq!(db.sql("SELECT string_agg(db_user, ' ') FROM pubsubpull.context"), "postgres");
}

/// Pruning is housekeeping: a consumer whose role may not prune (it does not own the context
/// table) streams on, and says why it could not.
#[test]
fn a_consumer_that_cannot_prune_streams_on() {
    let db = TestDb::new();
    let url = db.url();
    migrate_and_track_t(&url, &db);
    let slot = db.slot("noprune");
    db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    db.sql("INSERT INTO t VALUES (1)");
    let as_streamer = db.url_as("scram_user");
    let output = ok(pubsubpull(&[
        "tail",
        "--database-url",
        &as_streamer,
        "--slot",
        &slot,
        "--retention",
        "1d",
        "--endpos",
        &db.current_lsn(),
    ]));
    let change: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("one change ({error}): {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(change["new"]["id"], 1);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("cannot prune old context rows") && log.contains("permission denied"), "{log}");
}
