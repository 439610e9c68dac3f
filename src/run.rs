//! `pubsubpull run`: the streamer and the HTTP API. The slot's stream, assembled and joined with
//! its audit context, into the feed; restarted from the feed's checkpoint after any failure, with
//! backoff. The API serves the feed alongside and stops with the streamer.
//!
//! High availability: any number of `run` processes may start on one slot; one streams, the others
//! wait as standbys (serving the API) and one takes over within seconds when the active one dies.
//! The active one holds a session advisory lock on the very connection that writes the feed, so
//! no two ever write it at once: a writer whose connection is gone has lost the lock with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::api::{self, ApiConfig, ApiState, Database};

use crate::decode::Plugin;
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
    metrics::init(&[options.plugin.name()]);
    tokio::spawn(feed::stats::sample(options.feed.clone(), stored_receiver.clone()));
    let state = ApiState {
        feed: Arc::new(Database::new(options.feed.clone())),
        source: Arc::new(Database::new(options.source.clone())),
        stored: stored_receiver,
        streaming: Arc::clone(&streaming),
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
    let result = stream(options, &stored, &streaming).await;
    // Long polls end when the last sender goes; then the server drains.
    drop(stored);
    let _ = stop.send(());
    if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
        tracing::warn!("requests in flight did not finish in time");
    }
    result
}

async fn stream(
    options: &RunOptions,
    stored: &watch::Sender<i64>,
    streaming: &Arc<AtomicBool>,
) -> Result<(), PipelineError> {
    let mut backoff = BACKOFF.0;
    loop {
        let once = run_once(options, stored, streaming).await;
        streaming.store(false, Ordering::Relaxed);
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
) -> Result<Stopped, PipelineError> {
    let feed = options.feed.connect_sql().await?;
    if !become_active(&feed, &options.slot).await.map_err(|e| PipelineError::Sink(Box::new(e)))? {
        return Ok(Stopped::Signal);
    }
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
    };
    tracing::info!(slot = %options.slot, start = %writer.durable(), "streaming into the feed");
    let (stopped, summary) = pipeline::stream(&options.source, &stream_options, &mut writer).await?;
    tracing::info!(transactions = summary.transactions, changes = summary.changes, confirmed = %summary.confirmed, "stream stopped");
    Ok(stopped)
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
        PipelineError::Decode { .. } | PipelineError::Assemble { .. } | PipelineError::NoPublication(_) => {
            false
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
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
