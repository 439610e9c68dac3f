//! pubsubpull: a PostgreSQL change streamer.
//!
//! One process per database reads the write-ahead log through a logical replication slot
//! (pgoutput, wal2json or test_decoding), turns every change into one normalized change object,
//! and hands it on. The modules follow a change through the pipeline:
//!
//! - [`source`]: the replication connection (startup, authentication, TLS, slot, streaming, feedback);
//! - [`decode`]: plugin output to [`decode::Change`]s, the same for every plugin;
//! - [`assemble`]: whole transactions, in commit order, with their commit data;
//! - [`pipeline`]: the streaming loop every consumer shares, and the [`pipeline::Sink`] seam;
//! - [`feed`], [`run`]: the feed store and the streamer that fills it;
//! - [`api`]: the HTTP API that serves the feed and manages subscriptions;
//! - [`deliver`]: push delivery to the subscriptions, with HTTP `PUT`;
//! - [`metrics`]: every metric, named and described once, served on `GET /metrics`;
//! - [`tail`]: the `pubsubpull tail` command, change objects as NDJSON;
//! - [`migrate`], [`tracking`]: the `pubsubpull` schema and which tables are captured;
//! - [`demo`]: `pubsubpull demo`, everything on a throwaway database.

pub mod api;
pub mod assemble;
pub mod decode;
pub mod deliver;
pub mod demo;
pub mod feed;
pub mod lsn;
pub mod metrics;
pub mod migrate;
pub mod object;
pub mod pipeline;
pub mod run;
pub mod source;
pub mod tail;
pub mod tracking;

/// `error` and its causes on one line, separated by `: `, as logs and statuses show them.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}
