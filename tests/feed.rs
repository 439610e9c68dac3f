//! The feed's promise: every committed change of a tracked table is stored exactly once, in commit
//! order, with its transaction's context, whatever kills the streamer and whenever. Checked
//! against `pubsubpull tail` over a slot created at the same point, read in one uninterrupted run.

mod support;

use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::TestDb;

fn pubsubpull(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_pubsubpull")).args(args).output().expect("run pubsubpull");
    assert!(output.status.success(), "pubsubpull {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn spawn_run(url: &str, slot: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["run", "--database-url", url, "--slot", slot, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start pubsubpull run")
}

/// The feed of the database at `url`, each change with its transaction's xid and context, as tail
/// writes them (less the commit time, which the feed keeps as a timestamptz). The stored body is
/// expanded as the API does it: `table` put back after the LSN, the default `old` and `unchanged`
/// when they were left out.
fn feed(url: &str) -> Vec<Value> {
    let rows = psql(
        url,
        "SELECT f.position, split_part(f.body, ',', 1) || ',\"table\":' || to_json(f.table_name)::text || ',' \
         || substr(f.body, length(split_part(f.body, ',', 1)) + 2) \
         || CASE WHEN right(f.body, 1) = ']' THEN '' ELSE ',\"old\":null,\"unchanged\":[]' END \
         || ',\"xid\":' || coalesce(t.xid::text, 'null') || ',\"context\":' || coalesce(t.context::text, 'null') || '}' \
         FROM pubsubpull.feed f \
         JOIN pubsubpull.feed_transaction t ON t.segment = f.segment AND t.txn = f.txn ORDER BY f.position",
    );
    let mut changes = Vec::new();
    for (expected, line) in (1..).zip(rows.lines()) {
        let (position, change) = line.split_once('|').expect("position|change");
        assert_eq!(position.parse::<i64>().unwrap(), expected, "positions are gapless");
        changes.push(serde_json::from_str(change).expect("a change object"));
    }
    changes
}

/// What `tail` reads from `slot` up to `endpos`, in one uninterrupted run: the committed changes.
fn reference(url: &str, slot: &str, endpos: &str) -> Vec<Value> {
    let output = pubsubpull(&["tail", "--database-url", url, "--slot", slot, "--endpos", endpos]);
    let lines = String::from_utf8(output.stdout).unwrap();
    lines
        .lines()
        .map(|line| {
            let mut change: Value = serde_json::from_str(line).unwrap();
            change.as_object_mut().unwrap().remove("committed_at");
            change
        })
        .collect()
}

/// Runs SQL through psql on any server.
fn psql(url: &str, sql: &str) -> String {
    let output = Command::new(support::bindir().join("psql"))
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .expect("run psql");
    assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim_end().to_owned()
}

