//! Decoding: plugin output in, one normalized change model out, whichever plugin wrote it.
//!
//! Each plugin has its own file; all three are pure functions of (message bytes, [`Catalog`]) with no
//! I/O, so they are tested with output captured from a real server and fuzzed with broken input.
//! A decoder returns an error for anything it does not understand and never panics.
//!
//! The rules every decoder follows, so that the three agree change for change:
//! - `Change::lsn` is the XLogData start position of the message that carried the change;
//!   `Commit::end_lsn` is the end of the commit record (pgoutput says it; for the text plugins it is
//!   the XLogData start of the COMMIT message).
//! - Values are mapped by type through the [`Catalog`] (pgoutput: the Relation message's type OIDs;
//!   wal2json: `typeoid`; test_decoding: the bracketed type names) and [`value::decode_text`]. A type
//!   or table missing from the catalog is a catalog miss, never a guess.
//! - `new`: the new tuple in column order; an unchanged-TOAST column takes its value from the old
//!   image when that image carries it, and is otherwise left out of `new` and named in `unchanged`.
//! - `old`: the old key for updates that changed it, the whole old row with REPLICA IDENTITY FULL
//!   (less unchanged-TOAST columns), the key (or whole row, FULL) for deletes; otherwise None. (wal2json
//!   prints `identity` for every update: it becomes `old` only for FULL tables or when a key value
//!   differs from the new row's.)
//! - `key`: the catalog's key columns of the table, projected from `new` (insert, update) or `old`
//!   (delete); None when the table has no key or the projection is empty.
//! - TRUNCATE gives one change per table, with no key, new or old.

pub mod catalog;
#[cfg(test)]
pub(crate) mod fixtures;
mod names;
pub mod pgoutput;
pub mod test_decoding;
pub mod value;
pub mod wal2json;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::ser::{Serialize, SerializeMap, Serializer};

pub use catalog::{Catalog, KeyColumns, TableInfo};
pub use value::{Value, ValueError};

use crate::lsn::Lsn;

/// A transaction id as plugins print it (32 bits).
pub type Xid = u32;

/// A commit time.
pub type Timestamp = DateTime<Utc>;

/// The output plugin of a replication slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Plugin {
    Pgoutput,
    Wal2json,
    #[value(name = "test_decoding")]
    TestDecoding,
}

impl Plugin {
    /// The name `CREATE_REPLICATION_SLOT` and `pg_replication_slots.plugin` use.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::Pgoutput => "pgoutput",
            Plugin::Wal2json => "wal2json",
            Plugin::TestDecoding => "test_decoding",
        }
    }

    /// A fresh decoder for a new replication stream.
    pub fn decoder(self) -> Box<dyn Decoder> {
        match self {
            Plugin::Pgoutput => Box::new(pgoutput::PgoutputDecoder::default()),
            Plugin::Wal2json => Box::new(wal2json::Wal2jsonDecoder::default()),
            Plugin::TestDecoding => Box::new(test_decoding::TestDecodingDecoder::default()),
        }
    }
}

/// Turns one plugin's messages into [`Event`]s.
pub trait Decoder: Send {
    /// Decodes one message that the server sent in an XLogData frame starting at WAL position `lsn`,
    /// appending what it holds to `out`. On error nothing is appended and the decoder's state is as
    /// before, so the caller may refresh the catalog (see [`DecodeError::is_catalog_miss`]) and retry.
    fn decode(
        &mut self,
        lsn: Lsn,
        data: &[u8],
        catalog: &Catalog,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError>;
}

/// What one plugin message holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Begin(Begin),
    Change(Change),
    Commit(Commit),
    /// A `pg_logical_emit_message` message.
    Message(Message),
    /// pgoutput protocol 2: the changes that follow, up to `StreamStop`, belong to the in-progress
    /// transaction `xid`.
    StreamStart {
        xid: Xid,
        first_segment: bool,
    },
    StreamStop,
    /// pgoutput protocol 2: the streamed transaction `xid` committed.
    StreamCommit {
        xid: Xid,
        commit: Commit,
    },
    /// pgoutput protocol 2: the streamed (sub)transaction `subxid` of `xid` rolled back.
    StreamAbort {
        xid: Xid,
        subxid: Xid,
    },
}

/// A transaction starts. Plugins differ in what they tell at this point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Begin {
    pub xid: Option<Xid>,
    /// The LSN of the commit record (pgoutput only).
    pub final_lsn: Option<Lsn>,
    pub committed_at: Option<Timestamp>,
}

/// A transaction ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// The end of the commit record: the position to confirm once the transaction is flushed.
    pub end_lsn: Lsn,
    pub committed_at: Option<Timestamp>,
}

/// A logical decoding message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub lsn: Lsn,
    pub transactional: bool,
    pub prefix: String,
    pub content: Vec<u8>,
}

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

