//! `pubsubpull migrate`: creates or upgrades the `pubsubpull` schema from the numbered SQL files
//! of `migrations/`, the only place the schema is written.
//!
//! Each migration runs once, in order, in its own transaction, and is recorded in
//! `pubsubpull.schema_migrations`; running again applies only what is new. Several processes may
//! migrate at once: a session advisory lock makes them take turns.

use tokio_postgres::Client;

/// One numbered SQL file.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The source database's migrations (`migrations/source/`), in order.
pub const SOURCE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_audit_context.sql",
        sql: include_str!("../migrations/source/0001_audit_context.sql"),
    },
    Migration {
        version: 2,
        name: "0002_lean_context.sql",
        sql: include_str!("../migrations/source/0002_lean_context.sql"),
    },
    Migration {
        version: 3,
        name: "0003_native_context_trigger.sql",
        sql: include_str!("../migrations/source/0003_native_context_trigger.sql"),
    },
    Migration {
        version: 4,
        name: "0004_lighter_plpgsql_trigger.sql",
        sql: include_str!("../migrations/source/0004_lighter_plpgsql_trigger.sql"),
    },
    Migration {
        version: 5,
        name: "0005_native_set_context.sql",
        sql: include_str!("../migrations/source/0005_native_set_context.sql"),
    },
    Migration {
        version: 6,
        name: "0006_context_by_day.sql",
        sql: include_str!("../migrations/source/0006_context_by_day.sql"),
    },
    Migration {
        version: 7,
        name: "0007_partitioned_tables.sql",
        sql: include_str!("../migrations/source/0007_partitioned_tables.sql"),
    },
];

/// The feed database's migrations (`migrations/feed/`), in order.
pub const FEED: &[Migration] = &[
    Migration { version: 1, name: "0001_feed.sql", sql: include_str!("../migrations/feed/0001_feed.sql") },
    Migration {
        version: 2,
        name: "0002_subscriptions.sql",
        sql: include_str!("../migrations/feed/0002_subscriptions.sql"),
    },
];

/// Serializes concurrent migrations (any fixed number unlikely to clash with an application's).
const LOCK_KEY: i64 = 0x7075_6273_7562_7075; // "pubsubpu"

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot prepare the pubsubpull schema")]
    Prepare(#[source] tokio_postgres::Error),
    #[error("migration {name} failed")]
    Apply {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Applies the migrations of `set` (named `target` in the record) that `client`'s database lacks;
/// returns the versions applied.
pub async fn migrate(client: &mut Client, target: &str, set: &[Migration]) -> Result<Vec<i32>, MigrateError> {
    lock(client).await?;
    let result = apply_missing(client, target, set).await;
    unlock(client, result).await
}

/// Creates the `pubsubpull_context` extension (the context trigger and `set_context` in C) when
/// the server has it installed and it is not created yet, or updates it to the installed version;
/// then gives every tracked table the trigger that `pubsubpull.context_trigger()` names. Without
/// the extension (not installed, or this role may not create it: a warning says so) the PL/pgSQL
/// ones serve. After the source migrations.
pub async fn context_functions(client: &mut Client) -> Result<(), MigrateError> {
    lock(client).await?;
    let result = choose_context_functions(client).await;
    unlock(client, result).await
}

async fn choose_context_functions(client: &mut Client) -> Result<(), MigrateError> {
    let extension = client
        .query_opt(
            "SELECT installed_version, default_version FROM pg_available_extensions WHERE name = 'pubsubpull_context'",
            &[],
        )
        .await
        .map_err(MigrateError::Prepare)?;
    if let Some(row) = extension {
        let (installed, available): (Option<String>, String) = (row.get(0), row.get(1));
        let statement = match installed {
            None => Some("CREATE EXTENSION pubsubpull_context"),
            Some(version) if version != available => Some("ALTER EXTENSION pubsubpull_context UPDATE"),
            Some(_) => None,
        };
        if let Some(statement) = statement {
            match install_extension(client, statement).await {
                Ok(()) => tracing::info!(version = available, "{statement}: the context functions in C"),
                Err(error) => tracing::warn!(
                    error = %crate::error_chain(&error),
                    "cannot {statement}, so the context functions stay as they were (PL/pgSQL without the \
                     extension); pubsubpull migrate as a superuser or the database owner can"
                ),
            }
        }
    }
    // Only a superuser may create an event trigger; without it, partitions created later get the
    // context trigger from the next migrate or track.
    if let Err(error) = client.batch_execute("SELECT pubsubpull.watch_new_partitions()").await {
        tracing::warn!(
            error = %crate::error_chain(&error),
            "cannot watch for new partitions of tracked tables: pubsubpull migrate (or track) gives them \
             the context trigger when run again; pubsubpull migrate as a superuser watches for them"
        );
    }
    let refreshed = client
        .query_one("SELECT pubsubpull.restore_set_context(), pubsubpull.refresh_context_triggers()", &[])
        .await
        .map_err(MigrateError::Prepare)?;
    let (set_context_restored, tables_changed): (bool, i32) = (refreshed.get(0), refreshed.get(1));
    // Read once set_context surely exists: a name in a query is looked up before it runs.
    let chosen = client
        .query_one(
            "SELECT pubsubpull.context_trigger()::text, lanname FROM pg_proc JOIN pg_language l ON l.oid = prolang
              WHERE pg_proc.oid = 'pubsubpull.set_context(jsonb)'::regprocedure",
            &[],
        )
        .await
        .map_err(MigrateError::Prepare)?;
    let (trigger, set_context): (String, String) = (chosen.get(0), chosen.get(1));
    tracing::info!(trigger, tables_changed, set_context, set_context_restored, "context functions");
    Ok(())
}

/// Runs `statement` (creating or updating the extension) in a transaction that first drops the
/// PL/pgSQL `set_context`, whose name the extension's takes; a failure leaves it in place.
async fn install_extension(client: &mut Client, statement: &str) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction.batch_execute("SELECT pubsubpull.drop_plpgsql_set_context()").await?;
    transaction.batch_execute(statement).await?;
    transaction.commit().await
}

/// Serializes concurrent migrations: the lock is the session's, released by [`unlock`] or when the
/// connection closes.
async fn lock(client: &Client) -> Result<(), MigrateError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await.map_err(MigrateError::Prepare)?;
    Ok(())
}

