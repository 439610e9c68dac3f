//! The feed's figures for the metrics: its last position as each commit stores it, and, sampled
//! every [`SAMPLE_INTERVAL`], its oldest position and its size on disk (every partition and index
//! of the feed tables, whether or not they are partitioned).

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::metrics;
use crate::source::ConnInfo;

/// How often the feed's oldest position and size are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(30);

/// The feed tables' size counts each table and, when it is partitioned, each of its partitions
/// (`pg_partition_tree` lists those, and nothing for a plain table; a partitioned table's own
/// size is 0).
const SAMPLE: &str = "WITH feed(rel) AS (SELECT rel FROM unnest(ARRAY[to_regclass('pubsubpull.feed'), \
         to_regclass('pubsubpull.feed_transaction')]) AS t(rel) WHERE rel IS NOT NULL), \
     parts(rel) AS (SELECT rel FROM feed UNION SELECT tree.relid FROM feed, LATERAL pg_partition_tree(feed.rel) AS tree) \
     SELECT (SELECT min(position) FROM pubsubpull.feed), (SELECT max(position) FROM pubsubpull.feed), \
     (SELECT coalesce(sum(pg_total_relation_size(rel)), 0)::bigint FROM parts)";

/// Keeps the feed's metrics up to date until `stored` (the writer's last committed position)
/// closes. A failing sample is logged and tried again at the next interval, on a new connection.
pub async fn sample(feed: ConnInfo, mut stored: watch::Receiver<i64>) {
    let mut client: Option<Client> = None;
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The writer tells its position first when it opens the feed (and its first segment): a
    // sample then sees the feed as it is written, not as migrated.
    let mut opened = false;
    loop {
        let sample_now = tokio::select! {
            changed = stored.changed() => match changed {
                Ok(()) => {
                    metrics::feed_last_position(*stored.borrow_and_update());
                    !std::mem::replace(&mut opened, true)
                }
                Err(_closed) => return,
            },
            _ = interval.tick() => true,
        };
        if sample_now {
            if let Err(error) = sample_once(&feed, &mut client).await {
                tracing::warn!(error = %error, "cannot sample the feed's size");
                client = None;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SampleError {
    #[error("cannot connect to the feed database")]
    Connect(#[from] crate::source::SourceError),
    #[error("the sample query failed")]
    Query(#[from] tokio_postgres::Error),
}

async fn sample_once(feed: &ConnInfo, client: &mut Option<Client>) -> Result<(), SampleError> {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = Some(feed.connect_sql().await?);
    }
    let Some(client) = client.as_ref() else { return Ok(()) };
    let row = client.query_one(SAMPLE, &[]).await?;
    metrics::feed_sampled(row.get(0), row.get(1), row.get(2));
    Ok(())
}
