//! The Django integration (`integrations/django`) end to end: the example project, served by
//! `manage.py runserver` as an ordinary database role, gets real HTTP requests from two logged-in
//! users; `pubsubpull tail` then shows every change to the notes table with the user and the
//! request that made it, and a change made with psql with the database-level context only.
//!
//! It runs the Python of `.venv`, which `scripts/test` creates and fills.

mod support;

use std::fs::{self, File};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{run, TestDb};

/// The application's database role (a cluster role of the harness, not a superuser) and the
/// application_name its connections report.
const APP_ROLE: &str = "scram_user";
const APP_NAME: &str = "notes-example";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_dir() -> PathBuf {
    repo().join("integrations/django/example")
}

/// The virtualenv's Python, checked to hold the working tree's version of the middleware.
fn python() -> PathBuf {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, which creates .venv and installs Django, psycopg and \
         integrations/django into it",
        python.display()
    );
    let output = run(Command::new(&python)
        .args(["-c", "import pubsubpull_django.middleware as m; print(m.__file__)"])
        .current_dir(example_dir()));
    let installed = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let source = repo().join("integrations/django/pubsubpull_django/middleware.py");
    assert!(
        installed.starts_with(repo().join(".venv")) && fs::read(&installed).ok() == fs::read(&source).ok(),
        "the pubsubpull_django installed in .venv ({}) is not the one in integrations/django: run \
         scripts/test, which reinstalls it",
        installed.display()
    );
    python
}

fn pubsubpull(db: &TestDb, args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .arg(args[0])
        .args(["--database-url", &db.url()])
        .args(&args[1..]))
}

/// `manage.py ARGS` of the example project, connected as the application's role.
fn manage(python: &Path, database_url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg("manage.py").args(args).current_dir(example_dir()).env("DATABASE_URL", database_url);
    cmd
}

