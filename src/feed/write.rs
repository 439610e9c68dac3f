//! Writing the feed: changes streamed with COPY, closed on transaction boundaries, committed
//! with the checkpoint.
//!
//! Memory is bounded: rows wait in a buffer of at most [`BUFFER`] bytes; past that they go into an
//! open COPY of an open database transaction, which commits only once the source transaction
//! they belong to has committed (a transaction of a million rows streams through).
//!
//! Retention: the feed is written in segments (partitions, see `migrations/feed/`). Between
//! flushes, with no source transaction in progress, the writer opens a new segment once the
//! current one is `retention / 8` old and holds a change, and drops the segments whose last
//! change is older than the retention.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::sync::watch;
use tokio_postgres::{Client, CopyInSink};

use crate::assemble::Transaction;
use crate::decode::Change;
use crate::lsn::Lsn;
use crate::object;
use crate::pipeline::Sink;

/// Rows held in memory before they are sent.
const BUFFER: usize = 4 << 20;

/// A segment is closed once it is this share of the retention old, so that changes outlive the
/// retention by at most this share.
const SEGMENTS_PER_RETENTION: u32 = 8;

/// The shortest segment (for tiny retentions, as in tests).
const MIN_SEGMENT_SPAN: Duration = Duration::from_millis(100);

/// How often segments are checked at most (whatever the retention).
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// How long segment DDL may wait for a reader's lock before it is retried later: capture does
/// not wait behind a slow reader.
const LOCK_TIMEOUT: &str = "1s";

/// SQLSTATE of a `lock_timeout` expiry.
const LOCK_NOT_AVAILABLE: &str = "55P03";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the feed database failed")]
    Database(#[from] tokio_postgres::Error),
    #[error("the feed's checkpoint for slot {slot:?} is not a valid LSN: {value:?}")]
    Checkpoint { slot: String, value: String },
}

/// The feed of one slot, written as its stream is assembled.
pub struct FeedWriter {
    client: Client,
    slot: String,
    retention: Duration,
    /// The segment written to, its first position, and when it was opened.
    segment: i32,
    segment_first: i64,
    segment_opened: Instant,
    /// When segments are checked next.
    next_maintenance: Instant,
    /// What the checkpoint says is stored: where the stream restarts.
    durable: Lsn,
    /// Last transaction number and position given, committed or not.
    last_txn: i64,
    last_position: i64,
    /// Last transaction number and position of the last committed source transaction.
    committed_txn: i64,
    committed_position: i64,
    /// The number of the source transaction in progress, once it has a stored change.
    current_txn: Option<i64>,
    /// `pubsubpull.feed` rows (COPY text format) not yet sent; the first `rows_committed` bytes
    /// belong to committed source transactions.
    rows: BytesMut,
    rows_committed: usize,
    /// `pubsubpull.feed_transaction` rows of committed source transactions not yet sent.
    transactions: BytesMut,
    /// The open COPY of `pubsubpull.feed`, inside an open database transaction.
    copy: Option<Pin<Box<CopyInSink<Bytes>>>>,
    /// Whether the open COPY holds rows of the source transaction in progress.
    copy_holds_current: bool,
    /// Scratch space for one change object.
    line: Vec<u8>,
    /// Told the last committed position after each database COMMIT (long polls wake on it).
    stored: Option<watch::Sender<i64>>,
}

impl FeedWriter {
    /// The writer of `slot`'s feed, continuing after its checkpoint; changes older than
    /// `retention` are dropped.
    pub async fn open(client: Client, slot: &str, retention: Duration) -> Result<FeedWriter, WriteError> {
        let row = client
            .query_opt(
                "SELECT end_lsn::text, last_txn, last_position FROM pubsubpull.feed_checkpoint WHERE slot = $1",
                &[&slot],
            )
            .await?;
        let (durable, last_txn, last_position) = match row {
            Some(row) => {
                let value: String = row.get(0);
                let lsn =
                    value.parse().map_err(|_| WriteError::Checkpoint { slot: slot.to_owned(), value })?;
                (lsn, row.get(1), row.get(2))
            }
            // A new slot continues the numbering of what the feed already holds.
            None => {
                let row = client
                    .query_one(
                        "SELECT coalesce((SELECT max(txn) FROM pubsubpull.feed_transaction), 0),
                                coalesce((SELECT max(position) FROM pubsubpull.feed), 0)",
                        &[],
                    )
                    .await?;
                (Lsn::ZERO, row.get(0), row.get(1))
            }
        };
        let segment = client
            .query_opt(
                "SELECT segment, first_position, extract(epoch FROM now() - opened_at)::float8
                 FROM pubsubpull.feed_segment ORDER BY segment DESC LIMIT 1",
                &[],
            )
            .await?;
        let now = Instant::now();
        let (segment, segment_first, segment_opened) = match segment {
            Some(row) => {
                let age = Duration::try_from_secs_f64(row.get(2)).unwrap_or_default();
                (row.get(0), row.get(1), now.checked_sub(age).unwrap_or(now))
            }
            None => {
                open_segment(&client, 1, last_position + 1).await?;
                (1, last_position + 1, now)
            }
        };
        Ok(FeedWriter {
            client,
            slot: slot.to_owned(),
            retention,
            segment,
            segment_first,
            segment_opened,
            next_maintenance: now,
            durable,
            last_txn,
            last_position,
            committed_txn: last_txn,
            committed_position: last_position,
            current_txn: None,
            rows: BytesMut::new(),
            rows_committed: 0,
            transactions: BytesMut::new(),
            copy: None,
            copy_holds_current: false,
            line: Vec::with_capacity(4096),
            stored: None,
        })
    }

