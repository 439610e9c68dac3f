//! Streaming from a slot: what a consumer sees, what the slot confirms, and the clear errors for a
//! busy slot, a slot of another plugin, a missing plugin and a server without logical decoding.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pubsubpull::lsn::Lsn;
use pubsubpull::source::{
    ensure_slot, ConnInfo, ReplicationConnection, ReplicationMessage, ReplicationStream, SlotState,
    SourceError,
};
use support::cluster::TempCluster;
use support::replication::{create_test_decoding_slot, read_transaction};
use support::{output_plugins_setting, TestDb};

/// A key=value connection string as `scram_user`, its password quoted (it holds a space).
fn scram_info(db: &TestDb, extra: &str) -> ConnInfo {
    let text = format!(
        "host=127.0.0.1 port={} dbname={} user=scram_user password='{}' application_name='stream test' {extra}",
        support::port(),
        db.name,
        support::PASSWORD
    );
    ConnInfo::parse(&text).expect("connection string")
}

fn confirmed_flush(db: &TestDb, slot: &str) -> Lsn {
    db.sql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))
        .parse()
        .expect("confirmed_flush_lsn")
}

/// test_decoding without xids (stable lines) and without the empty transactions of DDL.
fn plugin_options() -> [(&'static str, String); 2] {
    [("include-xids", "0".into()), ("skip-empty-xacts", "1".into())]
}

async fn next_within(
    stream: &mut ReplicationStream,
    secs: u64,
) -> Result<Option<ReplicationMessage>, SourceError> {
    tokio::time::timeout(Duration::from_secs(secs), stream.next()).await.expect("stream silent")
}

#[tokio::test]
async fn streams_a_transaction_and_the_slot_confirms_exactly_what_was_flushed() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY, name text)");
    let info = scram_info(&db, "");
    let sql = info.connect_sql().await.expect("SQL connection");
    let slot = db.slot("main");

    let mut repl = ReplicationConnection::connect(&info).await.expect("connect");
    let state = ensure_slot(&sql, &mut repl, &slot, "test_decoding", false).await.expect("create slot");
    let SlotState::Created { consistent_point } = state else { panic!("expected a new slot, got {state:?}") };
    db.sql("INSERT INTO t VALUES (1, 'it''s')");

    let mut stream = repl.start(&slot, Lsn::ZERO, &plugin_options()).await.expect("start");
    let (lines, commit) = read_transaction(&mut stream).await;
    assert_eq!(lines, ["BEGIN", "table public.t: INSERT: id[integer]:1 name[text]:'it''s'", "COMMIT"]);
    assert!(commit.wal_start > consistent_point);
    assert_eq!(confirmed_flush(&db, &slot), consistent_point, "nothing confirmed before we say so");
    stream.send_status(commit.wal_start, commit.wal_start).await.expect("status");
    // A lower position later must not move the slot back.
    stream.send_status(consistent_point, consistent_point).await.expect("status");
    assert_eq!(stream.flushed(), commit.wal_start);
    stream.finish().await.expect("finish");
    assert_eq!(confirmed_flush(&db, &slot), commit.wal_start);

    // A restart resumes after the confirmed transaction: row 1 does not come again.
    db.sql("INSERT INTO t VALUES (2, 'two')");
    let mut repl = ReplicationConnection::connect(&info).await.expect("reconnect");
    let state = ensure_slot(&sql, &mut repl, &slot, "test_decoding", false).await.expect("reuse slot");
    assert_eq!(state, SlotState::Existing { confirmed_flush: Some(commit.wal_start) });
    let mut stream = repl.start(&slot, Lsn::ZERO, &plugin_options()).await.expect("restart");
    let (lines, _) = read_transaction(&mut stream).await;
    assert_eq!(lines, ["BEGIN", "table public.t: INSERT: id[integer]:2 name[text]:'two'", "COMMIT"]);
}

