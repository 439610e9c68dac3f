//! `pubsubpull tail` as a user runs it: NDJSON on stdout, `--endpos`, a permanent slot that the
//! next run continues from, and clear errors.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::TestDb;

fn tail(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["tail", "--database-url", &db.url()])
        .args(args)
        .output()
        .expect("run pubsubpull tail")
}

fn changes(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "tail failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout.clone()).expect("UTF-8");
    stdout.lines().map(|line| serde_json::from_str(line).expect("one JSON object per line")).collect()
}

fn confirmed_flush(db: &TestDb, slot: &str) -> String {
    db.sql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))
}

#[test]
fn a_permanent_slot_continues_after_what_the_last_run_wrote() {
    for plugin in ["pgoutput", "wal2json", "test_decoding"] {
        let db = TestDb::new();
        db.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
        db.sql("CREATE PUBLICATION pubsubpull FOR TABLE t");
        let slot = db.slot("tail");

        // The first run creates the slot: it sees what is written after.
        let first = tail(&db, &["--plugin", plugin, "--slot", &slot, "--endpos", &db.current_lsn()]);
        assert_eq!(changes(&first), Vec::<Value>::new(), "{plugin}");
        db.sql("INSERT INTO t VALUES (1, 'a')");
        db.sql("INSERT INTO t VALUES (2, 'b')");
        let end = db.current_lsn();
        let second = changes(&tail(&db, &["--plugin", plugin, "--slot", &slot, "--endpos", &end]));
        let ids: Vec<&Value> = second.iter().map(|c| &c["new"]["id"]).collect();
        assert_eq!(ids, [1, 2], "{plugin}");
        assert!(second.iter().all(|c| c["op"] == "insert" && c["table"] == "public.t" && c["xid"].is_u64()));
        let confirmed = confirmed_flush(&db, &slot);
        assert!(lsn(&confirmed) >= lsn(&end), "{plugin}: confirmed {confirmed} before {end}");

        db.sql("UPDATE t SET v = 'c' WHERE id = 2");
        let third =
            changes(&tail(&db, &["--plugin", plugin, "--slot", &slot, "--endpos", &db.current_lsn()]));
        assert_eq!(third.len(), 1, "{plugin}: only the change after the last run");
        assert_eq!(third[0]["op"], "update");
        assert_eq!(third[0]["new"], serde_json::json!({"id": 2, "v": "c"}));
    }
}

#[test]
fn endpos_stops_before_later_transactions() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let slot = db.slot("endpos");
    db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"));
    db.sql("INSERT INTO t VALUES (1)");
    let end = db.current_lsn();
    db.sql("INSERT INTO t VALUES (2)");
    let first = changes(&tail(&db, &["--plugin", "test_decoding", "--slot", &slot, "--endpos", &end]));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["new"]["id"], 1);
    // What was not written was not confirmed: the next run gets it.
    let rest =
        changes(&tail(&db, &["--plugin", "test_decoding", "--slot", &slot, "--endpos", &db.current_lsn()]));
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["new"]["id"], 2);
}

#[test]
fn a_missing_publication_is_a_clear_error() {
    let db = TestDb::new();
    let output =
        tail(&db, &["--plugin", "pgoutput", "--temporary", "--publication", "nope", "--endpos", "0/1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("publication \"nope\" does not exist") && stderr.contains("CREATE PUBLICATION"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_endpos_is_a_clear_error() {
    let db = TestDb::new();
    let output = tail(&db, &["--endpos", "16B3748"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid LSN"));
}

fn lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').expect("LSN");
    (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap()
}

#[test]
fn a_table_and_type_dropped_since_the_change_still_come_out() {
    let db = TestDb::new();
    db.sql("CREATE DOMAIN code AS text; CREATE TABLE gone (id int PRIMARY KEY, c code)");
    let slot = db.slot("dropped");
    db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"));
    db.sql("INSERT INTO gone VALUES (1, 'x')");
    db.sql("DROP TABLE gone; DROP DOMAIN code");
    db.sql("CREATE TABLE kept (id int PRIMARY KEY)");
    db.sql("INSERT INTO kept VALUES (2)");
    let output = tail(&db, &["--plugin", "test_decoding", "--slot", &slot, "--endpos", &db.current_lsn()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not in the database any more"));
    let changes = changes(&output);
    assert_eq!(changes.len(), 2, "the stream goes on past what was dropped");
    assert_eq!(changes[0]["new"], serde_json::json!({"id": 1, "c": "x"}));
    assert_eq!(changes[0]["key"], Value::Null, "the key of a dropped table is unknown");
    assert_eq!(changes[1]["new"]["id"], 2);
}

#[test]
fn sigterm_stops_tail_after_confirming_what_it_wrote() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let slot = db.slot("sigterm");
    db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"));
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["tail", "--database-url", &db.url(), "--plugin", "test_decoding", "--slot", &slot])
        .stdout(out.reopen().unwrap())
        .spawn()
        .unwrap();
    db.sql("INSERT INTO t VALUES (1)");
    let wrote = || std::fs::read_to_string(out.path()).unwrap().lines().count() == 1;
    // Lines are flushed at least every status interval (1 s).
    support::wait_until("the change on stdout", std::time::Duration::from_secs(10), wrote);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "tail exits cleanly on SIGTERM");
    // Compared with the change's own LSN, not the server's current one: other tests'
    // databases write WAL in the same cluster, past the end of this transaction.
    let change: Value = serde_json::from_str(std::fs::read_to_string(out.path()).unwrap().trim()).unwrap();
    let change_lsn = lsn(change["lsn"].as_str().expect("the change's LSN"));
    assert!(lsn(&confirmed_flush(&db, &slot)) > change_lsn, "what it wrote is confirmed");
}
