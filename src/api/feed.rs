//! `GET /feed?after=POS&limit=N&table=T&wait=S`: the changes after a position, in feed order.
//!
//! A change is served as it was stored: its position, the stored body, then its transaction's
//! fields, assembled as text (nothing is parsed again). Positions are the feed's bigint as 16
//! lowercase hex digits, so that they sort as the feed does; anything else is rejected.

use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, RowStream};

use super::{ApiError, ApiState};
use crate::decode::TableName;
use crate::object;

const DEFAULT_LIMIT: i64 = 1000;
const MAX_LIMIT: i64 = 10_000;
const MAX_WAIT: Duration = Duration::from_secs(60);
const NDJSON: &str = "application/x-ndjson";

/// A page of changes after $1 (only of tables $2, when any), at most $3, each row with the
/// oldest position retained as the page was read. Only the segments that can hold a position past
/// $1 are read.
const QUERY: &str = "SELECT f.position, f.table_name, f.body, t.xid::text, \
     to_char(t.committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), t.context::text, \
     (SELECT min(first_position) FROM pubsubpull.feed_segment) \
     FROM pubsubpull.feed f JOIN pubsubpull.feed_transaction t ON t.segment = f.segment AND t.txn = f.txn \
     WHERE f.position > $1 \
       AND f.segment >= (SELECT coalesce(max(segment), 0) FROM pubsubpull.feed_segment WHERE first_position <= $1 + 1) \
       AND (cardinality($2::text[]) = 0 OR f.table_name = ANY($2)) \
     ORDER BY f.position LIMIT $3";

/// The oldest position the feed holds (or will hold first, when it is empty).
const OLDEST: &str = "SELECT min(first_position) FROM pubsubpull.feed_segment";

/// `position` as served: 16 lowercase hex digits.
pub fn format_position(position: i64) -> String {
    format!("{position:016x}")
}

/// A served position back to the feed's bigint: exactly 16 lowercase hex digits, not negative.
pub fn parse_position(text: &str) -> Option<i64> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    i64::from_str_radix(text, 16).ok()
}

/// What a pull asks for.
#[derive(Debug, PartialEq)]
struct Pull {
    /// Where the pull starts; None: at the oldest change retained.
    after: Option<i64>,
    limit: i64,
    /// As the change objects name them, and as (schema, name).
    tables: Vec<String>,
    schemas: Vec<String>,
    names: Vec<String>,
    wait: Duration,
}

fn parse_query(query: &str) -> Result<Pull, ApiError> {
    let mut pull = Pull {
        after: None,
        limit: DEFAULT_LIMIT,
        tables: Vec::new(),
        schemas: Vec::new(),
        names: Vec::new(),
        wait: Duration::ZERO,
    };
    let (mut after, mut limit, mut wait) = (None, None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let once = |seen: &mut Option<()>, name: &str| match seen.replace(()) {
            Some(()) => Err(ApiError::bad_request("repeated query parameter", json!({ "parameter": name }))),
            None => Ok(()),
        };
        match &*key {
            "after" => {
                once(&mut after, "after")?;
                pull.after = Some(parse_position(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "after is not a position",
                        json!({ "after": value, "expected": "a position as served: 16 hex digits" }),
                    )
                })?);
            }
            "limit" => {
                once(&mut limit, "limit")?;
                pull.limit = value.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                    ApiError::bad_request(
                        "limit is out of range",
                        json!({ "limit": value, "expected": format!("an integer from 1 to {MAX_LIMIT}") }),
                    )
                })?;
            }
            "wait" => {
                once(&mut wait, "wait")?;
                pull.wait = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && (0.0..=MAX_WAIT.as_secs_f64()).contains(s))
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "wait is out of range",
                            json!({ "wait": value, "expected": format!("seconds from 0 to {}", MAX_WAIT.as_secs()) }),
                        )
                    })?;
            }
            "table" => {
                let (schema, name) = parse_table_name(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "table is not a table name",
                        json!({ "table": value, "expected": "schema.table as in the change objects, e.g. public.orders" }),
                    )
                })?;
                pull.schemas.push(schema);
                pull.names.push(name);
                pull.tables.push(value.into_owned());
            }
            _ => {
                return Err(ApiError::bad_request("unknown query parameter", json!({ "parameter": key })));
            }
        }
    }
    Ok(pull)
}

/// `(schema, name)` of a table name as the change objects write it: `schema.name`, each part plain
/// (lowercase, digits, `_`, `$`) or double-quoted, exactly as they would be written.
pub(crate) fn parse_table_name(text: &str) -> Option<(String, String)> {
    let (schema, rest) = parse_identifier(text)?;
    let (name, rest) = parse_identifier(rest.strip_prefix('.')?)?;
    (rest.is_empty() && TableName::new(&schema, &name).to_string() == text).then_some((schema, name))
}

