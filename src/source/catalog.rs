//! Loads what decoders need from the source database's catalog: its own types (domains, enums,
//! composites, their arrays) and, for every table, the columns that identify its rows.
//!
//! Two queries, pipelined on the SQL connection, whatever the number of tables: one over
//! `pg_type`, one over `pg_class` with each table's primary key and replica identity index. The
//! type rows have the columns of `builtin_types.tsv`, so built-in and user types resolve alike.

use futures_util::future::try_join;
use tokio_postgres::{Client, Row};

use super::SourceError;
use crate::decode::catalog::TypeRow;
use crate::decode::{Catalog, KeyColumns, TableInfo, TableName};

/// User types: every type with an oid at or above FirstNormalObjectId.
const TYPES: &str = "\
SELECT t.oid, format_type(t.oid, NULL), t.typtype::text, t.typbasetype, t.typelem,
       t.typlen = -1 AND t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc
           AND t.typname NOT IN ('int2vector', 'oidvector'),
       t.typdelim::text
FROM pg_type t
WHERE t.oid >= 16384";

/// Ordinary and partitioned tables outside the system schemas, with their primary key and replica
/// identity index columns in index order (INCLUDE columns are not part of a key).
const TABLES: &str = "\
WITH key_columns AS (
    SELECT i.indrelid, i.indisprimary, i.indisreplident,
           array_agg(a.attname::text ORDER BY k.ord) AS columns
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE (i.indisprimary OR i.indisreplident) AND k.ord <= i.indnkeyatts
    GROUP BY i.indexrelid, i.indrelid, i.indisprimary, i.indisreplident
)
SELECT n.nspname::text, c.relname::text, c.relreplident::text,
       (SELECT columns FROM key_columns WHERE indrelid = c.oid AND indisprimary),
       (SELECT columns FROM key_columns WHERE indrelid = c.oid AND indisreplident)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/// The built-in catalog plus the database's own types and every table's key columns.
pub async fn load_catalog(sql: &Client) -> Result<Catalog, SourceError> {
    let (types, tables) = try_join(sql.query(TYPES, &[]), sql.query(TABLES, &[])).await?;
    let mut catalog = Catalog::builtin();
    catalog.add_types(types.iter().map(type_row).collect::<Result<Vec<_>, _>>()?);
    for row in &tables {
        let (table, info) = table_info(row)?;
        catalog.set_table(table, info);
    }
    Ok(catalog)
}

fn type_row(row: &Row) -> Result<TypeRow, SourceError> {
    Ok(TypeRow {
        oid: row.try_get(0)?,
        name: row.try_get(1)?,
        typtype: first_byte(row.try_get(2)?, b'b'),
        base_type: row.try_get(3)?,
        element: row.try_get(4)?,
        is_array: row.try_get(5)?,
        delimiter: first_byte(row.try_get(6)?, b','),
    })
}

/// A table and its key: the replica identity index when the identity is set to one (deletes carry
/// those columns), else the primary key, else all columns with REPLICA IDENTITY FULL, else none.
fn table_info(row: &Row) -> Result<(TableName, TableInfo), SourceError> {
    let table = TableName::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?);
    let replica_identity: String = row.try_get(2)?;
    let primary_key: Option<Vec<String>> = row.try_get(3)?;
    let identity_index: Option<Vec<String>> = row.try_get(4)?;
    let key = match (primary_key, identity_index) {
        (_, Some(columns)) if replica_identity == "i" => KeyColumns::Columns(columns),
        (Some(columns), _) | (None, Some(columns)) => KeyColumns::Columns(columns),
        (None, None) if replica_identity == "f" => KeyColumns::All,
        (None, None) => KeyColumns::None,
    };
    Ok((table, TableInfo { key, full_identity: replica_identity == "f" }))
}

/// A `"char"` column read as text (`"char"` '\0' reads as the empty string).
fn first_byte(text: String, default: u8) -> u8 {
    text.bytes().next().unwrap_or(default)
}
