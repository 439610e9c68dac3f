//! `pubsubpull tail`: a better `pg_recvlogical`. Streams a slot's changes as normalized change
//! objects, one JSON object per line, whichever the plugin.
//!
//! Whole transactions only, in commit order, each change with its transaction's audit context
//! (see [`crate::assemble`]). Where the pubsubpull schema is installed, only tracked tables'
//! changes are written. The slot is confirmed up to the end of the last
//! transaction whose lines were flushed to the output (and, between transactions, up to the
//! server's position from keepalives, so that an idle slot does not pin WAL), never further: the
//! next run continues after what this one wrote.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::assemble::{AssembleError, Assembler, SpillBuffer, Step, Transaction};
use crate::decode::{self, Catalog, Change, DecodeError, Decoder, Plugin};
use crate::lsn::Lsn;
use crate::source::{self, ConnInfo, ReplicationConnection, ReplicationMessage, SourceError};
use crate::tracking;

/// How often the slot hears from us when nothing else makes us write (the server's default
/// `wal_sender_timeout` is 60 s).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Memory a transaction's held lines may take before they go to a temporary file.
const SPILL_MEMORY: usize = 8 << 20;

/// How often a consumer with a retention prunes old context rows.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Which slot to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotChoice {
    /// A permanent slot, created when missing; progress survives the process.
    Named(String),
    /// A slot that lives as long as the connection.
    Temporary,
}

