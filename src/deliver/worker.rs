//! One subscription's delivery loop: the next batch after its cursor (from the window, or from the
//! database when it is behind), `PUT` to its URL until a 2xx acknowledges it, then the cursor
//! moves, durably. One batch is in flight at a time, so delivery is in feed order; a batch not
//! acknowledged (a crash, a replacement) is sent again: at-least-once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use tokio::sync::watch;

use super::subscription::Subscription;
use super::window::{self, Batch, Read, Window};
use super::DeliveryOptions;
use crate::api::Database;
use crate::metrics::{self, FailureKind, SubscriptionState};

/// A batch closes at about this many bytes of changes (one change at least).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// How often a cursor moved past changes that were not for the subscription is stored.
const PASS_OVER_INTERVAL: Duration = Duration::from_secs(1);

/// Response bytes read (so the connection can be reused) before it is dropped.
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// What every worker shares.
pub struct Shared {
    pub http: reqwest::Client,
    /// The workers' connection to the feed database (cursors, status, catch-up reads).
    pub feed: Database,
    pub window: Arc<Window>,
    pub options: DeliveryOptions,
    /// True once the process stops.
    pub stop: watch::Receiver<bool>,
}

/// Why a worker ends.
#[derive(Debug)]
enum End {
    Stop,
    /// Replaced or deleted: the supervisor starts the new definition.
    Gone,
}

/// Delivers `subscription` until the process stops, it is replaced or deleted, or it falls behind
/// the feed's retention.
pub async fn run(subscription: Subscription, shared: Arc<Shared>) {
    let name = Arc::clone(&subscription.name);
    tracing::debug!(subscription = %name, cursor = subscription.cursor, "worker started");
    match deliver_all(&subscription, &shared).await {
        End::Stop => tracing::debug!(subscription = %name, "worker stopped"),
        End::Gone => tracing::debug!(subscription = %name, "worker ended: the subscription changed"),
    }
}

async fn deliver_all(subscription: &Subscription, shared: &Shared) -> End {
    let _counted = shared.window.worker();
    let mut head = shared.window.head();
    let mut stop = shared.stop.clone();
    let mut cursor = subscription.cursor;
    // What the database holds, and since when.
    let mut stored = cursor;
    let mut stored_at = Instant::now();
    let mut read_failures = 0;
    metrics::subscription_state(&subscription.name, SubscriptionState::Active);
    loop {
        if *stop.borrow() {
            return End::Stop;
        }
        // Seen before the batch is taken: a change after it wakes the wait below.
        let end = *head.borrow_and_update();
        let batch = match shared.window.take(cursor, subscription, MAX_BATCH_BYTES) {
            Some(batch) => batch,
            None => match read(shared, subscription, cursor, end).await {
                Ok(Read::Batch(batch)) => {
                    read_failures = 0;
                    batch
                }
                Ok(Read::BehindRetention { oldest }) => {
                    metrics::subscription_state(&subscription.name, SubscriptionState::BehindRetention);
                    tracing::warn!(
                        subscription = %subscription.name, cursor, oldest,
                        "the changes after the subscription's cursor are no longer retained; \
                         delivery stops until it is given a new start"
                    );
                    wait_for(&mut stop, None).await;
                    return End::Stop;
                }
                Err(error) => {
                    read_failures += 1;
                    let delay = shared.options.backoff.delay(read_failures);
                    tracing::warn!(subscription = %subscription.name, error = %error, retry_in = ?delay, "cannot read the feed");
                    if wait_for(&mut stop, Some(delay)).await {
                        return End::Stop;
                    }
                    continue;
                }
            },
        };
        if batch.changes.is_empty() {
            cursor = batch.scanned_to;
            if cursor > stored && stored_at.elapsed() >= PASS_OVER_INTERVAL {
                match store_cursor(shared, subscription, cursor, false).await {
                    Some(false) => return End::Gone,
                    Some(true) => stored = cursor,
                    None => {}
                }
                stored_at = Instant::now();
            }
            if cursor >= end {
                let timeout = (cursor > stored).then_some(PASS_OVER_INTERVAL);
                tokio::select! {
                    _ = head.changed() => {}
                    _ = wait_for(&mut stop, timeout) => {}
                }
            }
            continue;
        }
        if let Err(end) = deliver(subscription, shared, &batch, &mut stop).await {
            return end;
        }
        cursor = batch.scanned_to;
        acknowledged_metrics(subscription, &batch, end.saturating_sub(cursor));
        match store_cursor(shared, subscription, cursor, true).await {
            Some(false) => return End::Gone,
            Some(true) => stored = cursor,
            // Delivered all the same: the cursor is stored with the next batch (or the batch is
            // sent again after a restart).
            None => {}
        }
        stored_at = Instant::now();
    }
}

