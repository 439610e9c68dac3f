//! Which tables are captured: `pubsubpull track` / `untrack` (the SQL functions of the same names
//! do the work, so that SQL and the command line behave alike) and the tracked set that filters the
//! stream for plugins without publications.

use std::collections::HashMap;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::decode::TableName;
use crate::lsn::Lsn;

/// pubsubpull's own tables, which reach the stream but are never passed on as changes.
pub const TRACKED_TABLE: (&str, &str) = ("pubsubpull", "tracked");

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
}

impl Tracked {
    /// Whether a change of `table` at WAL position `lsn` is captured.
    pub fn contains(&self, table: &TableName, lsn: Lsn) -> bool {
        self.periods.get(table).is_some_and(|periods| {
            periods.iter().any(|&(from, until)| from <= lsn && until.is_none_or(|until| lsn < until))
        })
    }
}

/// The tracking history, or None when the pubsubpull schema is not installed (then every table the
/// slot sends is passed on).
pub async fn tracked_tables(client: &Client) -> Result<Option<Tracked>, tokio_postgres::Error> {
    if !is_migrated(client).await? {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT schema_name, table_name, tracked_lsn::text, untracked_lsn::text FROM pubsubpull.tracked",
            &[],
        )
        .await?;
    let mut tracked = Tracked::default();
    for row in &rows {
        let table = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        // pg_lsn's text always parses; a row that did not would be skipped, not guessed.
        let Ok(from) = row.get::<_, String>(2).parse::<Lsn>() else { continue };
        let until = row.get::<_, Option<String>>(3).and_then(|until| until.parse().ok());
        tracked.periods.entry(table).or_default().push((from, until));
    }
    Ok(Some(tracked))
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
        let table = TableName::new("public", "t");
        let mut tracked = Tracked::default();
        tracked.periods.insert(table.clone(), vec![(Lsn(10), Some(Lsn(20))), (Lsn(30), None)]);
        let at = |lsn| tracked.contains(&table, Lsn(lsn));
        assert_eq!(
            [at(9), at(10), at(19), at(20), at(29), at(30), at(1000)],
            [false, true, true, false, false, true, true]
        );
        assert!(!tracked.contains(&TableName::new("public", "other"), Lsn(15)));
    }
}
