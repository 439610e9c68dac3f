//! `GET /tables/{schema.table}/rows?after=CURSOR&limit=N`: every current row of a tracked table,
//! in key order (the primary key, else the replica identity index), a page at a time: the backfill
//! that comes before following the feed.
//!
//! Each page answers `{"rows": [...], "next": CURSOR | null, "feed_after": POS}`. Following the
//! feed after `feed_after` once the last page is read converges to the table's exact state:
//! `feed_after` is the feed's last stored position read *before* the first page's rows, so every
//! change the pages may have missed comes after it (changes the pages already show may come again,
//! and applying them again in order is harmless). The cursor carries `feed_after` from page to page,
//! so every page of one iteration gives the same one.
//!
//! Values are mapped as in the change objects (PostgreSQL's text output through the same mapping).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::types::ToSql;

use super::feed::{format_position, parse_table_name};
use super::{ApiError, ApiState};
use crate::decode::value::{decode_text, TypeKind, Value};
use crate::decode::{Catalog, Row};
use crate::source::catalog::load_catalog;
use crate::source::connection::quote_identifier;

const DEFAULT_LIMIT: i64 = 1000;
const MAX_LIMIT: i64 = 10_000;

/// The columns of a table tracked now, in order, quoted, with their type and their place in the
/// key (primary key first, else the replica identity index); no rows when it is not tracked now.
const COLUMNS: &str = "\
WITH t AS (
    SELECT relid FROM pubsubpull.tracked
    WHERE schema_name = $1 AND table_name = $2 AND untracked_lsn IS NULL
), k AS (
    SELECT i.indkey::int2[] AS columns, i.indnkeyatts FROM pg_index i JOIN t ON i.indrelid = t.relid
    WHERE i.indisprimary OR i.indisreplident ORDER BY i.indisprimary DESC LIMIT 1
)
SELECT a.attname::text, quote_ident(a.attname), a.atttypid, format_type(a.atttypid, a.atttypmod),
       (SELECT u.ord FROM k, unnest(k.columns) WITH ORDINALITY AS u(attnum, ord)
        WHERE u.attnum = a.attnum AND u.ord <= k.indnkeyatts)
FROM pg_attribute a JOIN t ON a.attrelid = t.relid
WHERE a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// The feed's last stored position.
const LAST_POSITION: &str = "SELECT coalesce(max(last_position), 0) FROM pubsubpull.feed_checkpoint";

/// Where an iteration stands: the key of the last row given (as text), and the feed position
/// to follow afterwards. Sent to the client as base64url JSON: opaque, and safe in a URL.
#[derive(Serialize, Deserialize)]
struct Cursor {
    key: Vec<String>,
    feed_after: i64,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("cursors serialize"))
    }

    fn decode(text: &str) -> Option<Cursor> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).ok()?)
            .ok()
            .filter(|c: &Cursor| c.feed_after >= 0)
    }
}

/// A column of the table: its name, quoted for SQL, its type and that type's name for casts.
struct Column {
    name: Arc<str>,
    quoted: String,
    type_oid: u32,
    type_name: String,
}

