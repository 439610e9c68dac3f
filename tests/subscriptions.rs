//! Subscriptions over real HTTP: `pubsubpull run` as a child process against a fresh database,
//! subscribers as axum servers on random ports in the test. Every change delivered in feed order
//! with the body `GET /feed` serves, filters respected; failing, timing-out, refusing and slow
//! subscribers retried without delaying the others; nothing lost across SIGKILL, repeats only of
//! the batch in flight; `from`, pause, resume, delete, retention and Standard Webhooks signatures.

mod support;

use std::future::Future;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::TestDb;

// ---------------------------------------------------------------------------------------------
// The streamer.

/// A running `pubsubpull run` and the base URL of its API; killed when dropped.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
    url: String,
    slot: String,
    env: Vec<(&'static str, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pubsubpull(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_pubsubpull")).args(args).output().expect("run pubsubpull");
    assert!(output.status.success(), "pubsubpull {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Retries are fast in tests (the default backoff caps at 60 s).
const FAST_RETRIES: (&str, &str) = ("PUBSUBPULL_DELIVERY_BACKOFF_MAX", "200ms");

/// A database with `orders` and `notes` tracked, and the streamer, ready.
async fn start(env: &[(&'static str, &str)]) -> (TestDb, Server) {
    let db = TestDb::new();
    let url = db.url();
    pubsubpull(&["migrate", "--database-url", &url]);
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, total numeric); CREATE TABLE notes (id int PRIMARY KEY, body text)");
    pubsubpull(&["track", "--database-url", &url, "orders", "notes"]);
    let env = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let server = Server::spawn(url, db.slot("subs"), env).await;
    (db, server)
}

impl Server {
    async fn spawn(url: String, slot: String, env: Vec<(&'static str, String)>) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
            .args(["run", "--database-url", &url, "--slot", &slot])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("start pubsubpull run");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            url,
            slot,
            env,
        };
        eventually("the streamer to become ready", Duration::from_secs(30), || async {
            let response = server.http.get(format!("{}/readyz", server.base)).send().await;
            response.is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        server
    }

    /// The same command again, once the process is gone.
    async fn restart(&mut self) {
        let next = Server::spawn(self.url.clone(), self.slot.clone(), std::mem::take(&mut self.env)).await;
        *self = next;
    }

    async fn request(&self, method: Method, path: &str, body: Option<String>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        (status, body)
    }

    async fn put(&self, name: &str, definition: Value) -> (StatusCode, Value) {
        self.request(Method::PUT, &format!("/subscriptions/{name}"), Some(definition.to_string())).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, None).await
    }

    async fn status(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/subscriptions/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["status"].clone()
    }

    /// The whole feed, as `GET /feed` serves it.
    async fn feed(&self) -> Vec<Value> {
        let (status, body) = self.get("/feed?limit=10000").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["changes"].as_array().unwrap().clone()
    }

    /// The feed once it holds `count` changes.
    async fn feed_of(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let feed = self.feed().await;
            if feed.len() >= count {
                assert_eq!(feed.len(), count, "no more changes than written");
                return feed;
            }
            assert!(Instant::now() < deadline, "only {} of {count} changes reached the feed", feed.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `condition` every 20 ms until it holds, failing the test after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Subscribers.

/// How a subscriber answers.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Ok,
    Fail(u16),
    /// 200 after this long.
    Slow(Duration),
}

/// One request a subscriber received.
#[derive(Clone, Debug)]
struct Received {
    method: Method,
    headers: HeaderMap,
    raw: Bytes,
    body: Value,
    at: Instant,
    /// The test's epoch when it arrived (the SIGKILL test counts restarts).
    epoch: usize,
    /// Whether it was answered with a 2xx.
    ok: bool,
}

/// An HTTP server recording what it is sent.
#[derive(Clone)]
struct Receiver {
    url: String,
    log: Arc<Mutex<Vec<Received>>>,
    reply: Arc<Mutex<Reply>>,
    epoch: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(reply: Reply) -> Receiver {
        Receiver::start_on(0, reply).await
    }

    async fn start_on(port: u16, reply: Reply) -> Receiver {
        Receiver::start_counting(port, reply, Arc::default()).await
    }

    /// A receiver that marks each request with the current value of `epoch`.
    async fn start_counting(port: u16, reply: Reply, epoch: Arc<AtomicUsize>) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            log: Arc::default(),
            reply: Arc::new(Mutex::new(reply)),
            epoch,
        };
        let state = receiver.clone();
        let app = axum::Router::new().fallback(move |method: Method, headers: HeaderMap, raw: Bytes| {
            let state = state.clone();
            async move {
                let reply = *state.reply.lock().unwrap();
                let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                let ok = !matches!(reply, Reply::Fail(_));
                let epoch = state.epoch.load(Ordering::SeqCst);
                let at = Instant::now();
                state.log.lock().unwrap().push(Received { method, headers, raw, body, at, epoch, ok });
                match reply {
                    Reply::Ok => StatusCode::OK,
                    Reply::Fail(status) => StatusCode::from_u16(status).unwrap(),
                    Reply::Slow(delay) => {
                        tokio::time::sleep(delay).await;
                        StatusCode::NO_CONTENT
                    }
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Every change of the requests answered 2xx, in the order they came.
    fn changes(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.ok)
            .flat_map(|r| r.body["changes"].as_array().unwrap().clone())
            .collect()
    }

    /// [`Receiver::changes`] less repeats.
    fn unique_changes(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.changes()
            .into_iter()
            .filter(|c| seen.insert(c["position"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// Waits until `count` distinct changes were acknowledged.
    async fn wait_for(&self, count: usize) -> Vec<Value> {
        eventually(
            &format!("{count} changes delivered to {}", self.url),
            Duration::from_secs(30),
            || async { self.unique_changes().len() >= count },
        )
        .await;
        self.unique_changes()
    }
}

fn positions(changes: &[Value]) -> Vec<String> {
    changes.iter().map(|c| c["position"].as_str().unwrap().to_owned()).collect()
}

/// Runs `sql` in one transaction with `context`.
async fn transaction(client: &mut tokio_postgres::Client, context: Option<Value>, sql: &str) {
    let txn = client.transaction().await.unwrap();
    if let Some(context) = context {
        txn.execute("SELECT pubsubpull.set_context($1::text::jsonb)", &[&context.to_string()]).await.unwrap();
    }
    txn.batch_execute(sql).await.unwrap();
    txn.commit().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_in_order_with_filters_respected() {
    let (db, server) = start(&[FAST_RETRIES]).await;
    let (all, inserts, notes) = (
        Receiver::start(Reply::Ok).await,
        Receiver::start(Reply::Ok).await,
        Receiver::start(Reply::Ok).await,
    );
    let (status, body) =
        server.put("all", json!({"url": all.url, "tables": ["public.orders", "public.notes"]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = server
        .put(
            "order-inserts",
            json!({"url": inserts.url, "tables": ["public.orders"], "operations": ["insert"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) =
        server.put("notes.one", json!({"url": notes.url, "tables": ["public.notes"], "batch_size": 1})).await;
    assert_eq!(status, StatusCode::CREATED);

    let mut client = db.client().await;
    transaction(&mut client, Some(json!({"user": "alice"})), "INSERT INTO orders VALUES (1, 10.5), (2, 3)")
        .await;
    transaction(&mut client, None, "INSERT INTO notes VALUES (1, 'hello'), (2, 'world')").await;
    transaction(&mut client, Some(json!({"user": "bob"})), "UPDATE orders SET total = 11 WHERE id = 1").await;
    transaction(&mut client, None, "DELETE FROM orders WHERE id = 2").await;
    transaction(&mut client, None, "INSERT INTO orders SELECT g, g FROM generate_series(10, 259) g").await;
    transaction(&mut client, None, "INSERT INTO notes VALUES (3, 'last')").await;
    let feed = server.feed_of(257).await;

    // Everything, in feed order, each change exactly as GET /feed serves it.
    assert_eq!(all.wait_for(feed.len()).await, feed);
    let requests = all.requests();
    assert_eq!(
        requests.iter().flat_map(|r| r.body["changes"].as_array().unwrap().clone()).count(),
        feed.len(),
        "no repeats"
    );
    for request in &requests {
        assert_eq!(request.method, Method::PUT);
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.body.as_object().unwrap().keys().collect::<Vec<_>>(), ["changes", "subscription"]);
        assert_eq!(request.body["subscription"], "all");
        let count = request.body["changes"].as_array().unwrap().len();
        assert!((1..=100).contains(&count), "batches of the default size: {count}");
        assert!(request.headers.get("webhook-signature").is_none(), "no secret, no signature");
    }
    assert!(requests.len() >= 3, "the 250-row transaction takes three batches of 100");
    assert_eq!(feed[0]["context"]["app"], json!({"user": "alice"}));

    // Filters.
    let expected: Vec<Value> =
        feed.iter().filter(|c| c["table"] == "public.orders" && c["op"] == "insert").cloned().collect();
    assert_eq!(expected.len(), 252);
    assert_eq!(inserts.wait_for(expected.len()).await, expected);
    let expected: Vec<Value> = feed.iter().filter(|c| c["table"] == "public.notes").cloned().collect();
    assert_eq!(notes.wait_for(expected.len()).await, expected);
    assert!(
        notes.requests().iter().all(|r| r.body["changes"].as_array().unwrap().len() == 1),
        "batch_size 1"
    );

    // The status says everything was delivered.
    let last = feed.last().unwrap()["position"].clone();
    eventually("the cursors to be stored", Duration::from_secs(10), || async {
        let (_, body) = server.get("/subscriptions").await;
        body["subscriptions"].as_array().unwrap().iter().all(|s| s["status"]["delivered"] == last)
    })
    .await;
    let status = server.status("all").await;
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["lag"], json!({"changes": 0, "seconds": 0.0}), "{status}");
    assert_eq!(status["attempts"], 0);
    assert!(status["delivered_at"].is_string(), "{status}");
    assert_eq!(inserts.changes().len(), 252, "no repeats after the filter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_validates_creates_replaces_and_deletes() {
    let (db, server) = start(&[FAST_RETRIES]).await;
    let url = "http://127.0.0.1:9/hook";
    let good = json!({"url": url, "tables": ["public.orders"]});
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let mut bad: Vec<(String, String)> = [
        with("url", json!("ftp://example.com/")),
        with("url", json!("not a url")),
        with("url", json!(7)),
        with("tables", json!([])),
        with("tables", json!(["orders"])),
        with("tables", json!(["public.Orders"])),
        with("tables", json!(["public.orders", "public.nope"])),
        with("operations", json!(["insert", "upsert"])),
        with("operations", json!([])),
        with("batch_size", json!(0)),
        with("batch_size", json!(1001)),
        with("batch_size", json!("10")),
        with("secret", json!("not-a-secret")),
        with("secret", json!("whsec_c2hvcnQ=")),
        with("secret", json!("whsec_!!!")),
        with("from", json!("later")),
        with("from", json!("00000000000000ff")),
        with("colour", json!("blue")),
        json!({"tables": ["public.orders"]}),
    ]
    .iter()
    .map(|body| ("ok".to_owned(), body.to_string()))
    .collect();
    bad.push(("ok".to_owned(), "{not json".to_owned()));
    for name in ["a%20b", "a%2Fb", &"x".repeat(101)] {
        bad.push((name.to_owned(), good.to_string()));
    }
    for (name, body) in &bad {
        let (status, answer) =
            server.request(Method::PUT, &format!("/subscriptions/{name}"), Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name} {body}: {answer}");
        assert!(answer["error"].is_string() && answer.get("detail").is_some(), "{answer}");
    }
    let (_, answer) = server.put("ok", with("tables", json!(["public.orders", "public.nope"]))).await;
    assert_eq!(answer["detail"]["tables"], json!(["public.nope"]), "{answer}");
    let (_, answer) = server.put("ok", with("secret", json!("whsec_c2hvcnQ="))).await;
    assert!(!answer.to_string().contains("c2hvcnQ"), "the secret is not echoed: {answer}");
    let (status, answer) = server
        .request(Method::PUT, "/subscriptions/big", Some(format!("{{\"url\": \"{}\"}}", "x".repeat(70_000))))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(
        server.get("/subscriptions").await,
        (StatusCode::OK, json!({"subscriptions": []})),
        "nothing stored"
    );

    for method in [Method::GET, Method::DELETE] {
        let (status, answer) = server.request(method, "/subscriptions/missing", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
        assert_eq!(answer["detail"], json!({"subscription": "missing"}));
    }
    let response = server.http.post(format!("{}/subscriptions/x", server.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, PUT, DELETE");
    let response = server.http.put(format!("{}/subscriptions", server.base)).send().await.unwrap();
    assert_eq!(
        (response.status(), &response.headers()["allow"]),
        (StatusCode::METHOD_NOT_ALLOWED, &"GET".parse().unwrap())
    );

    // Created (paused: the URL answers nothing), replaced, shown without its secret, deleted.
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([42_u8; 32]));
    let definition = json!({"url": url, "tables": ["public.orders"], "operations": ["delete", "insert"],
                            "batch_size": 7, "secret": secret, "paused": true});
    let (status, created) = server.put("billing", definition.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "billing");
    assert_eq!(created["url"], url);
    assert_eq!(created["tables"], json!(["public.orders"]));
    assert_eq!(created["operations"], json!(["insert", "delete"]));
    assert_eq!(
        (&created["batch_size"], &created["secret"], &created["paused"]),
        (&json!(7), &json!(true), &json!(true))
    );
    assert_eq!(created["status"]["state"], "paused");
    assert_eq!(created["status"]["delivered"], "0000000000000000", "from now: an empty feed");
    let (status, shown) = server.get("/subscriptions/billing").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!shown.to_string().contains(&secret[6..]), "never the secret: {shown}");

    // A replacement keeps the cursor unless it gives `from`.
    let mut client = db.client().await;
    transaction(&mut client, None, "INSERT INTO orders VALUES (1, 1), (2, 2), (3, 3)").await;
    server.feed_of(3).await;
    let (status, replaced) = server.put("billing", definition.clone()).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["status"]["delivered"], "0000000000000000", "the cursor is kept");
    assert_eq!(replaced["status"]["lag"]["changes"], 3, "{replaced}");
    let mut moved = definition.clone();
    moved["from"] = json!("0000000000000002");
    let (status, replaced) = server.put("billing", moved).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["status"]["delivered"], "0000000000000002");
    let mut now = definition.clone();
    now["from"] = json!("now");
    now["secret"] = Value::Null;
    let (_, replaced) = server.put("billing", now).await;
    assert_eq!(replaced["status"]["delivered"], "0000000000000003");
    assert_eq!(replaced["secret"], false);
    let (_, listed) = server.get("/subscriptions").await;
    assert_eq!(listed["subscriptions"].as_array().unwrap().len(), 1);

    let (status, body) = server.request(Method::DELETE, "/subscriptions/billing", None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(server.get("/subscriptions/billing").await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.request(Method::DELETE, "/subscriptions/billing", None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscriber_gets_everything_in_order_once_it_recovers() {
    let (db, server) = start(&[FAST_RETRIES]).await;
    let receiver = Receiver::start(Reply::Fail(500)).await;
    server.put("flaky", json!({"url": receiver.url, "tables": ["public.orders"], "batch_size": 2})).await;
    let mut client = db.client().await;
    for n in 1..=5 {
        transaction(&mut client, None, &format!("INSERT INTO orders VALUES ({n}, {n})")).await;
    }
    eventually("retries to show in the status", Duration::from_secs(20), || async {
        let status = server.status("flaky").await;
        status["state"] == "retrying" && status["attempts"].as_i64().unwrap() >= 3
    })
    .await;
    let status = server.status("flaky").await;
    assert_eq!(status["last_error"], "HTTP 500 Internal Server Error", "{status}");
    assert!(status["next_attempt_at"].is_string() && status["last_error_at"].is_string(), "{status}");
    assert_eq!(status["delivered"], "0000000000000000");
    assert!(receiver.requests().len() >= 3);

    receiver.set(Reply::Ok);
    let feed = server.feed_of(5).await;
    assert_eq!(receiver.wait_for(5).await, feed);
    assert_eq!(receiver.changes(), feed, "in order, each once acknowledged");
    let failed: Vec<_> = receiver.requests().iter().filter(|r| !r.ok).map(|r| r.body.clone()).collect();
    assert!(failed.iter().all(|body| body == &failed[0]), "the same batch is retried until acknowledged");
    eventually("the status to recover", Duration::from_secs(10), || async {
        server.status("flaky").await["state"] == "active"
    })
    .await;
    let status = server.status("flaky").await;
    assert_eq!((&status["attempts"], &status["next_attempt_at"]), (&json!(0), &Value::Null), "{status}");
    assert_eq!(status["last_error"], "HTTP 500 Internal Server Error", "the last error stays for the record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_refused_connections_are_retried_until_delivered() {
    let (db, server) = start(&[FAST_RETRIES, ("PUBSUBPULL_DELIVERY_TIMEOUT", "300ms")]).await;
    let slow = Receiver::start(Reply::Slow(Duration::from_secs(2))).await;
    let port = free_port();
    let refused_url = format!("http://127.0.0.1:{port}/hook");
    server.put("slow", json!({"url": slow.url, "tables": ["public.orders"]})).await;
    server.put("down", json!({"url": refused_url, "tables": ["public.orders"]})).await;
    let mut client = db.client().await;
    for n in 1..=3 {
        transaction(&mut client, None, &format!("INSERT INTO orders VALUES ({n}, {n})")).await;
    }
    for (name, error) in [("slow", "timed out after 300ms"), ("down", "cannot connect")] {
        eventually(&format!("{name} to be retrying"), Duration::from_secs(20), || async {
            let status = server.status(name).await;
            status["state"] == "retrying" && status["attempts"].as_i64().unwrap() >= 2
        })
        .await;
        let status = server.status(name).await;
        let last_error = status["last_error"].as_str().unwrap();
        assert!(last_error.starts_with(error), "{name}: {status}");
        assert!(!last_error.contains("127.0.0.1"), "no URL in the error: {last_error}");
    }
    assert!(slow.requests().len() >= 2);

    slow.set(Reply::Ok);
    let down = Receiver::start_on(port, Reply::Ok).await;
    let feed = server.feed_of(3).await;
    assert_eq!(down.wait_for(3).await, feed);
    assert_eq!(down.changes(), feed);
    // The timed-out requests did arrive: only repeats of the same batch precede the answer.
    assert_eq!(slow.wait_for(3).await, feed);
    for name in ["slow", "down"] {
        eventually(&format!("{name} to be active"), Duration::from_secs(10), || async {
            server.status(name).await["state"] == "active"
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_never_delays_another() {
    let (db, server) = start(&[]).await;
    let slow = Receiver::start(Reply::Slow(Duration::from_secs(5))).await;
    let fast = Receiver::start(Reply::Ok).await;
    server.put("slow", json!({"url": slow.url, "tables": ["public.orders"], "batch_size": 1})).await;
    server.put("fast", json!({"url": fast.url, "tables": ["public.orders"], "batch_size": 1})).await;
    let mut client = db.client().await;
    let mut worst = Duration::ZERO;
    for n in 1..=5 {
        transaction(
            &mut client,
            None,
            &format!("SET LOCAL synchronous_commit = on; INSERT INTO orders VALUES ({n}, {n})"),
        )
        .await;
        let committed = Instant::now();
        fast.wait_for(n).await;
        let arrived = fast.requests().last().unwrap().at;
        worst = worst.max(arrived - committed);
    }
    println!("fast subscriber beside a 5 s one: worst commit to delivery {worst:?}");
    assert!(worst < Duration::from_secs(1), "took {worst:?}");
    assert_eq!(slow.requests().len(), 1, "the slow one is still on its first batch");
}

/// Small transactions of one to three rows until told to stop.
async fn steady_load(db: &TestDb, stop: Arc<std::sync::atomic::AtomicBool>) -> i64 {
    let client = db.client().await;
    let mut n = 0_i64;
    while !stop.load(Ordering::Relaxed) {
        let rows = n % 3 + 1;
        client
            .batch_execute(&format!(
                "INSERT INTO orders SELECT {n} * 10 + g, g FROM generate_series(1, {rows}) g"
            ))
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_and_repeats_only_the_batch_in_flight() {
    let (db, mut server) = start(&[FAST_RETRIES]).await;
    let db = Arc::new(db);
    let epoch = Arc::new(AtomicUsize::new(0));
    let mut receivers = Vec::new();
    for (name, batch_size) in [("one", 1), ("ten", 10), ("hundred", 100)] {
        let receiver =
            Receiver::start_counting(0, Reply::Slow(Duration::from_millis(2)), Arc::clone(&epoch)).await;
        let (status, body) = server
            .put(name, json!({"url": receiver.url, "tables": ["public.orders"], "batch_size": batch_size}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        receivers.push(receiver);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
        async move { steady_load(&db, stop).await }
    });
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(std::process::id());
    for _ in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(300 + seed % 700)).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        epoch.fetch_add(1, Ordering::SeqCst);
        server.restart().await;
    }
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.unwrap();
    assert!(transactions > 100, "the load ran ({transactions} transactions)");
    let count: usize = db.sql("SELECT count(*) FROM orders").parse().unwrap();
    let feed = server.feed_of(count).await;
    let mut repeats = 0;
    for receiver in &receivers {
        assert_eq!(receiver.wait_for(feed.len()).await, feed, "every committed change, in order");
        // Each repeat of a change follows its delivery in the last batch sent before a kill.
        let requests = receiver.requests();
        let mut last = std::collections::HashMap::new();
        for (index, request) in requests.iter().enumerate() {
            for position in positions(request.body["changes"].as_array().unwrap()) {
                if let Some(previous) = last.insert(position.clone(), index) {
                    repeats += 1;
                    let before: &Received = &requests[previous];
                    let last_of_its_epoch =
                        requests.get(previous + 1).is_none_or(|next| next.epoch > before.epoch);
                    assert!(
                        last_of_its_epoch && before.epoch < request.epoch,
                        "{position} repeated, though its batch was acknowledged before a kill: {}",
                        requests
                            .iter()
                            .map(|r| format!(
                                "{}:{}",
                                r.epoch,
                                positions(r.body["changes"].as_array().unwrap()).join(",")
                            ))
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            }
        }
    }
    println!("sigkill: {} changes, {transactions} transactions, 5 kills, {repeats} repeats", feed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_beginning_from_a_position_and_behind_retention() {
    let (db, server) = start(&[FAST_RETRIES]).await;
    let mut client = db.client().await;
    for n in 1..=10 {
        transaction(&mut client, None, &format!("INSERT INTO orders VALUES ({n}, {n})")).await;
    }
    let feed = server.feed_of(10).await;
    let (beginning, after_five, now) = (
        Receiver::start(Reply::Ok).await,
        Receiver::start(Reply::Ok).await,
        Receiver::start(Reply::Ok).await,
    );
    let orders = |url: &str| json!({"url": url, "tables": ["public.orders"]});
    let mut definition = orders(&beginning.url);
    definition["from"] = json!("beginning");
    server.put("beginning", definition).await;
    let mut definition = orders(&after_five.url);
    definition["from"] = json!("0000000000000005");
    server.put("after-five", definition.clone()).await;
    server.put("now", orders(&now.url)).await;
    assert_eq!(beginning.wait_for(10).await, feed, "the retained history");
    assert_eq!(after_five.wait_for(5).await, feed[5..], "after the position given");

    transaction(&mut client, None, "INSERT INTO orders VALUES (11, 11)").await;
    let feed = server.feed_of(11).await;
    assert_eq!(now.wait_for(1).await, feed[10..], "only what came after");
    assert_eq!(beginning.wait_for(11).await, feed);
    assert_eq!(after_five.wait_for(6).await, feed[5..]);
    assert_eq!(now.changes().len(), 1);

    // Replaced without `from`: it continues; with `from`: it starts over.
    eventually("after-five's cursor", Duration::from_secs(10), || async {
        server.status("after-five").await["delivered"] == "000000000000000b"
    })
    .await;
    definition.as_object_mut().unwrap().remove("from");
    definition["batch_size"] = json!(3);
    assert_eq!(server.put("after-five", definition.clone()).await.0, StatusCode::OK);
    transaction(&mut client, None, "INSERT INTO orders VALUES (12, 12)").await;
    let feed = server.feed_of(12).await;
    assert_eq!(after_five.wait_for(7).await, feed[5..]);
    assert_eq!(after_five.changes(), feed[5..], "nothing replayed, nothing skipped");
    definition["from"] = json!("beginning");
    assert_eq!(server.put("after-five", definition.clone()).await.0, StatusCode::OK);
    eventually("the replay", Duration::from_secs(10), || async { after_five.changes().len() == 7 + 12 })
        .await;
    assert_eq!(after_five.changes()[7..], feed);

    // A subscription whose cursor fell behind what the feed retains says so and waits.
    let behind = Receiver::start(Reply::Ok).await;
    let mut definition = orders(&behind.url);
    definition["from"] = json!("0000000000000002");
    definition["paused"] = json!(true);
    server.put("behind", definition.clone()).await;
    db.sql("DELETE FROM pubsubpull.feed WHERE position <= 5");
    assert_eq!(server.status("behind").await["state"], "paused");
    definition["paused"] = json!(false);
    definition.as_object_mut().unwrap().remove("from");
    server.put("behind", definition.clone()).await;
    assert_eq!(server.status("behind").await["state"], "behind_retention");
    transaction(&mut client, None, "INSERT INTO orders VALUES (13, 13)").await;
    let feed = server.feed_of(8).await;
    now.wait_for(3).await;
    assert_eq!(behind.requests().len(), 0, "nothing skipped silently");
    assert_eq!(server.status("behind").await["state"], "behind_retention");
    let (status, body) = server
        .put("behind", json!({"url": behind.url, "tables": ["public.orders"], "from": "0000000000000001"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["oldest"], "0000000000000006");
    definition["from"] = json!("beginning");
    server.put("behind", definition).await;
    assert_eq!(behind.wait_for(8).await, feed, "restarted from the oldest retained change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_delete_while_retrying() {
    let (db, server) = start(&[FAST_RETRIES]).await;
    let (paused, witness, failing) = (
        Receiver::start(Reply::Ok).await,
        Receiver::start(Reply::Ok).await,
        Receiver::start(Reply::Fail(503)).await,
    );
    let pausable = json!({"url": paused.url, "tables": ["public.orders"], "paused": true});
    assert_eq!(server.put("pausable", pausable.clone()).await.0, StatusCode::CREATED);
    server.put("witness", json!({"url": witness.url, "tables": ["public.orders"]})).await;
    server.put("failing", json!({"url": failing.url, "tables": ["public.orders"]})).await;
    let mut client = db.client().await;
    transaction(&mut client, None, "INSERT INTO orders VALUES (1, 1), (2, 2)").await;
    let feed = server.feed_of(2).await;
    witness.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(paused.requests().is_empty(), "nothing while paused");
    let status = server.status("pausable").await;
    assert_eq!((&status["state"], &status["lag"]["changes"]), (&json!("paused"), &json!(2)), "{status}");

    let mut resumed = pausable.clone();
    resumed["paused"] = json!(false);
    assert_eq!(server.put("pausable", resumed).await.0, StatusCode::OK);
    assert_eq!(paused.wait_for(2).await, feed, "resumed where it was");

    eventually("failing to retry", Duration::from_secs(20), || async { failing.requests().len() >= 3 }).await;
    assert_eq!(
        server.request(Method::DELETE, "/subscriptions/failing", None).await.0,
        StatusCode::NO_CONTENT
    );
    let after_delete = failing.requests().len();
    // At 200 ms at most between attempts, a worker still running would try again several times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(failing.requests().len(), after_delete, "no request after the delete");
    let (_, listed) = server.get("/subscriptions").await;
    let names: Vec<&str> =
        listed["subscriptions"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pausable", "witness"]);
}

/// Verifies a request as the Standard Webhooks libraries do, implemented here from the
/// specification: `v1,` + base64(HMAC-SHA256(key, id.timestamp.body)), key from `whsec_`.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let key =
        base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(&signed);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    // The header may list several space-separated signatures.
    headers["webhook-signature"].to_str().unwrap().split(' ').any(|s| s == format!("v1,{expected}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_signed_as_standard_webhooks() {
    let (db, server) = start(&[FAST_RETRIES]).await;
    let receiver = Receiver::start(Reply::Fail(500)).await;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"a key of 32 random-looking bytes")
    );
    let (status, body) = server
        .put("signed", json!({"url": receiver.url, "tables": ["public.orders"], "secret": secret}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["secret"], true);
    let mut client = db.client().await;
    transaction(&mut client, None, "INSERT INTO orders VALUES (1, 1), (2, 2)").await;
    eventually("retries", Duration::from_secs(20), || async { receiver.requests().len() >= 2 }).await;
    receiver.set(Reply::Ok);
    let feed = server.feed_of(2).await;
    assert_eq!(receiver.wait_for(2).await, feed);
    transaction(&mut client, None, "INSERT INTO orders VALUES (3, 3)").await;
    receiver.wait_for(3).await;

    let requests = receiver.requests();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for request in &requests {
        assert!(verify(&secret, &request.headers, &request.raw), "a valid signature: {:?}", request.headers);
        let timestamp: i64 = request.headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
        assert!((now - timestamp).abs() < 60, "a current timestamp");
        let mut tampered = request.raw.to_vec();
        tampered[0] = b' ';
        assert!(!verify(&secret, &request.headers, &tampered), "a signature of the body");
    }
    let ids: Vec<&str> = requests.iter().map(|r| r.headers["webhook-id"].to_str().unwrap()).collect();
    let (first, rest) = ids.split_at(requests.len() - 1);
    assert!(first.iter().all(|id| *id == first[0]), "retries keep their id: {ids:?}");
    assert_ne!(rest[0], first[0], "another batch, another id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_active_streamer_delivers_and_a_standby_takes_over() {
    let (db, mut active) = start(&[FAST_RETRIES]).await;
    let mut client = db.client().await;
    for id in 0..30 {
        transaction(&mut client, None, &format!("INSERT INTO orders VALUES ({id}, {id})")).await;
    }
    active.feed_of(30).await;
    // A second streamer on the same slot: it waits as a standby (never ready, so not waited for).
    let standby = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["run", "--database-url", &active.url, "--slot", &active.slot, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "error")
        .env(FAST_RETRIES.0, FAST_RETRIES.1)
        .spawn()
        .expect("start the standby");
    let _standby = KilledOnDrop(standby);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A subscription with history to deliver slowly, a change at a time: a standby delivering too
    // would pick it up (within its 2 s reload) and send what is left a second time.
    let receiver = Receiver::start(Reply::Slow(Duration::from_millis(100))).await;
    let definition =
        json!({"url": receiver.url, "tables": ["public.orders"], "from": "beginning", "batch_size": 1});
    let (status, body) = active.put("ha", definition).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    receiver.wait_for(30).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(receiver.changes().len(), 30, "delivered once: the standby does not deliver");
    receiver.set(Reply::Ok);

    active.child.kill().expect("SIGKILL the active streamer");
    active.child.wait().unwrap();
    for id in 30..60 {
        transaction(&mut client, None, &format!("INSERT INTO orders VALUES ({id}, {id})")).await;
    }
    let delivered = receiver.wait_for(60).await;
    let ids: Vec<i64> = delivered.iter().map(|c| c["key"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (0..60).collect::<Vec<_>>(), "everything, in order, after the takeover");
}

/// A child process killed when the test ends, passed or failed.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
