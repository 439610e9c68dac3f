//! The replication connection authenticates the way the server asks (trust, cleartext password,
//! MD5, SCRAM-SHA-256), over TCP or the Unix socket, and says clearly what is wrong when it cannot.

mod support;

use pubsubpull::source::{ConnInfo, ReplicationConnection, SourceError};
use support::TestDb;

/// The cluster's system identifier, as the superuser sees it.
fn system_id(db: &TestDb) -> u64 {
    db.sql("SELECT system_identifier FROM pg_control_system()").parse().expect("system identifier")
}

async fn identify_as(db: &TestDb, user: &str) {
    let info = ConnInfo::parse(&db.url_as(user)).expect("connection string");
    let mut repl = ReplicationConnection::connect(&info).await.unwrap_or_else(|e| panic!("{user}: {e:?}"));
    // The session settings that make value text the same on every connection.
    for (name, value) in [
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("IntervalStyle", "postgres"),
        ("client_encoding", "UTF8"),
    ] {
        assert_eq!(repl.parameter(name), Some(value), "{user}: {name}");
    }
    assert!(repl.parameter("server_version").is_some());
    let system = repl.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(system.dbname, db.name, "{user}");
    assert_eq!(system.system_id, system_id(db), "{user}");
    assert!(system.timeline >= 1);
    assert!(system.xlogpos.0 > 0);
}

#[tokio::test]
async fn md5_scram_and_cleartext_password_users_connect() {
    let db = TestDb::new();
    for user in ["md5_user", "scram_user", "password_user"] {
        identify_as(&db, user).await;
    }
}

#[tokio::test]
async fn trust_over_the_unix_socket_connects() {
    let db = TestDb::new();
    let dir = support::cluster_dir();
    let info = ConnInfo::parse(&format!(
        "host='{}' port={} user=postgres dbname={}",
        dir.display(),
        support::port(),
        db.name
    ))
    .unwrap();
    let mut repl = ReplicationConnection::connect(&info).await.expect("connect over the socket");
    assert!(!repl.is_tls());
    assert_eq!(repl.identify_system().await.unwrap().dbname, db.name);
}

#[tokio::test]
async fn a_wrong_password_is_reported_without_echoing_it() {
    let db = TestDb::new();
    for user in ["md5_user", "scram_user", "password_user"] {
        let wrong = "not-the-Pa55word";
        let url = format!("postgres://{user}:{wrong}@127.0.0.1:{}/{}", support::port(), db.name);
        let error = ReplicationConnection::connect(&ConnInfo::parse(&url).unwrap()).await.err().unwrap();
        assert!(matches!(&error, SourceError::PasswordFailed { .. }), "{user}: {error:?}");
        assert_eq!(error.to_string(), format!("password authentication failed for user \"{user}\""));
        assert!(!format!("{error:?}").contains(wrong), "{error:?}");
        assert!(!error.is_transient());
        // The SQL connection reports it the same way.
        let error = ConnInfo::parse(&url).unwrap().connect_sql().await.err().unwrap();
        assert!(matches!(&error, SourceError::PasswordFailed { .. }), "{user}: {error:?}");
    }
}

#[tokio::test]
async fn a_missing_password_names_where_to_put_one() {
    let db = TestDb::new();
    let info = ConnInfo::parse_with_env(
        &format!("host=127.0.0.1 port={} user=scram_user dbname={}", support::port(), db.name),
        |_| None,
    )
    .unwrap();
    let error = ReplicationConnection::connect(&info).await.err().unwrap();
    assert!(matches!(error, SourceError::PasswordMissing { .. }), "{error:?}");
    assert!(error.to_string().contains("PGPASSWORD"), "{error}");
}

#[tokio::test]
async fn a_role_without_replication_is_told_to_get_it() {
    let db = TestDb::new();
    let info = ConnInfo::parse(&db.url_as("norepl_user")).unwrap();
    let error = ReplicationConnection::connect(&info).await.err().unwrap();
    assert!(matches!(error, SourceError::NoReplicationPrivilege { .. }), "{error:?}");
    assert!(error.to_string().contains("ALTER ROLE norepl_user REPLICATION"), "{error}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    // Bind then drop a listener: nothing listens on that port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=u dbname=d")).unwrap();
    let error = ReplicationConnection::connect(&info).await.err().unwrap();
    assert!(matches!(error, SourceError::Connect { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(error.to_string().contains(&port.to_string()), "{error}");
    let error = info.connect_sql().await.err().unwrap();
    assert!(error.is_transient(), "{error:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_a_transient_error() {
    // The kernel accepts connections on a listening socket nobody serves.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = format!("host=127.0.0.1 port={port} user=u dbname=d sslmode=disable connect_timeout=2");
    let started = std::time::Instant::now();
    let error = ReplicationConnection::connect(&ConnInfo::parse(&text).unwrap()).await.err().unwrap();
    assert!(matches!(error, SourceError::ConnectTimeout { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
