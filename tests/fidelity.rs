//! Fidelity: one workload covering every case the decoders handle (tests/fixtures/workload.sql,
//! plus a transaction of one million rows) is read through pgoutput, wal2json and test_decoding by
//! `pubsubpull tail`, and the three outputs are equal change for change.
//!
//! Only what a plugin cannot know may differ, and is normalized away here:
//! - test_decoding leaves NULL columns out of old images (`old-key:`), so null members of `old`
//!   are dropped before comparing;
//! - wal2json leaves unchanged-TOAST columns out of its output without saying so, so `unchanged`
//!   is compared only between pgoutput and test_decoding;
//! - wal2json 2.5 prints NaN and ±Infinity (real, double precision, numeric) as null, so those
//!   values and nulls are dropped from the rows before comparing with it.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::TestDb;

const PLUGINS: [&str; 3] = ["pgoutput", "wal2json", "test_decoding"];

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).display().to_string()
}

fn run_sql_file(db: &TestDb, file: &str) {
    let status = Command::new(support::bindir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null", "-d", &db.url(), "-f", &fixture(file)])
        .status()
        .expect("run psql");
    assert!(status.success(), "{file} failed");
}

/// Runs `pubsubpull tail` to `endpos` and returns its output lines.
fn tail(db: &TestDb, plugin: &str, slot: &str, endpos: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["tail", "--database-url", &db.url(), "--plugin", plugin, "--slot", slot])
        .args(["--publication", "pubsubpull_all", "--endpos", endpos])
        .output()
        .expect("run pubsubpull tail");
    assert!(output.status.success(), "tail {plugin} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8 output").lines().map(str::to_owned).collect()
}

/// Removes what a plugin cannot know (see the module docs).
fn normalize(line: &str, wal2json: bool) -> Value {
    let mut change: Value = serde_json::from_str(line).expect("each line is JSON");
    if let Some(Value::Object(old)) = change.get_mut("old") {
        old.retain(|_, value| !value.is_null());
    }
    if wal2json {
        change.as_object_mut().expect("object").remove("unchanged");
        for image in ["key", "new", "old"] {
            if let Some(row) = change[image].as_object_mut() {
                row.retain(|_, v| {
                    !v.is_null() && !matches!(v.as_str(), Some("NaN" | "Infinity" | "-Infinity"))
                });
            }
        }
    }
    change
}

fn assert_same(reference: &[String], other: &[String], plugin: &str) {
    assert_eq!(reference.len(), other.len(), "pgoutput and {plugin} give different numbers of changes");
    for (i, (a, b)) in reference.iter().zip(other).enumerate() {
        if a == b {
            continue;
        }
        let drop_unchanged = plugin == "wal2json";
        assert_eq!(
            normalize(a, drop_unchanged),
            normalize(b, drop_unchanged),
            "change {i} differs between pgoutput and {plugin}\npgoutput: {a}\n{plugin}: {b}"
        );
    }
}

#[test]
fn three_plugins_give_the_same_changes() {
    let db = TestDb::new();
    run_sql_file(&db, "workload_setup.sql");
    db.sql("CREATE TABLE million (id int PRIMARY KEY, label text)");
    for plugin in PLUGINS {
        db.sql(&format!("SELECT pg_create_logical_replication_slot('{}', '{plugin}')", db.slot(plugin)));
    }
    run_sql_file(&db, "workload.sql");
    db.sql("INSERT INTO million SELECT g, 'row ' || g FROM generate_series(1, 1000000) g");
    let endpos = db.current_lsn();

    let outputs: Vec<Vec<String>> =
        PLUGINS.iter().map(|plugin| tail(&db, plugin, &db.slot(plugin), &endpos)).collect();

    let reference = &outputs[0];
    // The workload's own changes and the million rows, nothing more, nothing less.
    assert_eq!(reference.len(), 1_000_000 + workload_change_count(), "pgoutput change count");
    for (plugin, output) in PLUGINS.iter().zip(&outputs).skip(1) {
        assert_same(reference, output, plugin);
    }
    spot_check(reference);
}

/// Changes workload.sql makes (TRUNCATE counts one per table).
fn workload_change_count() -> usize {
    3 // kinds
        + 3 + 2 + 1 // plain inserts, updates, delete
        + 2 + 2 + 1 // full_identity
        + 3 + 1 + 2 // nokey
        + 2 + 2 + 1 // toasty, toasty_full
        + 3 // odd identifiers
        + 2 + 1 + 2 + 2 // parent, child, two truncates
        + 1 + 1 + 1 + 1 + 1 // evolving
        + 1 // big value
        + 3 // transaction with a savepoint
        + 1 // after the message
}

/// A few outcomes checked by value, so that three equally wrong outputs cannot pass.
fn spot_check(lines: &[String]) {
    let changes: Vec<Value> =
        lines.iter().take(workload_change_count()).map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = &changes[0];
    assert_eq!(first["table"], "public.kinds");
    assert_eq!(first["op"], "insert");
    assert_eq!(first["key"], serde_json::json!({"id": 1}));
    let new = &first["new"];
    assert_eq!(new["i8"], serde_json::json!(9223372036854775807_i64));
    assert_eq!(new["num"], "12345678901234.123456");
    assert_eq!(new["t"], "it's \"quoted\" \\back\\slash");
    assert_eq!(new["vc"], "line1\nline2");
    assert!(lines[0].contains(r#""n":123456789012345678901234567890"#), "json numbers keep their digits");
    assert_eq!(new["texts"], serde_json::json!(["a b", "c\"d", null, "NULL", "", "é"]));
    assert_eq!(new["nested"], serde_json::json!([[1, 2], [3, 4]]));
    assert_eq!(new["by"], "\\x00ff10");
    assert_eq!(new["m"], "it's complicated");
    assert_eq!(new["p"], 42);
    assert_eq!(new["tl"], serde_json::json!(["x", "y"]));
    let second = &changes[1]["new"];
    assert_eq!(second["f4"], "NaN");
    assert_eq!(second["f8"], "Infinity");
    let toasty_update =
        changes.iter().find(|c| c["table"] == "public.toasty" && c["op"] == "update").unwrap();
    assert_eq!(toasty_update["unchanged"], serde_json::json!(["big"]));
    let odd = changes
        .iter()
        .find(|c| c["op"] == "insert" && c["table"] == "\"Odd Schema\".\"Tab\"\"le é\"")
        .unwrap();
    assert_eq!(odd["new"]["Col Space"], 1);
    assert!(changes.iter().all(|c| c["committed_at"].as_str().is_some_and(|t| t.ends_with('Z'))));
}
