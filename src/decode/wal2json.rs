//! wal2json output (format version 2, as [`start_options`] asks for it): one JSON object a message.
//!
//! `B` and `C` objects frame each transaction (xid, commit time, `lsn`: the commit record's start),
//! `I`, `U` and `D` carry one row change each (`columns`: the new row; `identity`: the old key, or the
//! old row with REPLICA IDENTITY FULL; for updates without an old image in the WAL, wal2json prints
//! the key of the new row), `T` one truncated table, `M` a logical decoding message. Values are mapped
//! by their `typeoid` through the [`Catalog`]; numbers arrive as raw JSON numbers and keep their exact
//! digits (numeric never goes through a float).
//!
//! What wal2json 2.5 does not say, so that these changes can be poorer than pgoutput's:
//! - NaN and ±Infinity of real, double precision and numeric are printed as `null`: they decode as
//!   NULL, indistinguishable from a real NULL.
//! - An unchanged TOAST column is left out of `columns` without a trace. It is filled from
//!   `identity` when the old image carries it (REPLICA IDENTITY FULL); otherwise it is just missing
//!   from `new`, and `unchanged` stays empty because nothing tells that the column exists (no option
//!   of 2.5 prints the table's column list).
//! - bytea is printed without its `\x`; it is put back here. With `bytea_output = escape` wal2json
//!   cuts the first two characters of every bytea value instead, which cannot be undone.
//! - Message content is cut at its first NUL byte, and content that is not UTF-8 makes the whole
//!   object invalid ([`DecodeError::InvalidUtf8`]).

use std::borrow::Cow;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::names::Names;
use super::value::{decode_text, TypeKind};
use super::{
    parse_pg_timestamptz, Begin, Catalog, Change, Commit, DecodeError, Decoder, Event, Message, Op, Row,
    TableInfo, TableName, Timestamp, TypeRef, Value, Xid,
};
use crate::lsn::Lsn;

/// `bytea`, the one type wal2json prints without the start of its text output.
const BYTEA_OID: u32 = 17;

/// The options `START_REPLICATION` passes to wal2json for this decoder.
pub fn start_options() -> Vec<(&'static str, String)> {
    [
        ("format-version", "2"),
        ("include-xids", "1"),
        ("include-timestamp", "1"),
        ("include-lsn", "1"),
        ("include-type-oids", "1"),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.to_owned()))
    .collect()
}

/// Decodes wal2json format-version 2 objects.
#[derive(Default)]
pub struct Wal2jsonDecoder {
    names: Names,
}

/// One wal2json object, its strings left raw so that they are unescaped only when used.
#[derive(Deserialize)]
struct Object<'a> {
    action: &'a str,
    xid: Option<Xid>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    lsn: Option<&'a str>,
    #[serde(borrow)]
    schema: Option<&'a RawValue>,
    #[serde(borrow)]
    table: Option<&'a RawValue>,
    #[serde(borrow)]
    columns: Option<Vec<Column<'a>>>,
    #[serde(borrow)]
    identity: Option<Vec<Column<'a>>>,
    transactional: Option<bool>,
    #[serde(borrow)]
    prefix: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// One element of `columns` or `identity`.
#[derive(Deserialize)]
struct Column<'a> {
    #[serde(borrow)]
    name: &'a RawValue,
    typeoid: Option<u32>,
    #[serde(borrow)]
    value: &'a RawValue,
}