    /// Tells `stored` the last committed position now and after each database COMMIT.
    pub fn notify(mut self, stored: watch::Sender<i64>) -> FeedWriter {
        stored.send_replace(self.committed_position);
        self.stored = Some(stored);
        self
    }

    /// Where the stored stream ends: the stream restarts from here.
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// Sends the buffered rows into the open COPY, opening transaction and COPY first if needed.
    async fn send_rows(&mut self, len: usize) -> Result<(), WriteError> {
        if self.copy.is_none() {
            self.client.batch_execute("BEGIN").await?;
            let sink = self
                .client
                .copy_in("COPY pubsubpull.feed (segment, position, txn, table_name, body) FROM STDIN")
                .await?;
            self.copy = Some(Box::pin(sink));
        }
        let chunk = self.rows.split_to(len).freeze();
        self.rows_committed = self.rows_committed.saturating_sub(len);
        if let Some(copy) = self.copy.as_mut() {
            copy.send(chunk).await?;
        }
        Ok(())
    }
}

impl Sink for FeedWriter {
    type Error = WriteError;

    async fn change(&mut self, _txn: &Transaction, change: &Change) -> Result<(), WriteError> {
        let txn = *self.current_txn.get_or_insert_with(|| {
            self.last_txn += 1;
            self.last_txn
        });
        self.last_position += 1;
        object::encode_stored(&mut self.line, change);
        let table = change.table.to_string();
        self.rows.put_slice(format!("{}\t{}\t{txn}\t", self.segment, self.last_position).as_bytes());
        put_copy_text(&mut self.rows, table.as_bytes());
        self.rows.put_u8(b'\t');
        put_copy_text(&mut self.rows, &self.line);
        self.rows.put_u8(b'\n');
        if self.rows.len() >= BUFFER {
            self.copy_holds_current = true;
            self.send_rows(self.rows.len()).await?;
        }
        Ok(())
    }

    async fn commit(&mut self, txn: &Transaction, end_lsn: Lsn) -> Result<(), WriteError> {
        if let Some(number) = self.current_txn.take() {
            let field = |value: Option<String>| value.unwrap_or_else(|| "\\N".to_owned());
            let context = txn.context.as_ref().map(|c| serde_json::to_string(c).expect("rows serialize"));
            let line = format!(
                "{}\t{number}\t{}\t{end_lsn}\t{}\t",
                self.segment,
                field(txn.xid.map(|x| x.to_string())),
                field(txn.committed_at.map(|at| at.to_rfc3339())),
            );
            self.transactions.put_slice(line.as_bytes());
            match context {
                Some(context) => put_copy_text(&mut self.transactions, context.as_bytes()),
                None => self.transactions.put_slice(b"\\N"),
            }
            self.transactions.put_u8(b'\n');
            self.committed_txn = number;
            self.committed_position = self.last_position;
        }
        self.rows_committed = self.rows.len();
        self.copy_holds_current = false;
        Ok(())
    }

    async fn flush(&mut self, up_to: Lsn) -> Result<Lsn, WriteError> {
        if self.copy_holds_current {
            // The open database transaction holds part of the source transaction in progress:
            // it commits with that transaction, not before.
            return Ok(self.durable);
        }
        let pending = self.rows_committed > 0 || !self.transactions.is_empty() || self.copy.is_some();
        if pending || up_to > self.durable {
            self.store(up_to).await?;
        }
        // Between transactions, all rows stored: the next rows may go to a new segment.
        if self.current_txn.is_none() && Instant::now() >= self.next_maintenance {
            self.maintain_segments().await?;
        }
        Ok(self.durable)
    }
}

