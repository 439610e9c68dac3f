//! `GET /metrics` (Prometheus text, see [`crate::metrics`]) and the middleware that counts every
//! request by its route template: the matched route (`/subscriptions/{name}`), `unmatched` for
//! unknown paths, never the raw path, so that the number of series stays small.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::metrics;

pub(super) async fn scrape(State(state): State<ApiState>) -> Response {
    metrics::streaming(state.streaming.load(Ordering::Relaxed));
    ([(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE))], metrics::encode())
        .into_response()
}

/// The middleware: counts the request and the time to its response's headers.
pub(super) async fn record(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::http_request(&route, response.status().as_u16(), started.elapsed());
    response
}
