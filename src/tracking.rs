//! Which tables are captured: `pubsubpull track` / `untrack` (the SQL functions of the same names
//! do the work, so that SQL and the command line behave alike) and the tracked set that filters the
//! stream for plugins without publications.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::decode::TableName;
use crate::lsn::Lsn;

/// pubsubpull's own tables, which reach the stream but are never passed on as changes.
pub const TRACKED_TABLE: (&str, &str) = ("pubsubpull", "tracked");

/// The prefix of the logical decoding message that holds the tracked tables' partitions at its point
/// of the stream (sent by `track` and the event trigger of migrations/source/0007).
pub const PARTITIONS_MESSAGE: &str = "pubsubpull.partitions";

/// Whether a change is a context row: plugins name the partition of `pubsubpull.context` that holds
/// it (`pubsubpull.context_20261205`, `pubsubpull.context_default`, ...).
pub fn is_context_table(table: &TableName) -> bool {
    table.schema == "pubsubpull" && (table.name == "context" || table.name.starts_with("context_"))
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The schema is missing: `pubsubpull migrate` first.
    #[error("the pubsubpull schema is not installed in this database: run `pubsubpull migrate` first")]
    NotMigrated,
    #[error("{table}: {message}{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Refused { table: String, message: String, hint: Option<String> },
    #[error(transparent)]
    Sql(#[from] tokio_postgres::Error),
}

/// Starts capturing each of `tables` (names as SQL takes them: `schema.table`, quoted where
/// needed), all or none: one that is refused leaves the others as they were. With
/// `full_identity`, a table without a key gets REPLICA IDENTITY FULL.
pub async fn track(client: &mut Client, tables: &[String], full_identity: bool) -> Result<(), TrackError> {
    ensure_migrated(client).await?;
    let transaction = client.transaction().await?;
    for table in tables {
        let statement = "SELECT pubsubpull.track($1::text::regclass, $2)";
        if let Err(err) = transaction.execute(statement, &[table, &full_identity]).await {
            transaction.rollback().await?;
            return Err(refused(client, table, err).await);
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// Stops capturing each of `tables`, all or none; returns those of them that were not tracked
/// (untracking them only removes what a partial `track` may have left: trigger, publication).
pub async fn untrack(client: &mut Client, tables: &[String]) -> Result<Vec<String>, TrackError> {
    ensure_migrated(client).await?;
    let transaction = client.transaction().await?;
    // Not the server's notice that an untracked table has no trigger to drop: the caller says so.
    transaction.batch_execute("SET LOCAL client_min_messages = warning").await?;
    let mut not_tracked = Vec::new();
    for table in tables {
        let untracked = async {
            let was_tracked: bool = transaction
                .query_one(
                    "SELECT EXISTS (SELECT FROM pubsubpull.tracked WHERE relid = $1::text::regclass AND untracked_lsn IS NULL)",
                    &[table],
                )
                .await?
                .get(0);
            transaction.execute("SELECT pubsubpull.untrack($1::text::regclass)", &[table]).await?;
            Ok::<_, tokio_postgres::Error>(was_tracked)
        };
        match untracked.await {
            Ok(true) => {}
            Ok(false) => not_tracked.push(table.clone()),
            Err(err) => {
                transaction.rollback().await?;
                return Err(refused(client, table, err).await);
            }
        }
    }
    transaction.commit().await?;
    Ok(not_tracked)
}

/// When each table was tracked: the WAL periods from `track` to `untrack`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    periods: HashMap<TableName, Vec<(Lsn, Option<Lsn>)>>,
    /// The partitions below tracked tables, each with the nearest tracked table above it: the
    /// stream names the partition a row is in, the consumer knows the table it tracked.
    partition_of: HashMap<TableName, Arc<TableName>>,
    /// Whether the event trigger tells each new, attached or detached partition in the stream;
    /// without it, partitions are learned when a table new to the catalog appears.
    pub partitions_told: bool,
}

impl Tracked {
    /// The name a change of `table` at WAL position `lsn` is captured under: its own, or that of the
    /// tracked table it is a partition of; None when it is not captured.
    pub fn captured_as(&self, table: &Arc<TableName>, lsn: Lsn) -> Option<Arc<TableName>> {
        if self.contains(table, lsn) {
            return Some(Arc::clone(table));
        }
        self.partition_of.get(&**table).filter(|parent| self.contains(parent, lsn)).cloned()
    }

    fn contains(&self, table: &TableName, lsn: Lsn) -> bool {
        self.periods.get(table).is_some_and(|periods| {
            periods.iter().any(|&(from, until)| from <= lsn && until.is_none_or(|until| lsn < until))
        })
    }

    /// Takes the partitions that `pubsubpull.tracked_partitions()` lists (as the content of a
    /// [`PARTITIONS_MESSAGE`]); false, keeping those it had, when `list` is not such a list.
    pub fn set_partitions(&mut self, list: &[u8]) -> bool {
        let Ok(rows) = serde_json::from_slice::<Vec<[String; 4]>>(list) else { return false };
        self.partition_of.clear();
        // The nearest tracked table comes first, for a partition below two of them.
        for [schema, name, tracked_schema, tracked_name] in rows {
            let parent = Arc::new(TableName::new(tracked_schema, tracked_name));
            self.partition_of.entry(TableName::new(schema, name)).or_insert(parent);
        }
        true
    }

    /// Reads the tracking periods again (after `track` or `untrack`), keeping the partitions.
    pub async fn reload_periods(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        self.periods = tracking_periods(client).await?;
        Ok(())
    }
}

/// The tracking history and the tracked tables' partitions as they are now, or None when the
/// pubsubpull schema is not installed (then every table the slot sends is passed on).
pub async fn tracked_tables(client: &Client) -> Result<Option<Tracked>, tokio_postgres::Error> {
    let schema = client
        .query_one(
            "SELECT to_regclass('pubsubpull.tracked') IS NOT NULL,
                    to_regprocedure('pubsubpull.tracked_partitions()') IS NOT NULL,
                    EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'pubsubpull_new_partitions' AND evtenabled <> 'D')",
            &[],
        )
        .await?;
    if !schema.get::<_, bool>(0) {
        return Ok(None);
    }
    let mut tracked = Tracked {
        periods: tracking_periods(client).await?,
        partitions_told: schema.get(2),
        ..Tracked::default()
    };
    // Before migration 0007, partitions are not captured.
    if schema.get::<_, bool>(1) {
        let list: String =
            client.query_one("SELECT pubsubpull.tracked_partitions()::text", &[]).await?.get(0);
        tracked.set_partitions(list.as_bytes());
    }
    Ok(Some(tracked))
}

async fn tracking_periods(
    client: &Client,
) -> Result<HashMap<TableName, Vec<(Lsn, Option<Lsn>)>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT schema_name, table_name, tracked_lsn::text, untracked_lsn::text FROM pubsubpull.tracked",
            &[],
        )
        .await?;
    let mut periods: HashMap<_, Vec<_>> = HashMap::new();
    for row in &rows {
        let table = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        // pg_lsn's text always parses; a row that did not would be skipped, not guessed.
        let Ok(from) = row.get::<_, String>(2).parse::<Lsn>() else { continue };
        let until = row.get::<_, Option<String>>(3).and_then(|until| until.parse().ok());
        periods.entry(table).or_default().push((from, until));
    }
    Ok(periods)
}

