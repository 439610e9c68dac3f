//! The streaming loop every consumer shares (`tail` today, the feed next): replication messages
//! in, decoded and assembled transactions out to a [`Sink`], and the slot confirmed up to what the
//! sink holds durably.
//!
//! LSNs: *received* is what the server sent; *committed* is the end of the last transaction given
//! whole to the sink (or, between transactions, the server's position from a keepalive: every
//! transaction that ended before it has been given); *flushed* is committed once
//! [`Sink::flush`] returns; *confirmed* is what the slot was told, which never passes flushed.
//! So the next start (from the slot's confirmed position) gives again at most what the sink had
//! not made durable: at-least-once, whole transactions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::assemble::{AssembleError, Assembler, Step, Transaction};
use crate::decode::{self, Catalog, Change, DecodeError, Decoder, Plugin};
use crate::lsn::Lsn;
use crate::metrics::{self, CaptureMeter};
use crate::source::{
    self, ConnInfo, ReplicationConnection, ReplicationMessage, ReplicationStream, SlotState, SourceError,
};
use crate::tracking::{self, Tracked};

/// How often a consumer with a retention prunes old context rows.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// How long the stream may be quiet after a commit before the sink is flushed: a transaction
/// is stored as soon as the stream pauses, and under load (no pause) every `flush_interval`, so
/// that busy streams still write in batches.
const IDLE_FLUSH: Duration = Duration::from_millis(1);

/// How often the server's WAL position is sampled, for the replication lag.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Where assembled transactions go.
///
/// Contract: `change` is called for each change of the transaction in progress, in order, with
/// the transaction as far as it is known (pgoutput and wal2json tell the commit time at BEGIN,
/// test_decoding only at COMMIT; the audit context is sure only at COMMIT: `Transaction::settled`
/// says when nothing will change); `commit` ends it, with the transaction complete. A transaction that is never committed (the process stops first) is
/// given again from its start on the next run, so a sink must hold uncommitted changes where they
/// cannot be seen. `flush(up_to)` asks that everything given through `up_to` (the end of the last
/// committed transaction, or further between transactions) be made durable, and says up to where
/// it is: the slot is confirmed no further.
// Used with static dispatch on one task: no Send bounds needed on the futures.
#[allow(async_fn_in_trait)]
pub trait Sink {
    type Error: std::error::Error + Send + Sync + 'static;

    async fn change(&mut self, txn: &Transaction, change: &Change) -> Result<(), Self::Error>;
    async fn commit(&mut self, txn: &Transaction, end_lsn: Lsn) -> Result<(), Self::Error>;
    async fn flush(&mut self, up_to: Lsn) -> Result<Lsn, Self::Error>;
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot decode the {plugin} message at {lsn}")]
    Decode {
        plugin: &'static str,
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error("unexpected message order at {lsn}")]
    Assemble {
        lsn: Lsn,
        #[source]
        source: AssembleError,
    },
    #[error("publication {0:?} does not exist: create it (CREATE PUBLICATION {0} FOR ALL TABLES, or pubsubpull track TABLE) or name another with --publication")]
    NoPublication(String),
    #[error(
        "slot {slot} starts at {slot_start}, but what was stored from it ends at {stored}: the slot was dropped \
         and created again (or advanced), so the changes in between are gone from the server. \
         Nothing was written; to go on from the slot's position, accepting that gap, run once with --accept-gap"
    )]
    SlotAhead { slot: String, stored: Lsn, slot_start: Lsn },
    #[error("the output failed")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<tokio_postgres::Error> for PipelineError {
    fn from(error: tokio_postgres::Error) -> Self {
        PipelineError::Source(error.into())
    }
}

/// Which slot to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotChoice {
    /// A permanent slot, created when missing; progress survives the process.
    Named(String),
    /// A slot that lives as long as the connection.
    Temporary,
}

/// Where and how to read.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub plugin: Plugin,
    pub slot: SlotChoice,
    /// The publication pgoutput reads.
    pub publication: String,
    /// Stop before the first transaction whose commit ends past this position, or once the
    /// server has sent everything up to it.
    pub endpos: Option<Lsn>,
    /// Prune `pubsubpull.context` rows older than this (None: leave the table alone).
    pub retention: Option<Duration>,
    /// How often the sink is flushed and the slot confirmed at least (well under the server's
    /// `wal_sender_timeout`, 60 s by default); also as soon as the stream pauses after a commit.
    pub flush_interval: Duration,
    /// Where to start: the server skips transactions whose commit record starts before it (the
    /// sink's checkpoint); `Lsn::ZERO` starts at the slot's confirmed position.
    pub start: Lsn,
    /// Set once the replication stream has started (for readiness); the caller clears it.
    pub streaming: Option<Arc<AtomicBool>>,
    /// Go on when the slot starts past `start` (it was dropped and created again, or advanced):
    /// the changes between are lost. Otherwise that is an error.
    pub accept_gap: bool,
}