/// `GET /tables/{table}/rows`.
pub(super) async fn rows(
    State(state): State<ApiState>,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (after, limit) = parse_query(query.as_deref().unwrap_or(""))?;
    let (schema, name) = parse_table_name(&table).ok_or_else(|| {
        ApiError::bad_request(
            "not a table name",
            json!({ "table": table, "expected": "schema.table as in the change objects, e.g. public.orders" }),
        )
    })?;
    let source = state.source.client().await?;
    let (columns, key) = table_columns(&source, &schema, &name).await?;
    if columns.is_empty() {
        return Err(ApiError::NotFound { detail: json!({ "table": table, "reason": "not tracked" }) });
    }
    if key.is_empty() {
        return Err(ApiError::Conflict {
            error: "the table has no primary key or replica identity index to iterate in order",
            detail: json!({ "table": table, "fix": "add a primary key" }),
        });
    }
    let (after_key, feed_after) = match after {
        Some(cursor) if cursor.key.len() != key.len() => {
            return Err(ApiError::bad_request(
                "after is not a cursor of this table",
                json!({ "table": table }),
            ));
        }
        Some(cursor) => (Some(cursor.key), cursor.feed_after),
        // Read before the rows: see the module's comment.
        None => (None, state.feed.client().await?.query_one(LAST_POSITION, &[]).await?.get(0)),
    };

    let builtin = Catalog::builtin();
    let catalog = match columns.iter().all(|c| builtin.type_by_oid(c.type_oid).is_some()) {
        true => builtin,
        false => load_catalog(&source).await.map_err(|error| {
            tracing::warn!(error = %error, "cannot load the source's types");
            ApiError::Down
        })?,
    };
    let sql = select_page(&schema, &name, &columns, &key, after_key.is_some());
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(after_key) = &after_key {
        params.extend(after_key.iter().map(|value| value as &(dyn ToSql + Sync)));
    }
    params.push(&limit);
    let found = source.query(&sql, &params).await.map_err(|error| {
        // Class 22, data exception: a cursor whose key does not cast to the key's types.
        match error.code().is_some_and(|code| code.code().starts_with("22")) {
            true => ApiError::bad_request("after is not a cursor of this table", json!({ "table": table })),
            false => ApiError::from(error),
        }
    })?;

    let mut rows = Vec::with_capacity(found.len());
    for row in &found {
        let mut values = Vec::with_capacity(columns.len());
        for (index, column) in columns.iter().enumerate() {
            let value = match row.get::<_, Option<&str>>(index) {
                None => Value::Null,
                Some(text) => {
                    let kind = catalog.type_by_oid(column.type_oid).unwrap_or(TypeKind::TEXT);
                    decode_text(kind, text).unwrap_or_else(|error| {
                        tracing::warn!(error = %error, column = %column.name, "a value served as text");
                        Value::Text(text.to_owned())
                    })
                }
            };
            values.push((Arc::clone(&column.name), value));
        }
        rows.push(Row(values));
    }
    let next = match found.last() {
        Some(last) if found.len() as i64 == limit => {
            let key = key.iter().map(|&index| last.get::<_, String>(index)).collect();
            Some(Cursor { key, feed_after }.encode())
        }
        _ => None,
    };
    Ok(Json(json!({ "rows": rows, "next": next, "feed_after": format_position(feed_after) })).into_response())
}

/// `after` (decoded) and `limit`.
fn parse_query(query: &str) -> Result<(Option<Cursor>, i64), ApiError> {
    let (mut after, mut limit) = (None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "after" if after.is_none() => {
                after = Some(Cursor::decode(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "after is not a cursor",
                        json!({ "after": value, "expected": "the next of the previous page, as it was given" }),
                    )
                })?);
            }
            "limit" if limit.is_none() => {
                limit = Some(value.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                    ApiError::bad_request(
                        "limit is out of range",
                        json!({ "limit": value, "expected": format!("an integer from 1 to {MAX_LIMIT}") }),
                    )
                })?);
            }
            "after" | "limit" => {
                return Err(ApiError::bad_request("repeated query parameter", json!({ "parameter": key })));
            }
            _ => return Err(ApiError::bad_request("unknown query parameter", json!({ "parameter": key }))),
        }
    }
    Ok((after, limit.unwrap_or(DEFAULT_LIMIT)))
}

/// The table's columns and the indexes (into them) of its key columns, in key order; no columns
/// when the table is not tracked now.
async fn table_columns(
    source: &tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> Result<(Vec<Column>, Vec<usize>), ApiError> {
    let found = source.query(COLUMNS, &[&schema, &name]).await?;
    let mut key: Vec<(i64, usize)> = Vec::new();
    let mut columns = Vec::with_capacity(found.len());
    for (index, row) in found.iter().enumerate() {
        if let Some(place) = row.get::<_, Option<i64>>(4) {
            key.push((place, index));
        }
        columns.push(Column {
            name: Arc::from(row.get::<_, &str>(0)),
            quoted: row.get(1),
            type_oid: row.get(2),
            type_name: row.get(3),
        });
    }
    key.sort_unstable();
    Ok((columns, key.into_iter().map(|(_, index)| index).collect()))
}

/// `SELECT` of one page: every column as text, after the cursor's key when there is one ($1…),
/// in key order, at most the last parameter's number of rows.
fn select_page(schema: &str, name: &str, columns: &[Column], key: &[usize], after: bool) -> String {
    let list = |parts: Vec<String>| parts.join(", ");
    let table = format!("{}.{}", quote_identifier(schema), quote_identifier(name));
    let select = list(columns.iter().map(|c| format!("r.{}::text", c.quoted)).collect());
    // Qualified: a bare name in ORDER BY would sort by the output column, the text.
    let order = list(key.iter().map(|&i| format!("r.{}", columns[i].quoted)).collect());
    let filter = match after {
        true => {
            let bound =
                key.iter().enumerate().map(|(n, &i)| format!("${}::text::{}", n + 1, columns[i].type_name));
            format!("WHERE ({order}) > ({})", list(bound.collect()))
        }
        false => String::new(),
    };
    let limit = if after { key.len() + 1 } else { 1 };
    format!("SELECT {select} FROM {table} AS r {filter} ORDER BY {order} LIMIT ${limit}")
}
