//! The replication slot: reused when it exists with our plugin, created when missing, refused with
//! a clear error when it belongs to another plugin or database.
//!
//! A slot keeps the WAL its consumer has not confirmed, so reusing it across restarts is what makes
//! a restart lose nothing. A slot of another plugin would hand our decoder output it cannot read;
//! the error says how to free the name.

use tokio_postgres::Client;

use super::connection::ReplicationConnection;
use super::SourceError;
use crate::lsn::Lsn;

/// Slot names are at most NAMEDATALEN - 1 bytes.
const MAX_SLOT_NAME_LEN: usize = 63;

/// What [`ensure_slot`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// The slot was created; it streams the transactions that commit after `consistent_point`.
    Created { consistent_point: Lsn },
    /// The slot already existed with the same plugin; streaming resumes after its confirmed
    /// position (`None` if it never got one).
    Existing { confirmed_flush: Option<Lsn> },
}

/// Checks a slot name the way the server does: 1 to 63 lowercase letters, digits and underscores.
pub fn validate_slot_name(name: &str) -> Result<(), SourceError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SLOT_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(SourceError::InvalidSlotName(name.to_owned()))
    }
}

/// Makes sure the logical slot `name` exists in this database with output plugin `plugin`.
///
/// `sql` and `repl` must be connected to the same database. A `temporary` slot is always created
/// (it lives as long as `repl`'s session), so its name must be free.
pub async fn ensure_slot(
    sql: &Client,
    repl: &mut ReplicationConnection,
    name: &str,
    plugin: &str,
    temporary: bool,
) -> Result<SlotState, SourceError> {
    validate_slot_name(name)?;
    if temporary {
        let consistent_point = repl.create_slot(name, plugin, true).await?;
        return Ok(SlotState::Created { consistent_point });
    }
    if let Some(state) = existing_slot(sql, name, plugin).await? {
        return Ok(state);
    }
    match repl.create_slot(name, plugin, false).await {
        Ok(consistent_point) => Ok(SlotState::Created { consistent_point }),
        // Another process created it since we looked: use it if it is the same kind.
        Err(error @ SourceError::SlotExists { .. }) => existing_slot(sql, name, plugin).await?.ok_or(error),
        Err(error) => Err(error),
    }
}

/// The state of slot `name` if it exists and suits us; an error if it exists and does not.
async fn existing_slot(sql: &Client, name: &str, plugin: &str) -> Result<Option<SlotState>, SourceError> {
    let query = "SELECT plugin, database, database = current_database(), confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1";
    let Some(row) = sql.query_opt(query, &[&name]).await? else {
        return Ok(None);
    };
    let existing: Option<String> = row.try_get(0)?;
    let database: Option<String> = row.try_get(1)?;
    let here: Option<bool> = row.try_get(2)?;
    let confirmed_flush: Option<String> = row.try_get(3)?;
    let Some(existing) = existing else {
        return Err(SourceError::PluginMismatch {
            slot: name.to_owned(),
            existing: "none (a physical slot)".into(),
            wanted: plugin.to_owned(),
        });
    };
    if here != Some(true) {
        return Err(SourceError::SlotInOtherDatabase {
            slot: name.to_owned(),
            database: database.unwrap_or_default(),
        });
    }
    if existing != plugin {
        return Err(SourceError::PluginMismatch {
            slot: name.to_owned(),
            existing,
            wanted: plugin.to_owned(),
        });
    }
    let confirmed_flush = confirmed_flush
        .map(|lsn| {
            lsn.parse::<Lsn>().map_err(|_| SourceError::UnexpectedReply {
                command: "pg_replication_slots",
                detail: format!("invalid confirmed_flush_lsn {lsn:?}"),
            })
        })
        .transpose()?;
    Ok(Some(SlotState::Existing { confirmed_flush }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_names_the_server_accepts() {
        for name in ["pubsubpull", "slot_2", "_", &"a".repeat(63)] {
            assert!(validate_slot_name(name).is_ok(), "{name}");
        }
        for name in ["", "Slot", "my-slot", "a b", "slot\"", "caf\u{e9}", &"a".repeat(64)] {
            let error = validate_slot_name(name).unwrap_err();
            assert!(error.to_string().contains("lowercase letters, digits and underscores"), "{error}");
        }
    }
}