/// Of the tables a pull names, those never tracked (not in the source's tracking registry, now
/// or before). When the source cannot be asked, the filter is applied unchecked: the feed is
/// served whether or not the source is up.
async fn never_tracked(state: &ApiState, pull: &Pull) -> Vec<String> {
    const SQL: &str = "SELECT q.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(s, n, i) \
         WHERE NOT EXISTS (SELECT 1 FROM pubsubpull.tracked t WHERE t.schema_name = q.s AND t.table_name = q.n)";
    let rows = match state.source.client().await {
        Ok(client) => client.query(SQL, &[&pull.schemas, &pull.names]).await,
        Err(_) => return Vec::new(),
    };
    match rows {
        Ok(rows) => rows
            .iter()
            .filter_map(|row| usize::try_from(row.get::<_, i64>(0) - 1).ok())
            .filter_map(|index| pull.tables.get(index).cloned())
            .collect(),
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the tracking registry; table filter unchecked");
            Vec::new()
        }
    }
}

/// One identifier at the start of `text` (plain or quoted) and what follows it.
fn parse_identifier(text: &str) -> Option<(String, &str)> {
    if let Some(mut rest) = text.strip_prefix('"') {
        let mut ident = String::new();
        loop {
            let end = rest.find('"')?;
            ident.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('"') {
                Some(after) => {
                    ident.push('"');
                    rest = after;
                }
                None => return (!ident.is_empty()).then_some((ident, rest)),
            }
        }
    }
    let end = text.find('.').unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
}

/// `GET /feed`.
pub(super) async fn pull(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pull = parse_query(query.as_deref().unwrap_or(""))?;
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|t| t.split(';').next().unwrap_or("").trim() == NDJSON));
    if !pull.tables.is_empty() {
        let unknown = never_tracked(&state, &pull).await;
        if !unknown.is_empty() {
            return Err(ApiError::NotFound {
                detail: json!({ "tables": unknown, "reason": "never tracked" }),
            });
        }
    }
    let deadline = Instant::now() + pull.wait;
    let mut stored = state.stored.clone();
    let fetch = pull.limit + 1;
    let after = pull.after.unwrap_or(0);
    let params: [&(dyn ToSql + Sync); 3] = [&after, &pull.tables, &fetch];
    let (rows, first) = loop {
        // Marked seen before the query: a commit after it wakes the wait below.
        stored.borrow_and_update();
        let client = state.feed.client().await?;
        let mut rows = Box::pin(client.query_raw(QUERY, params).await?);
        let first = rows.next().await.transpose()?;
        if first.is_some() || Instant::now() >= deadline {
            break (rows, first);
        }
        match tokio::time::timeout_at(deadline, stored.changed()).await {
            Ok(Ok(())) => continue,
            // The streamer stopped (the process ends) or time is up: nothing new.
            Ok(Err(_)) | Err(_) => break (rows, first),
        }
    };
    // Read with the page (or after an empty one): segments are dropped oldest first, so if what
    // follows `after` was retained then, the page missed nothing.
    let oldest: Option<i64> = match &first {
        Some(row) => row.get(6),
        None => state.feed.client().await?.query_one(OLDEST, &[]).await?.get(0),
    };
    if let (Some(after), Some(oldest)) = (pull.after, oldest) {
        if after + 1 < oldest {
            return Err(ApiError::Gone {
                detail: json!({ "after": format_position(after), "oldest": format_position(oldest) }),
            });
        }
    }
    let page = Page {
        rows,
        // A RowStream must not be polled again once it has ended.
        exhausted: first.is_none(),
        first,
        limit: pull.limit,
        count: 0,
        next: after,
        oldest,
        ndjson,
        started: false,
        done: false,
    };
    let content_type = if ndjson { NDJSON } else { "application/json" };
    let body = Body::from_stream(futures_util::stream::unfold(page, Page::chunk));
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response())
}

/// A page of changes as it is streamed out: rows are turned into text as they arrive, in chunks of
/// about [`CHUNK`] bytes, so that a page of big changes is never held whole.
struct Page {
    rows: Pin<Box<RowStream>>,
    /// Whether `rows` has ended.
    exhausted: bool,
    /// The first row, read to know whether a long poll has something.
    first: Option<Row>,
    limit: i64,
    count: i64,
    /// The last position written (or `after`).
    next: i64,
    /// The oldest position retained.
    oldest: Option<i64>,
    ndjson: bool,
    started: bool,
    done: bool,
}

/// Bytes gathered before they are sent.
const CHUNK: usize = 64 << 10;

