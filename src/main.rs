//! The `pubsubpull` command line: parse, build, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use pubsubpull::api::{ApiConfig, Auth};
use pubsubpull::decode::Plugin;
use pubsubpull::deliver::retry::Backoff;
use pubsubpull::deliver::DeliveryOptions;
use pubsubpull::lsn::Lsn;
use pubsubpull::pipeline::{SlotChoice, StreamOptions};
use pubsubpull::source::ConnInfo;
use pubsubpull::tail;
use pubsubpull::{demo, migrate, run, tracking};

#[derive(Parser)]
#[command(name = "pubsubpull", version, about = "PostgreSQL change streamer: publish, subscribe, pull")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "PUBSUBPULL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the pubsubpull schema in the source and feed databases (idempotent).
    Migrate(MigrateArgs),
    /// Start capturing tables: context trigger, publication membership, registry row.
    Track(TrackArgs),
    /// Stop capturing tables.
    Untrack(UntrackArgs),
    /// Print the slot's changes as NDJSON change objects on stdout (a better pg_recvlogical).
    Tail(TailArgs),
    /// The streamer: every change of the tracked tables into the feed, exactly once.
    Run(RunArgs),
    /// Everything on a throwaway local PostgreSQL: a tracked table, the streamer, a subscriber,
    /// writes with and without request context, a pull; shown as it happens, until Ctrl-C.
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Directory of the PostgreSQL server binaries (initdb, pg_ctl); found when not given.
    #[arg(long, env = "PG_BINDIR")]
    pg_bindir: Option<std::path::PathBuf>,
    /// Address the demo's API listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Feed database (defaults to the source database).
    #[arg(long, env = "PUBSUBPULL_FEED_DATABASE_URL", hide_env_values = true)]
    feed_database_url: Option<String>,
    /// Output plugin of the slot.
    #[arg(long, env = "PUBSUBPULL_PLUGIN", value_enum, default_value_t = Plugin::Pgoutput)]
    plugin: Plugin,
    /// The streamer's slot, created when missing.
    #[arg(long, env = "PUBSUBPULL_SLOT", default_value = "pubsubpull")]
    slot: String,
    /// Publication that pgoutput reads (the one `track` maintains).
    #[arg(long, default_value = "pubsubpull")]
    publication: String,
    /// Prune audit context rows older than this.
    #[arg(long, env = "PUBSUBPULL_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    retention: std::time::Duration,
    /// Exit once the feed holds everything up to this LSN (for tests and benchmarks).
    #[arg(long)]
    endpos: Option<Lsn>,
    /// Go on when the slot was dropped and created again (or advanced) past what the feed holds,
    /// accepting that the changes in between are lost (without it, that stops the streamer).
    #[arg(long)]
    accept_gap: bool,
    /// Address the HTTP API listens on (port 0: any free port, logged).
    #[arg(long, env = "PUBSUBPULL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    delivery: DeliveryArgs,
    /// Token for full API access (`Authorization: Bearer TOKEN`); unset, the API is open.
    /// Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "PUBSUBPULL_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Token for GET requests only (needs --api-token).
    #[arg(long, env = "PUBSUBPULL_READ_TOKEN", hide_env_values = true)]
    read_token: Option<String>,
    /// Requests per second per client address, in bursts of as many (429 past it); unset: no limit.
    #[arg(long, env = "PUBSUBPULL_RATE_LIMIT")]
    rate_limit: Option<std::num::NonZeroU32>,
    /// Where subscriptions may deliver: comma-separated hosts (`hooks.example.com`,
    /// `*.example.com`, `host:port`) or URL prefixes (`https://hooks.example.com/in/`); unset: anywhere.
    #[arg(long, env = "PUBSUBPULL_SUBSCRIBER_ALLOW")]
    subscriber_allow: Option<String>,
}