/// `manage.py runserver` on a free port, stopped when dropped.
struct Server {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Server {
    fn start(python: &Path, database_url: &str, log: PathBuf) -> Server {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let log_file = File::create(&log).expect("create the server log");
        let child = manage(python, database_url, &["runserver", "--noreload", &format!("127.0.0.1:{port}")])
            .stdout(log_file.try_clone().expect("server log"))
            .stderr(log_file)
            .spawn()
            .expect("start manage.py runserver");
        let mut server = Server { child, log, port };
        support::wait_until("manage.py runserver to accept connections", Duration::from_secs(60), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("manage.py runserver exited ({status}):\n{}", server.log());
            }
            TcpStream::connect(("127.0.0.1", server.port)).is_ok()
        });
        server
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request of the plan that `integrations/django/example/client.py` plays.
fn step(user: &str, method: &str, path: &str, body: Value, request_id: Option<&str>) -> Value {
    let headers = match request_id {
        Some(id) => json!({"X-Request-ID": id}),
        None => json!({}),
    };
    json!({"user": user, "method": method, "path": path, "body": body, "headers": headers})
}

/// The application context the middleware should have written for a request.
fn app_context(user: &str, user_id: i64, method: &str, path: &str, request_id: &str) -> Value {
    json!({"user": user, "user_id": user_id, "method": method, "path": path,
           "request_id": request_id, "remote_addr": "127.0.0.1"})
}

fn is_uuid4(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
        && groups[2].starts_with('4')
}

#[test]
fn changes_made_through_django_carry_the_request_context() {
    let python = python();
    let db = TestDb::new();
    let workdir = tempfile::tempdir().expect("temporary directory");
    // The application is an ordinary role that owns its tables, as in production.
    db.sql(&format!("GRANT CREATE ON SCHEMA public TO {APP_ROLE}"));
    let app_url = format!("{}?application_name={APP_NAME}", db.url_as(APP_ROLE));

    pubsubpull(&db, &["migrate"]);
    run(&mut manage(&python, &app_url, &["migrate", "--verbosity", "0"]));
    pubsubpull(&db, &["track", "notes_note"]);
    let users = run(&mut manage(
        &python,
        &app_url,
        &[
            "shell",
            "-c",
            "from django.contrib.auth.models import User\n\
             for name in ('alice', 'bob'): print(User.objects.create_user(name, password='pw-' + name).pk)",
        ],
    ));
    let ids: Vec<i64> =
        String::from_utf8_lossy(&users.stdout).lines().filter_map(|line| line.trim().parse().ok()).collect();
    let [alice, bob] = ids[..] else { panic!("user ids from manage.py shell: {ids:?}") };

    // The slot exists before the first request: tail sees everything that follows.
    let slot = db.slot("django");
    db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"));

    let server = Server::start(&python, &app_url, workdir.path().join("runserver.log"));
    let mut spoofed = step("bob", "DELETE", "/notes/1/", Value::Null, Some("req-bob-3"));
    // Not trusted by default: remote_addr stays the peer's address.
    spoofed["headers"]["X-Forwarded-For"] = json!("203.0.113.7");
    let plan = json!({
        "base": format!("http://127.0.0.1:{}", server.port),
        "passwords": {"alice": "pw-alice", "bob": "pw-bob"},
        "steps": [
            step("alice", "POST", "/notes/", json!({"title": "groceries", "body": "x"}), Some("req-alice-1")),
            step("bob", "POST", "/notes/", json!({"title": "standup", "body": "demo"}), Some("req-bob-1")),
            step("alice", "PUT", "/notes/1/", json!({"body": "y"}), Some("req-alice-2")),
            // Two writes in one request: one transaction, one context.
            step("bob", "POST", "/notes/import/", json!([{"title": "a"}, {"title": "b"}]), Some("req-bob-2")),
            // The second entry has no title: the view raises after saving the first (id 5), and
            // the middleware rolls the request back.
            step("alice", "POST", "/notes/import/", json!([{"title": "c"}, {}]), Some("req-alice-3")),
            spoofed,
            // No X-Request-ID: the middleware makes one up.
            step("alice", "PUT", "/notes/2/", json!({"title": "standup (moved)"}), None),
        ],
    });
    let mut client = Command::new(&python)
        .arg("client.py")
        .current_dir(example_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run client.py");
    client.stdin.take().expect("stdin").write_all(plan.to_string().as_bytes()).expect("write the plan");
    let output = client.wait_with_output().expect("client.py");
    assert!(
        output.status.success(),
        "client.py failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    let statuses: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("JSON line")["status"].as_u64().expect("status")
        })
        .collect();
    assert_eq!(statuses, [201, 201, 200, 201, 500, 204, 200], "server log:\n{}", server.log());
    drop(server);

    // A change without the middleware: the database-level context only.
    db.sql("UPDATE notes_note SET body = 'by hand' WHERE id = 3");

    let end = db.current_lsn();
    let tail = pubsubpull(&db, &["tail", "--plugin", "test_decoding", "--slot", &slot, "--endpos", &end]);
    let changes: Vec<Value> = String::from_utf8(tail.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    // Only the tracked table: Django's sessions and users, and the context rows, stay out.
    let tables: Vec<&Value> = changes.iter().map(|change| &change["table"]).collect();
    assert!(tables.iter().all(|table| *table == "public.notes_note"), "tables in the stream: {tables:?}");
    let summary: Vec<(String, i64)> = changes
        .iter()
        .map(|c| (c["op"].as_str().unwrap_or("?").to_owned(), c["key"]["id"].as_i64().unwrap_or(-1)))
        .collect();
    let expected_rows = [
        ("insert", 1),
        ("insert", 2),
        ("update", 1),
        ("insert", 3),
        ("insert", 4),
        ("delete", 1),
        ("update", 2),
        ("update", 3),
    ];
    assert_eq!(
        summary,
        expected_rows.map(|(op, id)| (op.to_owned(), id)),
        "the notes changes, the rolled-back import (id 5) left out"
    );

    let generated_id = changes[6]["context"]["app"]["request_id"].as_str().unwrap_or_default().to_owned();
    assert!(is_uuid4(&generated_id), "a generated request id (UUID 4) in {}", changes[6]);
    let expected_apps = [
        app_context("alice", alice, "POST", "/notes/", "req-alice-1"),
        app_context("bob", bob, "POST", "/notes/", "req-bob-1"),
        app_context("alice", alice, "PUT", "/notes/1/", "req-alice-2"),
        app_context("bob", bob, "POST", "/notes/import/", "req-bob-2"),
        app_context("bob", bob, "POST", "/notes/import/", "req-bob-2"),
        app_context("bob", bob, "DELETE", "/notes/1/", "req-bob-3"),
        app_context("alice", alice, "PUT", "/notes/2/", &generated_id),
    ];
    for (change, app) in changes.iter().zip(&expected_apps) {
        let context = &change["context"];
        assert_eq!(&context["app"], app, "application context of {change}");
        assert_eq!(context["db_user"], APP_ROLE, "{change}");
        assert_eq!(context["application_name"], APP_NAME, "{change}");
        assert_eq!(context["client_addr"], "127.0.0.1", "{change}");
    }
    assert_eq!(changes[3]["xid"], changes[4]["xid"], "one request, one transaction");

    let by_hand = &changes[7]["context"];
    assert_eq!(by_hand["app"], Value::Null, "psql gave no application context: {by_hand}");
    assert_eq!(by_hand["db_user"], "postgres", "{by_hand}");
    assert_eq!(by_hand["application_name"], "psql", "{by_hand}");
}
