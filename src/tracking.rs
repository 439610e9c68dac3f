//! Which tables are captured: `pubsubpull track` / `untrack` (the SQL functions of the same names
//! do the work, so that SQL and the command line behave alike) and the tracked set that filters the
//! stream for plugins without publications.

use std::collections::HashSet;

use tokio_postgres::Client;

use crate::decode::TableName;

/// pubsubpull's own tables, which reach the stream but are never passed on as changes.
pub const CONTEXT_TABLE: (&str, &str) = ("pubsubpull", "context");
pub const TRACKED_TABLE: (&str, &str) = ("pubsubpull", "tracked");

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
/// needed). With `full_identity`, a table without a key gets REPLICA IDENTITY FULL.
pub async fn track(client: &Client, tables: &[String], full_identity: bool) -> Result<(), TrackError> {
    ensure_migrated(client).await?;
    for table in tables {
        client
            .execute("SELECT pubsubpull.track($1::text::regclass, $2)", &[table, &full_identity])
            .await
            .map_err(|err| refused(table, err))?;
    }
    Ok(())
}

/// Stops capturing each of `tables`.
pub async fn untrack(client: &Client, tables: &[String]) -> Result<(), TrackError> {
    ensure_migrated(client).await?;
    for table in tables {
        client
            .execute("SELECT pubsubpull.untrack($1::text::regclass)", &[table])
            .await
            .map_err(|err| refused(table, err))?;
    }
    Ok(())
}

/// The tracked tables, or None when the pubsubpull schema is not installed (then every table the
/// slot sends is passed on).
pub async fn tracked_tables(client: &Client) -> Result<Option<HashSet<TableName>>, tokio_postgres::Error> {
    if !is_migrated(client).await? {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pubsubpull.tracked t
               JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace",
            &[],
        )
        .await?;
    Ok(Some(
        rows.iter().map(|row| TableName::new(row.get::<_, String>(0), row.get::<_, String>(1))).collect(),
    ))
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

/// The server's refusal (not a table, no key, unknown name) as the user's error.
fn refused(table: &str, err: tokio_postgres::Error) -> TrackError {
    match err.as_db_error() {
        Some(db) => TrackError::Refused {
            table: table.to_owned(),
            message: db.message().to_owned(),
            hint: db.hint().map(str::to_owned),
        },
        None => TrackError::Sql(err),
    }
}