#[tokio::test]
async fn an_idle_stream_answers_keepalives_and_outlives_wal_sender_timeout() {
    let db = TestDb::new();
    // wal_sender_timeout is settable per connection: the server asks for a reply every second and
    // drops a consumer that has not answered for two.
    let info = scram_info(&db, "options='-c wal_sender_timeout=2s'");
    let mut repl = ReplicationConnection::connect(&info).await.expect("connect");
    let timeout = repl.simple_query("SHOW wal_sender_timeout").await.expect("SHOW");
    assert_eq!(timeout, [[Some("2s".to_owned())]]);
    let slot = db.slot("idle");
    repl.create_slot(&slot, "test_decoding", false).await.expect("create slot");
    let mut stream = repl.start(&slot, Lsn::ZERO, &plugin_options()).await.expect("start");

    let mut requests = 0;
    while requests < 4 {
        match next_within(&mut stream, 20).await.expect("stream error").expect("stream ended") {
            ReplicationMessage::Keepalive(keepalive) if keepalive.reply_requested => requests += 1,
            _ => {}
        }
    }
    db.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (7)");
    let (lines, _) = read_transaction(&mut stream).await;
    assert_eq!(lines[1], "table public.t: INSERT: id[integer]:7");
}

#[tokio::test]
async fn a_second_consumer_of_an_active_slot_is_told_who_holds_it() {
    let db = TestDb::new();
    let slot = db.slot("busy");
    create_test_decoding_slot(&db, &slot);
    let first = ReplicationConnection::connect(&scram_info(&db, "")).await.expect("connect");
    let holder = first.backend_pid().expect("walsender pid");
    let _stream = first.start(&slot, Lsn::ZERO, &[]).await.expect("start");

    let second = ReplicationConnection::connect(&scram_info(&db, "")).await.expect("connect");
    let error = second.start(&slot, Lsn::ZERO, &[]).await.err().expect("second consumer refused");
    match &error {
        SourceError::SlotActive { slot: name, pid, .. } => assert_eq!((name, *pid), (&slot, Some(holder))),
        other => panic!("expected SlotActive, got {other:?}"),
    }
    assert!(error.to_string().contains("another consumer"), "{error}");
    assert!(error.is_transient());
    let active_pid =
        db.sql(&format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"));
    assert_eq!(active_pid, holder.to_string());
}

#[tokio::test]
async fn starting_a_missing_slot_names_it() {
    let db = TestDb::new();
    let repl = ReplicationConnection::connect(&scram_info(&db, "")).await.expect("connect");
    let slot = db.slot("nowhere");
    let error = repl.start(&slot, Lsn::ZERO, &[]).await.err().expect("no such slot");
    assert!(matches!(&error, SourceError::SlotMissing { slot: name, .. } if *name == slot), "{error:?}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_slot_of_another_plugin_or_database_is_refused_with_the_fix() {
    let db = TestDb::new();
    let info = scram_info(&db, "");
    let sql = info.connect_sql().await.expect("SQL connection");
    let mut repl = ReplicationConnection::connect(&info).await.expect("connect");

    let slot = db.slot("mismatch");
    create_test_decoding_slot(&db, &slot);
    let error = ensure_slot(&sql, &mut repl, &slot, "wal2json", false).await.expect_err("mismatch");
    assert!(matches!(error, SourceError::PluginMismatch { .. }), "{error:?}");
    let text = error.to_string();
    for part in ["test_decoding", "wal2json", &format!("pg_drop_replication_slot('{slot}')"), "--slot"] {
        assert!(text.contains(part), "{part:?} missing from {text}");
    }
    assert!(!error.is_transient());

    let other = TestDb::new();
    let foreign = other.slot("foreign");
    create_test_decoding_slot(&other, &foreign);
    let error = ensure_slot(&sql, &mut repl, &foreign, "test_decoding", false).await.expect_err("foreign");
    assert!(matches!(&error, SourceError::SlotInOtherDatabase { database, .. } if *database == other.name));
}

#[tokio::test]
async fn a_missing_plugin_names_the_package_and_leaves_the_connection_usable() {
    // PostgreSQL 15.19 and later refuse a plugin that output_plugin_libraries does not list before
    // looking for its library: this one is listed, and missing.
    let allow = if output_plugins_setting().is_empty() {
        ""
    } else {
        "output_plugin_libraries = 'pgoutput, wal2json_missing'"
    };
    let cluster = TempCluster::start(&format!("wal_level = logical\n{allow}"), &[]);
    let info = ConnInfo::parse(&cluster.url("postgres")).unwrap();
    let sql = info.connect_sql().await.expect("SQL connection");
    let mut repl = ReplicationConnection::connect(&info).await.expect("connect");
    let error = ensure_slot(&sql, &mut repl, "noplugin", "wal2json_missing", false)
        .await
        .expect_err("missing plugin");
    assert!(
        matches!(&error, SourceError::PluginMissing { plugin, .. } if plugin == "wal2json_missing"),
        "{error:?}"
    );
    assert!(error.to_string().contains("apt-get install postgresql-15-wal2json"), "{error}");
    assert!(!error.is_transient());
    let slots = sql.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap();
    assert_eq!(slots.get::<_, i64>(0), 0);
    assert_eq!(repl.identify_system().await.expect("still usable").dbname, "postgres");
}

/// PostgreSQL 15.19 and later: a plugin that output_plugin_libraries does not list is refused,
/// and the error says how to allow it. An earlier server has no such list and decodes with it.
#[tokio::test]
async fn a_plugin_the_server_does_not_allow_says_how_to_allow_it() {
    let listed = !output_plugins_setting().is_empty();
    let allow = if listed { "output_plugin_libraries = 'pgoutput, test_decoding'" } else { "" };
    let cluster = TempCluster::start(&format!("wal_level = logical\n{allow}"), &[]);
    let info = ConnInfo::parse(&cluster.url("postgres")).unwrap();
    let sql = info.connect_sql().await.expect("SQL connection");
    let mut repl = ReplicationConnection::connect(&info).await.expect("connect");
    if !listed {
        ensure_slot(&sql, &mut repl, "allowed", "wal2json", false).await.expect("no list to refuse it");
        return;
    }
    let error = ensure_slot(&sql, &mut repl, "refused", "wal2json", false).await.expect_err("not allowed");
    assert!(
        matches!(&error, SourceError::PluginNotAllowed { plugin, .. } if plugin == "wal2json"),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("output_plugin_libraries = 'pgoutput, test_decoding, wal2json'"), "{text}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_server_without_logical_decoding_is_told_to_set_wal_level() {
    let cluster = TempCluster::start("wal_level = replica", &[]);
    let info = ConnInfo::parse(&cluster.url("postgres")).unwrap();
    let sql = info.connect_sql().await.expect("SQL connection");
    let mut repl = ReplicationConnection::connect(&info).await.expect("connect");
    let error = ensure_slot(&sql, &mut repl, "feed", "test_decoding", false).await.expect_err("wal_level");
    assert!(matches!(error, SourceError::WalLevel { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("wal_level = logical") && text.contains("restart"), "{text}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_terminated_walsender_is_a_transient_error() {
    let db = TestDb::new();
    let slot = db.slot("killed");
    create_test_decoding_slot(&db, &slot);
    let repl = ReplicationConnection::connect(&scram_info(&db, "")).await.expect("connect");
    let pid = repl.backend_pid().expect("pid");
    let mut stream = repl.start(&slot, Lsn::ZERO, &[]).await.expect("start");
    assert_eq!(db.sql(&format!("SELECT pg_terminate_backend({pid})")), "t");
    let error = loop {
        match next_within(&mut stream, 20).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a terminated walsender is not a clean end"),
            Err(error) => break error,
        }
    };
    assert!(error.is_transient(), "{error:?}");
}

#[tokio::test]
async fn a_server_shutdown_ends_the_stream_once_everything_is_confirmed() {
    let cluster = Arc::new(TempCluster::start("wal_level = logical", &[]));
    let info = ConnInfo::parse(&cluster.url("postgres")).unwrap();
    let mut repl = ReplicationConnection::connect(&info).await.expect("connect");
    repl.create_slot("feed", "test_decoding", false).await.expect("create slot");
    let mut stream = repl.start("feed", Lsn::ZERO, &[]).await.expect("start");

    let stopper = Arc::clone(&cluster);
    let stopped = std::thread::spawn(move || stopper.stop("fast"));
    // A fast shutdown waits for the walsender, which waits until its consumer confirms everything
    // it was sent: answer keepalives with their position, as an idle consumer does.
    loop {
        match next_within(&mut stream, 30).await.expect("stream error") {
            Some(ReplicationMessage::Keepalive(keepalive)) if keepalive.reply_requested => {
                stream.send_status(keepalive.wal_end, keepalive.wal_end).await.expect("status");
            }
            Some(_) => {}
            None => break,
        }
    }
    stream.finish().await.expect("finish after the server ended the stream");
    stopped.join().expect("pg_ctl stop");
}