/// Why streaming stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The end position was reached.
    AtEndpos,
    /// The server ended the stream (it shuts down).
    ByServer,
    /// SIGINT or SIGTERM.
    Signal,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub transactions: u64,
    pub changes: u64,
    /// The slot's confirmed position when we stopped.
    pub confirmed: Lsn,
}

/// Streams the slot into `sink` until the end position, a signal or the server's end.
pub async fn stream<S: Sink>(
    conninfo: &ConnInfo,
    options: &StreamOptions,
    sink: &mut S,
) -> Result<(Stopped, Summary), PipelineError> {
    let sql = conninfo.connect_sql().await?;
    let server_version = server_version_num(&sql).await?;
    if options.plugin == Plugin::Pgoutput {
        check_publication(&sql, &options.publication).await?;
    }
    let catalog = source::load_catalog(&sql).await?;
    let tracked = tracking::tracked_tables(&sql).await?;
    let mut replication = ReplicationConnection::connect(conninfo).await?;
    let (slot, temporary) = match &options.slot {
        SlotChoice::Named(name) => (name.clone(), false),
        SlotChoice::Temporary => (format!("pubsubpull_tail_{}", std::process::id()), true),
    };
    let slot_state =
        source::ensure_slot(&sql, &mut replication, &slot, options.plugin.name(), temporary).await?;
    let slot_start = match slot_state {
        SlotState::Created { consistent_point } => Some(consistent_point),
        SlotState::Existing { confirmed_flush } => confirmed_flush,
    };
    // The sink holds the stream up to `start` and the slot only keeps what comes after its own
    // start: what lies between is gone from the server.
    if let Some(slot_start) = slot_start.filter(|&at| options.start != Lsn::ZERO && at > options.start) {
        if !options.accept_gap {
            return Err(PipelineError::SlotAhead { slot, stored: options.start, slot_start });
        }
        tracing::warn!(%slot, stored = %options.start, %slot_start, "accepting a gap in the stream: its changes are lost");
    }
    let start_options = match options.plugin {
        Plugin::Pgoutput => decode::pgoutput::start_options(&options.publication, server_version),
        Plugin::Wal2json => decode::wal2json::start_options(),
        Plugin::TestDecoding => decode::test_decoding::start_options(),
    };
    let stream = replication.start(&slot, options.start, &start_options).await?;
    if let Some(streaming) = &options.streaming {
        streaming.store(true, Ordering::Relaxed);
    }
    let mut pipeline = Pipeline {
        stream,
        sql: &sql,
        catalog,
        options,
        decoder: options.plugin.decoder(),
        assembler: Assembler::new(tracked.is_some()),
        tracked,
        sink,
        committed: Lsn::ZERO,
        summary: Summary::default(),
        meter: CaptureMeter::new(),
    };
    let stopped = pipeline.run().await?;
    match stopped {
        Stopped::AtEndpos | Stopped::Signal => pipeline.confirm().await?,
        // The server is gone: nobody is left to confirm to; what we gave must still be flushed.
        Stopped::ByServer => {
            let flushed = pipeline.sink.flush(pipeline.committed).await.map_err(sink_error)?;
            pipeline.meter.flushed(flushed.min(pipeline.committed));
        }
    }
    let summary = pipeline.summary.clone();
    pipeline.stream.finish().await?;
    Ok((stopped, summary))
}

async fn server_version_num(sql: &tokio_postgres::Client) -> Result<u32, PipelineError> {
    let row = sql.query_one("SELECT current_setting('server_version_num')::int", &[]).await?;
    Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

async fn check_publication(sql: &tokio_postgres::Client, publication: &str) -> Result<(), PipelineError> {
    match sql.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication]).await? {
        Some(_) => Ok(()),
        None => Err(PipelineError::NoPublication(publication.to_owned())),
    }
}

fn sink_error<E: std::error::Error + Send + Sync + 'static>(error: E) -> PipelineError {
    PipelineError::Sink(Box::new(error))
}

