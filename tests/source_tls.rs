//! TLS per sslmode, for the replication and the SQL connection: `tls_user` may only connect over
//! TLS (pg_hba `hostssl`), and the server presents a self-signed certificate for `localhost` and
//! 127.0.0.1 (`support::server_cert()`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pubsubpull::lsn::Lsn;
use pubsubpull::source::{ConnInfo, ReplicationConnection, SourceError};
use support::cluster::TempCluster;
use support::replication::{create_test_decoding_slot, read_transaction};
use support::TestDb;

/// A key=value connection string for `tls_user` with the given host and TLS settings.
fn tls_info(db: &TestDb, host: &str, tls: &str) -> ConnInfo {
    let text = format!(
        "host={host} port={} dbname={} user=tls_user password='{}' {tls}",
        support::port(),
        db.name,
        support::PASSWORD
    );
    ConnInfo::parse(&text).expect("connection string")
}

fn root_cert() -> String {
    support::server_cert().display().to_string()
}

/// Whether the server sees the backend `pid` as encrypted.
fn server_sees_tls(db: &TestDb, pid: Option<u32>) -> bool {
    let pid = pid.expect("backend pid");
    db.sql(&format!("SELECT ssl FROM pg_stat_ssl WHERE pid = {pid}")) == "t"
}

