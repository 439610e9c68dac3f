//! `pubsubpull run`: the streamer and the HTTP API. The slot's stream, assembled and joined with
//! its audit context, into the feed; restarted from the feed's checkpoint after any failure, with
//! backoff. The API serves the feed alongside, the subscriptions are delivered, and both stop
//! with the streamer.
//!
//! High availability: any number of `run` processes may start on one slot; one streams and
//! delivers, the others wait as standbys (serving the API) and one takes over within seconds when
//! the active one dies. The active one holds a session advisory lock on the very connection that
//! writes the feed, so no two ever write it at once: a writer whose connection is gone has lost the
//! lock with it, and stops delivering too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};

use crate::api::{self, ApiConfig, ApiState, Database};

use crate::decode::Plugin;
use crate::deliver::{self, DeliveryOptions};
use crate::error_chain;
use crate::feed::{self, FeedWriter};
use crate::lsn::Lsn;
use crate::metrics;
use crate::pipeline::{self, PipelineError, SlotChoice, Stopped, StreamOptions};
use crate::source::ConnInfo;

/// How soon a committed transaction is stored (and visible to pullers) at the latest.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Backoff between restarts after a transient failure: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// What `run` is asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub source: ConnInfo,
    pub feed: ConnInfo,
    pub plugin: Plugin,
    pub slot: String,
    pub publication: String,
    pub retention: Duration,
    /// Stop once the feed holds everything up to here (benchmarks, tests); None: run until signalled.
    pub endpos: Option<Lsn>,
    pub delivery: DeliveryOptions,
    /// Go on past a gap between the feed and a slot that was dropped and created again.
    pub accept_gap: bool,
    /// Tokens and limits of the HTTP API.
    pub api: ApiConfig,
}

/// How often a standby tries to become the active streamer.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The advisory lock's first key ("pubsubpull" is the second's namespace: the slot's hash).
const ACTIVE_LOCK: i32 = 0x7073_7075; // "pspu"

/// How long the feed database waits before it takes a silent active streamer's connection (and
/// lock) for dead: keepalive idle time, interval, count (seconds, probes).
const DEAD_PEER: (u32, u32, u32) = (10, 3, 3);

/// How long requests in flight may take to finish once the streamer has stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Streams into the feed until a signal (or `endpos`) while the API serves on `listener`;
/// transient failures (a lost connection, a restarting server) restart the stream from the feed's
/// checkpoint. The API stops with the streamer.
pub async fn run(options: &RunOptions, listener: TcpListener) -> Result<(), PipelineError> {
    let (stored, stored_receiver) = watch::channel(0_i64);
    let streaming = Arc::new(AtomicBool::new(false));
    let subscriptions = Arc::new(Notify::new());
    let (stop_delivery, delivery_stopped) = watch::channel(false);
    let (active, active_receiver) = watch::channel(false);
    let delivery = tokio::spawn(deliver_while_active(
        options.clone(),
        stored_receiver.clone(),
        Arc::clone(&subscriptions),
        active_receiver,
        delivery_stopped,
    ));
    metrics::init(&[options.plugin.name()]);
    tokio::spawn(feed::stats::sample(options.feed.clone(), stored_receiver.clone()));
    let state = ApiState {
        feed: Arc::new(Database::new(options.feed.clone())),
        source: Arc::new(Database::new(options.source.clone())),
        stored: stored_receiver,
        streaming: Arc::clone(&streaming),
        subscriptions,
        config: Arc::new(options.api.clone()),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(error) = api::serve(listener, state, shutdown).await {
            tracing::error!(error = %error, "the api server failed");
        }
    });
    let result = stream(options, &stored, &streaming, &active).await;
    // Long polls end when the last sender goes; then the server drains.
    drop(stored);
    let _ = stop.send(());
    let _ = stop_delivery.send(true);
    let (server, delivery) = tokio::join!(
        tokio::time::timeout(SHUTDOWN_GRACE, server),
        tokio::time::timeout(SHUTDOWN_GRACE, delivery)
    );
    if server.is_err() {
        tracing::warn!("requests in flight did not finish in time");
    }
    match delivery {
        Ok(Ok(Err(error))) => tracing::error!(error = %error_chain(&error), "delivery failed"),
        Err(_elapsed) => tracing::warn!("deliveries in flight did not finish in time"),
        Ok(_) => {}
    }
    result
}

