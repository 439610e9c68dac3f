//! The fan-out: one reader follows the feed as the streamer commits it and keeps its most recent
//! changes, encoded once, in a window shared by every worker. A worker whose cursor is inside the
//! window takes its batches from memory; one behind it reads its own batches from the database
//! until it catches up. So a commit costs one query however many subscriptions there are.
//!
//! Memory is bounded: the window holds changes up to its capacity in bytes, dropping the oldest.
//! It covers a range of positions whole: every stored change with `start < position <= end` is in
//! it, in feed order.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::subscription::{Operations, Subscription};
use crate::api::{encode_change, Database};

/// One change, encoded as served.
#[derive(Debug)]
pub struct Entry {
    pub position: i64,
    pub table: Box<str>,
    /// Its operation's bit (see [`Operations::bit`]), 0 when not found.
    pub op: u8,
    /// The change object, as `GET /feed` serves it.
    pub json: Box<str>,
    /// Its transaction's commit time (seconds since the epoch), for the delivery latency.
    pub committed_at: Option<f64>,
}

impl Entry {
    /// A row of [`QUERY`].
    fn from_row(row: &Row) -> Entry {
        let position: i64 = row.get(0);
        let (table, body): (&str, &str) = (row.get(1), row.get(2));
        let mut json = String::new();
        encode_change(&mut json, position, table, body, row.get(3), row.get(4), row.get(5));
        Entry {
            position,
            table: row.get::<_, &str>(1).into(),
            op: op_of(body),
            json: json.into(),
            committed_at: row.get(6),
        }
    }

    /// What it takes in memory, roughly.
    fn size(&self) -> usize {
        self.json.len() + self.table.len() + 64
    }
}

/// The operation bit of a stored body, `{"lsn":…,"op":"insert",…`. Its first `"op":"` is the
/// operation: only the LSN comes before it.
fn op_of(body: &str) -> u8 {
    const FIELD: &str = "\"op\":\"";
    body.find(FIELD)
        .and_then(|at| {
            let rest = &body[at + FIELD.len()..];
            rest.find('"').and_then(|end| Operations::bit(&rest[..end]))
        })
        .unwrap_or(0)
}

/// Changes after `$1` up to `$2`, of the tables `$3` (all when empty), in feed order.
const QUERY: &str = "SELECT f.position, f.table_name, f.body, t.xid::text, \
     to_char(t.committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), t.context::text, \
     extract(epoch FROM t.committed_at)::float8 \
     FROM pubsubpull.feed f JOIN pubsubpull.feed_transaction t ON t.segment = f.segment AND t.txn = f.txn \
     WHERE f.position > $1 AND f.position <= $2 AND (cardinality($3::text[]) = 0 OR f.table_name = ANY($3)) \
     ORDER BY f.position LIMIT $4";

/// A batch for one subscription.
#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<Arc<Entry>>,
    /// The last position looked at: the cursor once the batch is acknowledged.
    pub scanned_to: i64,
}

/// Changes looked at, at most, per batch taken from the window.
const SCAN_LIMIT: usize = 10_000;

struct Inner {
    start: i64,
    end: i64,
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
}

/// The most recent changes of the feed, shared by every worker.
pub struct Window {
    inner: RwLock<Inner>,
    capacity: usize,
    /// The window's end, sent each time it moves.
    head: watch::Sender<i64>,
    /// Workers running: with none, the reader reads nothing.
    workers: AtomicUsize,
}

impl Window {
    /// An empty window at `head`, the last position stored.
    pub fn new(head: i64, capacity: usize) -> Window {
        Window {
            inner: RwLock::new(Inner { start: head, end: head, entries: VecDeque::new(), bytes: 0 }),
            capacity,
            head: watch::Sender::new(head),
            workers: AtomicUsize::new(0),
        }
    }