impl FeedWriter {
    /// Commits what the committed source transactions gave, with the checkpoint `up_to`.
    async fn store(&mut self, up_to: Lsn) -> Result<(), WriteError> {
        let started = Instant::now();
        if self.rows_committed > 0 {
            self.send_rows(self.rows_committed).await?;
        }
        match self.copy.take() {
            Some(mut copy) => {
                copy.as_mut().finish().await?;
            }
            None => self.client.batch_execute("BEGIN").await?,
        }
        if !self.transactions.is_empty() {
            let sink = self
                .client
                .copy_in(
                    "COPY pubsubpull.feed_transaction (segment, txn, xid, end_lsn, committed_at, context) FROM STDIN",
                )
                .await?;
            let mut sink = Box::pin(sink);
            sink.send(self.transactions.split().freeze()).await?;
            sink.as_mut().finish().await?;
        }
        let end_lsn = up_to.max(self.durable).to_string();
        self.client
            .execute(
                "INSERT INTO pubsubpull.feed_checkpoint (slot, end_lsn, last_txn, last_position)
                 VALUES ($1, $2::text::pg_lsn, $3, $4)
                 ON CONFLICT (slot) DO UPDATE SET end_lsn = excluded.end_lsn, last_txn = excluded.last_txn,
                     last_position = excluded.last_position, updated_at = now()",
                &[&self.slot, &end_lsn, &self.committed_txn, &self.committed_position],
            )
            .await?;
        self.client.batch_execute("COMMIT").await?;
        crate::metrics::feed_written(started.elapsed());
        self.durable = up_to.max(self.durable);
        if let Some(stored) = &self.stored {
            let position = self.committed_position;
            stored.send_if_modified(|last| std::mem::replace(last, position) != position);
        }
        Ok(())
    }

    /// Opens a new segment when the current one is due, and drops the expired ones. Readers'
    /// locks can delay this, never capture: on a lock timeout it is tried again later.
    async fn maintain_segments(&mut self) -> Result<(), WriteError> {
        let span = (self.retention / SEGMENTS_PER_RETENTION).max(MIN_SEGMENT_SPAN);
        self.next_maintenance = Instant::now() + span.min(MAINTENANCE_INTERVAL);
        let holds_changes = self.committed_position >= self.segment_first;
        if holds_changes && self.segment_opened.elapsed() >= span {
            let (segment, first) = (self.segment + 1, self.committed_position + 1);
            if unless_lock_timeout(&self.client, open_segment(&self.client, segment, first)).await? {
                (self.segment, self.segment_first, self.segment_opened) = (segment, first, Instant::now());
            }
        }
        let expired: Vec<i32> = self
            .client
            .query(
                "SELECT s.segment FROM pubsubpull.feed_segment s
                 JOIN pubsubpull.feed_segment later ON later.segment = s.segment + 1
                 WHERE later.opened_at < now() - make_interval(secs => $1)
                 ORDER BY s.segment",
                &[&self.retention.as_secs_f64()],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for segment in expired {
            if !unless_lock_timeout(&self.client, drop_segment(&self.client, segment)).await? {
                break;
            }
            tracing::info!(segment, "dropped an expired feed segment");
        }
        Ok(())
    }
}

/// Creates segment `segment`'s partitions, whose first position is `first`.
async fn open_segment(client: &Client, segment: i32, first: i64) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN;
             SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';
             CREATE TABLE pubsubpull.feed_{segment} PARTITION OF pubsubpull.feed FOR VALUES IN ({segment});
             CREATE TABLE pubsubpull.feed_transaction_{segment}
                 PARTITION OF pubsubpull.feed_transaction FOR VALUES IN ({segment});
             INSERT INTO pubsubpull.feed_segment (segment, first_position) VALUES ({segment}, {first});
             COMMIT"
        ))
        .await
}

/// Drops segment `segment` with its partitions.
async fn drop_segment(client: &Client, segment: i32) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN;
             SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';
             DROP TABLE pubsubpull.feed_{segment}, pubsubpull.feed_transaction_{segment};
             DELETE FROM pubsubpull.feed_segment WHERE segment = {segment};
             COMMIT"
        ))
        .await
}

/// Runs `ddl`; false when it timed out waiting for a lock (it is rolled back, to be tried later).
async fn unless_lock_timeout(
    client: &Client,
    ddl: impl std::future::Future<Output = Result<(), tokio_postgres::Error>>,
) -> Result<bool, WriteError> {
    match ddl.await {
        Ok(()) => Ok(true),
        Err(error) if error.code().is_some_and(|code| code.code() == LOCK_NOT_AVAILABLE) => {
            client.batch_execute("ROLLBACK").await?;
            tracing::warn!(
                "feed segment maintenance waited too long for a reader's lock; trying again later"
            );
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// Appends `text` escaped for COPY's text format.
fn put_copy_text(out: &mut BytesMut, text: &[u8]) {
    let mut rest = text;
    // JSON text has no raw control characters, so runs between escapes are long.
    while let Some(at) = rest.iter().position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        out.put_slice(&rest[..at]);
        out.put_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    out.put_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_copy_text() {
        let mut out = BytesMut::new();
        put_copy_text(&mut out, b"a\\b\tc\nd\re\"f");
        assert_eq!(&out[..], b"a\\\\b\\tc\\nd\\re\"f");
    }
}