/// What `tail` is asked to do.
#[derive(Clone, Debug)]
pub struct TailOptions {
    pub plugin: Plugin,
    pub slot: SlotChoice,
    /// The publication pgoutput reads.
    pub publication: String,
    /// Stop before the first transaction whose commit ends past this position, or once the
    /// server has sent everything up to it.
    pub endpos: Option<Lsn>,
    /// Prune `pubsubpull.context` rows older than this (consumers of a permanent slot keep the
    /// table small; None: leave it alone).
    pub retention: Option<Duration>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailSummary {
    pub transactions: u64,
    pub changes: u64,
    /// The slot's confirmed position when we stopped.
    pub confirmed: Lsn,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
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
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

/// Streams changes to `out` until `endpos` (or until the server ends the stream).
pub async fn tail(
    conninfo: &ConnInfo,
    options: &TailOptions,
    out: impl Write,
) -> Result<TailSummary, TailError> {
    let sql = conninfo.connect_sql().await?;
    let server_version = server_version_num(&sql).await?;
    if options.plugin == Plugin::Pgoutput {
        check_publication(&sql, &options.publication).await?;
    }
    let mut catalog = source::load_catalog(&sql).await?;
    let tracked = tracking::tracked_tables(&sql).await.map_err(SourceError::from)?;
    let mut replication = ReplicationConnection::connect(conninfo).await?;
    let (slot, temporary) = match &options.slot {
        SlotChoice::Named(name) => (name.clone(), false),
        SlotChoice::Temporary => (format!("pubsubpull_tail_{}", std::process::id()), true),
    };
    source::ensure_slot(&sql, &mut replication, &slot, options.plugin.name(), temporary).await?;
    let start_options = match options.plugin {
        Plugin::Pgoutput => decode::pgoutput::start_options(&options.publication, server_version),
        Plugin::Wal2json => decode::wal2json::start_options(),
        Plugin::TestDecoding => decode::test_decoding::start_options(),
    };
    let stream = replication.start(&slot, Lsn::ZERO, &start_options).await?;
    let mut run = Run {
        stream,
        plugin: options.plugin,
        endpos: options.endpos,
        decoder: options.plugin.decoder(),
        assembler: Assembler::default(),
        held: SpillBuffer::new(SPILL_MEMORY),
        tracked,
        retention: options.retention,
        out: std::io::BufWriter::with_capacity(1 << 18, out),
        line: Vec::with_capacity(4096),
        written: Lsn::ZERO,
        confirmed: Lsn::ZERO,
        summary: TailSummary::default(),
    };
    match run.stream_until_done(&sql, &mut catalog).await? {
        Stopped::AtEndpos | Stopped::Signal => run.confirm().await?,
        // The server is gone: nobody is left to confirm to; what we wrote must still be flushed.
        Stopped::ByServer => run.out.flush().map_err(TailError::Output)?,
    }
    run.summary.confirmed = run.confirmed;
    let summary = run.summary.clone();
    run.stream.finish().await?;
    Ok(summary)
}

async fn server_version_num(sql: &tokio_postgres::Client) -> Result<u32, SourceError> {
    let row = sql.query_one("SELECT current_setting('server_version_num')::int", &[]).await?;
    Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

async fn check_publication(sql: &tokio_postgres::Client, publication: &str) -> Result<(), TailError> {
    let exists = sql
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(SourceError::from)?;
    match exists {
        Some(_) => Ok(()),
        None => Err(TailError::NoPublication(publication.to_owned())),
    }
}

struct Run<W: Write> {
    stream: source::ReplicationStream,
    plugin: Plugin,
    endpos: Option<Lsn>,
    decoder: Box<dyn Decoder>,
    assembler: Assembler,
    /// Lines of the current transaction while its commit time or context may still change.
    held: SpillBuffer,
    /// When tables were tracked, where the pubsubpull schema says (None: pass on every table).
    tracked: Option<tracking::Tracked>,
    retention: Option<Duration>,
    out: std::io::BufWriter<W>,
    /// Scratch space for one line.
    line: Vec<u8>,
    /// End of the last transaction written to `out` (or the server position when idle).
    written: Lsn,
    /// What we last reported to the server as flushed.
    confirmed: Lsn,
    summary: TailSummary,
}

impl<W: Write> Run<W> {
    async fn stream_until_done(
        &mut self,
        sql: &tokio_postgres::Client,
        catalog: &mut Catalog,
    ) -> Result<Stopped, TailError> {
        let mut events = Vec::new();
        let mut last_status = Instant::now();
        let mut last_prune: Option<Instant> = None;
        let stop_signal = stop_signal();
        tokio::pin!(stop_signal);
        loop {
            if let (Some(retention), Some(_)) = (self.retention, &self.tracked) {
                if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                    prune_context(sql, retention).await?;
                    last_prune = Some(Instant::now());
                }
            }
            let next = tokio::select! {
                // Cancel-safe: the stream loses no data when a signal wins the race.
                _ = &mut stop_signal => return Ok(Stopped::Signal),
                next = tokio::time::timeout(STATUS_INTERVAL, self.stream.next()) => match next {
                    Ok(message) => message?.map_or(Next::End, Next::Message),
                    Err(_elapsed) => Next::Idle,
                },
            };
            match next {
                Next::End => return Ok(Stopped::ByServer),
                Next::Idle => {}
                Next::Message(ReplicationMessage::XLogData(data)) => {
                    decode_message(
                        self.decoder.as_mut(),
                        self.plugin,
                        sql,
                        catalog,
                        data.wal_start,
                        &data.data,
                        &mut events,
                    )
                    .await?;
                    let mut tracking_changed = false;
                    for event in events.drain(..) {
                        let step = self
                            .assembler
                            .push(event)
                            .map_err(|source| TailError::Assemble { lsn: data.wal_start, source })?;
                        tracking_changed |= step == Step::TrackingChanged;
                        if self.apply(step)? == Flow::Stop {
                            return Ok(Stopped::AtEndpos);
                        }
                    }
                    if tracking_changed {
                        self.tracked = tracking::tracked_tables(sql).await.map_err(SourceError::from)?;
                    }
                }
                Next::Message(ReplicationMessage::Keepalive(keepalive)) => {
                    if self.assembler.is_idle() {
                        // Every transaction the server decoded up to here has been written.
                        self.written = self.written.max(keepalive.wal_end);
                        if self.endpos.is_some_and(|end| keepalive.wal_end >= end) {
                            return Ok(Stopped::AtEndpos);
                        }
                    }
                    if keepalive.reply_requested {
                        self.confirm().await?;
                        last_status = Instant::now();
                    }
                }
            }
            if last_status.elapsed() >= STATUS_INTERVAL {
                self.confirm().await?;
                last_status = Instant::now();
            }
        }
    }

    fn apply(&mut self, step: Step) -> Result<Flow, TailError> {
        match step {
            Step::Begin => {
                let past_end = self.assembler.current().and_then(|txn| txn.final_lsn).zip(self.endpos);
                if past_end.is_some_and(|(final_lsn, end)| final_lsn >= end) {
                    return Ok(Flow::Stop);
                }
            }
            Step::Change(change) => {
                if self.tracked.as_ref().is_some_and(|tracked| !tracked.contains(&change.table, change.lsn)) {
                    return Ok(Flow::Go);
                }
                let Some(txn) = self.assembler.current() else { return Ok(Flow::Go) };
                self.summary.changes += 1;
                encode_change(&mut self.line, txn, &change);
                // Where context rows may come, the context is known only at COMMIT.
                if txn.committed_at.is_some() && self.tracked.is_none() {
                    write_line(&mut self.out, &self.line, txn).map_err(TailError::Output)?;
                } else {
                    self.held.push(&self.line).map_err(TailError::Output)?;
                }
            }
            Step::Commit { txn, end_lsn } => {
                if self.endpos.is_some_and(|end| end_lsn > end) {
                    return Ok(Flow::Stop);
                }
                let out = &mut self.out;
                self.held.drain(|line| write_line(out, line, &txn)).map_err(TailError::Output)?;
                self.written = end_lsn;
                self.summary.transactions += 1;
            }
            Step::TrackingChanged | Step::Nothing => {}
        }
        Ok(Flow::Go)
    }

    /// Flushes the output, then tells the server it may recycle WAL up to what it holds.
    async fn confirm(&mut self) -> Result<(), TailError> {
        self.out.flush().map_err(TailError::Output)?;
        self.stream.send_status(self.written, self.written).await?;
        self.confirmed = self.written;
        Ok(())
    }
}

/// What reading the stream gave.
enum Next {
    Message(ReplicationMessage),
    /// Nothing for a status interval.
    Idle,
    /// The server ended the stream.
    End,
}

/// Why streaming stopped.
enum Stopped {
    /// `--endpos` was reached.
    AtEndpos,
    /// The server ended the stream (it shuts down).
    ByServer,
    /// SIGINT or SIGTERM.
    Signal,
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, so that tail stops after confirming what it wrote.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        Ok(()) = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// Deletes context rows older than `retention`. The stream does not need them (a transaction's
/// context reaches us through the WAL); they stay only for audits in SQL.
async fn prune_context(sql: &tokio_postgres::Client, retention: Duration) -> Result<(), SourceError> {
    let row = sql
        .query_one("SELECT pubsubpull.prune_context(make_interval(secs => $1))", &[&retention.as_secs_f64()])
        .await?;
    tracing::debug!(rows = row.get::<_, i64>(0), "pruned old context rows");
    Ok(())
}

/// Decodes one message. On a catalog miss (a type or table created since we loaded it), reloads
/// the catalog and decodes again; what the database no longer knows at all (dropped since the WAL
/// was written) is then taken as text, or as a table without a key, with a warning.
async fn decode_message(
    decoder: &mut dyn Decoder,
    plugin: Plugin,
    sql: &tokio_postgres::Client,
    catalog: &mut Catalog,
    lsn: Lsn,
    data: &[u8],
    events: &mut Vec<decode::Event>,
) -> Result<(), TailError> {
    let error = |source| TailError::Decode { plugin: plugin.name(), lsn, source };
    let mut reloaded = false;
    // Each assumption settles one missing name, and a message names finitely many.
    for _ in 0..10_000 {
        match decoder.decode(lsn, data, catalog, events) {
            Ok(()) => return Ok(()),
            Err(miss) if miss.is_catalog_miss() && !reloaded => {
                tracing::debug!(lsn = %lsn, error = %miss, "reloading the catalog");
                *catalog = source::load_catalog(sql).await?;
                reloaded = true;
            }
            Err(DecodeError::UnknownTable(table)) => {
                tracing::warn!(lsn = %lsn, table = %table, "table not in the database any more: its changes have no key");
                catalog.assume_keyless(table);
            }
            Err(DecodeError::UnknownType(ty)) => {
                tracing::warn!(lsn = %lsn, r#type = %ty, "type not in the database any more: its values are text");
                catalog.assume_text(&ty);
            }
            Err(other) => return Err(error(other)),
        }
    }
    Err(error(DecodeError::Malformed { at: 0, expected: "a message naming fewer types and tables" }))
}

/// The change object less what may be known only at COMMIT (commit time, context): serialized
/// without the closing brace, which [`write_line`] adds with those fields.
fn encode_change(line: &mut Vec<u8>, txn: &Transaction, change: &Change) {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        lsn: Lsn,
        xid: Option<decode::Xid>,
        table: &'a decode::TableName,
        op: decode::Op,
        key: &'a Option<decode::Row>,
        new: &'a Option<decode::Row>,
        old: &'a Option<decode::Row>,
        unchanged: &'a [std::sync::Arc<str>],
    }
    line.clear();
    let body = Body {
        lsn: change.lsn,
        xid: txn.xid,
        table: &change.table,
        op: change.op,
        key: &change.key,
        new: &change.new,
        old: &change.old,
        unchanged: &change.unchanged,
    };
    serde_json::to_writer(&mut *line, &body).expect("serializing to memory cannot fail");
    line.pop(); // the closing brace
}

fn write_line(out: &mut impl Write, body: &[u8], txn: &Transaction) -> std::io::Result<()> {
    out.write_all(body)?;
    match txn.committed_at {
        Some(at) => write!(out, ",\"committed_at\":\"{}\"", at.format("%Y-%m-%dT%H:%M:%S%.6fZ"))?,
        None => out.write_all(b",\"committed_at\":null")?,
    }
    out.write_all(b",\"context\":")?;
    serde_json::to_writer(&mut *out, &txn.context)?;
    out.write_all(b"}\n")
}
