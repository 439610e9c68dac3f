//! The test harness: one PostgreSQL cluster (`wal_level=logical`, TLS on, password users) started
//! from the installed server binaries on first use and shared by every test process, and one fresh
//! database per test, dropped with its slots afterwards.
//!
//! The cluster lives in `.pgtest/` at the repository root and is run as the `postgres` OS user
//! (PostgreSQL refuses root). `scripts/test` stops it when the suite ends; a developer's
//! `cargo nextest run` leaves it running for the next run.
#![allow(dead_code)]

pub mod cluster;
pub mod replication;
pub mod server;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

/// TCP port of the test cluster: `PUBSUBPULL_TEST_PGPORT`, else one derived from the checkout's
/// path, so that two checkouts on one machine (a developer's and CI's) never share a cluster.
pub fn port() -> u16 {
    std::env::var("PUBSUBPULL_TEST_PGPORT").ok().and_then(|p| p.parse().ok()).unwrap_or_else(|| {
        let hash = env!("CARGO_MANIFEST_DIR").bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        40000 + (hash % 20000) as u16
    })
}

/// Password of every password-authenticated test role.
pub const PASSWORD: &str = "s3cret pass";

/// Login roles the cluster is created with: (name, password encryption or `None` for no password,
/// replication attribute).
const ROLES: &[(&str, Option<&str>, bool)] = &[
    ("md5_user", Some("md5"), true),
    ("scram_user", Some("scram-sha-256"), true),
    ("password_user", Some("scram-sha-256"), true),
    ("tls_user", Some("scram-sha-256"), true),
    ("norepl_user", None, false),
];

const PG_HBA: &str = "\
local all all trust
host all md5_user 127.0.0.1/32 md5
host all scram_user 127.0.0.1/32 scram-sha-256
host all password_user 127.0.0.1/32 password
hostssl all tls_user 127.0.0.1/32 scram-sha-256
hostnossl all tls_user 127.0.0.1/32 reject
host all all 127.0.0.1/32 trust
";

/// The cluster's directory: `.pgtest/` at the repository root.
pub fn cluster_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".pgtest")
}

fn data_dir() -> PathBuf {
    cluster_dir().join("data")
}

/// The self-signed certificate the server presents (CN and SAN `localhost`, SAN IP 127.0.0.1).
pub fn server_cert() -> PathBuf {
    cluster_dir().join("server.crt")
}

/// Directory of the installed server binaries: `PG_BINDIR`, else `pg_config --bindir`, else Debian's.
pub fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return dir.into();
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match from_pg_config {
        Some(dir) if dir.join("initdb").exists() => dir,
        _ => PathBuf::from("/usr/lib/postgresql/15/bin"),
    }
}

/// The `postgresql.conf` line that lets every plugin the tests use decode: PostgreSQL 15.19 and
/// later allow only the output plugins `output_plugin_libraries` lists (pgoutput and test_decoding by
/// default). Empty for an earlier server, which would refuse the unknown setting.
pub fn output_plugins_setting() -> &'static str {
    static SETTING: LazyLock<&'static str> = LazyLock::new(|| {
        let output = Command::new(bindir().join("postgres"))
            .arg("--describe-config")
            .output()
            .expect("postgres --describe-config");
        let known = String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|line| line.starts_with("output_plugin_libraries\t"));
        if known {
            "output_plugin_libraries = 'pgoutput, test_decoding, wal2json'\n"
        } else {
            ""
        }
    });
    *SETTING
}

/// Runs a server binary as the `postgres` OS user (as is when we are not root).
pub fn as_postgres(program: &str) -> Command {
    let path = bindir().join(program);
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs `cmd`, failing the test with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Makes sure the shared cluster is up; returns once it accepts connections.
pub fn ensure_cluster() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        fs::create_dir_all(cluster_dir()).expect("create .pgtest");
        // Test processes run in parallel: one of them creates and starts the cluster.
        let lock = File::create(cluster_dir().join("lock")).expect("create lock file");
        lock.lock().expect("lock .pgtest");
        if !data_dir().join("PG_VERSION").exists() {
            create_cluster();
        }
        if !is_ready() {
            start_cluster();
        }
        lock.unlock().expect("unlock .pgtest");
    });
}

