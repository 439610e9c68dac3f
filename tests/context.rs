//! The audit context: every change carries exactly its own transaction's context, whatever the
//! plugin, with many sessions writing at once, interleaved transactions, savepoints, context set
//! before or after the first change, and changes made with psql and no application context.

mod support;

use std::process::Command;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_carries_its_own_transactions_context() {
    let db = TestDb::new();
    pubsubpull(&["migrate", "--database-url", &db.url()]);
    let role = format!("{}_web", db.name);
    db.sql(&format!("CREATE ROLE {role}"));
    db.sql("CREATE TABLE orders (id serial PRIMARY KEY, session int, txn int, note text)");
    db.sql("CREATE TABLE untracked (id serial PRIMARY KEY)");
    db.sql(&format!("GRANT ALL ON orders, untracked, orders_id_seq, untracked_id_seq TO {role}"));
    pubsubpull(&["track", "--database-url", &db.url(), "orders"]);
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