    /// The end of the window, sent each time it moves.
    pub fn head(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Counts a worker until the guard is dropped.
    pub fn worker(self: &Arc<Window>) -> WorkerGuard {
        self.workers.fetch_add(1, Ordering::Relaxed);
        WorkerGuard(Arc::clone(self))
    }

    /// The next batch for `subscription` after `cursor`, of at most its batch size and about
    /// `max_bytes` (one change at least); None when `cursor` is before the window.
    pub fn take(&self, cursor: i64, subscription: &Subscription, max_bytes: usize) -> Option<Batch> {
        let inner = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cursor < inner.start {
            return None;
        }
        let mut batch = Batch { changes: Vec::new(), scanned_to: cursor.max(inner.start) };
        let first = inner.entries.partition_point(|entry| entry.position <= cursor);
        let mut bytes = 0;
        let mut scanned = 0;
        for entry in inner.entries.range(first..) {
            if subscription.wants(&entry.table, entry.op) {
                batch.changes.push(Arc::clone(entry));
                bytes += entry.json.len();
            }
            batch.scanned_to = entry.position;
            scanned += 1;
            if batch.changes.len() >= subscription.batch_size || bytes >= max_bytes || scanned >= SCAN_LIMIT {
                return Some(batch);
            }
        }
        batch.scanned_to = inner.end.max(cursor);
        Some(batch)
    }

    /// Appends changes read after the window's end, up to `end`, dropping the oldest beyond the
    /// capacity, and announces the new end.
    fn push(&self, entries: Vec<Arc<Entry>>, end: i64) {
        {
            let mut inner = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            for entry in entries {
                inner.bytes += entry.size();
                inner.entries.push_back(entry);
            }
            inner.end = end;
            while inner.bytes > self.capacity {
                let Some(oldest) = inner.entries.pop_front() else { break };
                inner.bytes -= oldest.size();
                inner.start = oldest.position;
            }
        }
        self.head.send_replace(end);
    }

    /// Empties the window and moves it to `end` (nobody is reading it).
    fn skip_to(&self, end: i64) {
        {
            let mut inner = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            *inner = Inner { start: end, end, entries: VecDeque::new(), bytes: 0 };
        }
        self.head.send_replace(end);
    }

    fn end(&self) -> i64 {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner()).end
    }
}