#[derive(clap::Args)]
struct DeliveryArgs {
    /// How long one delivery (PUT) may take before it is retried.
    #[arg(long, env = "PUBSUBPULL_DELIVERY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    delivery_timeout: std::time::Duration,
    /// The longest wait between two attempts of a failing delivery (backoff from 100ms, doubling, full jitter).
    #[arg(long, env = "PUBSUBPULL_DELIVERY_BACKOFF_MAX", default_value = "60s", value_parser = humantime::parse_duration)]
    delivery_backoff_max: std::time::Duration,
    /// Memory for the recent changes all subscriptions share, in MiB.
    #[arg(long, env = "PUBSUBPULL_DELIVERY_WINDOW_MB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    delivery_window_mb: u32,
}

#[derive(clap::Args)]
struct DatabaseArgs {
    /// Source database (libpq URL or key=value connection string).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[derive(clap::Args)]
struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Feed database (defaults to the source database).
    #[arg(long, env = "PUBSUBPULL_FEED_DATABASE_URL", hide_env_values = true)]
    feed_database_url: Option<String>,
}

#[derive(clap::Args)]
struct TrackArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Give a table without primary key or replica identity REPLICA IDENTITY FULL (its old rows
    /// are then logged whole) instead of refusing it.
    #[arg(long)]
    replica_identity_full: bool,
    /// Tables, as SQL names them (`orders`, `shop.orders`, `"Odd Name"`).
    #[arg(required = true)]
    tables: Vec<String>,
}

#[derive(clap::Args)]
struct UntrackArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[arg(required = true)]
    tables: Vec<String>,
}

#[derive(clap::Args)]
struct TailArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Output plugin of the slot.
    #[arg(long, env = "PUBSUBPULL_PLUGIN", value_enum, default_value_t = Plugin::Pgoutput)]
    plugin: Plugin,
    /// Permanent slot to read, created when missing; the next run continues where this one stopped.
    #[arg(long, conflicts_with = "temporary")]
    slot: Option<String>,
    /// Read through a temporary slot that ends with the process (the default without --slot).
    #[arg(long)]
    temporary: bool,
    /// Publication that pgoutput reads.
    #[arg(long, default_value = "pubsubpull")]
    publication: String,
    /// Exit once the stream has passed this LSN (like pg_recvlogical --endpos).
    #[arg(long)]
    endpos: Option<Lsn>,
    /// With --slot: prune audit context rows older than this (e.g. 7d, 12h).
    #[arg(long, env = "PUBSUBPULL_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    retention: std::time::Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's own output tells the story; its logs only say what went wrong.
    let default_level = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" };
    init_logging(cli.log_format, default_level);
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| match cli.command {
            Command::Migrate(args) => runtime.block_on(run_migrate(args)),
            Command::Track(args) => runtime.block_on(run_track(args)),
            Command::Untrack(args) => runtime.block_on(run_untrack(args)),
            Command::Tail(args) => runtime.block_on(run_tail(args)),
            Command::Run(args) => runtime.block_on(run_streamer(args)),
            Command::Demo(args) => runtime
                .block_on(demo::demo(demo::DemoOptions { bindir: args.pg_bindir, listen: args.listen })),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The whole chain of causes on one line; no backtrace: these are the user's errors.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn sql_client(args: &DatabaseArgs) -> anyhow::Result<tokio_postgres::Client> {
    let conninfo = ConnInfo::parse(&args.database_url).context("invalid --database-url")?;
    Ok(conninfo.connect_sql().await?)
}

async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let mut source = sql_client(&args.database).await?;
    let applied = migrate::migrate(&mut source, "source", migrate::SOURCE).await?;
    tracing::info!(applied = applied.len(), "source schema up to date");
    migrate::context_functions(&mut source).await?;
    let mut feed = match &args.feed_database_url {
        Some(url) => ConnInfo::parse(url).context("invalid --feed-database-url")?.connect_sql().await?,
        None => source,
    };
    let applied = migrate::migrate(&mut feed, "feed", migrate::FEED).await?;
    tracing::info!(applied = applied.len(), "feed schema up to date");
    Ok(())
}

