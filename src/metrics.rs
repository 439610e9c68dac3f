//! Every metric of the process, named and described once, in one registry that `GET /metrics`
//! serves as Prometheus text.
//!
//! The registry is a process-wide [`LazyLock`]: the stages that count (the pipeline, the feed
//! writer, the API's middleware, the delivery workers) share no context object, the pipeline is
//! generic over its sink, and a process has exactly one `/metrics`; passing a registry down would
//! thread a parameter through every constructor for no gain. Stages never touch the metric
//! objects: they call the functions below, whose names say what happened, so that names, label
//! sets and buckets live only here.
//!
//! Names follow `pubsubpull_<stage>_<noun>_<unit>[_total]`, with small fixed label sets: `table`
//! (tracked tables), `op`, `plugin`, `route` (the route template, never the raw path),
//! `subscription` (the subscriptions defined), `kind` and `state` (fixed lists).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::decode::{Op, TableName, Timestamp};
use crate::lsn::Lsn;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metric is: how Prometheus names its series (a histogram's `_bucket`, `_sum`, `_count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Why a push delivery failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The subscriber did not answer in time.
    Timeout,
    /// The connection could not be opened (refused, DNS, TLS).
    Connect,
    /// The subscriber answered with a status other than 2xx.
    Status,
    Other,
}

impl FailureKind {
    pub const ALL: [FailureKind; 4] =
        [FailureKind::Timeout, FailureKind::Connect, FailureKind::Status, FailureKind::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Connect => "connect",
            FailureKind::Status => "status",
            FailureKind::Other => "other",
        }
    }
}

/// A subscription's delivery state, as `GET /subscriptions` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionState {
    Active,
    Retrying,
    Paused,
    /// Its cursor fell behind the feed's retention: changes it has not had are gone.
    BehindRetention,
}

impl SubscriptionState {
    pub const ALL: [SubscriptionState; 4] = [
        SubscriptionState::Active,
        SubscriptionState::Retrying,
        SubscriptionState::Paused,
        SubscriptionState::BehindRetention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Active => "active",
            SubscriptionState::Retrying => "retrying",
            SubscriptionState::Paused => "paused",
            SubscriptionState::BehindRetention => "behind_retention",
        }
    }
}

/// Seconds: 0.5 ms to 10 s (a feed COMMIT).
const WRITE_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Seconds: 1 ms to 60 s (a delivery from commit to acknowledgement; a long poll).
const SLOW_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