async fn is_migrated(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client.query_one("SELECT to_regclass('pubsubpull.tracked') IS NOT NULL", &[]).await?;
    Ok(row.get(0))
}

async fn ensure_migrated(client: &Client) -> Result<(), TrackError> {
    if is_migrated(client).await? {
        Ok(())
    } else {
        Err(TrackError::NotMigrated)
    }
}

/// The server's refusal (not a table, no key, unknown name) as the user's error. A name that
/// matches no table as SQL reads it (folded to lower case unless quoted) gets the tables it may have
/// meant, spelled as SQL takes them.
async fn refused(client: &Client, table: &str, err: tokio_postgres::Error) -> TrackError {
    let Some(db) = err.as_db_error() else { return TrackError::Sql(err) };
    let mut hint = db.hint().map(str::to_owned);
    let name_errors = [
        SqlState::UNDEFINED_TABLE,
        SqlState::INVALID_NAME,
        SqlState::SYNTAX_ERROR,
        SqlState::FEATURE_NOT_SUPPORTED,
    ];
    if name_errors.contains(db.code()) {
        if let Ok(meant) = tables_named_like(client, table).await {
            if let Some(first) = meant.first() {
                hint = Some(format!(
                    "did you mean {}? Names are SQL identifiers, folded to lower case unless double-quoted (in a shell: '{first}')",
                    meant.join(", ")
                ));
            }
        }
    }
    TrackError::Refused { table: table.to_owned(), message: db.message().to_owned(), hint }
}

/// The tables whose name, or schema and name, is `name` but for case and quotes, as SQL names them.
async fn tables_named_like(client: &Client, name: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid::regclass::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pubsubpull')
                AND lower(replace($1, '\"', '')) IN (lower(c.relname), lower(n.nspname || '.' || c.relname))
              ORDER BY 1",
            &[&name],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_tracked_within_its_periods() {
        let table = Arc::new(TableName::new("public", "t"));
        let mut tracked = Tracked::default();
        tracked.periods.insert((*table).clone(), vec![(Lsn(10), Some(Lsn(20))), (Lsn(30), None)]);
        let at = |lsn| tracked.captured_as(&table, Lsn(lsn)).is_some();
        assert_eq!(
            [at(9), at(10), at(19), at(20), at(29), at(30), at(1000)],
            [false, true, true, false, false, true, true]
        );
        assert_eq!(tracked.captured_as(&Arc::new(TableName::new("public", "other")), Lsn(15)), None);
    }

    #[test]
    fn a_partition_is_captured_as_its_tracked_table() {
        let parted = Arc::new(TableName::new("public", "parted"));
        let partition = Arc::new(TableName::new("public", "parted_eu"));
        let mut tracked = Tracked::default();
        tracked.periods.insert((*parted).clone(), vec![(Lsn(10), Some(Lsn(20)))]);
        assert!(tracked.set_partitions(br#"[["public", "parted_eu", "public", "parted"]]"#));
        assert!(!tracked.set_partitions(b"not a list"));
        assert_eq!(tracked.captured_as(&partition, Lsn(15)), Some(parted));
        assert_eq!(tracked.captured_as(&partition, Lsn(25)), None, "not after the table was untracked");
        tracked.periods.insert((*partition).clone(), vec![(Lsn(20), None)]);
        assert_eq!(tracked.captured_as(&partition, Lsn(25)), Some(partition.clone()), "tracked on its own");
    }
}
