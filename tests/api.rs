//! The pull API over real HTTP: `pubsubpull run --listen` started as a child process against a
//! fresh database; changes pulled in order with their positions, transaction fields and context,
//! paged, filtered, streamed as NDJSON and long-polled; bad requests answered with the JSON error.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::server::{pubsubpull, Server};
use support::TestDb;

/// A database with `orders` and `notes` tracked, and the streamer with its API, ready.
async fn start() -> (TestDb, Server) {
    start_with(&[]).await
}

/// As [`start`], with more arguments for `pubsubpull run`.
async fn start_with(run_args: &[&str]) -> (TestDb, Server) {
    let db = TestDb::new();
    let server = Server::start(&db, run_args, &[]).await;
    (db, server)
}

impl Server {
    /// A pull as NDJSON: 200, the NDJSON content type, one change per line, each ended.
    async fn get_ndjson(&self, path_and_query: &str) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let text = response.text().await.unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "every line ends with a newline");
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    async fn get(&self, path_and_query: &str) -> (StatusCode, Value) {
        let response = self.http.get(format!("{}{path_and_query}", self.base)).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path_and_query}: {e}: {body}")))
    }

    /// Pulls until `count` changes are there (long polls, so no busy loop).
    async fn wait_for(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get("/feed?wait=1").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let changes = body["changes"].as_array().unwrap().clone();
            if changes.len() >= count {
                return changes;
            }
            assert!(Instant::now() < deadline, "only {} changes arrived", changes.len());
        }
    }
}