async fn run_streamer(args: RunArgs) -> anyhow::Result<()> {
    let source = ConnInfo::parse(&args.database.database_url).context("invalid --database-url")?;
    let feed = match &args.feed_database_url {
        Some(url) => ConnInfo::parse(url).context("invalid --feed-database-url")?,
        None => source.clone(),
    };
    let api = ApiConfig {
        auth: Auth::new(args.api_token.as_deref(), args.read_token.as_deref())
            .context("invalid API tokens")?,
        rate_limit: args.rate_limit,
        subscriber_allow: match &args.subscriber_allow {
            Some(list) => list.parse().context("invalid --subscriber-allow")?,
            None => Default::default(),
        },
    };
    let options = run::RunOptions {
        source,
        feed,
        plugin: args.plugin,
        slot: args.slot,
        publication: args.publication,
        retention: args.retention,
        endpos: args.endpos,
        delivery: DeliveryOptions {
            timeout: args.delivery.delivery_timeout,
            backoff: Backoff { first: Backoff::default().first, max: args.delivery.delivery_backoff_max },
            window_bytes: (args.delivery.delivery_window_mb as usize) << 20,
        },
        accept_gap: args.accept_gap,
        api,
    };
    if !options.api.auth.is_enabled() && !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "no API token: anyone who reaches this address reads the feed");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "api listening");
    run::run(&options, listener).await?;
    Ok(())
}

async fn run_track(args: TrackArgs) -> anyhow::Result<()> {
    let mut client = sql_client(&args.database).await?;
    tracking::track(&mut client, &args.tables, args.replica_identity_full)
        .await
        .map_err(|err| none_of(&args.tables, "tracked", err))?;
    tracing::info!(tables = ?args.tables, "tracking");
    Ok(())
}

async fn run_untrack(args: UntrackArgs) -> anyhow::Result<()> {
    let mut client = sql_client(&args.database).await?;
    let not_tracked = tracking::untrack(&mut client, &args.tables)
        .await
        .map_err(|err| none_of(&args.tables, "untracked", err))?;
    for table in &not_tracked {
        tracing::warn!(table, "was not tracked");
    }
    let untracked: Vec<_> = args.tables.iter().filter(|table| !not_tracked.contains(table)).collect();
    if !untracked.is_empty() {
        tracing::info!(tables = ?untracked, "no longer tracking");
    }
    Ok(())
}

/// `track` and `untrack` change all their tables or none: an error about one says so when there were more.
fn none_of(tables: &[String], done: &str, err: tracking::TrackError) -> anyhow::Error {
    let err = anyhow::Error::from(err);
    if tables.len() > 1 {
        err.context(format!("no table was {done}"))
    } else {
        err
    }
}

async fn run_tail(args: TailArgs) -> anyhow::Result<()> {
    let conninfo = ConnInfo::parse(&args.database.database_url).context("invalid --database-url")?;
    let options = StreamOptions {
        plugin: args.plugin,
        retention: args.slot.is_some().then_some(args.retention),
        slot: args.slot.map_or(SlotChoice::Temporary, SlotChoice::Named),
        publication: args.publication,
        endpos: args.endpos,
        start: Lsn::ZERO,
        // stdout is flushed once a second, as pg_recvlogical does (it may be a slow pipe).
        flush_interval: std::time::Duration::from_secs(1),
        streaming: None,
        accept_gap: false,
    };
    let summary = tail::tail(&conninfo, &options, std::io::stdout().lock()).await?;
    tracing::info!(
        transactions = summary.transactions,
        changes = summary.changes,
        confirmed = %summary.confirmed,
        "tail stopped"
    );
    Ok(())
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only for a person at a terminal, not in a log file or a journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
