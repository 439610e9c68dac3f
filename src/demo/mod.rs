//! `pubsubpull demo`: the whole product on a throwaway database, shown as it happens. A PostgreSQL
//! cluster from the installed binaries, a `customers` table, tracked; the streamer and its API; a
//! sample subscriber that prints every PUT it receives; writes made with a request's context (as
//! web middleware would) and without one (as psql or a cron job would); a pull of the feed and a
//! backfill of the table. Then a write every few seconds until Ctrl-C, which stops everything and
//! deletes the cluster.

mod cluster;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::routing::put;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::api::ApiConfig;
use crate::decode::Plugin;
use crate::deliver::DeliveryOptions;
use crate::run::{self, RunOptions};
use crate::source::ConnInfo;
use crate::{migrate, tracking};
use cluster::Cluster;

/// What `demo` is asked for.
pub struct DemoOptions {
    /// Where the PostgreSQL server binaries are (found when None).
    pub bindir: Option<PathBuf>,
    /// Where the API listens.
    pub listen: SocketAddr,
}

/// How often the demo writes once the first round is shown.
const WRITE_EVERY: Duration = Duration::from_secs(3);

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn demo(options: DemoOptions) -> anyhow::Result<()> {
    let cluster = Cluster::start(options.bindir)?;
    say(
        "postgres",
        &format!("a throwaway PostgreSQL in {} (port {})", cluster.dir().display(), cluster.port),
    );
    ConnInfo::parse(&cluster.url("postgres"))?
        .connect_sql()
        .await?
        .batch_execute("CREATE DATABASE demo")
        .await?;
    let url = cluster.url("demo");
    let conninfo = ConnInfo::parse(&url)?;
    let mut sql = conninfo.connect_sql().await?;
    migrate::migrate(&mut sql, "source", migrate::SOURCE).await?;
    migrate::context_functions(&mut sql).await?;
    migrate::migrate(&mut sql, "feed", migrate::FEED).await?;
    sql.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text, balance numeric(10, 2))",
    )
    .await?;
    tracking::track(&mut sql, &["customers".to_owned()], false).await?;
    let trigger: String = sql.query_one("SELECT pubsubpull.context_trigger()::text", &[]).await?.get(0);
    say(
        "postgres",
        &format!("table public.customers created and tracked (pubsubpull track customers); its context trigger: {trigger}"),
    );

    let subscriber = TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", subscriber.local_addr()?);
    tokio::spawn(
        async move { axum::serve(subscriber, axum::Router::new().route("/hook", put(received))).await },
    );
    say("subscriber", &format!("a sample subscriber listens on {hook}"));

    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let api = format!("http://{}", listener.local_addr()?);
    let run_options = RunOptions {
        source: conninfo.clone(),
        feed: conninfo.clone(),
        plugin: Plugin::Pgoutput,
        slot: "pubsubpull".to_owned(),
        publication: "pubsubpull".to_owned(),
        retention: Duration::from_secs(7 * 24 * 3600),
        endpos: None,
        delivery: DeliveryOptions::default(),
        accept_gap: false,
        // The demo's API is open: it listens on loopback, for the person running it.
        api: ApiConfig::default(),
    };
    say("streamer", &format!("pubsubpull run: API on {api} (try: curl {api}/feed); Ctrl-C stops the demo"));
    let outcome = tokio::select! {
        ran = run::run(&run_options, listener) => ran.map_err(anyhow::Error::from),
        // The script writes forever: it ends only when something failed.
        scripted = script(api.clone(), hook, conninfo) => scripted.context("the demo's script failed"),
    };
    drop(cluster);
    say("demo", "stopped; the throwaway PostgreSQL is gone");
    outcome
}

/// Subscribes, writes, pulls and backfills once, then writes every few seconds.
async fn script(api: String, hook: String, conninfo: ConnInfo) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !http.get(format!("{api}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        if tokio::time::Instant::now() > deadline {
            bail!("the streamer did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subscription = json!({ "url": hook, "tables": ["public.customers"], "from": "beginning" });
    let response = http.put(format!("{api}/subscriptions/demo")).json(&subscription).send().await?;
    if !response.status().is_success() {
        bail!("creating the subscription failed: {}", response.text().await?);
    }
    say("api", &format!("PUT {api}/subscriptions/demo {subscription}"));

    let web = conninfo.connect_sql().await?;
    web.batch_execute("SET application_name = 'shop-web'").await?;
    let context = json!({ "user": "alice", "method": "POST", "path": "/customers", "request_id": "req-1" });
    web.batch_execute(&format!(
        "BEGIN; SELECT pubsubpull.set_context('{context}');
         INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', 12.50), (2, 'Bob', NULL, 0); COMMIT"
    ))
    .await?;
    say("write", &format!("INSERT two customers, in a web request with context {context}"));
    let cron = conninfo.connect_sql().await?;
    cron.batch_execute("SET application_name = 'nightly-cron'; UPDATE customers SET balance = balance + 1")
        .await?;
    say("write", "UPDATE every balance, from a cron job with no application context");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let feed: Value = http.get(format!("{api}/feed?limit=1")).send().await?.json().await?;
    say("pull", &format!("GET {api}/feed?limit=1 ->"));
    println!("{}", serde_json::to_string_pretty(&feed)?);
    let rows: Value = http.get(format!("{api}/tables/public.customers/rows")).send().await?.json().await?;
    say("pull", &format!("GET {api}/tables/public.customers/rows -> {rows}"));

    for n in 2.. {
        tokio::time::sleep(WRITE_EVERY).await;
        let context = json!({ "user": "carol", "method": "PATCH", "path": "/customers/1", "request_id": format!("req-{n}") });
        web.batch_execute(&format!(
            "BEGIN; SELECT pubsubpull.set_context('{context}'); UPDATE customers SET balance = balance - 1 WHERE id = 1; COMMIT"
        ))
        .await?;
        say("write", &format!("UPDATE customer 1, in a web request with context {context}"));
    }
    unreachable!("the demo writes until it is stopped")
}

/// The sample subscriber: prints each change it receives.
async fn received(axum::Json(batch): axum::Json<Value>) -> axum::http::StatusCode {
    let changes = batch["changes"].as_array().map(Vec::as_slice).unwrap_or_default();
    say(
        "subscriber",
        &format!("PUT received: {} change(s) for subscription {}", changes.len(), batch["subscription"]),
    );
    for change in changes {
        let context = &change["context"];
        let who = match context["app"]["user"].as_str() {
            Some(user) => format!(
                "by {user} via {} {}",
                context["app"]["method"].as_str().unwrap_or("?"),
                context["app"]["path"].as_str().unwrap_or("?")
            ),
            None => format!(
                "by {} ({}) with no application context",
                context["db_user"], context["application_name"]
            ),
        };
        println!(
            "    {} {} {} key {} {who}; new {}",
            change["position"].as_str().unwrap_or("?"),
            change["op"].as_str().unwrap_or("?"),
            change["table"].as_str().unwrap_or("?"),
            change["key"],
            change["new"]
        );
    }
    axum::http::StatusCode::NO_CONTENT
}

fn say(who: &str, what: &str) {
    println!("[{who:>10}] {what}");
}