/// Seconds since `committed_at` (seconds since the epoch).
fn age(committed_at: Option<f64>) -> Option<f64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    committed_at.map(|at| (now - at).max(0.0))
}

/// Counts an acknowledged batch: its changes, the latency from its last commit, the lag left.
fn acknowledged_metrics(subscription: &Subscription, batch: &Batch, behind: i64) {
    let last = batch.changes.last().and_then(|change| age(change.committed_at));
    let latency = Duration::from_secs_f64(last.unwrap_or(0.0));
    metrics::delivery_acknowledged(&subscription.name, batch.changes.len() as u64, latency);
    metrics::subscription_lag(&subscription.name, behind, if behind > 0 { last.unwrap_or(0.0) } else { 0.0 });
    metrics::subscription_state(&subscription.name, SubscriptionState::Active);
}

/// Waits until the process stops (true) or `timeout` passes (false).
async fn wait_for(stop: &mut watch::Receiver<bool>, timeout: Option<Duration>) -> bool {
    let stopped = async {
        // A closed channel: the supervisor is gone, stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, stopped).await.is_ok(),
        None => {
            stopped.await;
            true
        }
    }
}

async fn read(
    shared: &Shared,
    subscription: &Subscription,
    cursor: i64,
    head: i64,
) -> Result<Read, window::ReadError> {
    let client = shared.feed.client().await.map_err(|_| window::ReadError::Down)?;
    Ok(window::read_batch(&client, subscription, cursor, head, MAX_BATCH_BYTES).await?)
}

/// Stores the cursor: of a batch `acknowledged`, else of changes passed over (none was for the
/// subscription). Some(false) when the subscription is gone, None when the database failed.
async fn store_cursor(
    shared: &Shared,
    subscription: &Subscription,
    cursor: i64,
    acknowledged: bool,
) -> Option<bool> {
    let client = shared.feed.client().await.ok()?;
    let stored = match acknowledged {
        true => subscription.acknowledged(&client, cursor).await,
        false => subscription.passed_over(&client, cursor).await,
    };
    stored
        .inspect_err(|error| {
            tracing::warn!(subscription = %subscription.name, error = %error, "cannot store the cursor");
        })
        .ok()
}