/// A running worker, counted by its window.
pub struct WorkerGuard(Arc<Window>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Changes pushed into the window at once.
const GROUP: usize = 256;

/// Fills `window` with what the streamer stores, as `stored` announces it, until `stored` closes.
pub async fn fill(window: Arc<Window>, feed: Database, mut stored: watch::Receiver<i64>) {
    loop {
        let target = *stored.borrow_and_update();
        if target > window.end() {
            if window.workers.load(Ordering::Relaxed) == 0 {
                window.skip_to(target);
            } else if let Err(error) = read_into(&window, &feed, target).await {
                tracing::warn!(error = %error, "cannot read the feed for delivery; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        if stored.changed().await.is_err() {
            return;
        }
    }
}

async fn read_into(window: &Window, feed: &Database, target: i64) -> Result<(), ReadError> {
    let client = feed.client().await.map_err(|_| ReadError::Down)?;
    let after = window.end();
    let no_filter: Vec<String> = Vec::new();
    let params: [&(dyn ToSql + Sync); 4] = [&after, &target, &no_filter, &i64::MAX];
    let mut rows = Box::pin(client.query_raw(QUERY, params).await?);
    let mut group = Vec::with_capacity(GROUP);
    while let Some(row) = rows.next().await.transpose()? {
        let entry = Entry::from_row(&row);
        let position = entry.position;
        group.push(Arc::new(entry));
        if group.len() == GROUP {
            window.push(std::mem::take(&mut group), position);
        }
    }
    window.push(group, target);
    Ok(())
}

/// Why a read of the feed failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the feed database is down")]
    Down,
    #[error("the feed query failed")]
    Query(#[from] tokio_postgres::Error),
}

/// What a worker behind the window reads from the database.
pub enum Read {
    Batch(Batch),
    /// Changes after the cursor are gone: the oldest retained position is past it.
    BehindRetention {
        oldest: i64,
    },
}

/// The next batch for `subscription` after `cursor`, up to `head` (a position stored, so that
/// everything up to it is visible), read from the database.
pub async fn read_batch(
    client: &Client,
    subscription: &Subscription,
    cursor: i64,
    head: i64,
    max_bytes: usize,
) -> Result<Read, tokio_postgres::Error> {
    let limit = subscription.batch_size as i64;
    let params: [&(dyn ToSql + Sync); 4] = [&cursor, &head, &subscription.tables, &limit];
    let mut rows: Pin<Box<_>> = Box::pin(client.query_raw(QUERY, params).await?);
    let mut batch = Batch { changes: Vec::new(), scanned_to: cursor };
    let (mut read, mut bytes, mut first) = (0, 0, None);
    while let Some(row) = rows.next().await.transpose()? {
        let entry = Entry::from_row(&row);
        first.get_or_insert(entry.position);
        batch.scanned_to = entry.position;
        read += 1;
        if subscription.operations.contains(entry.op) {
            bytes += entry.json.len();
            batch.changes.push(Arc::new(entry));
        }
        if bytes >= max_bytes {
            break;
        }
    }
    drop(rows);
    if read < limit && bytes < max_bytes {
        // Nothing more of these tables up to the head.
        batch.scanned_to = head.max(cursor);
    }
    if first != Some(cursor + 1) {
        // Retention deletes the oldest changes first: if the change after the cursor is still
        // there after the read, nothing the read skipped was deleted before it.
        let row =
            client.query_one("SELECT coalesce(min(position), $1 + 1) FROM pubsubpull.feed", &[&head]).await?;
        let oldest: i64 = row.get(0);
        if oldest > cursor + 1 {
            return Ok(Read::BehindRetention { oldest });
        }
    }
    Ok(Read::Batch(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: i64, table: &str, op: &str) -> Arc<Entry> {
        Arc::new(Entry {
            position,
            table: table.into(),
            op: Operations::bit(op).unwrap(),
            json: format!("{{\"position\":{position}}}").into(),
            committed_at: None,
        })
    }

    fn subscription(tables: &[&str], ops: &[&str], batch_size: usize) -> Subscription {
        Subscription {
            name: "s".into(),
            url: "http://localhost/".parse().unwrap(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            operations: Operations::parse(ops.iter().copied()).unwrap(),
            batch_size,
            secret: None,
            paused: false,
            generation: 1,
            cursor: 0,
        }
    }

    fn positions(batch: &Batch) -> Vec<i64> {
        batch.changes.iter().map(|e| e.position).collect()
    }

    #[test]
    fn finds_the_operation_of_a_stored_body() {
        assert_eq!(op_of(r#"{"lsn":"0/1","table":"public.a","op":"update","key":{"op":"x"}"#), 2);
        assert_eq!(op_of(r#"{"lsn":"0/1","table":"a.\"op\":\"delete","op":"insert""#), 1);
        assert_eq!(op_of(r#"{"lsn":"0/1","op":"upsert""#), 0);
        assert_eq!(op_of(""), 0);
    }

    #[test]
    fn batches_are_taken_in_order_filtered_and_bounded() {
        let window = Window::new(10, 1 << 20);
        let entries: Vec<_> =
            (11..=20).map(|p| entry(p, if p % 2 == 0 { "public.a" } else { "public.b" }, "insert")).collect();
        window.push(entries, 20);
        assert!(window.take(9, &subscription(&["public.a"], &["insert"], 10), 1 << 20).is_none());
        let all = subscription(&["public.a", "public.b"], &["insert"], 4);
        let batch = window.take(10, &all, 1 << 20).unwrap();
        assert_eq!((positions(&batch), batch.scanned_to), (vec![11, 12, 13, 14], 14));
        let evens = subscription(&["public.a"], &["insert"], 100);
        let batch = window.take(14, &evens, 1 << 20).unwrap();
        assert_eq!((positions(&batch), batch.scanned_to), (vec![16, 18, 20], 20));
        let deletes = subscription(&["public.a"], &["delete"], 100);
        let batch = window.take(10, &deletes, 1 << 20).unwrap();
        assert_eq!((positions(&batch), batch.scanned_to), (vec![], 20), "passed over up to the end");
        let batch = window.take(20, &all, 1 << 20).unwrap();
        assert_eq!((positions(&batch), batch.scanned_to), (vec![], 20), "caught up");
        let batch = window.take(10, &all, 1).unwrap();
        assert_eq!(positions(&batch), vec![11], "one change at least, however big");
    }

    #[test]
    fn the_window_drops_its_oldest_changes_beyond_its_capacity() {
        let size = entry(1, "public.a", "insert").size();
        let window = Window::new(0, size * 3);
        window.push((1..=5).map(|p| entry(p, "public.a", "insert")).collect(), 5);
        let all = subscription(&["public.a"], &["insert"], 100);
        assert!(window.take(1, &all, 1 << 20).is_none(), "position 2 was dropped");
        assert_eq!(positions(&window.take(2, &all, 1 << 20).unwrap()), vec![3, 4, 5]);
        window.skip_to(9);
        assert!(window.take(5, &all, 1 << 20).is_none());
        assert_eq!(window.take(9, &all, 1 << 20).unwrap().scanned_to, 9);
    }
}