impl Decoder for Wal2jsonDecoder {
    fn decode(
        &mut self,
        lsn: Lsn,
        data: &[u8],
        catalog: &Catalog,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let text = std::str::from_utf8(data).map_err(|e| DecodeError::InvalidUtf8 { at: e.valid_up_to() })?;
        let object: Object<'_> = serde_json::from_str(text).map_err(DecodeError::Json)?;
        let event = match object.action {
            "B" => Event::Begin(Begin {
                xid: object.xid,
                final_lsn: parse_lsn(text, object.lsn)?,
                committed_at: parse_timestamp(text, object.timestamp)?,
            }),
            "C" => {
                Event::Commit(Commit { end_lsn: lsn, committed_at: parse_timestamp(text, object.timestamp)? })
            }
            "I" => self.decode_change(lsn, Op::Insert, text, &object, catalog)?,
            "U" => self.decode_change(lsn, Op::Update, text, &object, catalog)?,
            "D" => self.decode_change(lsn, Op::Delete, text, &object, catalog)?,
            // A truncate needs nothing from the catalog, so a table dropped since is no catalog miss.
            "T" => Event::Change(Change {
                lsn,
                table: self.table(text, &object)?,
                op: Op::Truncate,
                key: None,
                new: None,
                old: None,
                unchanged: Vec::new(),
            }),
            "M" => Event::Message(Message {
                lsn,
                transactional: object.transactional.ok_or(missing("a \"transactional\" boolean"))?,
                prefix: json_str(text, object.prefix.ok_or(missing("a \"prefix\" string"))?)?.into_owned(),
                content: json_str(text, object.content.ok_or(missing("a \"content\" string"))?)?
                    .into_owned()
                    .into_bytes(),
            }),
            action => {
                return Err(DecodeError::Malformed {
                    at: offset(text, action),
                    expected: "action B, C, I, U, D, T or M",
                })
            }
        };
        out.push(event);
        Ok(())
    }
}

impl Wal2jsonDecoder {
    fn decode_change(
        &mut self,
        lsn: Lsn,
        op: Op,
        text: &str,
        object: &Object<'_>,
        catalog: &Catalog,
    ) -> Result<Event, DecodeError> {
        let table = self.table(text, object)?;
        let info =
            catalog.table(&table).ok_or_else(|| DecodeError::UnknownTable(TableName::clone(&table)))?;
        let columns = match &object.columns {
            Some(columns) => Some(self.decode_columns(text, columns, catalog)?),
            None => None,
        };
        let identity = match &object.identity {
            Some(identity) => Some(self.decode_columns(text, identity, catalog)?),
            None => None,
        };
        let (key, new, old) = match op {
            Op::Insert => {
                let new = columns.ok_or(missing("a \"columns\" array"))?;
                (new.project(&info.key), Some(new), None)
            }
            Op::Update => {
                let (new, old) = update_rows(columns.ok_or(missing("a \"columns\" array"))?, identity, info);
                (new.project(&info.key), Some(new), old)
            }
            _ => (identity.as_ref().and_then(|old| old.project(&info.key)), None, identity),
        };
        Ok(Event::Change(Change { lsn, table, op, key, new, old, unchanged: Vec::new() }))
    }

    /// The interned name of the object's table.
    fn table(&mut self, text: &str, object: &Object<'_>) -> Result<Arc<TableName>, DecodeError> {
        let schema = json_str(text, object.schema.ok_or(missing("a \"schema\" string"))?)?;
        let table = json_str(text, object.table.ok_or(missing("a \"table\" string"))?)?;
        Ok(self.names.table(&schema, &table))
    }

