//! `PUT`, `GET` and `DELETE /subscriptions/{name}`, `GET /subscriptions`: the subscriptions the
//! delivery workers serve (see [`crate::deliver`]), stored in `pubsubpull.subscription` of the
//! feed database, with their status.
//!
//! A `PUT` creates (201) or replaces (200) a subscription. A replacement keeps the cursor unless
//! the body gives `from`: changing a URL or a filter never replays nor skips changes, and a
//! `from` is the one way to move a subscription. Every `PUT` restarts the subscription's worker
//! (a batch in flight is sent again). The secret is never served back: `"secret": true|false`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_postgres::Row;

use super::feed::parse_table_name;
use super::{format_position, parse_position, ApiError, ApiState, SubscriberAllow, MAX_BODY};
use crate::deliver::sign::Secret;
use crate::deliver::subscription::{self, Operations};

/// A `PUT` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Definition {
    url: String,
    tables: Vec<String>,
    operations: Option<Vec<String>>,
    from: Option<String>,
    batch_size: Option<i64>,
    secret: Option<String>,
    paused: Option<bool>,
}

/// Where a subscription starts.
#[derive(Debug, PartialEq)]
enum From {
    Now,
    Beginning,
    After(i64),
}

/// A definition checked, as stored.
#[derive(Debug)]
struct Checked {
    url: String,
    tables: Vec<String>,
    schemas: Vec<String>,
    names: Vec<String>,
    operations: Vec<&'static str>,
    from: Option<From>,
    batch_size: i32,
    secret: Option<String>,
    paused: bool,
}

fn check(definition: Definition, allow: &SubscriberAllow) -> Result<Checked, ApiError> {
    let url = subscription::parse_url(&definition.url).map_err(|reason| {
        ApiError::bad_request(
            "url is not an http or https URL",
            json!({ "url": definition.url, "reason": reason }),
        )
    })?;
    if !allow.allows(&url) {
        return Err(ApiError::bad_request(
            "url is not allowed by the subscriber allowlist",
            json!({ "url": definition.url, "fix": "an address PUBSUBPULL_SUBSCRIBER_ALLOW lists" }),
        ));
    }
    if definition.tables.is_empty() {
        return Err(ApiError::bad_request(
            "tables is empty",
            json!({ "expected": "the tracked tables to deliver, e.g. [\"public.orders\"]" }),
        ));
    }
    let mut checked = Checked {
        url: url.into(),
        tables: Vec::new(),
        schemas: Vec::new(),
        names: Vec::new(),
        operations: Operations::ALL.names(),
        from: None,
        batch_size: subscription::DEFAULT_BATCH_SIZE,
        secret: None,
        paused: definition.paused.unwrap_or(false),
    };
    for table in definition.tables {
        let (schema, name) = parse_table_name(&table).ok_or_else(|| {
            ApiError::bad_request(
                "table is not a table name",
                json!({ "table": table, "expected": "schema.table as in the change objects, e.g. public.orders" }),
            )
        })?;
        if !checked.tables.contains(&table) {
            checked.schemas.push(schema);
            checked.names.push(name);
            checked.tables.push(table);
        }
    }
    if let Some(operations) = definition.operations {
        let set = Operations::parse(operations.iter().map(String::as_str)).map_err(|op| {
            ApiError::bad_request(
                "unknown operation",
                json!({ "operation": op, "expected": subscription::OPERATION_NAMES }),
            )
        })?;
        if set.is_empty() {
            return Err(ApiError::bad_request(
                "operations is empty",
                json!({ "expected": subscription::OPERATION_NAMES }),
            ));
        }
        checked.operations = set.names();
    }
    if let Some(size) = definition.batch_size {
        let range = subscription::BATCH_SIZES;
        checked.batch_size = i32::try_from(size).ok().filter(|n| range.contains(n)).ok_or_else(|| {
            ApiError::bad_request(
                "batch_size is out of range",
                json!({ "batch_size": size, "expected": format!("an integer from {} to {}", range.start(), range.end()) }),
            )
        })?;
    }
    if let Some(secret) = definition.secret {
        if let Err(error) = Secret::parse(&secret) {
            // The secret itself is never echoed.
            return Err(ApiError::bad_request(
                "secret is not a Standard Webhooks secret",
                json!({ "reason": error.to_string(), "expected": "whsec_ followed by the base64 of 24 to 64 random bytes" }),
            ));
        }
        checked.secret = Some(secret);
    }
    checked.from = definition
        .from
        .map(|from| match from.as_str() {
            "now" => Ok(From::Now),
            "beginning" => Ok(From::Beginning),
            position => parse_position(position).map(From::After).ok_or_else(|| {
                ApiError::bad_request(
                    "from is not now, beginning or a position",
                    json!({ "from": from, "expected": "\"now\", \"beginning\" or a position as served: 16 hex digits" }),
                )
            }),
        })
        .transpose()?;
    Ok(checked)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if subscription::is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad subscription name",
            json!({ "name": name, "expected": "1 to 100 characters of A-Z a-z 0-9 _ . -" }),
        ))
    }
}