/// One row change (or one truncated table), without its transaction's data.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The WAL position of the change itself.
    pub lsn: Lsn,
    pub table: Arc<TableName>,
    pub op: Op,
    /// The key columns' values: from `new` for inserts and updates, from `old` for deletes; None
    /// when the table has no key (and for truncate).
    pub key: Option<Row>,
    /// The row after the change, less `unchanged` columns; None for delete and truncate.
    pub new: Option<Row>,
    /// What the WAL carries of the row before: the old key when it changed, the whole row with
    /// REPLICA IDENTITY FULL, the key for deletes; None otherwise.
    pub old: Option<Row>,
    /// Unchanged TOAST columns the WAL did not carry and `old` could not fill.
    pub unchanged: Vec<Arc<str>>,
}

/// Column values in table order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row(pub Vec<(Arc<str>, Value)>);

impl Row {
    /// The value of `column`, if the row has it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(name, _)| &**name == column).map(|(_, value)| value)
    }

    /// Whether every column of this row has the same value in `other` (an old key that an update
    /// did not change).
    pub fn agrees_with(&self, other: &Row) -> bool {
        self.0.iter().all(|(name, value)| other.get(name) == Some(value))
    }

    /// The row restricted to `key`'s columns, in row order; None when the key is empty.
    pub fn project(&self, key: &KeyColumns) -> Option<Row> {
        let columns: Vec<_> = self.0.iter().filter(|(name, _)| key.contains(name)).cloned().collect();
        (!columns.is_empty()).then_some(Row(columns))
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(&**name, value)?;
        }
        map.end()
    }
}

/// A schema-qualified table name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName { schema: schema.into(), name: name.into() }
    }
}

/// `schema.name`, each part double-quoted unless it is a plain lowercase identifier, so that the
/// text is unambiguous whatever the names hold.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_identifier(f, &self.schema)?;
        f.write_str(".")?;
        write_identifier(f, &self.name)
    }
}

impl Serialize for TableName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn write_identifier(f: &mut fmt::Formatter<'_>, ident: &str) -> fmt::Result {
    let plain = ident.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        f.write_str(ident)
    } else {
        write!(f, "\"{}\"", ident.replace('"', "\"\""))
    }
}

/// A type as a plugin names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeRef {
    /// By OID (pgoutput, wal2json).
    Oid(u32),
    /// By `format_type` name (test_decoding).
    Name(String),
}

impl fmt::Display for TypeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypeRef::Oid(oid) => write!(f, "with oid {oid}"),
            TypeRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

/// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch) as a time.
pub fn timestamp_from_pg_micros(micros: i64) -> Option<Timestamp> {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    DateTime::from_timestamp_micros(micros.checked_add(PG_EPOCH_UNIX_MICROS)?)
}

/// Parses a timestamptz as PostgreSQL prints it with DateStyle ISO (`2026-11-28 10:42:39.369663+00`,
/// also `+05:30` offsets and no fraction).
pub fn parse_pg_timestamptz(text: &str) -> Option<Timestamp> {
    // chrono's %#z takes `+00`, `+0530` and `+05:30`.
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").ok().map(|t| t.with_timezone(&Utc))
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated at byte {at}: {needed} more bytes expected")]
    Truncated { at: usize, needed: usize },
    #[error("invalid length {len} at byte {at}")]
    InvalidLength { at: usize, len: i64 },
    #[error("unknown message tag {tag:?} at byte {at}")]
    UnknownTag { at: usize, tag: char },
    #[error("malformed message at byte {at}: expected {expected}")]
    Malformed { at: usize, expected: &'static str },
    #[error("invalid UTF-8 at byte {at}")]
    InvalidUtf8 { at: usize },
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("type {0} is not in the catalog")]
    UnknownType(TypeRef),
    #[error("table {0} is not in the catalog")]
    UnknownTable(TableName),
    #[error("column {column}: {source}")]
    Value {
        column: String,
        #[source]
        source: ValueError,
    },
    #[error("invalid JSON from the plugin")]
    Json(#[source] serde_json::Error),
}

impl DecodeError {
    /// The catalog lacks a type or table the message names: refresh it and decode the message again.
    pub fn is_catalog_miss(&self) -> bool {
        matches!(self, DecodeError::UnknownType(_) | DecodeError::UnknownTable(_) | DecodeError::Value { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_table_names_only_when_needed() {
        assert_eq!(TableName::new("public", "customers").to_string(), "public.customers");
        assert_eq!(TableName::new("My Schema", "a\"b").to_string(), "\"My Schema\".\"a\"\"b\"");
        assert_eq!(TableName::new("public", "Café").to_string(), "public.\"Café\"");
        assert_eq!(TableName::new("public", "1st").to_string(), "public.\"1st\"");
    }

    #[test]
    fn reads_commit_times() {
        let t = parse_pg_timestamptz("2026-11-28 10:42:39.369663+00").unwrap();
        assert_eq!(timestamp_from_pg_micros((t.timestamp_micros()) - 946_684_800_000_000), Some(t));
        assert_eq!(parse_pg_timestamptz("2026-11-28 16:12:39.369663+05:30"), Some(t));
        assert_eq!(
            parse_pg_timestamptz("2026-11-28 10:42:39+00").map(|t| t.timestamp()),
            Some(t.timestamp())
        );
        assert_eq!(parse_pg_timestamptz("yesterday"), None);
    }
}