    fn decode_columns(
        &mut self,
        text: &str,
        columns: &[Column<'_>],
        catalog: &Catalog,
    ) -> Result<Row, DecodeError> {
        let mut row = Vec::with_capacity(columns.len());
        for column in columns {
            let name = json_str(text, column.name)?;
            let oid = column.typeoid.ok_or(DecodeError::Malformed {
                at: offset(text, column.name.get()),
                expected: "a \"typeoid\" in every column (option include-type-oids)",
            })?;
            let kind = catalog.type_by_oid(oid).ok_or(DecodeError::UnknownType(TypeRef::Oid(oid)))?;
            let value = decode_value(text, &name, kind, oid, column.value)?;
            row.push((self.names.column(&name), value));
        }
        Ok(Row(row))
    }
}

/// The new row and `old` of an update, from `columns` and `identity`.
///
/// A column of `identity` that `columns` lacks is an unchanged TOAST value: the old image holds it.
/// `identity` becomes `old` with REPLICA IDENTITY FULL, or when it holds a key that the update
/// changed; otherwise it is only the new row's key, which wal2json prints for every update.
fn update_rows(new: Row, identity: Option<Row>, info: &TableInfo) -> (Row, Option<Row>) {
    let Some(identity) = identity else { return (new, None) };
    let new = fill_unchanged(new, &identity);
    let old = (info.full_identity || !identity.agrees_with(&new)).then_some(identity);
    (new, old)
}

/// `new` with the columns of `old` it lacks, in `old`'s (column) order.
fn fill_unchanged(new: Row, old: &Row) -> Row {
    // Both rows are in column order, so one pass tells whether `old`'s columns are all in `new`.
    let mut next = 0;
    let complete = old.0.iter().all(|(name, _)| match new.0[next..].iter().position(|(n, _)| n == name) {
        Some(i) => {
            next += i + 1;
            true
        }
        None => false,
    });
    if complete {
        return new;
    }
    let mut rest = new.0;
    let mut merged = Vec::with_capacity(rest.len() + old.0.len());
    for (name, value) in &old.0 {
        match rest.iter().position(|(n, _)| n == name) {
            Some(i) => merged.push(rest.remove(i)),
            None => merged.push((name.clone(), value.clone())),
        }
    }
    merged.extend(rest);
    Row(merged)
}

/// Maps one column value: numbers and booleans arrive raw, everything else as a string.
fn decode_value(
    text: &str,
    column: &str,
    kind: TypeKind,
    oid: u32,
    raw: &RawValue,
) -> Result<Value, DecodeError> {
    let token = raw.get();
    let mapped = match token.as_bytes().first() {
        Some(b'n') => return Ok(Value::Null),
        Some(b'"') => {
            let string = json_str(text, raw)?;
            if oid == BYTEA_OID {
                decode_text(kind, &format!("\\x{string}"))
            } else {
                decode_text(kind, &string)
            }
        }
        Some(b't' | b'f' | b'-' | b'0'..=b'9') => decode_text(kind, token),
        _ => {
            return Err(DecodeError::Malformed {
                at: offset(text, token),
                expected: "a string, number, boolean or null value",
            })
        }
    };
    mapped.map_err(|source| DecodeError::Value { column: column.to_owned(), source })
}

/// The text of a JSON string, borrowed unless it holds escapes.
fn json_str<'a>(text: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, DecodeError> {
    let token = raw.get();
    match token.as_bytes() {
        [b'"', inner @ .., b'"'] if memchr::memchr(b'\\', inner).is_none() => {
            Ok(Cow::Borrowed(&token[1..token.len() - 1]))
        }
        [b'"', ..] => serde_json::from_str(token).map(Cow::Owned).map_err(DecodeError::Json),
        _ => Err(DecodeError::Malformed { at: offset(text, token), expected: "a JSON string" }),
    }
}

fn parse_lsn(text: &str, lsn: Option<&str>) -> Result<Option<Lsn>, DecodeError> {
    lsn.map(|lsn| {
        lsn.parse()
            .map_err(|_| DecodeError::Malformed { at: offset(text, lsn), expected: "an LSN like 0/16B3748" })
    })
    .transpose()
}

fn parse_timestamp(text: &str, raw: Option<&RawValue>) -> Result<Option<Timestamp>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    let time = json_str(text, raw)?;
    parse_pg_timestamptz(&time).map(Some).ok_or(DecodeError::Malformed {
        at: offset(text, raw.get()),
        expected: "a timestamp like \"2026-11-28 10:42:39.369663+00\"",
    })
}

/// A required member is missing from the object.
fn missing(expected: &'static str) -> DecodeError {
    DecodeError::Malformed { at: 0, expected }
}

