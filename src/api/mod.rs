//! The HTTP API (axum): `GET /feed` pulls the feed, `GET /tables/{t}/rows` iterates over a
//! table's rows (backfill), `GET /healthz` and `GET /readyz` say whether the process serves and
//! whether it streams, `GET /metrics` serves the metrics. One file per resource; errors in
//! [`error`]; in front of every route, the request metrics, a body size limit, the optional rate
//! limit ([`limit`]) and the bearer-token check ([`auth`]).
//!
//! Guarantees: a pull never sees part of a transaction (the feed commits transactions whole); a
//! long poll wakes as soon as the streamer commits a new position (it is told through a watch
//! channel, not by polling the database).

pub mod allowlist;
pub mod auth;
mod error;
mod feed;
mod health;
mod limit;
mod metrics;
mod rows;
mod subscriptions;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::middleware;
use axum::routing::{get, MethodRouter};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex, Notify};
use tokio_postgres::Client;

use crate::source::ConnInfo;

pub use allowlist::SubscriberAllow;
pub use auth::Auth;
pub use error::ApiError;
pub(crate) use feed::encode_change;
pub use feed::{format_position, parse_position};

/// How long connecting to the feed database may take before a request gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request body read (a subscription definition is well under 1 KiB).
pub const MAX_BODY: usize = 64 << 10;

/// How the API guards itself: tokens, limits, where subscribers may be. `Debug` shows no token.
#[derive(Clone, Debug, Default)]
pub struct ApiConfig {
    pub auth: Auth,
    /// Requests per second per client address (bursts of as many); None: unlimited.
    pub rate_limit: Option<NonZeroU32>,
    /// Where subscriptions may deliver.
    pub subscriber_allow: SubscriberAllow,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The feed database.
    pub feed: Arc<Database>,
    /// The source database, for its tracking registry (which tables a filter may name).
    pub source: Arc<Database>,
    /// The last position the streamer stored (committed), sent after each of its commits.
    pub stored: watch::Receiver<i64>,
    /// Whether the replication stream is connected.
    pub streaming: Arc<AtomicBool>,
    /// Notified when a subscription is created, replaced or deleted (the delivery supervisor waits on it).
    pub subscriptions: Arc<Notify>,
    /// Tokens, limits, the subscriber allowlist.
    pub config: Arc<ApiConfig>,
}

/// One connection to a database (the feed's or the source's), shared by every request
/// (tokio-postgres pipelines concurrent queries), opened again when it is lost.
pub struct Database {
    conninfo: ConnInfo,
    client: Mutex<Option<Arc<Client>>>,
}

impl Database {
    pub fn new(conninfo: ConnInfo) -> Database {
        Database { conninfo, client: Mutex::new(None) }
    }

    /// The open connection, connecting first when there is none or it was lost.
    pub(crate) async fn client(&self) -> Result<Arc<Client>, ApiError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|client| !client.is_closed()) {
            return Ok(Arc::clone(client));
        }
        *slot = None;
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, self.conninfo.connect_sql()).await {
            Ok(Ok(client)) => Arc::new(client),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "cannot connect to the database");
                return Err(ApiError::Down);
            }
            Err(_elapsed) => {
                tracing::warn!("connecting to the database timed out");
                return Err(ApiError::Down);
            }
        };
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Whether the database answers.
    async fn probe(&self) -> Result<(), ApiError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// The API's routes. Methods a route does not support get 405 with an `Allow` header; unknown
/// paths get 404, both with the JSON error body.
pub fn router(state: ApiState) -> Router {
    let routes = Router::new()
        .route("/feed", get_only(feed::pull))
        .route("/tables/{table}/rows", get_only(rows::rows))
        .route("/healthz", get_only(health::healthz))
        .route("/readyz", get_only(health::readyz))
        .route("/subscriptions", get_only(subscriptions::list))
        .route(
            "/subscriptions/{name}",
            get(subscriptions::show)
                .put(subscriptions::put)
                .delete(subscriptions::delete)
                .fallback(|| async { ApiError::MethodNotAllowed { allow: "GET, PUT, DELETE" } }),
        )
        .route("/metrics", get_only(metrics::scrape))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::NotFound { detail: serde_json::json!({ "path": uri.path() }) }
        });
    guard(routes, &state).with_state(state)
}

/// A route that answers GET only (405 with `Allow: GET` to anything else).
fn get_only<H, T>(handler: H) -> MethodRouter<ApiState>
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    get(handler).fallback(|| async { ApiError::MethodNotAllowed { allow: "GET" } })
}

/// The layers in front of every route, outermost first: request metrics (which see every
/// answer, refusals included), the body size limit, the rate limit (before the token check, so
/// that guessing tokens is limited too), the token check.
fn guard(routes: Router<ApiState>, state: &ApiState) -> Router<ApiState> {
    let mut router = routes.layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    if let Some(rate) = state.config.rate_limit {
        let limiter = Arc::new(limit::RateLimiter::new(rate));
        router = router.layer(middleware::from_fn_with_state(limiter, limit::limit));
    }
    router.layer(DefaultBodyLimit::max(MAX_BODY)).layer(middleware::from_fn(metrics::record))
}

/// Serves the API on `listener` until `shutdown` resolves, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(shutdown).await
}