async fn stream(
    options: &RunOptions,
    stored: &watch::Sender<i64>,
    streaming: &Arc<AtomicBool>,
    active: &watch::Sender<bool>,
) -> Result<(), PipelineError> {
    let mut backoff = BACKOFF.0;
    loop {
        let once = run_once(options, stored, streaming, active).await;
        streaming.store(false, Ordering::Relaxed);
        // The lock went with the writer's connection: another process may be active now.
        active.send_replace(false);
        match once {
            Ok(Stopped::Signal | Stopped::AtEndpos) => return Ok(()),
            Ok(Stopped::ByServer) => {
                tracing::warn!("the server ended the stream; reconnecting");
                metrics::reconnected();
                backoff = BACKOFF.0;
            }
            Err(error) if is_transient(&error) => {
                tracing::warn!(error = %error_chain(&error), retry_in = ?backoff, "streaming failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                metrics::reconnected();
            }
            Err(error) => return Err(error),
        }
    }
}

async fn run_once(
    options: &RunOptions,
    stored: &watch::Sender<i64>,
    streaming: &Arc<AtomicBool>,
    active: &watch::Sender<bool>,
) -> Result<Stopped, PipelineError> {
    let feed = options.feed.connect_sql().await?;
    if !become_active(&feed, &options.slot).await.map_err(|e| PipelineError::Sink(Box::new(e)))? {
        return Ok(Stopped::Signal);
    }
    active.send_replace(true);
    let writer = FeedWriter::open(feed, &options.slot, options.retention)
        .await
        .map_err(|e| PipelineError::Sink(Box::new(e)))?;
    let mut writer = writer.notify(stored.clone());
    let stream_options = StreamOptions {
        plugin: options.plugin,
        slot: SlotChoice::Named(options.slot.clone()),
        publication: options.publication.clone(),
        endpos: options.endpos,
        retention: Some(options.retention),
        start: writer.durable(),
        flush_interval: FLUSH_INTERVAL,
        streaming: Some(Arc::clone(streaming)),
        accept_gap: options.accept_gap,
    };
    tracing::info!(slot = %options.slot, start = %writer.durable(), "streaming into the feed");
    let (stopped, summary) = pipeline::stream(&options.source, &stream_options, &mut writer).await?;
    tracing::info!(transactions = summary.transactions, changes = summary.changes, confirmed = %summary.confirmed, "stream stopped");
    Ok(stopped)
}

/// Delivers the subscriptions while this process is the active streamer (a standby delivering
/// too would send everything twice), until `stop` turns true.
async fn deliver_while_active(
    options: RunOptions,
    stored: watch::Receiver<i64>,
    changed: Arc<Notify>,
    mut active: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), deliver::DeliverError> {
    loop {
        tokio::select! {
            became = active.wait_for(|active| *active) => if became.is_err() { return Ok(()) },
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        }
        let (stop_this, this_stopped) = watch::channel(false);
        let delivery = deliver::run(
            options.feed.clone(),
            stored.clone(),
            Arc::clone(&changed),
            options.delivery.clone(),
            this_stopped,
        );
        tokio::pin!(delivery);
        let mut stopping = false;
        loop {
            tokio::select! {
                delivered = &mut delivery => {
                    delivered?;
                    break;
                }
                _ = active.wait_for(|active| !*active), if !stopping => {
                    stopping = true;
                    stop_this.send_replace(true);
                }
                _ = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    stop_this.send_replace(true);
                }
            }
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
}

/// Waits until this process holds the slot's lock on `feed` (the writer's connection): false when
/// a signal came first.
async fn become_active(feed: &tokio_postgres::Client, slot: &str) -> Result<bool, tokio_postgres::Error> {
    let (idle, interval, count) = DEAD_PEER;
    feed.batch_execute(&format!(
        "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; \
         SET tcp_keepalives_count = {count}"
    ))
    .await?;
    let try_lock = "SELECT pg_try_advisory_lock($1, hashtext($2))";
    let stop = pipeline::stop_signal();
    tokio::pin!(stop);
    let mut standby = false;
    loop {
        if feed.query_one(try_lock, &[&ACTIVE_LOCK, &slot]).await?.get::<_, bool>(0) {
            if standby {
                tracing::info!(slot, "taking over as the active streamer");
            }
            return Ok(true);
        }
        if !standby {
            tracing::info!(slot, "another streamer is active on this slot; waiting as a standby");
            standby = true;
        }
        tokio::select! {
            () = &mut stop => return Ok(false),
            () = tokio::time::sleep(STANDBY_POLL) => {}
        }
    }
}

/// Failures worth a retry: the source's own verdict; the feed database's lost connections.
fn is_transient(error: &PipelineError) -> bool {
    match error {
        PipelineError::Source(source) => source.is_transient(),
        PipelineError::Sink(_) => true,
        PipelineError::Decode { .. }
        | PipelineError::Assemble { .. }
        | PipelineError::NoPublication(_)
        | PipelineError::SlotAhead { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Auth;

    #[test]
    fn debug_shows_no_secret() {
        let source = ConnInfo::parse("postgres://app:db-password-1@db.example/app?sslmode=require").unwrap();
        let feed = ConnInfo::parse("host=feed user=f password='feed-password-2'").unwrap();
        let options = RunOptions {
            source,
            feed,
            plugin: Plugin::Pgoutput,
            slot: "pubsubpull".into(),
            publication: "pubsubpull".into(),
            retention: Duration::from_secs(60),
            endpos: None,
            delivery: DeliveryOptions::default(),
            accept_gap: false,
            api: ApiConfig {
                auth: Auth::new(Some("api-token-3"), Some("read-token-4")).unwrap(),
                ..ApiConfig::default()
            },
        };
        let shown = format!("{options:?} {options:#?}");
        for secret in ["db-password-1", "feed-password-2", "api-token-3", "read-token-4"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("db.example") && shown.contains("<hidden>"), "{shown}");
    }
}
