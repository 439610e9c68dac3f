//! `GET /metrics` of a real `pubsubpull run`: after changes flow, the capture counters hold them
//! by table and operation, the feed's write histogram and gauges moved, HTTP requests are counted
//! by route template (never by raw path), and the lag and state gauges are there.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::server::Server;
use support::TestDb;

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (the subset our registry writes: no timestamps).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                    // Our label values hold no escaped quotes.
                    let (value, after) = after.split_once('"').unwrap_or_else(|| panic!("bad label: {line}"));
                    labels.insert(key.to_owned(), value.to_owned());
                    rest = after.strip_prefix(',').unwrap_or(after);
                }
                (name, labels)
            }
        };
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    samples
}

/// The value of the series `name` with exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples.iter().find(|s| s.name == name && s.labels == labels).map(|s| s.value)
}

async fn scrape(server: &Server) -> Vec<Sample> {
    let response = server.http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    parse(&response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_what_flows() {
    let db = TestDb::new();
    let server = Server::start(&db, &[], &[]).await;
    db.sql("INSERT INTO orders VALUES (1, 1), (2, 2)");
    db.sql("UPDATE orders SET total = 3 WHERE id = 1; INSERT INTO notes VALUES (1, 'x')");
    db.sql("DELETE FROM orders WHERE id = 2");
    // Five changes in the feed, then in the counters (counted once the feed holds them durably).
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let samples = scrape(&server).await;
        if value(&samples, "pubsubpull_transactions_captured_total", &[]) == Some(3.0) {
            break samples;
        }
        assert!(Instant::now() < deadline, "changes not counted: {samples:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let captured = |table: &str, op: &str| {
        value(&samples, "pubsubpull_changes_captured_total", &[("table", table), ("op", op)])
    };
    assert_eq!(captured("public.orders", "insert"), Some(2.0));
    assert_eq!(captured("public.orders", "update"), Some(1.0));
    assert_eq!(captured("public.orders", "delete"), Some(1.0));
    assert_eq!(captured("public.notes", "insert"), Some(1.0));
    assert_eq!(captured("public.notes", "delete"), None);

    let writes = value(&samples, "pubsubpull_feed_write_seconds_count", &[]).unwrap();
    assert!(writes >= 1.0, "feed commits timed: {writes}");
    assert_eq!(value(&samples, "pubsubpull_feed_last_position", &[]), Some(5.0));
    let bytes = value(&samples, "pubsubpull_feed_bytes", &[]).unwrap();
    assert!(bytes > 8192.0, "the feed tables take room: {bytes}");
    for gauge in ["pubsubpull_feed_oldest_position", "pubsubpull_feed_changes"] {
        assert!(value(&samples, gauge, &[]).is_some(), "{gauge}");
    }
    let lag_bytes = value(&samples, "pubsubpull_replication_lag_bytes", &[]).unwrap();
    assert!((0.0..1e9).contains(&lag_bytes), "{lag_bytes}");
    let lag_seconds = value(&samples, "pubsubpull_replication_lag_seconds", &[]).unwrap();
    assert!((0.0..30.0).contains(&lag_seconds), "commit to feed: {lag_seconds} s");
    assert_eq!(value(&samples, "pubsubpull_streaming", &[]), Some(1.0));
    assert_eq!(value(&samples, "pubsubpull_reconnects_total", &[]), Some(0.0));
    assert_eq!(value(&samples, "pubsubpull_decode_errors_total", &[("plugin", "pgoutput")]), Some(0.0));
    assert_eq!(
        value(&samples, "pubsubpull_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );

    // Requests by route template; an unknown path is `unmatched`, never its own series.
    let feed = server.http.get(server.url("/feed?limit=2")).send().await.unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    let missing = server.http.get(server.url("/no/such/path-1234")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let refused = server.http.delete(server.url("/feed")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = server.http.get(server.url("/metrics")).send().await.unwrap();
    let text = response.text().await.unwrap();
    assert!(!text.contains("path-1234"), "raw paths never become labels");
    let samples = parse(&text);
    let requests = |route: &str, status: &str| {
        value(&samples, "pubsubpull_http_requests_total", &[("route", route), ("status", status)])
    };
    assert_eq!(requests("/feed", "200"), Some(1.0));
    assert_eq!(requests("/feed", "405"), Some(1.0));
    assert_eq!(requests("unmatched", "404"), Some(1.0));
    assert!(requests("/readyz", "200").is_some_and(|n| n >= 1.0));
    assert!(requests("/metrics", "200").is_some_and(|n| n >= 1.0));
    let timed = value(&samples, "pubsubpull_http_request_seconds_count", &[("route", "/feed")]);
    assert_eq!(timed, Some(2.0));
    let routes: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "pubsubpull_http_requests_total")
        .map(|s| s.labels["route"].as_str())
        .collect();
    assert!(routes.iter().all(|r| *r == "unmatched" || r.starts_with('/')), "{routes:?}");

    // The binary serves the registry that `metrics::catalog` lists (which the dashboard test
    // checks against): every family it shows is there, of the same kind.
    let catalog = pubsubpull::metrics::catalog();
    let mut shown = 0;
    for line in text.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        let listed = catalog.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not listed"));
        assert_eq!(format!("{:?}", listed.1).to_lowercase(), kind, "{name}");
        shown += 1;
    }
    // Only the subscriptions' labelled families have no series yet.
    let subscription_families =
        catalog.iter().filter(|(n, _)| n.starts_with("pubsubpull_subscription_")).count();
    assert_eq!(shown, catalog.len() - subscription_families, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_stream_is_counted() {
    let db = TestDb::new();
    let server = Server::start(&db, &[], &[]).await;
    // The walsender goes away; the streamer reconnects.
    db.sql(&format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}'",
        db.slot("run")
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = scrape(&server).await;
        let reconnects = value(&samples, "pubsubpull_reconnects_total", &[]).unwrap();
        if reconnects >= 1.0 && value(&samples, "pubsubpull_streaming", &[]) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect counted: {reconnects}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.sql("INSERT INTO orders VALUES (1, 1)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while value(&scrape(&server).await, "pubsubpull_transactions_captured_total", &[]) != Some(1.0) {
        assert!(Instant::now() < deadline, "nothing captured after the reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