/// Writes a steady mixed load until told to stop: small transactions with and without context on
/// two tables, a big one now and then, updates and deletes.
async fn load(db: &TestDb, stop: Arc<AtomicBool>) -> u64 {
    let client = db.client().await;
    let mut transactions = 0;
    while !stop.load(Ordering::Relaxed) {
        let n = transactions as i64;
        let sql = match transactions % 50 {
            0 => format!("INSERT INTO b SELECT {n} * 100000 + g, 'bulk' FROM generate_series(1, 2000) g"),
            7 => format!("UPDATE a SET v = 'updated {n}' WHERE id % 7 = {}", n % 7),
            13 => format!("DELETE FROM b WHERE id < {} AND id % 3 = 0", n * 100000),
            _ => format!(
                "BEGIN; SELECT pubsubpull.set_context('{{\"n\": {n}}}'); INSERT INTO a VALUES ({n}, 'v{n}'); \
                 INSERT INTO b VALUES (-{n} - 1, 'small'); COMMIT"
            ),
        };
        client.batch_execute(&sql).await.expect("load");
        transactions += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    transactions
}

/// A database with tables `a` and `b` tracked, the streamer's slot and a reference slot made before
/// any change, and [`load`] writing until `stop` is set.
struct Loaded {
    db: Arc<TestDb>,
    url: String,
    slot: String,
    reference_slot: String,
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<u64>,
}

fn start_load(name: &str) -> Loaded {
    let db = Arc::new(TestDb::new());
    let url = db.url();
    pubsubpull(&["migrate", "--database-url", &url]);
    db.sql("CREATE TABLE a (id bigint PRIMARY KEY, v text); CREATE TABLE b (id bigint PRIMARY KEY, v text)");
    pubsubpull(&["track", "--database-url", &url, "a", "b"]);
    let slot = db.slot(name);
    let reference_slot = db.slot(&format!("{name}_reference"));
    for name in [&slot, &reference_slot] {
        db.sql(&format!("SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (db, stop) = (db.clone(), stop.clone());
        async move { load(&db, stop).await }
    });
    Loaded { db, url, slot, reference_slot, stop, writer }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_exact_after_twenty_kills() {
    let Loaded { db, url, slot, reference_slot, stop, writer } = start_load("feed");
    let mut checkpoints = std::collections::BTreeSet::new();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(std::process::id());
    let checkpoint = || db.sql("SELECT coalesce(max(last_position), 0) FROM pubsubpull.feed_checkpoint");
    for _ in 0..20 {
        let before = checkpoint();
        let mut streamer = spawn_run(&url, &slot);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Killed at a random moment once it has stored something, however slow the machine.
        support::wait_until("the streamer to store", Duration::from_secs(30), || checkpoint() != before);
        tokio::time::sleep(Duration::from_millis(seed % 1300)).await;
        streamer.kill().expect("SIGKILL the streamer");
        streamer.wait().unwrap();
        checkpoints.insert(checkpoint());
    }
    assert_eq!(checkpoints.len(), 20, "the streamer made progress between kills: {checkpoints:?}");
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.unwrap();
    let endpos = db.current_lsn();
    pubsubpull(&[
        "run",
        "--database-url",
        &url,
        "--slot",
        &slot,
        "--endpos",
        &endpos,
        "--listen",
        "127.0.0.1:0",
    ]);

    assert!(transactions > 50, "the load ran ({transactions} transactions)");
    assert_feed_is_exact(&url, &reference_slot, &endpos, "the kills");
}

/// The feed equals what an uninterrupted `tail` of `reference_slot` reads up to `endpos`: no gap,
/// no duplicate, commit order, every context right; at least 100 changes made `across` something.
fn assert_feed_is_exact(url: &str, reference_slot: &str, endpos: &str, across: &str) {
    let stored = feed(url);
    let expected = reference(url, reference_slot, endpos);
    assert!(expected.len() > 100, "the load ran across {across} ({} changes)", expected.len());
    assert_eq!(stored.len(), expected.len(), "as many changes in the feed as committed");
    for (index, (stored, expected)) in stored.iter().zip(&expected).enumerate() {
        assert_eq!(stored, expected, "change {index}");
    }
}

/// Small transactions until told to stop, reconnecting while the server is down.
async fn resilient_load(url: String, stop: Arc<AtomicBool>) {
    let mut n = 0_i64;
    while !stop.load(Ordering::Relaxed) {
        let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(connection);
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let sql = format!(
                "BEGIN; SELECT pubsubpull.set_context('{{\"n\": {n}}}'); INSERT INTO a VALUES ({n}, 'v{n}'); COMMIT"
            );
            if client.batch_execute(&sql).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_exact_across_database_restarts() {
    let cluster = support::cluster::TempCluster::start("wal_level = logical", &[]);
    psql(&cluster.url("postgres"), "CREATE DATABASE app");
    let url = cluster.url("app");
    pubsubpull(&["migrate", "--database-url", &url]);
    psql(&url, "CREATE TABLE a (id bigint PRIMARY KEY, v text)");
    pubsubpull(&["track", "--database-url", &url, "a"]);
    for slot in ["feed", "reference"] {
        psql(&url, &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(resilient_load(url.clone(), stop.clone()));
    let mut streamer = spawn_run(&url, "feed");
    for mode in ["fast", "immediate", "fast", "immediate"] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.stop(mode);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.start_again();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let endpos = psql(&url, "SELECT pg_current_wal_insert_lsn()");
    // The same streamer, reconnected with backoff, catches up.
    let caught_up =
        format!("SELECT coalesce(max(end_lsn) >= '{endpos}', false) FROM pubsubpull.feed_checkpoint");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while psql(&url, &caught_up) != "t" {
        assert!(std::time::Instant::now() < deadline, "the streamer did not catch up after the restarts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(streamer.try_wait().unwrap().is_none(), "the streamer survived the restarts");
    streamer.kill().unwrap();
    streamer.wait().unwrap();

    assert_feed_is_exact(&url, "reference", &endpos, "the restarts");
}

#[test]
fn the_slot_advances_while_tracked_tables_are_idle() {
    let db = TestDb::new();
    let other = TestDb::new();
    let url = db.url();
    pubsubpull(&["migrate", "--database-url", &url]);
    db.sql("CREATE TABLE tracked (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY)");
    other.sql("CREATE TABLE elsewhere (id serial PRIMARY KEY)");
    pubsubpull(&["track", "--database-url", &url, "tracked"]);
    let slot = db.slot("idle");
    let mut streamer = spawn_run(&url, &slot);
    let confirmed = || {
        db.sql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))
    };
    support::wait_until("the slot", Duration::from_secs(20), || !confirmed().is_empty());
    // Writes to an untracked table of the same database and to another database only.
    for _ in 0..20 {
        db.sql("INSERT INTO busy DEFAULT VALUES");
        other.sql("INSERT INTO elsewhere DEFAULT VALUES");
    }
    let written = db.current_lsn();
    let advanced = || {
        let now = confirmed();
        !now.is_empty() && psql(&url, &format!("SELECT '{now}'::pg_lsn >= '{written}'::pg_lsn")) == "t"
    };
    support::wait_until("the confirmed position to pass the idle writes", Duration::from_secs(20), advanced);
    streamer.kill().unwrap();
    streamer.wait().unwrap();
    assert_eq!(psql(&url, "SELECT count(*) FROM pubsubpull.feed"), "0", "nothing untracked in the feed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_and_the_feed_stays_exact() {
    let Loaded { db, url, slot, reference_slot, stop, writer } = start_load("ha");
    let active_pid =
        || db.sql(&format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"));
    let stored = || {
        db.sql("SELECT coalesce(max(last_position), 0) FROM pubsubpull.feed_checkpoint")
            .parse::<i64>()
            .unwrap()
    };

    let mut active = spawn_run(&url, &slot);
    support::wait_until("the first streamer to stream", Duration::from_secs(20), || !active_pid().is_empty());
    for round in 0..3 {
        let mut standby = spawn_run(&url, &slot);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let streaming = active_pid();
        assert!(!streaming.is_empty(), "round {round}: one streamer streams");
        // Only one process streams the slot and writes the feed; the standby waits.
        assert_eq!(db.sql(&format!("SELECT count(*) FROM pg_stat_replication WHERE pid = {streaming}")), "1");
        assert!(standby.try_wait().unwrap().is_none(), "round {round}: the standby waits");

        active.kill().expect("SIGKILL the active streamer");
        active.wait().unwrap();
        let before = stored();
        let killed = std::time::Instant::now();
        support::wait_until("the standby to take over", Duration::from_secs(15), || {
            let pid = active_pid();
            !pid.is_empty() && pid != streaming && stored() > before
        });
        eprintln!("round {round}: the standby took over in {:?}", killed.elapsed());
        active = standby;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let endpos = db.current_lsn();
    let caught_up =
        format!("SELECT coalesce(max(end_lsn) >= '{endpos}', false) FROM pubsubpull.feed_checkpoint");
    support::wait_until("the active streamer to catch up", Duration::from_secs(60), || {
        db.sql(&caught_up) == "t"
    });
    active.kill().unwrap();
    active.wait().unwrap();

    assert_feed_is_exact(&url, &reference_slot, &endpos, "the takeovers");
}

#[test]
fn a_dropped_slot_stops_the_streamer_until_the_gap_is_accepted() {
    let db = TestDb::new();
    let url = db.url();
    pubsubpull(&["migrate", "--database-url", &url]);
    db.sql("CREATE TABLE a (id bigint PRIMARY KEY, v text)");
    pubsubpull(&["track", "--database-url", &url, "a"]);
    let slot = db.slot("dropped");
    db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    let run = |extra: &[&str]| {
        let endpos = db.current_lsn();
        Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
            .args([
                "run",
                "--database-url",
                &url,
                "--slot",
                &slot,
                "--listen",
                "127.0.0.1:0",
                "--endpos",
                &endpos,
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let stored = || {
        db.sql("SELECT string_agg((body || '}')::json -> 'key' ->> 'id', ',' ORDER BY position) FROM pubsubpull.feed")
    };
    db.sql("INSERT INTO a VALUES (1, 'kept')");
    assert!(run(&[]).status.success());
    assert_eq!(stored(), "1");

    // The slot goes, and with it what was written meanwhile: the streamer says so and stops.
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    db.sql("INSERT INTO a VALUES (2, 'lost with the slot')");
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("was dropped") && stderr.contains("--accept-gap"), "{stderr}");
    assert!(run(&[]).status.code() == Some(1), "it stays stopped until told");
    assert_eq!(stored(), "1", "nothing written past the gap");

    db.sql("INSERT INTO a VALUES (3, 'after the gap')");
    let accepted = run(&["--accept-gap"]);
    assert!(accepted.status.success(), "{}", String::from_utf8_lossy(&accepted.stderr));
    assert_eq!(stored(), "1,3");
}