struct Metrics {
    registry: Registry,
    /// Every metric's name and kind, in registration order.
    catalog: Vec<(String, Kind)>,
    changes_captured: IntCounterVec,
    transactions_captured: IntCounter,
    replication_lag_bytes: IntGauge,
    replication_lag_seconds: Gauge,
    feed_write_seconds: Histogram,
    feed_last_position: IntGauge,
    feed_oldest_position: IntGauge,
    feed_bytes: IntGauge,
    feed_changes: IntGauge,
    subscription_delivered_changes: IntCounterVec,
    subscription_failures: IntCounterVec,
    subscription_delivery_seconds: HistogramVec,
    subscription_lag_changes: IntGaugeVec,
    subscription_lag_seconds: GaugeVec,
    subscription_state: IntGaugeVec,
    http_requests: IntCounterVec,
    http_request_seconds: HistogramVec,
    decode_errors: IntCounterVec,
    reconnects: IntCounter,
    streaming: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Registers metrics and records their names and kinds.
struct Builder {
    registry: Registry,
    catalog: Vec<(String, Kind)>,
}

impl Builder {
    // Names, labels and buckets are constants, checked by the tests: registration cannot fail.
    fn add<C: Collector + Clone + 'static>(&mut self, kind: Kind, metric: prometheus::Result<C>) -> C {
        let metric = metric.expect("metric definitions are valid");
        for desc in metric.desc() {
            self.catalog.push((desc.fq_name.clone(), kind));
        }
        self.registry.register(Box::new(metric.clone())).expect("metric names are unique");
        metric
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

fn histogram_opts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

impl Metrics {
    fn new() -> Metrics {
        use Kind::{Counter, Gauge as G, Histogram as H};
        let mut b = Builder { registry: Registry::new(), catalog: Vec::new() };
        let build_info = b.add(
            G,
            IntGaugeVec::new(opts("pubsubpull_build_info", "Always 1; the version running."), &["version"]),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            changes_captured: b.add(
                Counter,
                IntCounterVec::new(
                    opts(
                        "pubsubpull_changes_captured_total",
                        "Changes of tracked tables stored in the feed (or written by tail), by table and operation."
                    ),
                    &["table", "op"]
                )
            ),
            transactions_captured: b.add(
                Counter,
                IntCounter::with_opts(opts(
                    "pubsubpull_transactions_captured_total",
                    "Transactions with at least one change of a tracked table stored in the feed."
                ))
            ),
            replication_lag_bytes: b.add(
                G,
                IntGauge::with_opts(opts(
                    "pubsubpull_replication_lag_bytes",
                    "The server's current WAL position (sampled every 5 s) minus the position the feed holds and the slot is confirmed to."
                ))
            ),
            replication_lag_seconds: b.add(
                G,
                Gauge::with_opts(opts(
                    "pubsubpull_replication_lag_seconds",
                    "Commit-to-feed delay of the last stored transaction, or the age of the oldest committed transaction not yet stored."
                ))
            ),
            feed_write_seconds: b.add(
                H,
                Histogram::with_opts(histogram_opts(
                    "pubsubpull_feed_write_seconds",
                    "Duration of each feed database commit (changes, transactions and checkpoint).",
                    WRITE_BUCKETS
                ))
            ),
            feed_last_position: b.add(
                G,
                IntGauge::with_opts(opts("pubsubpull_feed_last_position", "Position of the last change stored."))
            ),
            feed_oldest_position: b.add(
                G,
                IntGauge::with_opts(opts(
                    "pubsubpull_feed_oldest_position",
                    "Position of the oldest change retained (sampled every 30 s; the last position when the feed is empty)."
                ))
            ),
            feed_bytes: b.add(
                G,
                IntGauge::with_opts(opts(
                    "pubsubpull_feed_bytes",
                    "Size on disk of the feed tables, partitions and indexes included (sampled every 30 s)."
                ))
            ),
            feed_changes: b.add(
                G,
                IntGauge::with_opts(opts(
                    "pubsubpull_feed_changes",
                    "Changes retained in the feed (last position minus oldest plus one; sampled every 30 s)."
                ))
            ),
            subscription_delivered_changes: b.add(
                Counter,
                IntCounterVec::new(
                    opts(
                        "pubsubpull_subscription_delivered_changes_total",
                        "Changes delivered to a subscription and acknowledged with 2xx."
                    ),
                    &["subscription"]
                )
            ),
            subscription_failures: b.add(
                Counter,
                IntCounterVec::new(
                    opts(
                        "pubsubpull_subscription_failures_total",
                        "Failed delivery attempts, by kind: timeout, connect, status (not 2xx), other."
                    ),
                    &["subscription", "kind"]
                )
            ),
            subscription_delivery_seconds: b.add(
                H,
                HistogramVec::new(
                    histogram_opts(
                        "pubsubpull_subscription_delivery_seconds",
                        "From a batch's last commit in the source to the subscriber's acknowledgement.",
                        SLOW_BUCKETS
                    ),
                    &["subscription"]
                )
            ),
            subscription_lag_changes: b.add(
                G,
                IntGaugeVec::new(
                    opts(
                        "pubsubpull_subscription_lag_changes",
                        "Changes stored in the feed and not yet delivered to the subscription (of its tables)."
                    ),
                    &["subscription"]
                )
            ),
            subscription_lag_seconds: b.add(
                G,
                GaugeVec::new(
                    opts(
                        "pubsubpull_subscription_lag_seconds",
                        "Age of the oldest change not yet delivered to the subscription (0 when delivered)."
                    ),
                    &["subscription"]
                )
            ),
            subscription_state: b.add(
                G,
                IntGaugeVec::new(
                    opts(
                        "pubsubpull_subscription_state",
                        "1 for the subscription's current state (active, retrying, paused, behind_retention), 0 for the others."
                    ),
                    &["subscription", "state"]
                )
            ),
            http_requests: b.add(
                Counter,
                IntCounterVec::new(
                    opts(
                        "pubsubpull_http_requests_total",
                        "HTTP requests answered, by route template (unmatched for unknown paths) and status."
                    ),
                    &["route", "status"]
                )
            ),
            http_request_seconds: b.add(
                H,
                HistogramVec::new(
                    histogram_opts(
                        "pubsubpull_http_request_seconds",
                        "Time to the response's headers (long polls included), by route template.",
                        SLOW_BUCKETS
                    ),
                    &["route"]
                )
            ),
            decode_errors: b.add(
                Counter,
                IntCounterVec::new(
                    opts(
                        "pubsubpull_decode_errors_total",
                        "Plugin messages that could not be decoded (the streamer stops on one)."
                    ),
                    &["plugin"]
                )
            ),
            reconnects: b.add(
                Counter,
                IntCounter::with_opts(opts(
                    "pubsubpull_reconnects_total",
                    "Restarts of the replication stream after a failure or the server ending it."
                ))
            ),
            streaming: b.add(
                G,
                IntGauge::with_opts(opts(
                    "pubsubpull_streaming",
                    "1 while the replication stream is connected, else 0."
                ))
            ),
            registry: b.registry,
            catalog: b.catalog,
        }
    }
}

/// Every metric's name and kind, empty label vectors included (Prometheus text leaves out a
/// labelled metric until it has a series).
pub fn catalog() -> &'static [(String, Kind)] {
    &METRICS.catalog
}

/// Every series, as Prometheus text.
pub fn encode() -> String {
    let mut out = Vec::new();
    // Writing to a Vec fails only on invalid metric data, which the names above cannot produce.
    if let Err(error) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out) {
        tracing::error!(error = %error, "cannot encode the metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Series that should show 0 rather than be missing before anything happens.
pub fn init(plugins: &[&str]) {
    let metrics = &*METRICS;
    for plugin in plugins {
        metrics.decode_errors.with_label_values(&[plugin]);
    }
}

fn op_label(op: Op) -> &'static str {
    match op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Truncate => "truncate",
    }
}

/// Counts changes and transactions as they become durable, and the replication lags.
///
/// The pipeline tells it each change given to its sink, each commit, the server's WAL position
/// when sampled, and each *flushed* position the sink reports: only then are the transactions up
/// to that position counted (so a transaction given again after a failed write is not counted
/// twice, within one stream), and the lags set.
#[derive(Debug, Default)]
pub struct CaptureMeter {
    /// Changes of the transaction in progress, by table and operation.
    current: Vec<(Arc<TableName>, Op, u64)>,
    /// Committed transactions not yet durable, oldest first.
    pending: std::collections::VecDeque<Committed>,
    /// The server's WAL position when last sampled.
    server: Option<Lsn>,
    /// The last position the sink held durably.
    flushed: Lsn,
}

#[derive(Debug)]
struct Committed {
    end_lsn: Lsn,
    committed_at: Option<Timestamp>,
    changes: Vec<(Arc<TableName>, Op, u64)>,
}

impl CaptureMeter {
    pub fn new() -> CaptureMeter {
        CaptureMeter::default()
    }