/// Where `part`, a slice of `text`, starts in it.
fn offset(text: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize).min(text.len())
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;

    use super::*;
    use crate::decode::fixtures::{self, golden};
    use crate::decode::Plugin;

    static CATALOG: LazyLock<Catalog> = LazyLock::new(fixtures::catalog);

    fn json<T: serde::Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    fn decode_one(data: &[u8]) -> Result<Vec<Event>, DecodeError> {
        fixtures::decode_one(&mut Wal2jsonDecoder::default(), data, &CATALOG)
    }

    const KINDS_ROW_1: &str = r#"{"id":1,"i2":1,"i4":2,"i8":9223372036854775807,"f4":1.5,"f8":0.1,"num":"12345678901234.123456","b":true,"t":"it's \"quoted\" \\back\\slash","vc":"line1\nline2","bp":"é☃","j":{"b":1,"a":[1,2.50,"x"],"n":123456789012345678901234567890},"jb":{"k":{"z":null}},"ints":[1,null,3],"texts":["a b","c\"d",null,"NULL","","é"],"nested":[[1,2],[3,4]],"jbs":[{"x":1},null],"nums":["1.10","NaN"],"by":"\\x00ff10","d":"2026-11-28","ts":"2026-11-28 10:42:39.369663","tstz":"2026-11-28 08:42:39.369663+00","iv":"1 day 02:03:04","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","m":"it's complicated","p":42,"tl":["x","y"],"ip":"192.168.0.1/24","pt":"(1,2)","bx":["(1,1),(0,0)","(2,2),(1,1)"],"char":"v'al "}"#;

    #[test]
    fn maps_every_kind_of_value() {
        let events = fixtures::decode_all(Plugin::Wal2json);
        let kinds = fixtures::changes_of(&events, "public", "kinds");
        let rows: Vec<String> = kinds.iter().map(|change| json(&change.new)).collect();
        assert_eq!(rows[0], KINDS_ROW_1);
        // wal2json prints NaN and the infinities as null: they cannot be told from NULL.
        assert_eq!(
            rows[1],
            r#"{"id":2,"i2":-32768,"i4":-2147483648,"i8":-9223372036854775808,"f4":null,"f8":null,"num":null,"b":false,"t":"","vc":"","bp":"   ","j":[],"jb":"just a string","ints":[],"texts":[],"nested":[],"jbs":[],"nums":[],"by":"\\x","d":"-infinity","ts":"infinity","tstz":"2000-01-01 00:00:00+00","iv":"-1 mons","u":"00000000-0000-0000-0000-000000000000","m":"sad","p":1,"tl":[],"ip":"::1","pt":"(0,0)","bx":[],"char":"     "}"#
        );
        assert_eq!(
            rows[2],
            r#"{"id":3,"i2":null,"i4":null,"i8":null,"f4":null,"f8":-0.0,"num":"-0.000001","b":null,"t":null,"vc":null,"bp":null,"j":null,"jb":null,"ints":null,"texts":null,"nested":null,"jbs":null,"nums":null,"by":null,"d":null,"ts":null,"tstz":null,"iv":null,"u":null,"m":null,"p":null,"tl":null,"ip":null,"pt":null,"bx":null,"char":null}"#
        );
        assert_eq!(
            kinds.iter().map(|change| json(&change.key)).collect::<Vec<_>>(),
            [r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#]
        );
        assert!(kinds
            .iter()
            .all(|change| change.op == Op::Insert && change.old.is_none() && change.unchanged.is_empty()));
        assert_eq!(kinds[0].lsn, lsn("0/1E441D8"));
    }

    #[test]
    fn frames_transactions() {
        let events = fixtures::decode_all(Plugin::Wal2json);
        let Event::Begin(begin) = &events[0] else { panic!("{:?}", events[0]) };
        assert_eq!(begin.xid, Some(810));
        assert_eq!(begin.final_lsn, Some(lsn("0/1E447A0")));
        let committed_at = parse_pg_timestamptz("2026-11-28 11:20:05.808831+00");
        assert_eq!(begin.committed_at, committed_at);
        assert_eq!(events[4], Event::Commit(Commit { end_lsn: lsn("0/1E447D0"), committed_at }));
        let begins = events.iter().filter(|e| matches!(e, Event::Begin(_))).count();
        let commits = events.iter().filter(|e| matches!(e, Event::Commit(_))).count();
        assert_eq!((begins, commits), (34, 34));
    }

    #[test]
    fn full_identity_gives_whole_old_rows() {
        let events = fixtures::decode_all(Plugin::Wal2json);
        let full = fixtures::changes_of(&events, "public", "full_identity");
        let olds: Vec<_> = full.iter().map(|c| (c.op, json(&c.key), json(&c.old))).skip(2).collect();
        assert_eq!(
            olds,
            [
                (Op::Update, r#"{"id":1}"#.to_owned(), r#"{"id":1,"v":"a","n":10}"#.to_owned()),
                (Op::Update, r#"{"id":3}"#.to_owned(), r#"{"id":2,"v":"b","n":20}"#.to_owned()),
                (Op::Delete, r#"{"id":1}"#.to_owned(), r#"{"id":1,"v":"A","n":10}"#.to_owned()),
            ]
        );
        // A table without key: every column is the key; its deletes carry the whole old row.
        let nokey = fixtures::changes_of(&events, "public", "nokey");
        assert_eq!(json(&nokey[2].key), r#"{"a":2,"b":null}"#);
        assert_eq!(json(&nokey[3].old), r#"{"a":2,"b":null}"#);
        assert_eq!(json(&nokey[3].key), r#"{"a":2,"b":"y"}"#);
        for delete in &nokey[4..6] {
            assert_eq!(
                (delete.op, json(&delete.key), json(&delete.old)),
                (Op::Delete, r#"{"a":1,"b":"x"}"#.to_owned(), r#"{"a":1,"b":"x"}"#.to_owned())
            );
        }
    }

    #[test]
    fn unchanged_toast_is_filled_from_full_old_images_only() {
        let events = fixtures::decode_all(Plugin::Wal2json);
        let toasty = fixtures::changes_of(&events, "public", "toasty");
        let big = match toasty[0].new.as_ref().and_then(|new| new.get("big")) {
            Some(Value::Text(big)) => big.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(big.len(), 96_000);
        // Default identity: wal2json leaves the column out and nothing says it exists.
        assert_eq!(json(&toasty[1].new), r#"{"id":1,"small":"changed"}"#);
        assert!(toasty[1].unchanged.is_empty() && toasty[1].old.is_none());
        let full = fixtures::changes_of(&events, "public", "toasty_full");
        let update = full[1];
        let new = update.new.as_ref().unwrap();
        assert_eq!(new.0.iter().map(|(name, _)| &**name).collect::<Vec<_>>(), ["id", "small", "big"]);
        assert_eq!(new.get("small"), Some(&Value::Text("changed".into())));
        assert_eq!(new.get("big"), Some(&Value::Text(big.clone())));
        assert_eq!(update.old.as_ref().and_then(|old| old.get("big")), Some(&Value::Text(big)));
        assert!(update.unchanged.is_empty());
    }

    #[test]
    fn reads_quoted_identifiers() {
        let events = fixtures::decode_all(Plugin::Wal2json);
        let odd = fixtures::changes_of(&events, "Odd Schema", "Tab\"le é");
        assert_eq!(odd.len(), 3);
        assert_eq!(json(&odd[0].new), r#"{"Col Space":1,"UPPER":"UP","quo\"te":"q\"uote","ünï":"ü"}"#);
        assert_eq!(
            (json(&odd[1].key), json(&odd[1].old)),
            (r#"{"Col Space":1}"#.to_owned(), "null".to_owned())
        );
        assert_eq!(json(&odd[2].old), r#"{"Col Space":1}"#);
        assert_eq!(odd[0].table.to_string(), r#""Odd Schema"."Tab""le é""#);
    }

    #[test]
    fn matches_the_golden_file() {
        golden::check("wal2json.expected.ndjson", &fixtures::decode_all(Plugin::Wal2json));
    }

    #[test]
    fn rejects_malformed_objects() {
        let change = |columns: &str| {
            format!(
                r#"{{"action":"I","xid":1,"lsn":"0/1","schema":"public","table":"plain","columns":[{columns}]}}"#
            )
        };
        let column = |typeoid: u32, value: &str| {
            format!(r#"{{"name":"id","type":"x","typeoid":{typeoid},"value":{value}}}"#)
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "invalid JSON"),
            (b"[]".to_vec(), "invalid JSON"),
            (
                br#"{"action":"X"}"#.to_vec(),
                "malformed message at byte 11: expected action B, C, I, U, D, T or M",
            ),
            (
                br#"{"action":"B","lsn":"nope"}"#.to_vec(),
                "malformed message at byte 21: expected an LSN like 0/16B3748",
            ),
            (
                br#"{"action":"C","timestamp":"yesterday"}"#.to_vec(),
                "malformed message at byte 26: expected a timestamp",
            ),
            (br#"{"action":"I","schema":"public","table":"plain"}"#.to_vec(), "\"columns\""),
            (br#"{"action":"T","table":"plain"}"#.to_vec(), "\"schema\""),
            (br#"{"action":"M","transactional":true,"prefix":"p"}"#.to_vec(), "\"content\""),
            (change(&column(23, "1.5")).into_bytes(), "column id: value \"1.5\" is not valid integer"),
            (change(&column(23, "\"x\"")).into_bytes(), "not valid integer"),
            (change(&column(23, "[1]")).into_bytes(), "expected a string, number, boolean or null value"),
            (change(&column(23, "01")).into_bytes(), "invalid JSON"),
            (change(&column(16, "\"maybe\"")).into_bytes(), "not valid boolean"),
            (change(&column(999_999, "1")).into_bytes(), "type with oid 999999 is not in the catalog"),
            (change(r#"{"name":"id","value":1}"#).into_bytes(), "typeoid"),
            (
                change(&column(23, "1")).replace("plain", "nowhere").into_bytes(),
                "table public.nowhere is not in the catalog",
            ),
            (b"{\"action\":\"M\",\"prefix\":\"\xff\"}".to_vec(), "invalid UTF-8 at byte 24"),
            (br#"{"action":"B"} x"#.to_vec(), "invalid JSON"),
        ];
        for (data, expected) in cases {
            let error = decode_one(&data).expect_err(&String::from_utf8_lossy(&data));
            let text = error.to_string();
            assert!(
                text.contains(expected),
                "{:?}: {text:?} does not say {expected:?}",
                String::from_utf8_lossy(&data)
            );
        }
        assert!(decode_one(&change(&column(999_999, "1")).into_bytes()).unwrap_err().is_catalog_miss());
    }

    #[test]
    fn truncated_messages_fail_cleanly() {
        for (_, data) in fixtures::messages(Plugin::Wal2json) {
            // Every truncation of small messages; of the 96 kB ones, every 97th and the ends.
            let cuts: Vec<usize> = if data.len() <= 4096 {
                (0..data.len()).collect()
            } else {
                (0..512)
                    .chain((512..data.len() - 512).step_by(97))
                    .chain(data.len() - 512..data.len())
                    .collect()
            };
            for cut in cuts {
                // A JSON object cut short is never a whole one.
                assert!(decode_one(&data[..cut]).is_err(), "{:?}", String::from_utf8_lossy(&data[..cut]));
            }
        }
    }

    proptest! {
        #![proptest_config(fixtures::proptest_config())]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_one(&data);
        }

        #[test]
        fn corrupted_fixtures_never_panic(data in fixtures::corrupted_messages(Plugin::Wal2json)) {
            let _ = decode_one(&data);
        }
    }
}