async fn unlock<T>(client: &Client, result: Result<T, MigrateError>) -> Result<T, MigrateError> {
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await;
    let value = result?;
    unlocked.map_err(MigrateError::Prepare)?;
    Ok(value)
}

async fn apply_missing(
    client: &mut Client,
    target: &str,
    set: &[Migration],
) -> Result<Vec<i32>, MigrateError> {
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE SCHEMA IF NOT EXISTS pubsubpull;
             CREATE TABLE IF NOT EXISTS pubsubpull.schema_migrations (
                 target text NOT NULL,
                 version int NOT NULL,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (target, version)
             )",
        )
        .await
        .map_err(MigrateError::Prepare)?;
    let rows = client
        .query("SELECT version FROM pubsubpull.schema_migrations WHERE target = $1", &[&target])
        .await
        .map_err(MigrateError::Prepare)?;
    let done: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    let mut applied = Vec::new();
    for migration in set.iter().filter(|m| !done.contains(&m.version)) {
        let fail = |source| MigrateError::Apply { name: migration.name, source };
        let transaction = client.transaction().await.map_err(fail)?;
        transaction.batch_execute(migration.sql).await.map_err(fail)?;
        transaction
            .execute(
                "INSERT INTO pubsubpull.schema_migrations (target, version, name) VALUES ($1, $2, $3)",
                &[&target, &migration.version, &migration.name],
            )
            .await
            .map_err(fail)?;
        transaction.commit().await.map_err(fail)?;
        tracing::info!(target, migration = migration.name, "migration applied");
        applied.push(migration.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `migrations/{source,feed}/` is listed, numbered in order, and nothing else is.
    #[test]
    fn migrations_match_their_directories() {
        for (dir, set) in [("source", SOURCE), ("feed", FEED)] {
            let dir = format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
            let mut files: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            let listed: Vec<&str> = set.iter().map(|m| m.name).collect();
            assert_eq!(files, listed);
            for (index, migration) in set.iter().enumerate() {
                assert_eq!(migration.version, index as i32 + 1);
                assert!(migration.name.starts_with(&format!("{:04}_", migration.version)));
            }
        }
    }
}
