//! `pubsubpull run` as a child process serving its API on a free port, for tests over real HTTP.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::TestDb;

/// Runs `pubsubpull ARGS`, failing the test unless it succeeds.
pub fn pubsubpull(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_pubsubpull")).args(args).output().expect("run pubsubpull");
    assert!(output.status.success(), "pubsubpull {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A running `pubsubpull run` and the base URL of its API; killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Migrates `db`, creates and tracks `orders (id int PRIMARY KEY, total numeric)` and
    /// `notes (id int PRIMARY KEY, body text)`, starts the streamer with `args` and `env` on a
    /// free port, and returns once `/readyz` answers 200.
    pub async fn start(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Server {
        let url = db.url();
        pubsubpull(&["migrate", "--database-url", &url]);
        db.sql("CREATE TABLE orders (id int PRIMARY KEY, total numeric); CREATE TABLE notes (id int PRIMARY KEY, body text)");
        pubsubpull(&["track", "--database-url", &url, "orders", "notes"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
            .args(["run", "--database-url", &url, "--slot", &db.slot("run")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start pubsubpull run");
        let server = Server { child, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = server.http.get(server.url("/readyz")).send().await {
                if response.status() == reqwest::StatusCode::OK {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "the streamer did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
