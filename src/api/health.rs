//! `GET /healthz` (the process serves) and `GET /readyz` (the replication stream is connected and
//! the feed database answers).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::json_body;
use super::ApiState;

/// How long the feed database has to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
}

pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let replication = state.streaming.load(Ordering::Relaxed);
    let feed = match tokio::time::timeout(PROBE_TIMEOUT, state.feed.probe()).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness: the feed database does not answer");
            false
        }
        Err(_elapsed) => false,
    };
    let detail = json!({
        "replication": if replication { "connected" } else { "disconnected" },
        "feed": if feed { "reachable" } else { "unreachable" },
    });
    if replication && feed {
        (StatusCode::OK, axum::Json(json!({ "status": "ready", "detail": detail }))).into_response()
    } else {
        let mut response = json_body("not ready", detail);
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
    }
}