/// `PUT`s `batch` until it is acknowledged; an error when the worker must end instead.
async fn deliver(
    subscription: &Subscription,
    shared: &Shared,
    batch: &Batch,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), End> {
    let body = encode_body(&subscription.name, batch);
    let first = batch.changes.first().map_or(0, |change| change.position);
    let last = batch.changes.last().map_or(0, |change| change.position);
    // Stable across retries and restarts: the same subscription sends the same changes under it.
    let id = format!("{}_{first:016x}_{last:016x}", subscription.name);
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let error = match send(subscription, shared, &id, body.clone()).await {
            Ok(()) => return Ok(()),
            Err((kind, error)) => {
                metrics::delivery_failed(&subscription.name, kind);
                metrics::subscription_state(&subscription.name, SubscriptionState::Retrying);
                let waiting = batch.changes.first().and_then(|change| age(change.committed_at));
                let behind = shared.window.head().borrow().saturating_sub(first - 1);
                metrics::subscription_lag(&subscription.name, behind, waiting.unwrap_or(0.0));
                error
            }
        };
        let delay = shared.options.backoff.delay(attempts);
        tracing::warn!(subscription = %subscription.name, attempts, error = %error, retry_in = ?delay, "delivery failed");
        if let Ok(client) = shared.feed.client().await {
            let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
            match subscription.failed(&client, attempts, &error, delay).await {
                Ok(true) => {}
                Ok(false) => return Err(End::Gone),
                Err(db_error) => {
                    tracing::warn!(subscription = %subscription.name, error = %db_error, "cannot record the failure");
                }
            }
        }
        if wait_for(stop, Some(delay)).await {
            return Err(End::Stop);
        }
    }
}

/// `{"subscription": NAME, "changes": [...]}`.
fn encode_body(name: &str, batch: &Batch) -> Bytes {
    let size: usize = batch.changes.iter().map(|change| change.json.len() + 1).sum();
    let mut body = String::with_capacity(size + name.len() + 32);
    body.push_str("{\"subscription\":");
    body.push_str(&serde_json::to_string(name).expect("strings serialize"));
    body.push_str(",\"changes\":[");
    for (index, change) in batch.changes.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(&change.json);
    }
    body.push_str("]}");
    Bytes::from(body)
}

/// One attempt: Ok on a 2xx, else what went wrong: its kind, and as the status shows it.
async fn send(
    subscription: &Subscription,
    shared: &Shared,
    id: &str,
    body: Bytes,
) -> Result<(), (FailureKind, String)> {
    let mut request = shared
        .http
        .put(subscription.url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secret) = &subscription.secret {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        request = request
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", secret.sign(id, timestamp, &body));
    }
    let mut response =
        request.body(body).send().await.map_err(|error| (failure_kind(&error), describe(&error, shared)))?;
    let status = response.status();
    // Read (a little of) the answer, so that the connection is reused.
    let mut read = 0;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) => break,
            Err(error) if status.is_success() => {
                tracing::debug!(subscription = %subscription.name, error = %describe(&error, shared), "acknowledged, the response body cut");
                break;
            }
            Err(error) => {
                return Err((
                    FailureKind::Status,
                    format!("HTTP {status}, then {}", describe(&error, shared)),
                ))
            }
        }
    }
    if status.is_success() {
        Ok(())
    } else {
        Err((FailureKind::Status, format!("HTTP {status}")))
    }
}

fn failure_kind(error: &reqwest::Error) -> FailureKind {
    if error.is_timeout() {
        FailureKind::Timeout
    } else if error.is_connect() {
        FailureKind::Connect
    } else {
        FailureKind::Other
    }
}

/// A failed request as the subscription's status tells it: what happened, without the URL.
fn describe(error: &reqwest::Error, shared: &Shared) -> String {
    if error.is_timeout() {
        return format!("timed out after {:?}", shared.options.timeout);
    }
    let what = if error.is_connect() { "cannot connect" } else { "request failed" };
    // The causes only: the error itself names the URL, which may hold a secret.
    match std::error::Error::source(error) {
        Some(cause) => format!("{what}: {}", crate::error_chain(cause)),
        None => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::window::Entry;

    #[test]
    fn bodies_name_the_subscription_and_list_the_changes() {
        let changes = [1, 2]
            .map(|position| {
                Arc::new(Entry {
                    position,
                    table: "public.a".into(),
                    op: 1,
                    json: format!("{{\"position\":\"{position:016x}\"}}").into(),
                    committed_at: None,
                })
            })
            .to_vec();
        let body = encode_body("billing", &Batch { changes, scanned_to: 2 });
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"subscription": "billing", "changes": [
                {"position": "0000000000000001"}, {"position": "0000000000000002"}]})
        );
    }
}
