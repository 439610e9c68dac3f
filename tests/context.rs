//! The audit context: every change carries exactly its own transaction's context, whatever the
//! plugin, with many sessions writing at once, interleaved transactions, savepoints, context set
//! before or after the first change, and changes made with psql and no application context.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::TestDb;

const SESSIONS: i32 = 8;
const TRANSACTIONS: i32 = 6;
const SET_CONTEXT: &str = "SELECT pubsubpull.set_context($1::text::jsonb)";

fn pubsubpull(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_pubsubpull")).args(args).output().expect("run pubsubpull");
    assert!(output.status.success(), "pubsubpull {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn tail(db: &TestDb, plugin: &str, endpos: &str) -> Vec<Value> {
    let slot = db.slot(plugin);
    let output = pubsubpull(&[
        "tail",
        "--database-url",
        &db.url(),
        "--plugin",
        plugin,
        "--slot",
        &slot,
        "--endpos",
        endpos,
    ]);
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// One session: transactions that set their context before or after their first change, with a
/// rolled-back savepoint in between, interleaved with the other sessions' by short pauses.
async fn session(db: &TestDb, number: i32, role: &str) {
    let client = db.client().await;
    if number == 0 {
        client.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
    }
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(1 + (number as u64 * 7) % 5));
    let insert = "INSERT INTO orders (session, txn, note) VALUES ($1, $2, $3)";
    for txn in 0..TRANSACTIONS {
        let context = json!({"session": number, "txn": txn, "path": format!("/orders/{number}")});
        client.batch_execute("BEGIN").await.unwrap();
        let set_first = txn % 2 == 0;
        if set_first {
            client.execute(SET_CONTEXT, &[&context.to_string()]).await.unwrap();
        }
        pause().await;
        // A first statement inside a savepoint that is rolled back: its context row goes with it.
        client.batch_execute("SAVEPOINT s").await.unwrap();
        client.execute(insert, &[&number, &txn, &"rolled back"]).await.unwrap();
        client.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
        pause().await;
        client.execute(insert, &[&number, &txn, &"kept"]).await.unwrap();
        pause().await;
        if !set_first {
            client.execute(SET_CONTEXT, &[&context.to_string()]).await.unwrap();
        }
        client
            .execute("UPDATE orders SET note = 'updated' WHERE session = $1 AND txn = $2", &[&number, &txn])
            .await
            .unwrap();
        client.batch_execute("INSERT INTO untracked VALUES (DEFAULT)").await.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
    }
    // A context set in a transaction that changes nothing tracked leaves nothing behind.
    client.batch_execute("BEGIN").await.unwrap();
    client.execute(SET_CONTEXT, &[&json!({"session": number, "empty": true}).to_string()]).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
}

/// The two languages of the context functions (a tracked table's trigger and `set_context`): C,
/// from the `pubsubpull_context` extension, which `pubsubpull migrate` creates (scripts/test
/// installs it), and PL/pgSQL, which serves without it.
#[derive(Clone, Copy, Debug)]
enum Language {
    C,
    PlPgSql,
}

/// A migrated database whose context functions are in `language`.
fn migrated(language: Language) -> TestDb {
    let db = TestDb::new();
    pubsubpull(&["migrate", "--database-url", &db.url()]);
    let native = db.sql("SELECT count(*) FROM pg_extension WHERE extname = 'pubsubpull_context'");
    assert_eq!(native, "1", "pubsubpull migrate creates the pubsubpull_context extension when installed");
    if let Language::PlPgSql = language {
        // set_context goes with the extension, and comes back in PL/pgSQL as migrate brings it back.
        db.sql("DROP EXTENSION pubsubpull_context; SELECT pubsubpull.restore_set_context()");
    }
    db
}

/// Checks that `table`'s trigger and `set_context` run the functions in `language`.
fn assert_functions(db: &TestDb, table: &str, language: Language) {
    let trigger = db.sql(&format!(
        "SELECT tgfoid::regprocedure FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND tgname = 'pubsubpull_context'"
    ));
    let set_context = db.sql(
        "SELECT lanname FROM pg_proc JOIN pg_language l ON l.oid = prolang
          WHERE pg_proc.oid = 'pubsubpull.set_context(jsonb)'::regprocedure",
    );
    let expected = match language {
        Language::C => ["pubsubpull.capture_context_native()", "c"],
        Language::PlPgSql => ["pubsubpull.capture_context()", "plpgsql"],
    };
    assert_eq!([trigger, set_context], expected, "the trigger of {table} and set_context");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_carries_its_own_transactions_context_with_the_c_functions() {
    every_change_carries_its_own_transactions_context(Language::C).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_carries_its_own_transactions_context_with_the_plpgsql_functions() {
    every_change_carries_its_own_transactions_context(Language::PlPgSql).await;
}

async fn every_change_carries_its_own_transactions_context(language: Language) {
    let db = migrated(language);
    let role = format!("{}_web", db.name);
    db.sql(&format!("CREATE ROLE {role}"));
    db.sql("CREATE TABLE orders (id serial PRIMARY KEY, session int, txn int, note text)");
    db.sql("CREATE TABLE untracked (id serial PRIMARY KEY)");
    db.sql(&format!("GRANT ALL ON orders, untracked, orders_id_seq, untracked_id_seq TO {role}"));
    pubsubpull(&["track", "--database-url", &db.url(), "orders"]);
    assert_functions(&db, "orders", language);
    for plugin in ["pgoutput", "wal2json", "test_decoding"] {
        db.sql(&format!("SELECT pg_create_logical_replication_slot('{}', '{plugin}')", db.slot(plugin)));
    }

    let sessions = (0..SESSIONS).map(|number| session(&db, number, &role));
    futures_util::future::join_all(sessions).await;
    db.sql("INSERT INTO orders (session, txn, note) VALUES (-1, -1, 'from psql')");
    let endpos = db.current_lsn();

    for plugin in ["pgoutput", "wal2json", "test_decoding"] {
        let changes = tail(&db, plugin, &endpos);
        let per_session = 2 * TRANSACTIONS; // an insert and an update per transaction
        assert_eq!(
            changes.len(),
            (SESSIONS * per_session + 1) as usize,
            "{plugin}: only orders, nothing rolled back"
        );
        for change in &changes {
            assert_eq!(change["table"], "public.orders", "{plugin}: untracked tables stay out");
            let row = &change["new"];
            let context = &change["context"];
            if row["session"] == -1 {
                assert_eq!(context["app"], Value::Null, "{plugin}: psql gives no application context");
                assert_eq!(context["db_user"], "postgres");
                assert_eq!(context["application_name"], "psql");
                assert_eq!(context["client_addr"], "127.0.0.1");
                continue;
            }
            let expected = json!({"session": row["session"], "txn": row["txn"], "path": format!("/orders/{}", row["session"])});
            assert_eq!(context["app"], expected, "{plugin}: {change}");
            let user = if row["session"] == 0 { role.as_str() } else { "postgres" };
            assert_eq!(context["db_user"], user, "{plugin}: {change}");
            assert_ne!(row["note"], "rolled back");
        }
    }
    assert_eq!(
        db.sql("SELECT count(*) FROM pubsubpull.context WHERE app ? 'empty'"),
        "0",
        "a context without changes leaves no row"
    );
}

/// Where the trigger writes context rows: the partition of the day, or the default partition when
/// that day's is missing (the C trigger then writes with SQL, not straight into the heap).
#[derive(Clone, Copy, Debug)]
enum Partition {
    OfTheDay,
    Default,
}

/// Savepoints inside savepoints, and PL/pgSQL exception blocks (subtransactions too): a context
/// row written in one that is undone goes with it, and the next change writes it again; a context
/// set in one that is undone goes too, whether set before or after the row was written, and
/// set_context after that still finds the row.
#[test]
fn undone_subtransactions_take_their_context_row_with_them() {
    for (language, partition) in [
        (Language::C, Partition::OfTheDay),
        (Language::PlPgSql, Partition::OfTheDay),
        (Language::C, Partition::Default),
        (Language::PlPgSql, Partition::Default),
    ] {
        let case = format!("{language:?}, {partition:?}");
        let db = migrated(language);
        let today = db.sql("SELECT 'pubsubpull.context_' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')");
        if let Partition::Default = partition {
            db.sql(&format!("DROP TABLE {today}"));
        }
        db.sql("CREATE TABLE notes (id serial PRIMARY KEY, note text)");
        pubsubpull(&["track", "--database-url", &db.url(), "notes"]);
        assert_functions(&db, "notes", language);
        db.sql(&format!("SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", db.slot("pgoutput")));
        db.sql(
            "BEGIN; SELECT pubsubpull.set_context('{\"case\": \"nested\"}'); \
             SAVEPOINT a; SAVEPOINT b; INSERT INTO notes (note) VALUES ('undone'); RELEASE b; ROLLBACK TO a; \
             INSERT INTO notes (note) VALUES ('nested'); COMMIT; \
             BEGIN; SELECT pubsubpull.set_context('{\"case\": \"exception\"}'); \
             DO $$ BEGIN INSERT INTO notes (note) VALUES ('undone'); RAISE EXCEPTION 'undo'; \
                    EXCEPTION WHEN raise_exception THEN NULL; END $$; \
             INSERT INTO notes (note) VALUES ('exception'); COMMIT; \
             BEGIN; SAVEPOINT a; INSERT INTO notes (note) VALUES ('released'); RELEASE a; \
             INSERT INTO notes (note) VALUES ('after release'); COMMIT; \
             BEGIN; SELECT pubsubpull.set_context('{\"case\": \"set before\"}'); \
             SAVEPOINT a; SELECT pubsubpull.set_context('{\"case\": \"undone\"}'); ROLLBACK TO a; \
             INSERT INTO notes (note) VALUES ('set before'); COMMIT; \
             BEGIN; SELECT pubsubpull.set_context('{\"case\": \"set after\"}'); \
             INSERT INTO notes (note) VALUES ('set after'); \
             SAVEPOINT a; SELECT pubsubpull.set_context('{\"case\": \"undone\"}'); ROLLBACK TO a; COMMIT; \
             BEGIN; INSERT INTO notes (note) VALUES ('set after, again'); \
             SELECT pubsubpull.set_context('{\"case\": \"first\"}'); \
             SAVEPOINT a; SELECT pubsubpull.set_context('{\"case\": \"undone\"}'); ROLLBACK TO a; \
             SAVEPOINT b; SELECT pubsubpull.set_context('{\"case\": \"released\"}'); RELEASE b; \
             SELECT pubsubpull.set_context('{\"case\": \"set after, again\"}'); COMMIT;",
        );
        let changes = tail(&db, "pgoutput", &db.current_lsn());
        let seen: Vec<(&Value, &Value)> =
            changes.iter().map(|c| (&c["new"]["note"], &c["context"]["app"])).collect();
        assert_eq!(
            seen,
            [
                (&json!("nested"), &json!({"case": "nested"})),
                (&json!("exception"), &json!({"case": "exception"})),
                (&json!("released"), &Value::Null),
                (&json!("after release"), &Value::Null),
                (&json!("set before"), &json!({"case": "set before"})),
                (&json!("set after"), &json!({"case": "set after"})),
                (&json!("set after, again"), &json!({"case": "set after, again"})),
            ],
            "{case}"
        );
        for change in &changes {
            assert_eq!(change["context"]["db_user"], "postgres", "{case}: {change}");
        }
        let expected_partition = match partition {
            Partition::OfTheDay => today.as_str(),
            Partition::Default => "pubsubpull.context_default",
        };
        assert_eq!(
            db.sql(
                "SELECT count(*), string_agg(DISTINCT tableoid::regclass::text, ' ') FROM pubsubpull.context"
            ),
            format!("6|{expected_partition}"),
            "{case}: one row per transaction"
        );
        // Pruning leaves a day whose rows are in the default partition there (creating the day's
        // partition fails, and pruning goes on).
        db.sql("SELECT pubsubpull.prune_context('1 day')");
        let day_partition = matches!(partition, Partition::OfTheDay);
        assert_eq!(
            db.sql(&format!("SELECT to_regclass('{today}') IS NOT NULL")),
            ["f", "t"][day_partition as usize]
        );
        assert_eq!(db.sql("SELECT count(*) FROM pubsubpull.context"), "6", "{case}");
    }
}

/// The context row is inserted as an INSERT would be. The C trigger learns the context table once
/// per session and writes rows straight into its heap and primary key; an index, a trigger of the
/// operator's own or a NOT NULL added later, seen from the same session, applies to every later
/// row (the trigger sees the row as written); once they are gone, rows go straight in again.
#[test]
fn indexes_triggers_and_constraints_added_to_the_context_table_apply_to_its_rows() {
    for language in [Language::C, Language::PlPgSql] {
        let db = migrated(language);
        db.sql(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE audit_log (xid xid8, db_user text);
             CREATE FUNCTION log_context() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO audit_log VALUES (NEW.xid, NEW.db_user); RETURN NULL; END $$",
        );
        pubsubpull(&["track", "--database-url", &db.url(), "t"]);
        assert_functions(&db, "t", language);
        // One session, one transaction per step; `seen` records what each check found.
        let seen = db.sql(
            "CREATE TEMP TABLE seen (step int, found text);
             SET enable_seqscan = off;
             BEGIN; INSERT INTO t VALUES (1); COMMIT;
             BEGIN; CREATE INDEX context_by_user ON pubsubpull.context (db_user); COMMIT;
             BEGIN; INSERT INTO t VALUES (2); COMMIT;
             BEGIN; INSERT INTO seen SELECT 1, 'index ' || count(*) FROM pubsubpull.context WHERE db_user = current_user; COMMIT;
             BEGIN; CREATE TRIGGER log_context AFTER INSERT ON pubsubpull.context
                        FOR EACH ROW EXECUTE FUNCTION log_context(); COMMIT;
             BEGIN; INSERT INTO t VALUES (3); COMMIT;
             BEGIN; INSERT INTO seen SELECT 2, 'trigger ' || string_agg(a.db_user, ' ')
                    FROM audit_log a JOIN pubsubpull.context c USING (xid, db_user); COMMIT;
             BEGIN; DROP TRIGGER log_context ON pubsubpull.context; DROP INDEX pubsubpull.context_by_user; COMMIT;
             BEGIN; INSERT INTO t VALUES (4); COMMIT;
             BEGIN; CREATE INDEX context_by_user ON pubsubpull.context (db_user); COMMIT;
             BEGIN; INSERT INTO seen SELECT 3, 'index ' || count(*) FROM pubsubpull.context WHERE db_user = current_user; COMMIT;
             BEGIN; DROP INDEX pubsubpull.context_by_user;
                    ALTER TABLE pubsubpull.context ALTER application_name SET NOT NULL; COMMIT;
             SET application_name = '';
             DO $$ BEGIN
                 INSERT INTO t VALUES (5);
                 INSERT INTO seen VALUES (4, 'null application_name written');
             EXCEPTION WHEN not_null_violation THEN
                 INSERT INTO seen VALUES (4, 'null application_name refused');
             END $$;
             BEGIN; ALTER TABLE pubsubpull.context ALTER application_name DROP NOT NULL;
                    CREATE INDEX context_by_user ON pubsubpull.context (db_user); COMMIT;
             SELECT string_agg(found, ', ' ORDER BY step) FROM seen",
        );
        // The index built before the second row found it; the trigger saw the third row as written;
        // all four rows were written; a NOT NULL added to a column the trigger may leave null is
        // enforced.
        assert_eq!(seen, "index 2, trigger postgres, index 4, null application_name refused", "{language:?}");
        let plan = db.sql(
            "SET enable_seqscan = off;
             EXPLAIN SELECT count(*) FROM pubsubpull.context WHERE db_user = current_user",
        );
        // The partitions' indexes of context_by_user.
        assert!(
            plan.contains("db_user_idx") && !plan.contains("Seq Scan"),
            "the counts must come from the index: {plan}"
        );
    }
}

/// `pubsubpull migrate` moves set_context, and tables tracked before the extension was created, to
/// the C functions, and gives back set_context and their trigger when a dropped extension took them
/// along (to no table that is gone).
#[test]
fn migrate_moves_set_context_and_tracked_tables_to_the_c_functions() {
    let db = migrated(Language::PlPgSql);
    db.sql("CREATE TABLE early (id int PRIMARY KEY)");
    pubsubpull(&["track", "--database-url", &db.url(), "early"]);
    assert_functions(&db, "early", Language::PlPgSql);
    // The extension as a database migrated before set_context was in C has it: migrate updates it.
    db.sql("CREATE EXTENSION pubsubpull_context VERSION '1.0'");
    pubsubpull(&["migrate", "--database-url", &db.url()]);
    assert_eq!(db.sql("SELECT extversion FROM pg_extension WHERE extname = 'pubsubpull_context'"), "1.1");
    assert_functions(&db, "early", Language::C);
    db.sql("DROP EXTENSION pubsubpull_context CASCADE");
    assert_eq!(db.sql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'early'::regclass"), "0");
    assert_eq!(db.sql("SELECT to_regprocedure('pubsubpull.set_context(jsonb)') IS NULL"), "t");
    // A tracked table dropped meanwhile is left alone.
    db.sql("CREATE TABLE dropped (id int PRIMARY KEY)");
    pubsubpull(&["track", "--database-url", &db.url(), "dropped"]);
    db.sql("DROP TABLE dropped");
    pubsubpull(&["migrate", "--database-url", &db.url()]);
    assert_functions(&db, "early", Language::C);
}

/// A transaction too big for memory whose context is set after its last change: every change
/// still gets that context, and the process stays small (the changes wait in a temporary file).
#[test]
fn a_huge_transaction_gets_its_late_context_in_bounded_memory() {
    let db = TestDb::new();
    pubsubpull(&["migrate", "--database-url", &db.url()]);
    db.sql("CREATE TABLE bulk (id int PRIMARY KEY, label text)");
    pubsubpull(&["track", "--database-url", &db.url(), "bulk"]);
    let slot = db.slot("bulk");
    db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    db.sql(
        "BEGIN; INSERT INTO bulk SELECT g, repeat('x', 100) FROM generate_series(1, 300000) g; \
         SELECT pubsubpull.set_context('{\"job\": \"import\"}'); COMMIT;",
    );
    let output = Command::new("/usr/bin/time")
        .args(["-f", "peak_kib=%M", env!("CARGO_BIN_EXE_pubsubpull"), "tail", "--database-url", &db.url()])
        .args(["--slot", &slot, "--endpos", &db.current_lsn()])
        .output()
        .expect("run pubsubpull tail under /usr/bin/time");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut count = 0;
    for line in stdout.lines() {
        let change: Value = serde_json::from_str(line).unwrap();
        assert_eq!(change["context"]["app"], json!({"job": "import"}));
        count += 1;
    }
    assert_eq!(count, 300_000);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let peak_kib: u64 =
        stderr.rsplit("peak_kib=").next().and_then(|s| s.trim().parse().ok()).expect("peak memory");
    assert!(peak_kib < 64 * 1024, "peak memory {peak_kib} KiB");
}

/// `pubsubpull tail` on a new slot of `plugin`, running until [`changes_up_to_now`] stops it.
struct RunningTail {
    plugin: &'static str,
    process: std::process::Child,
    lines: std::thread::JoinHandle<Vec<String>>,
}

/// Starts a tail per plugin and waits until each streams.
fn start_tails(db: &TestDb, plugins: &[&'static str]) -> Vec<RunningTail> {
    let tails: Vec<_> = plugins
        .iter()
        .map(|&plugin| {
            let slot = db.slot(plugin);
            db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', '{plugin}')"));
            let mut process = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
                .args(["tail", "--database-url", &db.url(), "--plugin", plugin, "--slot", &slot])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("run pubsubpull tail");
            let stdout = std::io::BufReader::new(process.stdout.take().unwrap());
            let lines =
                std::thread::spawn(move || std::io::BufRead::lines(stdout).map_while(Result::ok).collect());
            RunningTail { plugin, process, lines }
        })
        .collect();
    support::wait_until("the streamers to start", Duration::from_secs(30), || {
        db.sql("SELECT count(*) FROM pg_replication_slots WHERE active") == tails.len().to_string()
    });
    tails
}

/// A change as these tests see it: table, the new row's id, and the context.
type Seen = (String, i64, Value);

/// Waits until every tail has written (and confirmed) all that is committed, then stops them;
/// gives each plugin's changes.
fn changes_up_to_now(db: &TestDb, tails: Vec<RunningTail>) -> Vec<(&'static str, Vec<Seen>)> {
    let endpos = db.current_lsn();
    support::wait_until("the streamers to confirm every change", Duration::from_secs(30), || {
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE active AND confirmed_flush_lsn >= '{endpos}'"
        )) == tails.len().to_string()
    });
    tails
        .into_iter()
        .map(|mut tail| {
            tail.process.kill().unwrap();
            tail.process.wait().unwrap();
            let changes = tail
                .lines
                .join()
                .unwrap()
                .iter()
                .map(|line| serde_json::from_str::<Value>(line).unwrap())
                .map(|change| {
                    let id = change["new"]["id"].as_i64().unwrap();
                    (change["table"].as_str().unwrap().to_owned(), id, change["context"].clone())
                })
                .collect();
            (tail.plugin, changes)
        })
        .collect()
}

/// Runs `statement` in a transaction whose application context is `{"request": request}`.
fn with_context(db: &TestDb, request: i32, statement: &str) {
    db.sql(&format!(
        "BEGIN; SELECT pubsubpull.set_context('{{\"request\": {request}}}'); {statement}; COMMIT"
    ));
}

/// A table partitioned by region, with one partition.
const PARTED: &str =
    "CREATE TABLE parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region); \
     CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu')";

/// A change of `parted` made with psql, with `app` as its application context.
fn parted(id: i64, app: Value) -> Seen {
    let context =
        json!({"app": app, "db_user": "postgres", "application_name": "psql", "client_addr": "127.0.0.1"});
    ("public.parted".to_owned(), id, context)
}

/// A change of `parted` without context: its transaction wrote no context row.
fn parted_without_context(id: i64) -> Seen {
    ("public.parted".to_owned(), id, Value::Null)
}

/// A partitioned table: its changes, made through it or straight into a partition, one created or
/// attached while the streamers run included, come under its own name with their transaction's
/// context, whatever the plugin; a partition detached since is no longer captured.
#[test]
fn a_partitioned_tables_changes_come_under_its_name_with_their_context() {
    let db = migrated(Language::C);
    db.sql(PARTED);
    db.sql("CREATE TABLE loose (id int, region text NOT NULL, PRIMARY KEY (id, region))");
    pubsubpull(&["track", "--database-url", &db.url(), "parted"]);
    let tails = start_tails(&db, &["pgoutput", "wal2json", "test_decoding"]);

    with_context(&db, 1, "INSERT INTO parted VALUES (1, 'eu')");
    with_context(&db, 2, "INSERT INTO parted_eu VALUES (2, 'eu')");
    db.sql("CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us')");
    with_context(&db, 3, "INSERT INTO parted_us VALUES (3, 'us')");
    db.sql("ALTER TABLE parted ATTACH PARTITION loose FOR VALUES IN ('asia')");
    with_context(&db, 4, "INSERT INTO loose VALUES (4, 'asia')");
    db.sql("INSERT INTO parted_us VALUES (5, 'us')");
    db.sql("ALTER TABLE parted DETACH PARTITION loose");
    with_context(&db, 6, "INSERT INTO loose VALUES (6, 'asia')");
    with_context(&db, 7, "INSERT INTO parted VALUES (7, 'eu')");
    assert_eq!(
        db.sql("SELECT string_agg(tgrelid::regclass::text, ' ' ORDER BY tgrelid::regclass::text) FROM pg_trigger WHERE tgname = 'pubsubpull_context'"),
        "parted parted_eu parted_us",
        "the event trigger gives new partitions the context trigger (request 4 shows loose had it) and takes it off a detached one"
    );
    for (plugin, changes) in changes_up_to_now(&db, tails) {
        let expected = [
            parted(1, json!({"request": 1})),
            parted(2, json!({"request": 2})),
            parted(3, json!({"request": 3})),
            parted(4, json!({"request": 4})),
            parted(5, Value::Null),
            parted(7, json!({"request": 7})),
        ];
        assert_eq!(changes, expected, "{plugin}");
    }
    let both = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["track", "--database-url", &db.url(), "parted_eu"])
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success() && message.contains("parted is tracked"), "one name a change: {message}");
    pubsubpull(&["untrack", "--database-url", &db.url(), "parted"]);
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'pubsubpull_context'"),
        "0",
        "untrack takes the trigger off the partitions too"
    );
}

/// Without the event trigger (pubsubpull migrate as a role that may not create one), a partition
/// created while the streamer runs is still captured, from its first change on; writes made
/// straight into it carry their context once `track` has run again.
#[test]
fn without_the_event_trigger_a_new_partition_is_learned_from_its_first_change() {
    let db = migrated(Language::C);
    db.sql("DROP EVENT TRIGGER pubsubpull_new_partitions");
    db.sql(PARTED);
    pubsubpull(&["track", "--database-url", &db.url(), "parted"]);
    let tails = start_tails(&db, &["test_decoding"]);

    db.sql("CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us')");
    with_context(&db, 1, "INSERT INTO parted_us VALUES (1, 'us')");
    with_context(&db, 2, "INSERT INTO parted VALUES (2, 'us')");
    pubsubpull(&["track", "--database-url", &db.url(), "parted"]);
    with_context(&db, 3, "INSERT INTO parted_us VALUES (3, 'us')");
    let [(_, changes)]: [_; 1] = changes_up_to_now(&db, tails).try_into().unwrap();
    assert_eq!(
        changes,
        [parted_without_context(1), parted(2, json!({"request": 2})), parted(3, json!({"request": 3}))]
    );
}