    /// A change of the transaction in progress was given to the sink.
    pub fn change(&mut self, table: &Arc<TableName>, op: Op) {
        match self.current.iter_mut().find(|(t, o, _)| *o == op && t == table) {
            Some((_, _, count)) => *count += 1,
            None => self.current.push((Arc::clone(table), op, 1)),
        }
    }

    /// The transaction in progress committed, ending at `end_lsn`.
    pub fn commit(&mut self, end_lsn: Lsn, committed_at: Option<Timestamp>) {
        if self.current.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.current);
        self.pending.push_back(Committed { end_lsn, committed_at, changes });
    }

    /// The server's WAL position (current, or last replayed on a standby).
    pub fn server_position(&mut self, lsn: Lsn) {
        self.server = Some(lsn);
        self.set_lag_bytes();
    }

    /// The sink holds everything up to `flushed` durably.
    pub fn flushed(&mut self, flushed: Lsn) {
        let metrics = &*METRICS;
        self.flushed = self.flushed.max(flushed);
        let now = chrono::Utc::now();
        let age = |at: Option<Timestamp>| at.map(|at| (now - at).as_seconds_f64().max(0.0));
        while self.pending.front().is_some_and(|txn| txn.end_lsn <= self.flushed) {
            let Some(txn) = self.pending.pop_front() else { break };
            for (table, op, count) in &txn.changes {
                metrics
                    .changes_captured
                    .with_label_values(&[&table.to_string(), op_label(*op)])
                    .inc_by(*count);
            }
            metrics.transactions_captured.inc();
            if let Some(delay) = age(txn.committed_at) {
                metrics.replication_lag_seconds.set(delay);
            }
        }
        // A committed transaction still waiting makes the lag at least its age.
        if let Some(waiting) = self.pending.front().and_then(|txn| age(txn.committed_at)) {
            metrics.replication_lag_seconds.set(metrics.replication_lag_seconds.get().max(waiting));
        }
        self.set_lag_bytes();
    }

