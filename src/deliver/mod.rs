//! Push delivery (SPEC "Push delivery"): every subscription gets the changes of its tables, in
//! feed order, as `PUT {url}` with `{"subscription": NAME, "changes": [...]}`, each change as
//! `GET /feed` serves it.
//!
//! - [`subscription`]: a subscription's definition and the statements that move its cursor;
//! - [`window`]: the shared reader and its in-memory window of recent changes (the fan-out);
//! - [`worker`]: one subscription's loop, one tokio task each, so that a slow or failing
//!   subscriber never delays another;
//! - [`retry`]: exponential backoff with full jitter; [`sign`]: Standard Webhooks signatures.
//!
//! Guarantees: at-least-once, in order, per subscription. A subscription's cursor (the last
//! position acknowledged, in the feed database) moves only after a 2xx; what was sent but not
//! recorded is sent again after a restart. The supervisor here (re)starts a worker whenever a
//! subscription is created, replaced, paused, resumed or deleted: told at once by the API, and
//! by reading the table every few seconds (changes made by another process).

pub mod retry;
pub mod sign;
pub mod subscription;
pub mod window;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::Database;
use crate::metrics;
use crate::source::ConnInfo;
use retry::Backoff;
use subscription::Subscription;
use window::Window;

/// How deliveries behave (`pubsubpull run`'s `--delivery-*` options).
#[derive(Clone, Debug)]
pub struct DeliveryOptions {
    /// How long one request may take, connection and response included.
    pub timeout: Duration,
    pub backoff: Backoff,
    /// The bytes of recent changes held in memory for the workers to share.
    pub window_bytes: usize,
}

impl Default for DeliveryOptions {
    fn default() -> DeliveryOptions {
        DeliveryOptions {
            timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            window_bytes: 64 << 20,
        }
    }
}

/// How often the subscriptions are read again without being told.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// How long deliveries in flight may take to finish once the process stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Delivers every subscription of the feed at `feed` until `stop` turns true (or closes).
/// `stored` announces each position the streamer stores; `changed` is notified by the API when a
/// subscription changes.
pub async fn run(
    feed: ConnInfo,
    stored: watch::Receiver<i64>,
    changed: Arc<Notify>,
    options: DeliveryOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<(), DeliverError> {
    let http = reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pubsubpull/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(DeliverError::Client)?;
    let database = Database::new(feed.clone());
    // The window starts at the last position stored; workers behind it read the database.
    let mut failures = 0;
    let head = loop {
        match head(&database).await {
            Ok(head) => break head,
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %error, "cannot read the feed's head for delivery; retrying");
                }
                if stopped(&mut stop, options.backoff.ceiling(failures)).await {
                    return Ok(());
                }
            }
        }
    };
    let window = Arc::new(Window::new(head, options.window_bytes));
    let reader = tokio::spawn(window::fill(Arc::clone(&window), Database::new(feed), stored));
    let shared = Arc::new(worker::Shared { http, feed: database, window, options, stop: stop.clone() });
    let mut workers = Workers::default();
    loop {
        workers.reload(&shared).await;
        tokio::select! {
            _ = changed.notified() => {}
            stop = stopped(&mut stop, RELOAD_INTERVAL) => if stop { break },
        }
    }
    // Workers see `stop` too: those waiting end now, those sending get a little time.
    let deadline = Instant::now() + STOP_GRACE;
    for (name, (_, mut handle)) in workers.running.drain() {
        if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
            tracing::warn!(subscription = %name, "delivery in flight abandoned; it is sent again on restart");
            handle.abort();
        }
    }
    reader.abort();
    Ok(())
}

/// Waits until `stop` turns true or closes (true), or `timeout` passes (false).
async fn stopped(stop: &mut watch::Receiver<bool>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, stop.wait_for(|stop| *stop)).await.is_ok()
}

/// The last position stored.
async fn head(database: &Database) -> Result<i64, String> {
    let client = database.client().await.map_err(|error| error.to_string())?;
    let row = client
        .query_one("SELECT coalesce(max(position), 0) FROM pubsubpull.feed", &[])
        .await
        .map_err(|error| error.to_string())?;
    Ok(row.get(0))
}

/// The running workers, by subscription, with the generation they run.
#[derive(Default)]
struct Workers {
    running: HashMap<Arc<str>, (i64, JoinHandle<()>)>,
    /// Invalid rows already reported, and whether the last reload failed.
    reported: HashSet<(String, i64)>,
    failing: bool,
}

impl Workers {
    /// Reads the subscriptions and starts, restarts or stops workers to match.
    async fn reload(&mut self, shared: &Arc<worker::Shared>) {
        let rows = match shared.feed.client().await {
            Ok(client) => client.query(subscription::SELECT, &[]).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let rows = match rows {
            Ok(rows) => {
                self.failing = false;
                rows
            }
            Err(error) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(error = %error, "cannot read the subscriptions; retrying");
                }
                return;
            }
        };
        let mut current = HashSet::new();
        for row in &rows {
            let subscription = match Subscription::from_row(row) {
                Ok(subscription) => subscription,
                Err(invalid) => {
                    let generation: i64 = row.get(7);
                    if self.reported.insert((invalid.name.clone(), generation)) {
                        tracing::error!(error = %invalid, "subscription not delivered");
                    }
                    continue;
                }
            };
            current.insert(Arc::clone(&subscription.name));
            let running = self.running.get(&subscription.name).map(|(generation, _)| *generation);
            if subscription.paused {
                self.stop(&subscription.name);
                metrics::subscription_state(&subscription.name, metrics::SubscriptionState::Paused);
            } else if running != Some(subscription.generation) {
                self.stop(&subscription.name);
                let name = Arc::clone(&subscription.name);
                let generation = subscription.generation;
                let handle = tokio::spawn(worker::run(subscription, Arc::clone(shared)));
                self.running.insert(name, (generation, handle));
            }
        }
        let gone: Vec<Arc<str>> =
            self.running.keys().filter(|name| !current.contains(*name)).cloned().collect();
        for name in gone {
            self.stop(&name);
            metrics::forget_subscription(&name);
        }
    }

    /// Stops a worker at once, a request in flight included.
    fn stop(&mut self, name: &str) {
        if let Some((_, handle)) = self.running.remove(name) {
            handle.abort();
        }
    }
}