/// Runs `sql` in one transaction with `context`, returning its xid.
async fn transaction(client: &mut tokio_postgres::Client, context: Option<Value>, sql: &str) -> i64 {
    let txn = client.transaction().await.unwrap();
    if let Some(context) = context {
        txn.execute("SELECT pubsubpull.set_context($1::text::jsonb)", &[&context.to_string()]).await.unwrap();
    }
    txn.batch_execute(sql).await.unwrap();
    let xid: String = txn.query_one("SELECT pg_current_xact_id()::text", &[]).await.unwrap().get(0);
    txn.commit().await.unwrap();
    xid.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_pages_filters_and_streams_the_feed() {
    let (db, server) = start().await;
    let mut client = db.client().await;
    let alice = transaction(
        &mut client,
        Some(json!({"user": "alice"})),
        "INSERT INTO orders VALUES (1, 10.50), (2, 3)",
    )
    .await;
    let plain = transaction(&mut client, None, "INSERT INTO notes VALUES (1, 'hello')").await;
    let bob =
        transaction(&mut client, Some(json!({"user": "bob"})), "UPDATE orders SET total = 11 WHERE id = 1")
            .await;

    let changes = server.wait_for(4).await;
    assert_eq!(changes.len(), 4, "{changes:?}");
    let positions: Vec<&str> = changes.iter().map(|c| c["position"].as_str().unwrap()).collect();
    assert_eq!(positions, ["0000000000000001", "0000000000000002", "0000000000000003", "0000000000000004"]);
    let expected = [
        ("public.orders", "insert", alice, json!({"user": "alice"}), json!({"id": 1, "total": "10.50"})),
        ("public.orders", "insert", alice, json!({"user": "alice"}), json!({"id": 2, "total": "3"})),
        ("public.notes", "insert", plain, Value::Null, json!({"id": 1, "body": "hello"})),
        ("public.orders", "update", bob, json!({"user": "bob"}), json!({"id": 1, "total": "11"})),
    ];
    let now = chrono::Utc::now();
    for (change, (table, op, xid, app, new)) in changes.iter().zip(expected) {
        assert_eq!(change["table"], table, "{change}");
        assert_eq!(change["op"], op, "{change}");
        assert_eq!(change["xid"], xid, "{change}");
        assert_eq!(change["new"], new, "{change}");
        assert_eq!(change["context"]["app"], app, "{change}");
        assert_eq!(change["context"]["db_user"], "postgres", "{change}");
        let committed_at = change["committed_at"].as_str().unwrap();
        assert!(
            committed_at.len() == 27 && committed_at.ends_with('Z'),
            "RFC 3339 UTC, microseconds: {committed_at}"
        );
        let at = chrono::DateTime::parse_from_rfc3339(committed_at).unwrap();
        assert!((now - at.with_timezone(&chrono::Utc)).num_seconds().abs() < 60, "{committed_at}");
        assert!(change["lsn"].is_string(), "{change}");
    }
    assert_eq!(changes[0]["committed_at"], changes[1]["committed_at"], "one transaction, one commit time");

    // The whole body of an unfiltered pull.
    let (_, body) = server.get("/feed").await;
    assert_eq!(body["next"], "0000000000000004");
    assert_eq!(body["up_to_date"], true);
    let (_, body) = server.get("/feed?after=0000000000000004").await;
    assert_eq!(
        body,
        json!({"changes": [], "next": "0000000000000004", "up_to_date": true, "oldest": "0000000000000001"})
    );

    // Paging one at a time: every change once, in order, then up to date.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let query = if after.is_empty() {
            "/feed?limit=1".to_owned()
        } else {
            format!("/feed?limit=1&after={after}")
        };
        let (status, body) = server.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        paged.extend(body["changes"].as_array().unwrap().iter().cloned());
        after = body["next"].as_str().unwrap().to_owned();
        if body["up_to_date"] == true {
            break;
        }
        assert!(paged.len() <= 4, "paging ends");
    }
    assert_eq!(paged, changes, "paging gives every change once, in order");
    let (_, body) = server.get("/feed?limit=2").await;
    assert_eq!((body["next"].as_str(), &body["up_to_date"]), (Some("0000000000000002"), &json!(false)));

    // Filters.
    let (_, body) = server.get("/feed?table=public.notes").await;
    assert_eq!(body["changes"], json!([changes[2]]));
    assert_eq!(body["next"], "0000000000000003");
    let (_, body) = server.get("/feed?table=public.orders&table=public.notes").await;
    assert_eq!(body["changes"], json!(changes));
    let (_, body) = server.get("/feed?table=public.orders&after=0000000000000002").await;
    assert_eq!(body["changes"], json!([changes[3]]));

    // NDJSON: the same changes, one per line.
    assert_eq!(server.get_ndjson("/feed").await, changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_a_change_is_stored() {
    let (db, server) = start().await;
    let mut client = db.client().await;
    transaction(&mut client, None, "INSERT INTO orders VALUES (1, 1)").await;
    let last = server.wait_for(1).await[0]["position"].as_str().unwrap().to_owned();

    // Nothing new: the poll waits its whole time and says so.
    let started = Instant::now();
    let (_, body) = server.get(&format!("/feed?after={last}&wait=1")).await;
    let waited = started.elapsed();
    assert_eq!(body, json!({"changes": [], "next": last, "up_to_date": true, "oldest": "0000000000000001"}));
    assert!(waited >= Duration::from_millis(950) && waited < Duration::from_secs(3), "waited {waited:?}");

    let mut worst = Duration::ZERO;
    let mut after = last;
    for round in 0..5 {
        let poll = {
            let (http, url) = (server.http.clone(), format!("{}/feed?after={after}&wait=10", server.base));
            tokio::spawn(async move {
                let body: Value =
                    serde_json::from_str(&http.get(url).send().await.unwrap().text().await.unwrap()).unwrap();
                (body, Instant::now())
            })
        };
        // The poll is in: the server waits on the watch channel before we commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!poll.is_finished(), "the poll waits for a change");
        transaction(
            &mut client,
            Some(json!({"round": round})),
            &format!("SET LOCAL synchronous_commit = on; INSERT INTO orders VALUES ({}, 2)", round + 10),
        )
        .await;
        let committed = Instant::now();
        let (body, answered) = poll.await.unwrap();
        let latency = answered - committed;
        worst = worst.max(latency);
        println!("long poll round {round}: commit to response {latency:?}");
        let changes = body["changes"].as_array().unwrap();
        assert_eq!(changes.len(), 1, "{body}");
        assert_eq!(changes[0]["context"]["app"], json!({"round": round}));
        after = body["next"].as_str().unwrap().to_owned();
    }
    println!("long poll: worst commit to response {worst:?}");
    // The commit is flushed at once (the test cluster runs with synchronous_commit = off, where the
    // WAL writer would take up to 200 ms before the walsender may send it); the streamer stores the
    // transaction as soon as the stream pauses after it, and the poll wakes on that COMMIT at once
    // (measured: 4 to 9 ms, on this 2-core machine while it built and tested another checkout).
    assert!(worst < Duration::from_millis(100), "commit to response took {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_health_is_served() {
    let (db, server) = start().await;
    for query in [
        "after=1",
        "after=000000000000001A",
        "after=-000000000000001",
        "after=zzzzzzzzzzzzzzzz",
        "limit=0",
        "limit=abc",
        "limit=100000",
        "wait=-1",
        "wait=61",
        "table=orders",
        "table=public.Orders",
        "table=public.",
        "limit=1&limit=2",
        "colour=blue",
    ] {
        let (status, body) = server.get(&format!("/feed?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"].is_string() && body.get("detail").is_some(), "{query}: {body}");
    }
    for method in
        [reqwest::Method::POST, reqwest::Method::PATCH, reqwest::Method::PUT, reqwest::Method::DELETE]
    {
        let response =
            server.http.request(method.clone(), format!("{}/feed", server.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(response.headers()["allow"], "GET", "{method}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "method not allowed");
    }
    // Tables never tracked are not found; one tracked before still has its changes.
    let (status, body) = server.get("/feed?table=public.orders&table=public.nope&table=shop.\"X\"").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["detail"]["tables"], json!(["public.nope", "shop.\"X\""]), "{body}");
    pubsubpull(&["untrack", "--database-url", &db.url(), "notes"]);
    let (status, body) = server.get("/feed?table=public.notes").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.get("/nothing/here").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "not found");
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["detail"], json!({"replication": "connected", "feed": "reachable"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_with_the_streamer() {
    let (_db, mut server) = start().await;
    let poll = {
        let (http, url) = (server.http.clone(), format!("{}/feed?wait=30", server.base));
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) })
    };
    // The poll is in before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "run did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("sigterm: the process exited after {:?}", signalled.elapsed());
    assert!(status.success(), "run exits cleanly on SIGTERM: {status}");
    // The long poll in flight was answered (nothing new) rather than cut off.
    assert_eq!(poll.await.unwrap().unwrap(), StatusCode::OK);
    assert!(server.http.get(format!("{}/healthz", server.base)).send().await.is_err(), "no longer serving");
}

/// Polls `GET path` until it answers `status`, returning the body.
async fn wait_for_status(server: &Server, path: &str, status: StatusCode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Connections are refused until the process listens.
        if let Ok(response) = server.http.get(format!("{}{path}", server.base)).send().await {
            let got = response.status();
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            if got == status {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} stayed {got}: {body}");
        }
        assert!(Instant::now() < deadline, "{path} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_the_api_reconnects() {
    let cluster = support::cluster::TempCluster::start("wal_level = logical", &[]);
    let url = cluster.url("postgres");
    pubsubpull(&["migrate", "--database-url", &url]);
    let psql = |sql: &str| {
        let output = Command::new(support::bindir().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql])
            .output()
            .unwrap();
        assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
    };
    psql("CREATE TABLE orders (id int PRIMARY KEY)");
    pubsubpull(&["track", "--database-url", &url, "orders"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["run", "--database-url", &url, "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let server = Server { child, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
    wait_for_status(&server, "/readyz", StatusCode::OK).await;
    psql("INSERT INTO orders VALUES (1)");
    assert_eq!(server.wait_for(1).await.len(), 1);

    cluster.stop("fast");
    let body = wait_for_status(&server, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["error"], "not ready");
    let body = wait_for_status(&server, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["detail"]["feed"], "unreachable", "{body}");
    let (status, body) = server.get("/feed").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body,
        json!({"error": "the feed is unavailable, retry later", "detail": null}),
        "no internals"
    );
    assert_eq!(server.get("/healthz").await.0, StatusCode::OK, "alive while the database is down");

    cluster.start_again();
    let body = wait_for_status(&server, "/readyz", StatusCode::OK).await;
    assert_eq!(body["detail"], json!({"replication": "connected", "feed": "reachable"}));
    psql("INSERT INTO orders VALUES (2)");
    let changes = server.wait_for(2).await;
    assert_eq!(changes[1]["new"], json!({"id": 2}), "the API reconnected to the feed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_bigger_than_a_chunk_streams_whole() {
    let (db, server) = start().await;
    let mut client = db.client().await;
    transaction(
        &mut client,
        None,
        "INSERT INTO notes SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g",
    )
    .await;
    let changes = server.wait_for(1000).await;
    assert_eq!(changes.len(), 1000, "the default limit");
    let started = Instant::now();
    let (_, body) = server.get("/feed?limit=10000").await;
    println!("a page of 2000 changes of 0.5 kB: {:?}", started.elapsed());
    let changes = body["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2000);
    for (n, change) in (1..).zip(changes) {
        assert_eq!(change["position"], format!("{n:016x}"));
        assert_eq!(change["new"]["id"], n);
    }
    assert_eq!((&body["next"], &body["up_to_date"]), (&json!("00000000000007d0"), &json!(true)));
    let (_, body) = server.get("/feed?limit=1500").await;
    assert_eq!(body["changes"].as_array().unwrap().len(), 1500);
    assert_eq!((&body["next"], &body["up_to_date"]), (&json!("00000000000005dc"), &json!(false)));
    let lines = server.get_ndjson("/feed?limit=10000&after=0000000000000064").await;
    assert_eq!(lines.len(), 1900);
    assert_eq!(lines[..], changes[100..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_segments_and_says_what_is_gone() {
    let (db, server) = start_with(&["--retention", "2s"]).await;
    let mut client = db.client().await;
    transaction(&mut client, None, "INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g").await;
    let old = server.wait_for(100).await;
    let first_old = old[0]["position"].as_str().unwrap().to_owned();
    let count = |sql: &str| db.sql(sql).parse::<i64>().unwrap();

    // Writes go on while old segments expire: every later change is kept, the old ones go.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut id = 1000;
    let oldest = loop {
        id += 1;
        transaction(&mut client, None, &format!("INSERT INTO notes VALUES ({id}, 'later')")).await;
        let (status, body) = server.get("/feed?limit=1").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["changes"][0]["table"] == "public.notes" {
            break body["oldest"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the old changes were never dropped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(count("SELECT count(*) FROM pubsubpull.feed WHERE table_name = 'public.orders'"), 0);
    assert!(
        count("SELECT count(*) FROM pubsubpull.feed_segment") <= 10,
        "segments are dropped as they expire"
    );

    // Pulling from a position that is no longer held is refused, not silently skipped.
    let position = |text: &str| i64::from_str_radix(text, 16).unwrap();
    let before_first = format!("{:016x}", position(&first_old) - 1);
    let (status, body) = server.get(&format!("/feed?after={before_first}")).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(position(body["detail"]["oldest"].as_str().unwrap()) >= position(&oldest), "{body}");
    // From just before the oldest retained change, everything retained comes, without a gap (the
    // oldest moves on as segments expire: read it again when it has).
    let ids = loop {
        let (_, head) = server.get("/feed?limit=1").await;
        let before_oldest = format!("{:016x}", position(head["oldest"].as_str().unwrap()) - 1);
        let (status, body) = server.get(&format!("/feed?after={before_oldest}&wait=1")).await;
        assert!(Instant::now() < deadline, "the latest change never arrived: {body}");
        if status == StatusCode::GONE {
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        let changes = body["changes"].as_array().unwrap();
        let ids: Vec<i64> = changes.iter().map(|c| c["key"]["id"].as_i64().unwrap()).collect();
        if ids.last() == Some(&id) {
            break ids;
        }
    };
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "no gap in what is retained: {ids:?}");
}

impl Server {
    /// Every row of `table` through the backfill API, `limit` at a time, calling `between` after
    /// each page; returns the rows by their `id` and the feed position to follow from.
    async fn backfill(
        &self,
        table: &str,
        limit: usize,
        mut between: impl AsyncFnMut(),
    ) -> (BTreeMap<i64, Value>, String) {
        let (mut rows, mut after, mut feed_after) = (BTreeMap::new(), None::<String>, None::<String>);
        loop {
            let query = match &after {
                Some(cursor) => format!("/tables/{table}/rows?limit={limit}&after={cursor}"),
                None => format!("/tables/{table}/rows?limit={limit}"),
            };
            let (status, body) = self.get(&query).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let page_feed_after = body["feed_after"].as_str().unwrap().to_owned();
            assert_eq!(
                *feed_after.get_or_insert(page_feed_after.clone()),
                page_feed_after,
                "one iteration, one position"
            );
            for row in body["rows"].as_array().unwrap() {
                let id = row["id"].as_i64().unwrap();
                assert!(rows.last_key_value().is_none_or(|(last, _)| *last < id), "rows in key order");
                rows.insert(id, row.clone());
            }
            match body["next"].as_str() {
                Some(cursor) => after = Some(cursor.to_owned()),
                None => return (rows, feed_after.unwrap()),
            }
            between().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_then_follow_converges_to_the_table() {
    let (db, server) = start().await;
    db.sql("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g");

    // Writers insert, update and delete while the table is iterated.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (mut client, writing) = (db.client().await, writing.clone());
        tokio::spawn(async move {
            let (mut seed, mut next_id) = (42_u64, 501);
            let mut random = move |n: u64| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (seed >> 33) % n
            };
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let sql = match random(3) {
                    0 => {
                        next_id += 1;
                        format!("INSERT INTO orders VALUES ({next_id}, {})", random(1000))
                    }
                    1 => format!("UPDATE orders SET total = total + 1 WHERE id = {}", random(next_id) + 1),
                    _ => format!("DELETE FROM orders WHERE id = {}", random(next_id) + 1),
                };
                transaction(&mut client, None, &sql).await;
            }
        })
    };
    let (mut rows, feed_after) = server
        .backfill("public.orders", 37, async || tokio::time::sleep(Duration::from_millis(20)).await)
        .await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    db.sql("INSERT INTO notes VALUES (1, 'writers done')");

    // Follow the feed from the position the backfill gave, applying orders' changes, up to the marker.
    let mut after = feed_after;
    'follow: loop {
        let (status, body) = server.get(&format!("/feed?after={after}&wait=5")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for change in body["changes"].as_array().unwrap() {
            if change["table"] == "public.notes" {
                break 'follow;
            }
            let id = change["key"]["id"].as_i64().unwrap();
            match change["op"].as_str().unwrap() {
                "delete" => rows.remove(&id),
                _ => rows.insert(id, change["new"].clone()),
            };
        }
        after = body["next"].as_str().unwrap().to_owned();
    }

    let (table, _) = server.backfill("public.orders", 1000, async || {}).await;
    assert!(table.len() > 400, "the writers left most rows: {}", table.len());
    assert_eq!(rows, table, "backfill then follow ends with exactly the table's contents");
    assert_eq!(db.sql("SELECT count(*) FROM orders"), table.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_maps_values_and_refuses_bad_requests() {
    let (db, server) = start().await;
    db.sql(
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE \"Odd Table\" (\"Key\" text, part int, mood mood, tags text[], doc jsonb, f float8,
             PRIMARY KEY (\"Key\", part));
         INSERT INTO \"Odd Table\" VALUES ('a', 2, 'ok', '{x,y}', '{\"k\": 1}', 'NaN'), ('a', 1, NULL, NULL, NULL, 1.5);
         CREATE TABLE keyless (v int); ALTER TABLE keyless REPLICA IDENTITY FULL",
    );
    pubsubpull(&["track", "--database-url", &db.url(), "\"Odd Table\""]);
    pubsubpull(&["track", "--database-url", &db.url(), "--replica-identity-full", "keyless"]);
    let odd = "public.%22Odd%20Table%22";
    let (status, body) = server.get(&format!("/tables/{odd}/rows?limit=1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["rows"],
        json!([{"Key": "a", "part": 1, "mood": null, "tags": null, "doc": null, "f": 1.5}])
    );
    let next = body["next"].as_str().unwrap();
    // A cursor whose key does not fit the table's key types.
    let forged =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"key":["a","x"],"feed_after":1}"#);
    let (status, body) = server.get(&format!("/tables/{odd}/rows?after={next}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["rows"],
        json!([{"Key": "a", "part": 2, "mood": "ok", "tags": ["x", "y"], "doc": {"k": 1}, "f": "NaN"}])
    );
    assert_eq!(body["next"], Value::Null);

    for (query, status) in [
        ("/tables/public.nope/rows", StatusCode::NOT_FOUND),
        ("/tables/public.keyless/rows", StatusCode::CONFLICT),
        ("/tables/nodot/rows", StatusCode::BAD_REQUEST),
        ("/tables/public.orders/rows?limit=0", StatusCode::BAD_REQUEST),
        ("/tables/public.orders/rows?after=garbage", StatusCode::BAD_REQUEST),
        ("/tables/public.orders/rows?sort=id", StatusCode::BAD_REQUEST),
        (&format!("/tables/public.orders/rows?after={next}"), StatusCode::BAD_REQUEST),
        (&format!("/tables/{odd}/rows?after={forged}"), StatusCode::BAD_REQUEST),
    ] {
        let (got, body) = server.get(query).await;
        assert_eq!(got, status, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    let response =
        server.http.post(format!("{}/tables/public.orders/rows", server.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}