/// The feed's last stored position and its oldest retained one (the head + 1 when it is empty).
const BOUNDS: &str = "SELECT greatest(coalesce((SELECT max(position) FROM pubsubpull.feed), 0), \
     coalesce((SELECT max(last_position) FROM pubsubpull.feed_checkpoint), 0))";

/// `PUT /subscriptions/{name}`.
pub(super) async fn put(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let body =
        axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::TooLarge { limit: MAX_BODY })?;
    let definition: Definition = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request("the body is not a subscription", json!({ "reason": error.to_string() }))
    })?;
    let checked = check(definition, &state.config.subscriber_allow)?;
    untracked(&state, &checked).await?;

    let client = state.feed.client().await?;
    let row = client
        .query_one(
            &format!("SELECT head, coalesce((SELECT min(position) FROM pubsubpull.feed), head + 1) FROM ({BOUNDS}) b(head)"),
            &[],
        )
        .await?;
    let (head, oldest): (i64, i64) = (row.get(0), row.get(1));
    let cursor = match checked.from {
        None | Some(From::Now) => head,
        Some(From::Beginning) => oldest - 1,
        Some(From::After(position)) if position >= oldest - 1 && position <= head => position,
        Some(From::After(position)) => {
            return Err(ApiError::bad_request(
                "from is outside the retained feed",
                json!({ "from": format_position(position), "oldest": format_position(oldest),
                        "last": format_position(head) }),
            ));
        }
    };
    let row = client
        .query_one(
            "INSERT INTO pubsubpull.subscription AS s (name, url, tables, operations, batch_size, secret, paused, cursor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (name) DO UPDATE SET url = excluded.url, tables = excluded.tables,
                 operations = excluded.operations, batch_size = excluded.batch_size, secret = excluded.secret,
                 paused = excluded.paused, cursor = CASE WHEN $9 THEN excluded.cursor ELSE s.cursor END,
                 generation = s.generation + 1, attempts = 0, next_attempt_at = NULL, updated_at = now()
             RETURNING xmax = 0",
            &[
                &name,
                &checked.url,
                &checked.tables,
                &checked.operations,
                &checked.batch_size,
                &checked.secret,
                &checked.paused,
                &cursor,
                &checked.from.is_some(),
            ],
        )
        .await?;
    let created: bool = row.get(0);
    state.subscriptions.notify_one();
    tracing::info!(subscription = %name, created, cursor, paused = checked.paused, "subscription stored");
    let view = view_of(&state, Some(&name)).await?.into_iter().next().unwrap_or(Value::Null);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

/// Refuses tables that are not tracked now (a subscription to them would never get a change).
async fn untracked(state: &ApiState, checked: &Checked) -> Result<(), ApiError> {
    const SQL: &str = "SELECT q.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(s, n, i) \
         WHERE NOT EXISTS (SELECT 1 FROM pubsubpull.tracked t \
             WHERE t.schema_name = q.s AND t.table_name = q.n AND t.untracked_lsn IS NULL)";
    let client = state.source.client().await?;
    let rows = client.query(SQL, &[&checked.schemas, &checked.names]).await?;
    let untracked: Vec<&String> = rows
        .iter()
        .filter_map(|row| usize::try_from(row.get::<_, i64>(0) - 1).ok())
        .filter_map(|index| checked.tables.get(index))
        .collect();
    if untracked.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "tables are not tracked",
            json!({ "tables": untracked, "hint": "pubsubpull track TABLE" }),
        ))
    }
}

/// `GET /subscriptions`.
pub(super) async fn list(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let subscriptions = view_of(&state, None).await?;
    Ok(Json(json!({ "subscriptions": subscriptions })).into_response())
}

/// `GET /subscriptions/{name}`.
pub(super) async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    match view_of(&state, Some(&name)).await?.into_iter().next() {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(not_found(&name)),
    }
}

