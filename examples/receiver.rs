//! A subscriber for `bench/deliver`: accepts `PUT /{name}` deliveries on one port for any number
//! of subscriptions and measures, for every change, the time from its `committed_at` to its
//! arrival. `GET /stats` reports since the last `DELETE /stats`:
//! `{"changes", "unique", "per_subscription": {name: changes}, "latency_ms": {"p50", "p99", "max"},
//! "first_at", "last_at"}` (unix seconds).
//!
//! Usage: `cargo run --release --example receiver -- 127.0.0.1:9000`

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Default)]
struct Stats {
    /// Microseconds from commit to arrival, one per change.
    latencies: Vec<i64>,
    per_subscription: HashMap<String, u64>,
    seen: HashSet<(String, String)>,
    first_at: Option<f64>,
    last_at: Option<f64>,
}

type Shared = Arc<Mutex<Stats>>;

#[derive(Deserialize)]
struct Delivery {
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    position: String,
    committed_at: Option<String>,
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

async fn receive(State(stats): State<Shared>, Path(name): Path<String>, body: Bytes) -> StatusCode {
    let arrived = now_micros();
    let Ok(delivery) = serde_json::from_slice::<Delivery>(&body) else { return StatusCode::BAD_REQUEST };
    let mut stats = stats.lock().unwrap();
    let at = arrived as f64 / 1e6;
    stats.first_at.get_or_insert(at);
    stats.last_at = Some(at);
    *stats.per_subscription.entry(name.clone()).or_default() += delivery.changes.len() as u64;
    for change in delivery.changes {
        let committed =
            change.committed_at.as_deref().and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok());
        if let Some(committed) = committed {
            stats.latencies.push(arrived - committed.timestamp_micros());
        }
        stats.seen.insert((name.clone(), change.position));
    }
    StatusCode::OK
}

async fn report(State(stats): State<Shared>) -> Json<Value> {
    let mut stats = stats.lock().unwrap();
    stats.latencies.sort_unstable();
    let percentile = |p: f64| {
        let n = stats.latencies.len();
        (n > 0).then(|| stats.latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0)
    };
    Json(json!({
        "changes": stats.latencies.len(),
        "unique": stats.seen.len(),
        "per_subscription": stats.per_subscription,
        "latency_ms": {"p50": percentile(0.5), "p99": percentile(0.99), "max": percentile(1.0)},
        "first_at": stats.first_at,
        "last_at": stats.last_at,
    }))
}

async fn reset(State(stats): State<Shared>) -> StatusCode {
    *stats.lock().unwrap() = Stats::default();
    StatusCode::NO_CONTENT
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let stats: Shared = Arc::default();
    let app = Router::new()
        .route("/stats", get(report).delete(reset))
        .route("/{name}", put(receive))
        .with_state(stats);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await
}
