//! The `pubsubpull` command line: parse, build, run.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use pubsubpull::decode::Plugin;
use pubsubpull::lsn::Lsn;
use pubsubpull::source::ConnInfo;
use pubsubpull::tail::{self, SlotChoice, TailOptions};

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
    /// Print the slot's changes as NDJSON change objects on stdout (a better pg_recvlogical).
    Tail(TailArgs),
}

#[derive(clap::Args)]
struct TailArgs {
    /// Source database (libpq URL or key=value connection string).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Tail(args) => runtime.block_on(run_tail(args)),
    }
}

async fn run_tail(args: TailArgs) -> anyhow::Result<()> {
    let conninfo = ConnInfo::parse(&args.database_url).context("invalid --database-url")?;
    let options = TailOptions {
        plugin: args.plugin,
        slot: args.slot.map_or(SlotChoice::Temporary, SlotChoice::Named),
        publication: args.publication,
        endpos: args.endpos,
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