fn create_cluster() {
    let dir = cluster_dir();
    let _ = fs::remove_dir_all(data_dir());
    if is_root() {
        run(Command::new("chown").arg("postgres").arg(&dir));
    }
    run(as_postgres("initdb")
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .arg(data_dir()));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(server_cert())
        .stderr(Stdio::null()));
    for file in ["server.key", "server.crt"] {
        fs::copy(dir.join(file), data_dir().join(file)).expect("copy certificate");
    }
    if is_root() {
        run(Command::new("chown")
            .arg("postgres")
            .arg(data_dir().join("server.key"))
            .arg(data_dir().join("server.crt")));
    }
    run(Command::new("chmod").arg("600").arg(data_dir().join("server.key")));
    let conf = format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
         wal_level = logical\nmax_wal_senders = 100\nmax_replication_slots = 100\nmax_connections = 300\n\
         ssl = on\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
         log_min_messages = warning\nlog_line_prefix = '%m [%p] %d %u '\n{plugins}",
        port = port(),
        dir = dir.display(),
        plugins = output_plugins_setting()
    );
    let mut existing = fs::read_to_string(data_dir().join("postgresql.conf")).expect("read postgresql.conf");
    existing.push_str(&conf);
    fs::write(data_dir().join("postgresql.conf"), existing).expect("write postgresql.conf");
    fs::write(data_dir().join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
    start_cluster();
    let mut sql = String::new();
    for (role, encryption, replication) in ROLES {
        let attrs = if *replication { "LOGIN REPLICATION" } else { "LOGIN" };
        match encryption {
            Some(enc) => sql.push_str(&format!(
                "SET password_encryption = '{enc}'; CREATE ROLE {role} {attrs} PASSWORD '{PASSWORD}';"
            )),
            None => sql.push_str(&format!("CREATE ROLE {role} {attrs};")),
        }
    }
    psql("postgres", &sql);
}

fn start_cluster() {
    run(as_postgres("pg_ctl")
        .arg("-D")
        .arg(data_dir())
        .arg("-l")
        .arg(cluster_dir().join("server.log"))
        .args(["-w", "-t", "60", "start"])
        .stdout(Stdio::null()));
}

fn is_ready() -> bool {
    Command::new(bindir().join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs SQL through psql as the superuser in `database`, returning unaligned, tuples-only output.
pub fn psql(database: &str, sql: &str) -> String {
    let output = run(Command::new(bindir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &port().to_string(), "-d", database, "-c", sql]));
    String::from_utf8_lossy(&output.stdout).trim_end().to_owned()
}

/// A fresh database for one test, dropped (with its replication slots) when the value is dropped.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        ensure_cluster();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("t_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos);
        psql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb { name }
    }

    /// A superuser connection URL (trust over TCP).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", port(), self.name)
    }

    /// A URL for `user` with the test password.
    pub fn url_as(&self, user: &str) -> String {
        format!("postgres://{user}:{}@127.0.0.1:{}/{}", PASSWORD.replace(' ', "%20"), port(), self.name)
    }

    /// Runs SQL in this database as the superuser.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }

    /// A tokio-postgres connection as the superuser, its connection task spawned.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }

    /// A replication slot name unique to this database (slot names are cluster-wide).
    pub fn slot(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.name)
    }

    /// The current WAL insert position of the cluster.
    pub fn current_lsn(&self) -> String {
        self.sql("SELECT pg_current_wal_insert_lsn()")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Walsenders hold their slot; terminate them, drop the slots, then the database.
        let name = &self.name;
        let sql = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid();"
        );
        let _ = psql("postgres", &sql);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dropped = psql(
                "postgres",
                &format!(
                    "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
                     WHERE database = '{name}' AND NOT active; \
                     SELECT count(*) FROM pg_replication_slots WHERE database = '{name}'"
                ),
            );
            if dropped.ends_with("\n0") || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new(bindir().join("psql"))
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &port().to_string(),
                "-d",
                "postgres",
            ])
            .args(["-c", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
            .output();
    }
}

/// Polls `condition` every 20 ms until it holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