impl Page {
    /// The next chunk of the body; a failing query ends the body early (the client sees a cut
    /// response, never a wrong one).
    async fn chunk(mut self) -> Option<(Result<String, tokio_postgres::Error>, Page)> {
        if self.done {
            return None;
        }
        let mut out = String::new();
        if !self.started && !self.ndjson {
            out.push_str("{\"changes\":[");
        }
        self.started = true;
        loop {
            let row = match self.first.take() {
                Some(row) => Some(row),
                None if self.exhausted => None,
                None => match self.rows.next().await.transpose() {
                    Ok(row) => {
                        self.exhausted = row.is_none();
                        row
                    }
                    Err(error) => {
                        tracing::error!(error = %error, "feed query failed while streaming a page");
                        self.done = true;
                        return Some((Err(error), self));
                    }
                },
            };
            match row {
                Some(row) if self.count < self.limit => {
                    if self.count > 0 && !self.ndjson {
                        out.push(',');
                    }
                    self.next = row.get(0);
                    let (table, body) = (row.get(1), row.get(2));
                    encode_change(&mut out, self.next, table, body, row.get(3), row.get(4), row.get(5));
                    if self.ndjson {
                        out.push('\n');
                    }
                    self.count += 1;
                    if out.len() >= CHUNK {
                        return Some((Ok(out), self));
                    }
                }
                // The row past the limit says there is more; the end of the rows that there is not.
                more => {
                    if !self.ndjson {
                        let up_to_date = more.is_none();
                        let oldest =
                            self.oldest.map_or("null".to_owned(), |p| format!("\"{}\"", format_position(p)));
                        out.push_str(&format!(
                            "],\"next\":\"{}\",\"up_to_date\":{up_to_date},\"oldest\":{oldest}}}",
                            format_position(self.next)
                        ));
                    }
                    self.done = true;
                    return Some((Ok(out), self));
                }
            }
        }
    }
}

/// Appends `{"position":…` + the stored body's fields (see [`object::expand_stored`]) + the
/// transaction's fields.
pub(crate) fn encode_change(
    out: &mut String,
    position: i64,
    table: &str,
    body: &str,
    xid: Option<&str>,
    committed_at: Option<&str>,
    context: Option<&str>,
) {
    out.reserve(body.len() + table.len() + 160 + context.map_or(0, str::len));
    out.push_str("{\"position\":\"");
    out.push_str(&format_position(position));
    out.push_str("\",");
    object::expand_stored(out, table, body);
    out.push_str(",\"xid\":");
    out.push_str(xid.unwrap_or("null"));
    out.push_str(",\"committed_at\":");
    match committed_at {
        Some(at) => {
            out.push('"');
            out.push_str(at);
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"context\":");
    out.push_str(context.unwrap_or("null"));
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_strictly() {
        assert_eq!(format_position(26), "000000000000001a");
        assert_eq!(parse_position("000000000000001a"), Some(26));
        assert_eq!(parse_position(&format_position(i64::MAX)), Some(i64::MAX));
        for bad in [
            "",
            "1a",
            "000000000000001A",
            "+00000000000001a",
            "8000000000000000",
            "0000000000000001a",
            "zzzzzzzzzzzzzzzz",
        ] {
            assert_eq!(parse_position(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn table_names_are_canonical() {
        for good in ["public.orders", "shop.\"Odd Name\"", "\"My\"\"Schema\".t_1", "a.\"b.c\""] {
            assert!(parse_table_name(good).is_some(), "{good:?}");
        }
        assert_eq!(parse_table_name("shop.\"Odd \"\"Name\"").unwrap(), ("shop".into(), "Odd \"Name".into()));
        for bad in [
            "orders",
            "public.",
            ".orders",
            "Public.orders",
            "public.\"orders\"",
            "a.b.c",
            "a.\"b",
            "a.\"\"",
            "a b.c",
        ] {
            assert_eq!(parse_table_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn queries_parse_strictly() {
        let pull =
            parse_query("after=0000000000000002&limit=5&table=public.a&table=public.b&wait=1.5").unwrap();
        assert_eq!(
            pull,
            Pull {
                after: Some(2),
                limit: 5,
                tables: vec!["public.a".into(), "public.b".into()],
                schemas: vec!["public".into(), "public".into()],
                names: vec!["a".into(), "b".into()],
                wait: Duration::from_millis(1500)
            }
        );
        for bad in [
            "limit=0",
            "limit=abc",
            "limit=100000",
            "wait=-1",
            "wait=61",
            "wait=nan",
            "after=2",
            "after=1&after=2",
            "table=x",
            "foo=1",
        ] {
            assert!(matches!(parse_query(bad), Err(ApiError::BadRequest { .. })), "{bad:?}");
        }
    }

    #[test]
    fn changes_are_assembled_from_the_stored_body() {
        let mut change = String::new();
        encode_change(
            &mut change,
            3,
            "public.orders",
            "{\"lsn\":\"0/1\",\"op\":\"insert\"",
            Some("7"),
            Some("2026-01-01T00:00:00.000001Z"),
            Some("{\"a\": 1}"),
        );
        let value: serde_json::Value = serde_json::from_str(&change).unwrap();
        assert_eq!(
            value,
            json!({"position": "0000000000000003", "lsn": "0/1", "table": "public.orders", "op": "insert",
                   "old": null, "unchanged": [], "xid": 7,
                   "committed_at": "2026-01-01T00:00:00.000001Z", "context": {"a": 1}})
        );
    }
}