fn openssl(args: &[&str], dir: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A self-signed CA certificate (`ca.crt`, key `ca.key`) in `dir`.
fn make_ca(dir: &Path) -> PathBuf {
    let args =
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pubsubpull test CA"];
    openssl(&[&args[..], &["-keyout", "ca.key", "-out", "ca.crt"]].concat(), dir);
    dir.join("ca.crt")
}

/// A server certificate for `localhost` and 127.0.0.1 signed by [`make_ca`]'s CA: `server.crt`
/// and `server.key` in `dir`.
fn make_server_cert(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    let request = ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"];
    openssl(&[&request[..], &["-keyout", "server.key", "-out", "server.csr"]].concat(), dir);
    let sign = ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"];
    openssl(&[&sign[..], &["-days", "2", "-extfile", "server.ext", "-out", "server.crt"]].concat(), dir);
    (dir.join("server.crt"), dir.join("server.key"))
}

#[tokio::test]
async fn require_encrypts_the_stream() {
    let db = TestDb::new();
    let slot = db.slot("tls");
    create_test_decoding_slot(&db, &slot);
    db.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");

    let repl = ReplicationConnection::connect(&tls_info(&db, "127.0.0.1", "sslmode=require")).await.unwrap();
    assert!(repl.is_tls());
    assert!(server_sees_tls(&db, repl.backend_pid()));
    let mut stream = repl.start(&slot, Lsn::ZERO, &[]).await.expect("start");
    let (lines, _) = read_transaction(&mut stream).await;
    assert_eq!(lines[1], "table public.t: INSERT: id[integer]:1");
    stream.finish().await.expect("finish");
}

#[tokio::test]
async fn verify_ca_and_verify_full_accept_the_servers_certificate() {
    let db = TestDb::new();
    let root = root_cert();
    for (host, tls) in [
        ("127.0.0.1", format!("sslmode=verify-ca sslrootcert='{root}'")),
        ("localhost", format!("sslmode=verify-full sslrootcert='{root}'")),
        // The certificate names 127.0.0.1 as an IP address SAN too.
        ("127.0.0.1", format!("sslmode=verify-full sslrootcert='{root}'")),
    ] {
        let mut repl = ReplicationConnection::connect(&tls_info(&db, host, &tls))
            .await
            .unwrap_or_else(|e| panic!("{host} {tls}: {e:?}"));
        assert!(server_sees_tls(&db, repl.backend_pid()), "{host} {tls}");
        assert_eq!(repl.identify_system().await.unwrap().dbname, db.name);
    }
}

#[tokio::test]
async fn verify_ca_ignores_the_host_name_and_verify_full_checks_it() {
    let db = TestDb::new();
    let root = root_cert();
    // Connect to 127.0.0.1 while calling the server by a name its certificate does not carry.
    let host = "db.invalid hostaddr=127.0.0.1";
    let ca = tls_info(&db, host, &format!("sslmode=verify-ca sslrootcert='{root}'"));
    ReplicationConnection::connect(&ca).await.expect("verify-ca does not check the name");

    let full = tls_info(&db, host, &format!("sslmode=verify-full sslrootcert='{root}'"));
    let error = ReplicationConnection::connect(&full).await.err().unwrap();
    assert!(matches!(error, SourceError::Tls { .. }), "{error:?}");
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert!(cause.contains("not valid for name"), "{cause}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let other = make_ca(dir.path());
    for mode in ["verify-ca", "verify-full"] {
        let info = tls_info(&db, "localhost", &format!("sslmode={mode} sslrootcert='{}'", other.display()));
        let error = ReplicationConnection::connect(&info).await.err().unwrap();
        assert!(matches!(error, SourceError::Tls { .. }), "{mode}: {error:?}");
        assert!(!error.is_transient());
    }
    // As libpq: require with a root certificate verifies the chain too.
    let info = tls_info(&db, "localhost", &format!("sslmode=require sslrootcert='{}'", other.display()));
    assert!(matches!(ReplicationConnection::connect(&info).await, Err(SourceError::Tls { .. })));
}

#[tokio::test]
async fn an_unreadable_root_certificate_names_the_file() {
    let db = TestDb::new();
    let info = tls_info(&db, "localhost", "sslmode=verify-full sslrootcert=/nonexistent/root.crt");
    let error = ReplicationConnection::connect(&info).await.err().unwrap();
    assert!(matches!(error, SourceError::RootCert { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/root.crt"), "{error}");
}

#[tokio::test]
async fn plaintext_is_refused_for_a_tls_only_role_with_a_clear_error() {
    let db = TestDb::new();
    let error =
        ReplicationConnection::connect(&tls_info(&db, "127.0.0.1", "sslmode=disable")).await.err().unwrap();
    assert!(matches!(error, SourceError::Rejected { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("pg_hba.conf") && text.contains("sslmode=require"), "{text}");
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert!(cause.contains("no encryption"), "{cause}");
}

#[tokio::test]
async fn prefer_and_allow_end_up_encrypted_when_the_server_insists() {
    let db = TestDb::new();
    for mode in ["prefer", "allow"] {
        let repl = ReplicationConnection::connect(&tls_info(&db, "127.0.0.1", &format!("sslmode={mode}")))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e:?}"));
        assert!(repl.is_tls(), "{mode}");
        assert!(server_sees_tls(&db, repl.backend_pid()), "{mode}");
    }
}

#[tokio::test]
async fn the_sql_connection_follows_the_same_tls_rules() {
    let db = TestDb::new();
    let root = root_cert();
    let info = tls_info(&db, "localhost", &format!("sslmode=verify-full sslrootcert='{root}'"));
    let client = info.connect_sql().await.expect("connect_sql");
    let row =
        client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0));
    let settings = client.query_one("SELECT current_setting('TimeZone'), current_setting('DateStyle')", &[]);
    let settings = settings.await.unwrap();
    assert_eq!(
        (settings.get::<_, String>(0), settings.get::<_, String>(1)),
        ("UTC".into(), "ISO, MDY".into())
    );

    let wrong_name =
        tls_info(&db, "db.invalid hostaddr=127.0.0.1", &format!("sslmode=verify-full sslrootcert='{root}'"));
    assert!(wrong_name.connect_sql().await.is_err(), "verify-full must check the host name");
    let plaintext = tls_info(&db, "127.0.0.1", "sslmode=disable");
    assert!(matches!(plaintext.connect_sql().await, Err(SourceError::Rejected { .. })));
    let allow = tls_info(&db, "127.0.0.1", "sslmode=allow");
    allow.connect_sql().await.expect("allow retries with TLS");
}

#[tokio::test]
async fn verify_full_accepts_a_server_certificate_signed_by_the_root() {
    // The shared cluster's certificate is self-signed; this server's is issued by a CA.
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let (cert, key) = make_server_cert(dir.path());
    let cluster = TempCluster::start("ssl = on", &[("server.crt", &cert), ("server.key", &key)]);
    for host in ["localhost", "127.0.0.1"] {
        let text = format!(
            "host={host} port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
            cluster.port,
            ca.display()
        );
        let info = ConnInfo::parse(&text).unwrap();
        let repl = ReplicationConnection::connect(&info).await.unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert!(repl.is_tls());
        let client = info.connect_sql().await.unwrap_or_else(|e| panic!("{host}: {e:?}"));
        let row =
            client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
        assert!(row.get::<_, bool>(0));
    }
    // The CA's certificate does not make a server certificate of a name it does not carry valid.
    let text = format!(
        "host=db.invalid hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
        cluster.port,
        ca.display()
    );
    let error = ReplicationConnection::connect(&ConnInfo::parse(&text).unwrap()).await.err().unwrap();
    assert!(matches!(error, SourceError::Tls { .. }), "{error:?}");
}

#[tokio::test]
async fn prefer_falls_back_to_plaintext_and_require_refuses_a_server_without_tls() {
    let cluster = TempCluster::start("ssl = off", &[]);
    let text = |mode: &str| {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode={mode}", cluster.port)
    };
    let mut repl =
        ReplicationConnection::connect(&ConnInfo::parse(&text("prefer")).unwrap()).await.expect("prefer");
    assert!(!repl.is_tls());
    assert_eq!(repl.identify_system().await.unwrap().dbname, "postgres");
    let error =
        ReplicationConnection::connect(&ConnInfo::parse(&text("require")).unwrap()).await.err().unwrap();
    assert!(matches!(error, SourceError::TlsRefused { .. }), "{error:?}");
    assert!(error.to_string().contains("sslmode=require"), "{error}");
    assert!(!error.is_transient());
}