    fn set_lag_bytes(&self) {
        if let Some(server) = self.server {
            let lag = server.0.saturating_sub(self.flushed.0);
            METRICS.replication_lag_bytes.set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }
}

/// A feed database commit took `elapsed`.
pub fn feed_written(elapsed: Duration) {
    METRICS.feed_write_seconds.observe(elapsed.as_secs_f64());
}

/// The last position stored.
pub fn feed_last_position(position: i64) {
    METRICS.feed_last_position.set(position);
}

/// What a sample of the feed found: its oldest and last positions (None: empty) and its size.
pub fn feed_sampled(oldest: Option<i64>, last: Option<i64>, bytes: i64) {
    let metrics = &*METRICS;
    let last = last.unwrap_or_else(|| metrics.feed_last_position.get());
    metrics.feed_last_position.set(metrics.feed_last_position.get().max(last));
    metrics.feed_oldest_position.set(oldest.unwrap_or(last));
    metrics.feed_changes.set(oldest.map_or(0, |oldest| last - oldest + 1));
    metrics.feed_bytes.set(bytes);
}

/// A plugin's message could not be decoded.
pub fn decode_error(plugin: &str) {
    METRICS.decode_errors.with_label_values(&[plugin]).inc();
}

/// The replication stream is restarted after a failure (or after the server ended it).
pub fn reconnected() {
    METRICS.reconnects.inc();
}

/// Whether the replication stream is connected.
pub fn streaming(connected: bool) {
    METRICS.streaming.set(i64::from(connected));
}

/// An HTTP request to `route` (a route template, or `unmatched`) was answered with `status`.
pub fn http_request(route: &str, status: u16, elapsed: Duration) {
    let metrics = &*METRICS;
    metrics.http_requests.with_label_values(&[route, &status.to_string()]).inc();
    metrics.http_request_seconds.with_label_values(&[route]).observe(elapsed.as_secs_f64());
}

/// `subscription` acknowledged a batch of `changes`, `latency` after its last commit.
pub fn delivery_acknowledged(subscription: &str, changes: u64, latency: Duration) {
    let metrics = &*METRICS;
    metrics.subscription_delivered_changes.with_label_values(&[subscription]).inc_by(changes);
    metrics.subscription_delivery_seconds.with_label_values(&[subscription]).observe(latency.as_secs_f64());
}

/// A delivery attempt to `subscription` failed.
pub fn delivery_failed(subscription: &str, kind: FailureKind) {
    METRICS.subscription_failures.with_label_values(&[subscription, kind.as_str()]).inc();
}

/// How far `subscription` is behind the feed: in changes, and the age of its oldest undelivered one.
pub fn subscription_lag(subscription: &str, changes: i64, seconds: f64) {
    let metrics = &*METRICS;
    metrics.subscription_lag_changes.with_label_values(&[subscription]).set(changes);
    metrics.subscription_lag_seconds.with_label_values(&[subscription]).set(seconds);
}

/// `subscription` is now in `state` (and in no other).
pub fn subscription_state(subscription: &str, state: SubscriptionState) {
    for each in SubscriptionState::ALL {
        METRICS
            .subscription_state
            .with_label_values(&[subscription, each.as_str()])
            .set(i64::from(each == state));
    }
}

/// `subscription` was deleted: its series go (its counters restart from 0 if it is created again,
/// which `rate()` and `increase()` take as a counter reset).
pub fn forget_subscription(subscription: &str) {
    let metrics = &*METRICS;
    // Removing a series that was never created is not an error worth reporting.
    let _ = metrics.subscription_delivered_changes.remove_label_values(&[subscription]);
    let _ = metrics.subscription_delivery_seconds.remove_label_values(&[subscription]);
    let _ = metrics.subscription_lag_changes.remove_label_values(&[subscription]);
    let _ = metrics.subscription_lag_seconds.remove_label_values(&[subscription]);
    for kind in FailureKind::ALL {
        let _ = metrics.subscription_failures.remove_label_values(&[subscription, kind.as_str()]);
    }
    for state in SubscriptionState::ALL {
        let _ = metrics.subscription_state.remove_label_values(&[subscription, state.as_str()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `series` (name and labels as printed) in the text output.
    fn sample(series: &str) -> Option<f64> {
        encode().lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_metric_is_registered_once_with_a_valid_name() {
        let catalog = catalog();
        assert_eq!(catalog.len(), 21, "{catalog:?}");
        let mut names: Vec<&str> = catalog.iter().map(|(name, _)| name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), catalog.len(), "unique names");
        for (name, kind) in catalog {
            assert!(name.starts_with("pubsubpull_"), "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
            assert_eq!(
                name.ends_with("_total"),
                *kind == Kind::Counter,
                "only counters end in _total: {name}"
            );
        }
        assert_eq!(sample("pubsubpull_build_info{version=\"0.1.0\"}"), Some(1.0));
    }

    #[test]
    fn changes_count_once_durable() {
        let table = Arc::new(TableName::new("public", "meter_test"));
        let series = |op: &str| {
            format!("pubsubpull_changes_captured_total{{op=\"{op}\",table=\"public.meter_test\"}}")
        };
        let mut meter = CaptureMeter::new();
        meter.change(&table, Op::Insert);
        meter.change(&table, Op::Insert);
        meter.change(&table, Op::Delete);
        meter.commit(Lsn(100), Some(chrono::Utc::now() - chrono::Duration::seconds(2)));
        meter.change(&table, Op::Update);
        meter.commit(Lsn(200), Some(chrono::Utc::now()));
        meter.server_position(Lsn(1000));
        meter.flushed(Lsn(99));
        assert_eq!(sample(&series("insert")), None, "nothing durable yet");
        assert!(METRICS.replication_lag_seconds.get() >= 2.0, "a waiting transaction's age counts");
        assert_eq!(METRICS.replication_lag_bytes.get(), 901);
        meter.flushed(Lsn(150));
        assert_eq!((sample(&series("insert")), sample(&series("delete"))), (Some(2.0), Some(1.0)));
        assert_eq!(sample(&series("update")), None);
        meter.flushed(Lsn(200));
        meter.flushed(Lsn(250));
        assert_eq!(sample(&series("update")), Some(1.0), "counted once");
        assert_eq!(METRICS.replication_lag_bytes.get(), 750);
    }

    #[test]
    fn a_subscription_has_one_state_and_goes_without_a_trace() {
        subscription_state("metrics_test", SubscriptionState::Retrying);
        subscription_state("metrics_test", SubscriptionState::Active);
        let state = |state: &str| {
            sample(&format!(
                "pubsubpull_subscription_state{{state=\"{state}\",subscription=\"metrics_test\"}}"
            ))
        };
        assert_eq!((state("active"), state("retrying"), state("paused")), (Some(1.0), Some(0.0), Some(0.0)));
        delivery_acknowledged("metrics_test", 3, Duration::from_millis(20));
        delivery_failed("metrics_test", FailureKind::Timeout);
        subscription_lag("metrics_test", 5, 1.5);
        assert_eq!(
            sample("pubsubpull_subscription_delivered_changes_total{subscription=\"metrics_test\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample("pubsubpull_subscription_failures_total{kind=\"timeout\",subscription=\"metrics_test\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample("pubsubpull_subscription_delivery_seconds_count{subscription=\"metrics_test\"}"),
            Some(1.0)
        );
        forget_subscription("metrics_test");
        assert!(!encode().contains("metrics_test"), "every series of the subscription is gone");
    }
}