struct Pipeline<'a, S> {
    stream: ReplicationStream,
    sql: &'a tokio_postgres::Client,
    catalog: Catalog,
    /// When tables were tracked, where the pubsubpull schema says (None: pass on every table).
    tracked: Option<Tracked>,
    options: &'a StreamOptions,
    decoder: Box<dyn Decoder>,
    assembler: Assembler,
    sink: &'a mut S,
    /// End of the last transaction given to the sink (or the server's position when idle).
    committed: Lsn,
    summary: Summary,
    /// Counts what becomes durable, for the metrics.
    meter: CaptureMeter,
}

/// What reading the stream gave.
enum Next {
    Message(ReplicationMessage),
    /// Nothing for a status interval.
    Idle,
    /// The server ended the stream.
    End,
}

impl<S: Sink> Pipeline<'_, S> {
    async fn run(&mut self) -> Result<Stopped, PipelineError> {
        let mut events = Vec::new();
        let mut last_status = Instant::now();
        let mut last_prune: Option<Instant> = None;
        let mut last_sample: Option<Instant> = None;
        let stop_signal = stop_signal();
        tokio::pin!(stop_signal);
        loop {
            if let (Some(retention), Some(_)) = (self.options.retention, &self.tracked) {
                if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                    // Housekeeping: the stream goes on without it, and the next pruning tries again.
                    if let Err(error) = prune_context(self.sql, retention).await {
                        tracing::warn!(error = %crate::error_chain(&error), "cannot prune old context rows");
                    }
                    last_prune = Some(Instant::now());
                }
            }
            if last_sample.is_none_or(|at| at.elapsed() >= SAMPLE_INTERVAL) {
                if let Some(lsn) = server_wal_position(self.sql).await? {
                    self.meter.server_position(lsn);
                }
                last_sample = Some(Instant::now());
            }
            let unflushed = self.committed > self.summary.confirmed && self.assembler.is_idle();
            let wait = if unflushed { IDLE_FLUSH } else { self.options.flush_interval };
            let next = tokio::select! {
                // Cancel-safe: the stream loses no data when a signal wins the race.
                _ = &mut stop_signal => return Ok(Stopped::Signal),
                next = tokio::time::timeout(wait, self.stream.next()) => match next {
                    Ok(message) => message?.map_or(Next::End, Next::Message),
                    Err(_elapsed) => Next::Idle,
                },
            };
            let quiet = matches!(next, Next::Idle);
            match next {
                Next::End => return Ok(Stopped::ByServer),
                Next::Idle => {}
                Next::Message(ReplicationMessage::XLogData(data)) => {
                    let lsn = data.wal_start;
                    self.decode(lsn, &data.data, &mut events).await?;
                    let mut tracking_changed = false;
                    for event in events.drain(..) {
                        let step = self
                            .assembler
                            .push(event)
                            .map_err(|source| PipelineError::Assemble { lsn, source })?;
                        tracking_changed |= step == Step::TrackingChanged;
                        if self.apply(step).await? == Flow::Stop {
                            return Ok(Stopped::AtEndpos);
                        }
                    }
                    if let (true, Some(tracked)) = (tracking_changed, &mut self.tracked) {
                        tracked.reload_periods(self.sql).await?;
                    }
                }
                Next::Message(ReplicationMessage::Keepalive(keepalive)) => {
                    if self.assembler.is_idle() {
                        // Every transaction the server decoded up to here has been given.
                        self.committed = self.committed.max(keepalive.wal_end);
                        if self.options.endpos.is_some_and(|end| keepalive.wal_end >= end) {
                            return Ok(Stopped::AtEndpos);
                        }
                    }
                    if keepalive.reply_requested {
                        self.confirm().await?;
                        last_status = Instant::now();
                    }
                }
            }
            if last_status.elapsed() >= self.options.flush_interval || quiet && unflushed {
                self.confirm().await?;
                last_status = Instant::now();
            }
        }
    }

    async fn apply(&mut self, step: Step) -> Result<Flow, PipelineError> {
        let endpos = self.options.endpos;
        match step {
            Step::Begin => {
                let past_end = self.assembler.current().and_then(|txn| txn.final_lsn).zip(endpos);
                if past_end.is_some_and(|(final_lsn, end)| final_lsn >= end) {
                    return Ok(Flow::Stop);
                }
            }
            Step::Change(mut change) => {
                if let Some(tracked) = &self.tracked {
                    let Some(table) = tracked.captured_as(&change.table, change.lsn) else {
                        return Ok(Flow::Go);
                    };
                    change.table = table;
                }
                let Some(txn) = self.assembler.current() else { return Ok(Flow::Go) };
                self.summary.changes += 1;
                self.sink.change(txn, &change).await.map_err(sink_error)?;
                self.meter.change(&change.table, change.op);
            }
            Step::Commit { txn, end_lsn } => {
                // test_decoding tells the commit position only now (the others at BEGIN).
                if endpos.is_some_and(|end| end_lsn > end) {
                    return Ok(Flow::Stop);
                }
                self.sink.commit(&txn, end_lsn).await.map_err(sink_error)?;
                self.meter.commit(end_lsn, txn.committed_at);
                self.committed = end_lsn;
                self.summary.transactions += 1;
            }
            Step::Partitions(list) => {
                if let Some(tracked) = &mut self.tracked {
                    if !tracked.set_partitions(&list) {
                        tracing::warn!("a partitions message that is not a list of partitions: ignored");
                    }
                }
            }
            Step::TrackingChanged | Step::Nothing => {}
        }
        Ok(Flow::Go)
    }

    /// Makes the sink durable, then tells the server it may recycle WAL up to what it holds.
    async fn confirm(&mut self) -> Result<(), PipelineError> {
        let durable = self.sink.flush(self.committed).await.map_err(sink_error)?.min(self.committed);
        self.stream.send_status(self.committed, durable).await?;
        self.summary.confirmed = self.summary.confirmed.max(durable);
        self.meter.flushed(durable);
        Ok(())
    }

    /// Decodes one message. On a catalog miss (a type or table created since we loaded it),
    /// reloads the catalog and decodes again; what the database no longer knows at all (dropped
    /// since the WAL was written) is then taken as text, or as a table without a key, with a warning.
    async fn decode(
        &mut self,
        lsn: Lsn,
        data: &[u8],
        events: &mut Vec<decode::Event>,
    ) -> Result<(), PipelineError> {
        let plugin = self.options.plugin.name();
        let error = |source| PipelineError::Decode { plugin, lsn, source };
        let mut reloaded = false;
        // Each assumption settles one missing name, and a message names finitely many.
        for _ in 0..10_000 {
            match self.decoder.decode(lsn, data, &self.catalog, events) {
                Ok(()) => return Ok(()),
                Err(miss) if miss.is_catalog_miss() && !reloaded => {
                    tracing::debug!(lsn = %lsn, error = %miss, "reloading the catalog");
                    self.catalog = source::load_catalog(self.sql).await?;
                    // A table new to the catalog may be a new partition of a tracked table, which
                    // only the event trigger would have told.
                    if self.tracked.as_ref().is_some_and(|tracked| !tracked.partitions_told) {
                        self.tracked = tracking::tracked_tables(self.sql).await?;
                    }
                    reloaded = true;
                }
                Err(DecodeError::UnknownTable(table)) => {
                    tracing::warn!(lsn = %lsn, table = %table, "table not in the database any more: its changes have no key");
                    self.catalog.assume_keyless(table);
                }
                Err(DecodeError::UnknownType(ty)) => {
                    tracing::warn!(lsn = %lsn, r#type = %ty, "type not in the database any more: its values are text");
                    self.catalog.assume_text(&ty);
                }
                Err(other) => {
                    metrics::decode_error(plugin);
                    return Err(error(other));
                }
            }
        }
        Err(error(DecodeError::Malformed { at: 0, expected: "a message naming fewer types and tables" }))
    }
}

#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, so that a consumer stops after confirming what it holds.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        Ok(()) = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Drops the days of context rows older than `retention` (and creates the coming days' partitions).
/// The stream does not need old rows (a transaction's context reaches us through the WAL); they
/// stay only for audits in SQL.
async fn prune_context(sql: &tokio_postgres::Client, retention: Duration) -> Result<(), PipelineError> {
    let row = sql
        .query_one(
            "SELECT dropped_partitions, deleted_rows FROM pubsubpull.prune_context(make_interval(secs => $1))",
            &[&retention.as_secs_f64()],
        )
        .await?;
    tracing::debug!(
        partitions = row.get::<_, i32>(0),
        default_partition_rows = row.get::<_, i64>(1),
        "pruned old context rows"
    );
    Ok(())
}

/// The server's WAL position: where it writes (or, on a standby, where it has replayed to).
async fn server_wal_position(sql: &tokio_postgres::Client) -> Result<Option<Lsn>, PipelineError> {
    let row = sql
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await?;
    let text: Option<String> = row.get(0);
    Ok(text.and_then(|text| text.parse().ok()))
}
