//! The API's guards over real HTTP: bearer tokens on every endpoint but the open ones (the API
//! token for anything, the read token for GET only), the per-client rate limit, and the refusal
//! to start with a read token and no API token.

mod support;

use std::process::Command;
use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::server::Server;
use support::TestDb;

const API_TOKEN: &str = "api-0123456789abcdef";
const READ_TOKEN: &str = "read-0123456789abcdef";

/// Every endpoint, as (method, path, open without a token). A new route is one more line; routes
/// that do not exist yet on this branch answer 404 or 405 once past the token check.
const ENDPOINTS: &[(&str, &str, bool)] = &[
    ("GET", "/healthz", true),
    ("GET", "/readyz", true),
    ("GET", "/metrics", true),
    ("GET", "/feed", false),
    ("GET", "/feed?limit=1", false),
    ("DELETE", "/feed", false),
    ("GET", "/tables/public.orders/rows", false),
    ("GET", "/subscriptions", false),
    ("GET", "/subscriptions/x", false),
    ("PUT", "/subscriptions/x", false),
    ("DELETE", "/subscriptions/x", false),
    ("GET", "/no/such/path", false),
];

async fn request(server: &Server, method: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = server.http.request(method.clone(), server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::PUT {
        request = request
            .header("content-type", "application/json")
            .body(r#"{"url": "http://127.0.0.1:9/", "tables": ["public.orders"]}"#);
    }
    request.send().await.unwrap()
}

async fn json(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_every_endpoint_but_the_open_ones() {
    let db = TestDb::new();
    let env = [("PUBSUBPULL_API_TOKEN", API_TOKEN), ("PUBSUBPULL_READ_TOKEN", READ_TOKEN)];
    let server = Server::start(&db, &[], &env).await;
    for &(method, path, open) in ENDPOINTS {
        let what = format!("{method} {path}");
        let is_read = method == "GET";
        for (token, name) in
            [(None, "no token"), (Some("wrong-token"), "a wrong token"), (Some(&API_TOKEN[1..]), "a prefix")]
        {
            let response = request(&server, method, path, token).await;
            let status = response.status();
            if open {
                assert!(status.is_success(), "{what} with {name}: {status}");
                continue;
            }
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} with {name}");
            let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
            assert!(challenge.starts_with("Bearer realm=\"pubsubpull\""), "{what}: {challenge}");
            assert_eq!(challenge.contains("invalid_token"), token.is_some(), "{what}: {challenge}");
            let body = json(response).await;
            assert!(body["error"].is_string() && body.get("detail").is_some(), "{what}: {body}");
        }
        // The read token: through for GET, 403 for anything else.
        let response = request(&server, method, path, Some(READ_TOKEN)).await;
        let status = response.status();
        if is_read || open {
            assert!(![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status), "{what}: {status}");
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{what} with the read token");
            let body = json(response).await;
            assert_eq!(body["error"], "the read token allows GET only", "{what}: {body}");
        }
        // The API token: through everywhere.
        let status = request(&server, method, path, Some(API_TOKEN)).await.status();
        assert!(![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status), "{what}: {status}");
    }
    // Past the check, requests are served as without tokens.
    let response = request(&server, "GET", "/feed", Some(READ_TOKEN)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(response).await["up_to_date"], true);
    let response = request(&server, "GET", "/no/such/path", Some(API_TOKEN)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    let db = TestDb::new();
    let server = Server::start(&db, &["--rate-limit", "2"], &[]).await;
    let started = Instant::now();
    let mut passed = 0;
    let mut limited = None;
    for _ in 0..10 {
        let response = request(&server, "GET", "/feed?limit=1", None).await;
        match response.status() {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => limited = Some(response),
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A burst of 2, then 2 a second.
    assert!(f64::from(passed) <= 2.0 + (elapsed * 2.0).ceil(), "{passed} passed in {elapsed} s");
    let limited = limited.unwrap_or_else(|| panic!("none of 10 requests in {elapsed} s was limited"));
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1);
    let body = json(limited).await;
    assert_eq!(body["error"], "too many requests");
    // Probes and scrapes are never limited.
    for _ in 0..10 {
        assert_eq!(request(&server, "GET", "/healthz", None).await.status(), StatusCode::OK);
        assert_eq!(request(&server, "GET", "/metrics", None).await.status(), StatusCode::OK);
    }
}

#[test]
fn a_read_token_alone_is_refused_at_startup() {
    let output = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["run", "--database-url", "postgres://nobody@127.0.0.1:1/none"])
        .env("PUBSUBPULL_READ_TOKEN", READ_TOKEN)
        .env_remove("PUBSUBPULL_API_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a read token needs an API token"), "{stderr}");
    assert!(!stderr.contains(READ_TOKEN), "the token is not shown: {stderr}");
}