/// `DELETE /subscriptions/{name}`.
pub(super) async fn delete(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let client = state.feed.client().await?;
    let deleted = client.execute("DELETE FROM pubsubpull.subscription WHERE name = $1", &[&name]).await?;
    if deleted == 0 {
        return Err(not_found(&name));
    }
    state.subscriptions.notify_one();
    tracing::info!(subscription = %name, "subscription deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound { detail: json!({ "subscription": name }) }
}

/// Subscriptions (one, or all by name) with their status.
async fn view_of(state: &ApiState, name: Option<&str>) -> Result<Vec<Value>, ApiError> {
    const TIME: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";
    let sql = format!(
        "WITH b AS (SELECT head, coalesce((SELECT min(position) FROM pubsubpull.feed), head + 1) AS oldest \
             FROM ({BOUNDS}) h(head)) \
         SELECT s.name, s.url, s.tables, s.operations, s.batch_size, s.secret IS NOT NULL, s.paused, s.cursor, \
             b.head, b.oldest, s.attempts, s.last_error, \
             to_char(s.last_error_at AT TIME ZONE 'UTC', {TIME}), to_char(s.next_attempt_at AT TIME ZONE 'UTC', {TIME}), \
             to_char(s.delivered_at AT TIME ZONE 'UTC', {TIME}), to_char(s.created_at AT TIME ZONE 'UTC', {TIME}), \
             to_char(s.updated_at AT TIME ZONE 'UTC', {TIME}), \
             (SELECT extract(epoch FROM now() - t.committed_at)::float8 \
                 FROM pubsubpull.feed f JOIN pubsubpull.feed_transaction t USING (txn) \
                 WHERE f.position > s.cursor AND f.table_name = ANY(s.tables) ORDER BY f.position LIMIT 1) \
         FROM pubsubpull.subscription s, b WHERE $1::text IS NULL OR s.name = $1 ORDER BY s.name"
    );
    let client = state.feed.client().await?;
    let rows = client.query(&sql, &[&name]).await?;
    Ok(rows.iter().map(view).collect())
}

/// One row of [`view_of`] as served.
fn view(row: &Row) -> Value {
    let (paused, cursor, head, oldest, attempts): (bool, i64, i64, i64, i32) =
        (row.get(6), row.get(7), row.get(8), row.get(9), row.get(10));
    let state = if paused {
        "paused"
    } else if cursor + 1 < oldest {
        "behind_retention"
    } else if attempts > 0 {
        "retrying"
    } else {
        "active"
    };
    json!({
        "name": row.get::<_, &str>(0),
        "url": row.get::<_, &str>(1),
        "tables": row.get::<_, Vec<String>>(2),
        "operations": row.get::<_, Vec<String>>(3),
        "batch_size": row.get::<_, i32>(4),
        "secret": row.get::<_, bool>(5),
        "paused": paused,
        "status": {
            "state": state,
            "delivered": format_position(cursor),
            "delivered_at": row.get::<_, Option<&str>>(14),
            "lag": {
                "changes": (head - cursor).max(0),
                "seconds": row.get::<_, Option<f64>>(17).map_or(0.0, |s| s.max(0.0)),
            },
            "attempts": attempts,
            "last_error": row.get::<_, Option<&str>>(11),
            "last_error_at": row.get::<_, Option<&str>>(12),
            "next_attempt_at": row.get::<_, Option<&str>>(13),
        },
        "created_at": row.get::<_, Option<&str>>(15),
        "updated_at": row.get::<_, Option<&str>>(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(value: Value) -> Result<Checked, ApiError> {
        let definition =
            serde_json::from_value(value).map_err(|e| ApiError::bad_request("parse", e.to_string()))?;
        check(definition, &SubscriberAllow::default())
    }

    #[test]
    fn definitions_are_checked() {
        let checked = definition(json!({
            "url": "https://example.com/hook", "tables": ["public.a", "public.a", "shop.\"B\""],
            "operations": ["delete", "insert"], "from": "0000000000000010", "batch_size": 5,
        }))
        .unwrap();
        assert_eq!(checked.tables, ["public.a", "shop.\"B\""]);
        assert_eq!(
            (checked.schemas.as_slice(), checked.names.as_slice()),
            (&["public".to_owned(), "shop".to_owned()][..], &["a".to_owned(), "B".to_owned()][..])
        );
        assert_eq!(checked.operations, ["insert", "delete"]);
        assert_eq!((checked.from, checked.batch_size), (Some(From::After(16)), 5));
        let defaults = definition(json!({"url": "http://h/", "tables": ["public.a"]})).unwrap();
        assert_eq!(defaults.operations, Operations::ALL.names());
        assert_eq!((defaults.from, defaults.batch_size, defaults.paused), (None, 100, false));
        for bad in [
            json!({"url": "ftp://h/", "tables": ["public.a"]}),
            json!({"url": "h/hook", "tables": ["public.a"]}),
            json!({"url": "http://h/", "tables": []}),
            json!({"url": "http://h/", "tables": ["a"]}),
            json!({"url": "http://h/", "tables": ["public.a"], "operations": ["upsert"]}),
            json!({"url": "http://h/", "tables": ["public.a"], "operations": []}),
            json!({"url": "http://h/", "tables": ["public.a"], "batch_size": 0}),
            json!({"url": "http://h/", "tables": ["public.a"], "batch_size": 1001}),
            json!({"url": "http://h/", "tables": ["public.a"], "secret": "whsec_c2hvcnQ="}),
            json!({"url": "http://h/", "tables": ["public.a"], "from": "later"}),
        ] {
            assert!(matches!(definition(bad.clone()), Err(ApiError::BadRequest { .. })), "{bad}");
        }
    }
}
