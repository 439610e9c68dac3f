//! pgoutput output: PostgreSQL's binary logical replication protocol (versions 1 and 2) to [`Event`]s.
//!
//! Each XLogData payload holds one message, tagged by its first byte. Relation (`R`) messages announce
//! a table's name, replica identity and columns (name, key flag, type OID) before its first change and
//! after every change of its definition; the decoder caches them by OID and reads every row change
//! through them. Values arrive as text and are mapped by the type OID through the [`Catalog`]; the
//! normalization of `old`, `new`, `key` and `unchanged` follows the rules in [`super`].
//!
//! Guarantees: a message is parsed whole (every length checked against what is left, nothing
//! allocated for more items than the remaining bytes could hold) before any value is decoded or any
//! state changes, so an error leaves the decoder as it was and appends nothing; the decoder never
//! panics on input. Protocol 2 streaming (`S`/`E`/`c`/`A`, with the extra transaction id that changes
//! carry inside a stream block) is understood; protocol 3 (two-phase) messages and binary values are
//! rejected, since [`start_options`] asks for neither.

use std::collections::HashMap;
use std::sync::Arc;

use super::value::decode_text;
use super::{
    timestamp_from_pg_micros, Begin, Catalog, Change, Commit, DecodeError, Decoder, Event, Message, Op, Row,
    TableName, TypeRef, Value, Xid,
};
use crate::lsn::Lsn;

/// The options of `START_REPLICATION ... LOGICAL` for a pgoutput slot reading `publication` on a
/// server whose `server_version_num` is given: protocol 2 with logical decoding messages on
/// PostgreSQL 14 and later, protocol 1 before. Values are raw; the caller quotes them as string
/// literals.
pub fn start_options(publication: &str, server_version_num: u32) -> Vec<(&'static str, String)> {
    let v14 = server_version_num >= 140_000;
    let mut options = vec![
        ("proto_version", if v14 { "2" } else { "1" }.to_owned()),
        ("publication_names", quote_publication(publication)),
    ];
    if v14 {
        options.push(("messages", "true".to_owned()));
    }
    options
}

/// `publication_names` is a comma-separated list of identifiers that pgoutput downcases unless they
/// are double-quoted: quote any name that is not a plain lowercase identifier.
fn quote_publication(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Decodes pgoutput messages, remembering the Relation messages of the stream.
#[derive(Clone, Debug, Default)]
pub struct PgoutputDecoder {
    relations: HashMap<u32, Relation>,
    /// Between a Stream Start and its Stream Stop: row, relation, type and message messages carry
    /// the transaction id after their tag.
    in_stream: bool,
}

/// What the last Relation message for a table announced.
#[derive(Clone, Debug, PartialEq)]
pub struct Relation {
    pub table: Arc<TableName>,
    /// `relreplident`: `d` primary key, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// The published columns, in the order tuples carry them.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq)]
pub struct RelationColumn {
    pub name: Arc<str>,
    /// Part of the replica identity: an old key (`K`) tuple carries this column.
    pub key: bool,
    pub type_oid: u32,
    /// `atttypmod` (-1 when the type has none).
    pub type_modifier: i32,
}

impl PgoutputDecoder {
    /// The relation `oid` as its last Relation message announced it, if one arrived.
    pub fn relation(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// Fails unless the message at hand may come outside a stream block.
    fn outside_stream(&self, expected: &'static str) -> Result<(), DecodeError> {
        if self.in_stream {
            return Err(DecodeError::Malformed { at: 0, expected });
        }
        Ok(())
    }

    /// Skips the transaction id that messages inside a stream block carry after their tag.
    fn skip_stream_xid(&self, cur: &mut Cursor<'_>) -> Result<(), DecodeError> {
        if self.in_stream {
            cur.u32()?;
        }
        Ok(())
    }

    fn relation_of(&self, oid: u32) -> Result<&Relation, DecodeError> {
        self.relations.get(&oid).ok_or(DecodeError::UnknownRelation(oid))
    }
}

impl Decoder for PgoutputDecoder {
    fn decode(
        &mut self,
        lsn: Lsn,
        data: &[u8],
        catalog: &Catalog,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let mut cur = Cursor { data, at: 0 };
        match cur.u8()? {
            b'B' => {
                self.outside_stream("Stream Stop ('E') before a Begin")?;
                let begin = parse_begin(&mut cur)?;
                cur.finish()?;
                out.push(Event::Begin(begin));
            }
            b'C' => {
                self.outside_stream("Stream Stop ('E') before a Commit")?;
                let commit = parse_commit(&mut cur)?;
                cur.finish()?;
                out.push(Event::Commit(commit));
            }
            b'O' => {
                // Origin: the commit LSN and name of the origin the transaction was replayed from.
                cur.u64()?;
                cur.cstr()?;
                cur.finish()?;
            }
            b'R' => {
                self.skip_stream_xid(&mut cur)?;
                let (oid, relation) = parse_relation(&mut cur)?;
                cur.finish()?;
                self.relations.insert(oid, relation);
            }
            b'Y' => {
                // Type: oid, namespace and name of a type a Relation message uses. The catalog maps
                // types by OID, so nothing is kept.
                self.skip_stream_xid(&mut cur)?;
                cur.u32()?;
                cur.cstr()?;
                cur.cstr()?;
                cur.finish()?;
            }
            tag @ (b'I' | b'U' | b'D') => {
                self.skip_stream_xid(&mut cur)?;
                let message = self.parse_row_message(tag, &mut cur)?;
                cur.finish()?;
                out.push(Event::Change(decode_row_message(lsn, &message, catalog)?));
            }
            b'T' => {
                self.skip_stream_xid(&mut cur)?;
                let changes = self.decode_truncate(lsn, &mut cur)?;
                cur.finish()?;
                out.extend(changes);
            }
            b'M' => {
                self.skip_stream_xid(&mut cur)?;
                let message = parse_message(&mut cur)?;
                cur.finish()?;
                out.push(Event::Message(message));
            }
            b'S' => {
                self.outside_stream("Stream Stop ('E') before another Stream Start")?;
                let xid = cur.u32()?;
                let first_segment = cur.u8()? == 1;
                cur.finish()?;
                self.in_stream = true;
                out.push(Event::StreamStart { xid, first_segment });
            }
            b'E' => {
                if !self.in_stream {
                    return Err(DecodeError::Malformed {
                        at: 0,
                        expected: "Stream Start ('S') before Stream Stop",
                    });
                }
                cur.finish()?;
                self.in_stream = false;
                out.push(Event::StreamStop);
            }
            b'c' => {
                self.outside_stream("Stream Stop ('E') before a Stream Commit")?;
                let xid = cur.u32()?;
                let commit = parse_commit(&mut cur)?;
                cur.finish()?;
                out.push(Event::StreamCommit { xid, commit });
            }
            b'A' => {
                self.outside_stream("Stream Stop ('E') before a Stream Abort")?;
                let xid = cur.u32()?;
                let subxid = cur.u32()?;
                cur.finish()?;
                out.push(Event::StreamAbort { xid, subxid });
            }
            tag => return Err(DecodeError::UnknownTag { at: 0, tag: char::from(tag) }),
        }
        Ok(())
    }
}

/// Begin: final LSN, commit time, xid.
fn parse_begin(cur: &mut Cursor<'_>) -> Result<Begin, DecodeError> {
    let final_lsn = Lsn(cur.u64()?);
    let committed_at = timestamp_from_pg_micros(cur.i64()?);
    let xid: Xid = cur.u32()?;
    Ok(Begin { xid: Some(xid), final_lsn: Some(final_lsn), committed_at })
}

/// Commit and Stream Commit (after its xid): flags, commit LSN, end LSN, commit time.
fn parse_commit(cur: &mut Cursor<'_>) -> Result<Commit, DecodeError> {
    cur.u8()?; // flags, unused
    cur.u64()?; // the commit record's start; the end is what a client confirms
    let end_lsn = Lsn(cur.u64()?);
    let committed_at = timestamp_from_pg_micros(cur.i64()?);
    Ok(Commit { end_lsn, committed_at })
}

/// Message: flags, LSN, prefix, content.
fn parse_message(cur: &mut Cursor<'_>) -> Result<Message, DecodeError> {
    let transactional = cur.u8()? & 1 != 0;
    let lsn = Lsn(cur.u64()?);
    let prefix = cur.cstr()?.to_owned();
    let len = cur.len32()?;
    let content = cur.take(len)?.to_vec();
    Ok(Message { lsn, transactional, prefix, content })
}

/// The fewest bytes a column takes in a Relation message: flags, an empty name, type OID, typmod.
const MIN_RELATION_COLUMN_BYTES: usize = 1 + 1 + 4 + 4;

/// Relation: oid, namespace (empty for `pg_catalog`), name, replica identity, columns.
fn parse_relation(cur: &mut Cursor<'_>) -> Result<(u32, Relation), DecodeError> {
    let oid = cur.u32()?;
    let schema = match cur.cstr()? {
        "" => "pg_catalog",
        schema => schema,
    };
    let name = cur.cstr()?;
    let replica_identity = cur.u8()?;
    let count = usize::from(cur.u16()?);
    let mut columns = Vec::with_capacity(count.min(cur.remaining() / MIN_RELATION_COLUMN_BYTES));
    for _ in 0..count {
        let flags = cur.u8()?;
        let name = cur.cstr()?;
        let type_oid = cur.u32()?;
        let type_modifier = cur.i32()?;
        columns.push(RelationColumn { name: Arc::from(name), key: flags & 1 != 0, type_oid, type_modifier });
    }
    Ok((oid, Relation { table: Arc::new(TableName::new(schema, name)), replica_identity, columns }))
}

/// One column of a TupleData, pointing into the message.
#[derive(Clone, Copy, Debug)]
enum Datum<'a> {
    Null,
    /// An unchanged TOAST value the server did not send.
    Unchanged,
    /// Text output starting at byte `at` of the message.
    Text {
        at: usize,
        bytes: &'a [u8],
    },
}

/// The old image of an Update or Delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OldImage {
    /// `K`: the replica identity columns (the others are sent as nulls).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// An Insert, Update or Delete, parsed but not decoded.
struct RowMessage<'r, 'a> {
    op: Op,
    relation: &'r Relation,
    old: Option<(OldImage, Vec<Datum<'a>>)>,
    new: Option<Vec<Datum<'a>>>,
}

impl PgoutputDecoder {
    /// Insert: oid, `N` tuple. Update: oid, optional `K` or `O` tuple, `N` tuple. Delete: oid, `K` or
    /// `O` tuple.
    fn parse_row_message<'a>(
        &self,
        tag: u8,
        cur: &mut Cursor<'a>,
    ) -> Result<RowMessage<'_, 'a>, DecodeError> {
        let relation = self.relation_of(cur.u32()?)?;
        let width = relation.columns.len();
        let at = cur.at;
        let (op, old, new) = match (tag, cur.u8()?) {
            (b'I', b'N') => (Op::Insert, None, Some(parse_tuple(cur, width)?)),
            (b'I', _) => return Err(DecodeError::Malformed { at, expected: "an 'N' tuple" }),
            (b'U', b'N') => (Op::Update, None, Some(parse_tuple(cur, width)?)),
            (b'U', image @ (b'K' | b'O')) => {
                let old = parse_tuple(cur, width)?;
                let at = cur.at;
                if cur.u8()? != b'N' {
                    return Err(DecodeError::Malformed { at, expected: "an 'N' tuple after the old one" });
                }
                (Op::Update, Some((old_image(image), old)), Some(parse_tuple(cur, width)?))
            }
            (b'U', _) => return Err(DecodeError::Malformed { at, expected: "a 'K', 'O' or 'N' tuple" }),
            (_, image @ (b'K' | b'O')) => {
                (Op::Delete, Some((old_image(image), parse_tuple(cur, width)?)), None)
            }
            _ => return Err(DecodeError::Malformed { at, expected: "a 'K' or 'O' tuple" }),
        };
        Ok(RowMessage { op, relation, old, new })
    }

    /// Truncate: number of relations, options, oids. One change per table, in message order.
    fn decode_truncate(&self, lsn: Lsn, cur: &mut Cursor<'_>) -> Result<Vec<Event>, DecodeError> {
        let count = cur.len32()?;
        cur.u8()?; // options: CASCADE, RESTART IDENTITY
        let at = cur.at;
        let bytes = count.checked_mul(4).ok_or(DecodeError::InvalidLength { at, len: count as i64 })?;
        cur.take(bytes)?
            .chunks_exact(4)
            .map(|oid| {
                let oid = u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]);
                let relation = self.relation_of(oid)?;
                Ok(Event::Change(Change {
                    lsn,
                    table: relation.table.clone(),
                    op: Op::Truncate,
                    key: None,
                    new: None,
                    old: None,
                    unchanged: Vec::new(),
                }))
            })
            .collect()
    }
}

fn old_image(tag: u8) -> OldImage {
    if tag == b'K' {
        OldImage::Key
    } else {
        OldImage::Full
    }
}

/// TupleData: column count (which must be the relation's), then per column `n` (null), `u`
/// (unchanged TOAST) or `t` and an Int32 length and the text.
fn parse_tuple<'a>(cur: &mut Cursor<'a>, width: usize) -> Result<Vec<Datum<'a>>, DecodeError> {
    let at = cur.at;
    if usize::from(cur.u16()?) != width {
        return Err(DecodeError::Malformed {
            at,
            expected: "as many tuple columns as the Relation message announced",
        });
    }
    // A column takes at least its one-byte kind.
    let mut datums = Vec::with_capacity(width.min(cur.remaining()));
    for _ in 0..width {
        let at = cur.at;
        let datum = match cur.u8()? {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' => {
                let len = cur.len32()?;
                let at = cur.at;
                Datum::Text { at, bytes: cur.take(len)? }
            }
            b'b' => {
                return Err(DecodeError::Malformed {
                    at,
                    expected: "a text, null or unchanged-TOAST column (binary values were not requested)",
                })
            }
            tag => return Err(DecodeError::UnknownTag { at, tag: char::from(tag) }),
        };
        datums.push(datum);
    }
    Ok(datums)
}

/// Maps a parsed row message to a [`Change`] by the rules of [`super`].
fn decode_row_message(
    lsn: Lsn,
    message: &RowMessage<'_, '_>,
    catalog: &Catalog,
) -> Result<Change, DecodeError> {
    let relation = message.relation;
    let table =
        catalog.table(&relation.table).ok_or_else(|| DecodeError::UnknownTable((*relation.table).clone()))?;
    let mut old = match &message.old {
        Some((image, datums)) => decode_old(relation, *image, datums, catalog)?,
        None => None,
    };
    let mut unchanged = Vec::new();
    let new = match &message.new {
        Some(datums) => Some(decode_new(relation, datums, old.as_ref(), catalog, &mut unchanged)?),
        None => None,
    };
    // An old key is reported only when the key changed: the server also sends it when an unchanged
    // key has values stored out of line.
    if let (Some((OldImage::Key, _)), Some(old_key), Some(new)) = (&message.old, &old, &new) {
        if old_key.agrees_with(new) {
            old = None;
        }
    }
    let key = match (&new, &old) {
        (Some(new), _) => new.project(&table.key),
        (None, Some(old)) => old.project(&table.key),
        (None, None) => None,
    };
    Ok(Change { lsn, table: relation.table.clone(), op: message.op, key, new, old, unchanged })
}

/// The old image: the key columns of a `K` tuple, or all columns of an `O` tuple, less unchanged
/// TOAST values; None when nothing is left.
fn decode_old(
    relation: &Relation,
    image: OldImage,
    datums: &[Datum<'_>],
    catalog: &Catalog,
) -> Result<Option<Row>, DecodeError> {
    let mut row = Vec::with_capacity(datums.len());
    for (column, datum) in relation.columns.iter().zip(datums) {
        if image == OldImage::Key && !column.key {
            continue;
        }
        let value = match *datum {
            Datum::Null => Value::Null,
            Datum::Unchanged => continue,
            Datum::Text { at, bytes } => decode_value(column, at, bytes, catalog)?,
        };
        row.push((column.name.clone(), value));
    }
    Ok((!row.is_empty()).then_some(Row(row)))
}

/// The new row; an unchanged TOAST value is taken from `old` when it has the column, else left out
/// and named in `unchanged`.
fn decode_new(
    relation: &Relation,
    datums: &[Datum<'_>],
    old: Option<&Row>,
    catalog: &Catalog,
    unchanged: &mut Vec<Arc<str>>,
) -> Result<Row, DecodeError> {
    let mut row = Vec::with_capacity(datums.len());
    for (column, datum) in relation.columns.iter().zip(datums) {
        let value = match *datum {
            Datum::Null => Value::Null,
            Datum::Text { at, bytes } => decode_value(column, at, bytes, catalog)?,
            Datum::Unchanged => match old.and_then(|old| old.get(&column.name)) {
                Some(value) => value.clone(),
                None => {
                    unchanged.push(column.name.clone());
                    continue;
                }
            },
        };
        row.push((column.name.clone(), value));
    }
    Ok(Row(row))
}

/// One text value, mapped by its column's type.
fn decode_value(
    column: &RelationColumn,
    at: usize,
    bytes: &[u8],
    catalog: &Catalog,
) -> Result<Value, DecodeError> {
    let kind = catalog
        .type_by_oid(column.type_oid)
        .ok_or(DecodeError::UnknownType(TypeRef::Oid(column.type_oid)))?;
    let text =
        std::str::from_utf8(bytes).map_err(|err| DecodeError::InvalidUtf8 { at: at + err.valid_up_to() })?;
    decode_text(kind, text).map_err(|source| DecodeError::Value { column: column.name.to_string(), source })
}

/// Reads big-endian fields from a message, failing with the position of what is missing.
struct Cursor<'a> {
    data: &'a [u8],
    /// The next byte to read; never past the end.
    at: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(DecodeError::Truncated { at: self.at, needed: n - remaining });
        }
        let bytes = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_be_bytes)
    }

    /// An Int32 length or count, which must not be negative.
    fn len32(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let len = self.i32()?;
        usize::try_from(len).map_err(|_| DecodeError::InvalidLength { at, len: i64::from(len) })
    }

    /// A NUL-terminated UTF-8 string.
    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.at;
        let rest = &self.data[at..];
        let Some(end) = memchr::memchr(0, rest) else {
            return Err(DecodeError::Truncated { at: self.data.len(), needed: 1 });
        };
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|err| DecodeError::InvalidUtf8 { at: at + err.valid_up_to() })?;
        self.at += end + 1;
        Ok(text)
    }

    /// Fails unless the whole message was read.
    fn finish(&self) -> Result<(), DecodeError> {
        if self.at != self.data.len() {
            return Err(DecodeError::Malformed { at: self.at, expected: "the end of the message" });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::catalog::{KeyColumns, TableInfo};
    use crate::decode::fixtures::{self, golden};
    use crate::decode::Plugin;
    use proptest::prelude::*;

    /// Every fixture message decoded in order by one decoder, with the message index of each event.
    fn decode_fixtures() -> Vec<(usize, Event)> {
        let catalog = fixtures::catalog();
        let mut decoder = PgoutputDecoder::default();
        let mut events = Vec::new();
        for (index, (lsn, bytes)) in fixtures::messages(Plugin::Pgoutput).iter().enumerate() {
            let mut out = Vec::new();
            decoder
                .decode(*lsn, bytes, &catalog, &mut out)
                .unwrap_or_else(|err| panic!("message {index} at {lsn}: {err}"));
            events.extend(out.into_iter().map(|event| (index, event)));
        }
        events
    }

    fn changes_of<'e>(events: &'e [(usize, Event)], schema: &str, name: &str) -> Vec<&'e Change> {
        let table = TableName::new(schema, name);
        events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Change(change) if *change.table == table => Some(change),
                _ => None,
            })
            .collect()
    }

    fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }

    fn json_of(row: &Option<Row>) -> String {
        json(row)
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    #[test]
    fn maps_every_kind_of_value() {
        let events = decode_fixtures();
        let kinds = changes_of(&events, "public", "kinds");
        assert_eq!(kinds.len(), 3);
        assert!(kinds.iter().all(|c| c.op == Op::Insert && c.old.is_none() && c.unchanged.is_empty()));
        assert_eq!(kinds[0].lsn, lsn("0/1E441D8"));
        assert_eq!(json_of(&kinds[0].key), r#"{"id":1}"#);
        let row = kinds[0].new.as_ref().unwrap();
        let value = |column: &str| json(row.get(column).unwrap_or_else(|| panic!("no column {column}")));
        assert_eq!(value("i8"), "9223372036854775807");
        assert_eq!(value("f4"), "1.5");
        assert_eq!(value("num"), r#""12345678901234.123456""#);
        assert_eq!(value("b"), "true");
        assert_eq!(value("t"), r#""it's \"quoted\" \\back\\slash""#);
        assert_eq!(value("vc"), r#""line1\nline2""#);
        assert_eq!(value("bp"), r#""é☃""#);
        assert_eq!(value("j"), r#"{"b":1,"a":[1,2.50,"x"],"n":123456789012345678901234567890}"#);
        assert_eq!(value("jb"), r#"{"k":{"z":null}}"#);
        assert_eq!(value("ints"), "[1,null,3]");
        assert_eq!(value("texts"), r#"["a b","c\"d",null,"NULL","","é"]"#);
        assert_eq!(value("nested"), "[[1,2],[3,4]]");
        assert_eq!(value("jbs"), r#"[{"x":1},null]"#);
        assert_eq!(value("nums"), r#"["1.10","NaN"]"#);
        assert_eq!(value("by"), r#""\\x00ff10""#);
        assert_eq!(value("tstz"), r#""2026-11-28 08:42:39.369663+00""#);
        assert_eq!(value("iv"), r#""1 day 02:03:04""#);
        assert_eq!(value("m"), r#""it's complicated""#);
        assert_eq!(value("p"), "42", "a domain over bigint is a number");
        assert_eq!(value("tl"), r#"["x","y"]"#, "a domain over text[] is an array");
        assert_eq!(value("bx"), r#"["(1,1),(0,0)","(2,2),(1,1)"]"#);
        assert_eq!(value("char"), r#""v'al ""#);
        assert_eq!(row.0.len(), 31, "every column, in table order");
        assert_eq!(&*row.0[30].0, "char");

        let row = kinds[1].new.as_ref().unwrap();
        let value = |column: &str| json(row.get(column).unwrap());
        assert_eq!(value("i8"), "-9223372036854775808");
        assert_eq!(value("f4"), r#""NaN""#);
        assert_eq!(value("f8"), r#""Infinity""#);
        assert_eq!(value("num"), r#""NaN""#);
        assert_eq!(value("jb"), r#""just a string""#);
        assert_eq!(value("by"), r#""\\x""#);
        assert_eq!(value("ints"), "[]");

        let row = kinds[2].new.as_ref().unwrap();
        assert_eq!(row.get("i2"), Some(&Value::Null));
        assert_eq!(row.get("f4"), Some(&Value::Text("-Infinity".into())));
        assert_eq!(json(row.get("j").unwrap()), "null", "json null is JSON null");
    }

    #[test]
    fn reads_transactions() {
        let events = decode_fixtures();
        let Event::Begin(begin) = &events[0].1 else { panic!("first event {:?}", events[0]) };
        let committed_at = crate::decode::parse_pg_timestamptz("2026-11-28 11:20:05.808831+00");
        assert_eq!(begin.xid, Some(810));
        assert_eq!(begin.final_lsn, Some(lsn("0/1E447A0")));
        assert_eq!(begin.committed_at, committed_at);
        let Some((_, Event::Commit(commit))) = events.iter().find(|(_, e)| matches!(e, Event::Commit(_)))
        else {
            panic!("no commit")
        };
        assert_eq!(commit.end_lsn, lsn("0/1E447D0"));
        assert_eq!(commit.committed_at, committed_at);
        let begins = events.iter().filter(|(_, e)| matches!(e, Event::Begin(_))).count();
        let commits = events.iter().filter(|(_, e)| matches!(e, Event::Commit(_))).count();
        assert_eq!((begins, commits), (32, 32), "one Begin and Commit per captured transaction");
    }

    #[test]
    fn normalizes_updates_and_deletes() {
        let events = decode_fixtures();
        let plain = changes_of(&events, "public", "plain");
        // Key unchanged: no old image.
        let update = plain[3];
        assert_eq!(
            (update.op, json_of(&update.new), update.old.is_none()),
            (Op::Update, r#"{"id":1,"v":"uno"}"#.into(), true)
        );
        assert_eq!(json_of(&update.key), r#"{"id":1}"#);
        // Key changed: old key, new key.
        let update = plain[4];
        assert_eq!(json_of(&update.old), r#"{"id":2}"#);
        assert_eq!(json_of(&update.key), r#"{"id":20}"#);
        assert_eq!(json_of(&update.new), r#"{"id":20,"v":"two"}"#);
        let delete = plain[5];
        assert_eq!((delete.op, delete.new.is_none()), (Op::Delete, true));
        assert_eq!(json_of(&delete.old), r#"{"id":3}"#);
        assert_eq!(json_of(&delete.key), r#"{"id":3}"#);

        let full = changes_of(&events, "public", "full_identity");
        assert_eq!(json_of(&full[2].old), r#"{"id":1,"v":"a","n":10}"#);
        assert_eq!(json_of(&full[2].new), r#"{"id":1,"v":"A","n":10}"#);
        assert_eq!(json_of(&full[2].key), r#"{"id":1}"#);
        assert_eq!(json_of(&full[3].old), r#"{"id":2,"v":"b","n":20}"#);
        assert_eq!(json_of(&full[3].key), r#"{"id":3}"#);
        assert_eq!((full[4].op, json_of(&full[4].old)), (Op::Delete, r#"{"id":1,"v":"A","n":10}"#.into()));
        assert_eq!(json_of(&full[4].key), r#"{"id":1}"#);

        // Without a key the whole row identifies it (the catalog says KeyColumns::All).
        let nokey = changes_of(&events, "public", "nokey");
        assert_eq!(nokey.len(), 7);
        assert_eq!(json_of(&nokey[3].old), r#"{"a":2,"b":null}"#);
        assert_eq!(json_of(&nokey[3].key), r#"{"a":2,"b":"y"}"#);
        for delete in &nokey[4..6] {
            assert_eq!((delete.op, json_of(&delete.old)), (Op::Delete, r#"{"a":1,"b":"x"}"#.into()));
            assert_eq!(json_of(&delete.key), r#"{"a":1,"b":"x"}"#);
        }
    }

    #[test]
    fn fills_unchanged_toast_only_from_an_old_image() {
        let events = decode_fixtures();
        let toasty = changes_of(&events, "public", "toasty");
        let big = toasty[0].new.as_ref().unwrap().get("big").unwrap().clone();
        assert!(
            matches!(&big, Value::Text(text) if text.len() == 96_000 && text.starts_with("c4ca4238a0b92382"))
        );
        let update = toasty[1];
        assert_eq!(json_of(&update.new), r#"{"id":1,"small":"changed"}"#);
        assert_eq!(update.unchanged, vec![Arc::<str>::from("big")]);
        assert_eq!((update.old.is_none(), json_of(&update.key)), (true, r#"{"id":1}"#.into()));
        assert_eq!(json_of(&toasty[2].old), r#"{"id":1}"#);

        let full = changes_of(&events, "public", "toasty_full");
        let update = full[1];
        assert!(update.unchanged.is_empty());
        let new = update.new.as_ref().unwrap();
        assert_eq!(new.get("small"), Some(&Value::Text("changed".into())));
        assert!(new.get("big") == Some(&big), "big filled from the old image");
        assert!(update.old.as_ref().unwrap().get("big") == Some(&big));
    }

    #[test]
    fn keeps_quoted_identifiers() {
        let events = decode_fixtures();
        let odd = changes_of(&events, "Odd Schema", "Tab\"le é");
        assert_eq!(odd.len(), 3);
        assert_eq!(*odd[0].table, TableName { schema: "Odd Schema".into(), name: "Tab\"le é".into() });
        assert_eq!(json_of(&odd[0].new), r#"{"Col Space":1,"UPPER":"UP","quo\"te":"q\"uote","ünï":"ü"}"#);
        assert_eq!(json_of(&odd[1].key), r#"{"Col Space":1}"#);
        assert_eq!((odd[2].op, json_of(&odd[2].old)), (Op::Delete, r#"{"Col Space":1}"#.into()));
    }

    #[test]
    fn truncates_one_change_per_table() {
        let events = decode_fixtures();
        let truncates: Vec<(usize, String)> = events
            .iter()
            .filter_map(|(index, event)| match event {
                Event::Change(c) if c.op == Op::Truncate => {
                    assert!(c.key.is_none() && c.new.is_none() && c.old.is_none() && c.unchanged.is_empty());
                    Some((*index, c.table.to_string()))
                }
                _ => None,
            })
            .collect();
        let names: Vec<&str> = truncates.iter().map(|(_, name)| name.as_str()).collect();
        assert_eq!(names, ["public.child", "public.plain", "public.parent", "public.child"]);
        assert_eq!(truncates[0].0, truncates[1].0, "one message, two tables");
        assert_eq!(truncates[2].0, truncates[3].0, "CASCADE: one message, two tables");
    }

    #[test]
    fn follows_columns_added_and_dropped() {
        let events = decode_fixtures();
        let evolving: Vec<(Op, String)> = changes_of(&events, "public", "evolving")
            .iter()
            .map(|c| (c.op, json_of(if c.op == Op::Delete { &c.old } else { &c.new })))
            .collect();
        assert_eq!(
            evolving,
            [
                (Op::Insert, r#"{"id":1,"note":"before"}"#.into()),
                (Op::Insert, r#"{"id":2,"note":"added","added":8}"#.into()),
                (Op::Update, r#"{"id":1,"note":"after add","added":7}"#.into()),
                (Op::Insert, r#"{"id":3,"added":9}"#.into()),
                (Op::Delete, r#"{"id":2}"#.into()),
            ]
        );
    }

    #[test]
    fn reads_messages_and_multi_statement_transactions() {
        let events = decode_fixtures();
        let at = events.iter().position(|(_, e)| matches!(e, Event::Message(_))).expect("a message");
        assert_eq!(
            events[at].1,
            Event::Message(Message {
                lsn: lsn("0/1EA0418"),
                transactional: true,
                prefix: "pubsubpull.test".into(),
                content: b"hello".to_vec(),
            })
        );
        assert!(matches!(&events[at - 1].1, Event::Begin(b) if b.xid == Some(846)));
        assert!(
            matches!(&events[at + 1].1, Event::Change(c) if c.new.as_ref().unwrap().get("id") == Some(&Value::Int(400)))
        );

        // The transaction with a rolled-back savepoint: 201 is not there.
        let begin =
            events.iter().position(|(_, e)| matches!(e, Event::Begin(b) if b.xid == Some(842))).unwrap();
        let body: Vec<String> = events[begin + 1..]
            .iter()
            .map_while(|(_, e)| match e {
                Event::Change(c) => Some(format!("{} {:?} {}", c.table, c.op, json_of(&c.new))),
                _ => None,
            })
            .collect();
        assert_eq!(
            body,
            [
                r#"public.plain Insert {"id":200,"v":"in transaction"}"#,
                r#"public.plain Update {"id":200,"v":"updated in transaction"}"#,
                r#"public.nokey Insert {"a":9,"b":"in transaction"}"#,
            ]
        );
        assert!(matches!(events[begin + 4].1, Event::Commit(_)));
    }

    /// Builds a pgoutput message by hand.
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(tag: u8) -> Msg {
            Msg(vec![tag])
        }
        fn u8(mut self, v: u8) -> Msg {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Msg {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Msg {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Msg {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Msg {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn bytes(mut self, b: &[u8]) -> Msg {
            self.0.extend_from_slice(b);
            self
        }
        /// A `t` column.
        fn text(self, text: &[u8]) -> Msg {
            self.u8(b't').i32(text.len() as i32).bytes(text)
        }
        /// A Relation message for `public.plain (id int4 key, v text)` as relation 1.
        fn plain_relation(self) -> Msg {
            self.i32(1)
                .str("public")
                .str("plain")
                .u8(b'd')
                .i16(2)
                .u8(1)
                .str("id")
                .i32(23)
                .i32(-1)
                .u8(0)
                .str("v")
                .i32(25)
                .i32(-1)
        }
    }

    /// A decoder and catalog that know `public.plain` as relation 1.
    fn plain_decoder() -> (PgoutputDecoder, Catalog) {
        let catalog = fixtures::catalog();
        let mut decoder = PgoutputDecoder::default();
        decoder.decode(Lsn(1), &Msg::new(b'R').plain_relation().0, &catalog, &mut Vec::new()).unwrap();
        (decoder, catalog)
    }

    fn decode_one(
        decoder: &mut PgoutputDecoder,
        catalog: &Catalog,
        bytes: &[u8],
    ) -> Result<Vec<Event>, DecodeError> {
        let mut out = Vec::new();
        let result = decoder.decode(Lsn(7), bytes, catalog, &mut out);
        if result.is_err() {
            assert!(out.is_empty(), "events appended on error: {out:?}");
        }
        result.map(|()| out)
    }

    #[test]
    fn rejects_every_truncation_of_every_message_leaving_state_as_it_was() {
        let catalog = fixtures::catalog();
        let reference = decode_fixtures();
        let mut decoder = PgoutputDecoder::default();
        let mut events = Vec::new();
        for (index, (lsn, bytes)) in fixtures::messages(Plugin::Pgoutput).iter().enumerate() {
            let before = decoder.relations.clone();
            for cut in 0..bytes.len() {
                let mut out = Vec::new();
                match decoder.decode(*lsn, &bytes[..cut], &catalog, &mut out) {
                    Err(DecodeError::Truncated { needed, .. }) if needed > 0 => {}
                    other => panic!("message {index} cut at {cut}: {other:?}"),
                }
                assert!(out.is_empty());
            }
            assert_eq!(decoder.relations, before, "message {index}: a truncation changed the relation cache");
            decoder.decode(*lsn, bytes, &catalog, &mut events).unwrap();
        }
        let reference: Vec<Event> = reference.into_iter().map(|(_, event)| event).collect();
        assert!(events == reference, "decoding after the truncations differs");
    }

    #[test]
    fn rejects_malformed_messages() {
        let (mut decoder, catalog) = plain_decoder();
        let mut decode = |bytes: &[u8]| decode_one(&mut decoder, &catalog, bytes).unwrap_err();
        assert!(matches!(decode(b""), DecodeError::Truncated { at: 0, needed: 1 }));
        for tag in [b'Z', b'b', b'P', b'K', b'r', b'p', b'x', 0, 0xff] {
            let err = decode(&[tag, 0, 0, 0, 0]);
            assert!(
                matches!(err, DecodeError::UnknownTag { at: 0, tag: t } if t == char::from(tag)),
                "{err:?}"
            );
        }
        let insert = || Msg::new(b'I').i32(1).u8(b'N').i16(2);
        // Negative and huge lengths.
        let err = decode(&insert().u8(b't').i32(-1).0);
        assert!(matches!(err, DecodeError::InvalidLength { at: 9, len: -1 }), "{err:?}");
        let err = decode(&insert().u8(b't').i32(i32::MAX).bytes(b"12").0);
        assert!(
            matches!(err, DecodeError::Truncated { at: 13, needed } if needed == i32::MAX as usize - 2),
            "{err:?}"
        );
        let err = decode(&Msg::new(b'M').u8(1).i64(0).str("p").i32(-5).0);
        assert!(matches!(err, DecodeError::InvalidLength { len: -5, .. }), "{err:?}");
        let err = decode(&Msg::new(b'T').i32(-1).u8(0).0);
        assert!(matches!(err, DecodeError::InvalidLength { at: 1, len: -1 }), "{err:?}");
        let err = decode(&Msg::new(b'T').i32(i32::MAX).u8(0).i32(1).0);
        assert!(matches!(err, DecodeError::Truncated { at: 6, .. }), "{err:?}");
        // A Relation claiming 65535 columns in a few bytes allocates for what fits, then stops.
        let err = decode(&Msg::new(b'R').i32(2).str("public").str("t").u8(b'd').i16(-1).u8(1).str("a").0);
        assert!(matches!(err, DecodeError::Truncated { .. }), "{err:?}");
        let err = decode(&Msg::new(b'R').i32(2).str("public").str("t").0);
        assert!(matches!(err, DecodeError::Truncated { .. }), "{err:?}");
        // Tuple shape.
        let err = decode(&Msg::new(b'I').i32(1).u8(b'N').i16(3).u8(b'n').u8(b'n').u8(b'n').0);
        assert!(matches!(err, DecodeError::Malformed { at: 6, .. }), "{err:?}");
        let err = decode(&insert().text(b"1").u8(b'b').i32(1).bytes(b"x").0);
        assert!(
            matches!(err, DecodeError::Malformed { at: 14, expected } if expected.contains("binary")),
            "{err:?}"
        );
        let err = decode(&insert().text(b"1").u8(b'?').0);
        assert!(matches!(err, DecodeError::UnknownTag { at: 14, tag: '?' }), "{err:?}");
        let err = decode(&Msg::new(b'I').i32(1).u8(b'K').i16(2).u8(b'n').u8(b'n').0);
        assert!(matches!(err, DecodeError::Malformed { at: 5, .. }), "{err:?}");
        let err = decode(&Msg::new(b'U').i32(1).u8(b'K').i16(2).text(b"1").u8(b'n').u8(b'X').0);
        assert!(matches!(err, DecodeError::Malformed { at: 15, .. }), "{err:?}");
        let err = decode(&Msg::new(b'D').i32(1).u8(b'N').i16(2).text(b"1").u8(b'n').0);
        assert!(matches!(err, DecodeError::Malformed { at: 5, .. }), "{err:?}");
        // Trailing bytes.
        let err = decode(&insert().text(b"1").u8(b'n').u8(0).0);
        assert!(
            matches!(err, DecodeError::Malformed { at: 15, expected: "the end of the message" }),
            "{err:?}"
        );
        // Invalid UTF-8, in a value and in a name.
        let err = decode(&insert().text(b"1").text(b"ok\xff").0);
        assert!(matches!(err, DecodeError::InvalidUtf8 { at: 21 }), "{err:?}");
        let err = decode(&Msg::new(b'R').i32(3).str("public").bytes(b"t\xc3\0").u8(b'd').i16(0).0);
        assert!(matches!(err, DecodeError::InvalidUtf8 { at: 13 }), "{err:?}");
        // A value that does not parse as its type.
        let err = decode(&insert().text(b"one").u8(b'n').0);
        assert!(matches!(&err, DecodeError::Value { column, .. } if column == "id"), "{err:?}");
        // A change for a relation never announced.
        let err = decode(&Msg::new(b'I').i32(99).u8(b'N').i16(0).0);
        assert!(matches!(err, DecodeError::UnknownRelation(99)), "{err:?}");
        let err = decode(&Msg::new(b'T').i32(2).u8(0).i32(1).i32(99).0);
        assert!(matches!(err, DecodeError::UnknownRelation(99)), "{err:?}");
        // Stream messages out of place.
        let err = decode(b"E");
        assert!(matches!(err, DecodeError::Malformed { at: 0, .. }), "{err:?}");
        assert!(
            decoder.relation(3).is_none() && decoder.relation(2).is_none(),
            "failed Relation messages were cached"
        );
        assert!(!decoder.in_stream);
    }

    #[test]
    fn reports_catalog_misses_and_decodes_after_a_refresh() {
        let messages = fixtures::messages(Plugin::Pgoutput);
        let mut decoder = PgoutputDecoder::default();
        let (relation, insert) = (&messages[4], &messages[5]); // public.kinds
                                                               // Neither the table nor the database's own types: the Relation message is still cached.
        let mut catalog = Catalog::builtin();
        decode_one(&mut decoder, &catalog, &relation.1).unwrap();
        let err = decode_one(&mut decoder, &catalog, &insert.1).unwrap_err();
        assert!(
            matches!(&err, DecodeError::UnknownTable(t) if *t == TableName::new("public", "kinds")),
            "{err:?}"
        );
        assert!(err.is_catalog_miss());
        catalog.set_table(
            TableName::new("public", "kinds"),
            TableInfo { key: KeyColumns::Columns(vec!["id".into()]), full_identity: false },
        );
        let err = decode_one(&mut decoder, &catalog, &insert.1).unwrap_err();
        assert!(matches!(&err, DecodeError::UnknownType(TypeRef::Oid(16489))), "{err:?}");
        assert!(err.is_catalog_miss());
        let events = decode_one(&mut decoder, &fixtures::catalog(), &insert.1).unwrap();
        assert!(
            matches!(&events[..], [Event::Change(c)] if c.new.as_ref().unwrap().get("m") == Some(&Value::Text("it's complicated".into())))
        );
    }

    #[test]
    fn decodes_a_streamed_transaction() {
        let catalog = fixtures::catalog();
        let mut decoder = PgoutputDecoder::default();
        let messages = [
            Msg::new(b'S').i32(900).u8(1),
            Msg::new(b'R').i32(900).plain_relation(),
            Msg::new(b'Y').i32(900).i32(16489).str("public").str("mood"),
            Msg::new(b'I').i32(900).i32(1).u8(b'N').i16(2).text(b"1").text(b"streamed"),
            Msg::new(b'U')
                .i32(901)
                .i32(1)
                .u8(b'K')
                .i16(2)
                .text(b"1")
                .u8(b'n')
                .u8(b'N')
                .i16(2)
                .text(b"2")
                .u8(b'u'),
            Msg::new(b'M').i32(900).u8(1).i64(0x100).str("p").i32(2).bytes(b"hi"),
            Msg::new(b'T').i32(900).i32(1).u8(0).i32(1),
            Msg::new(b'E'),
            Msg::new(b'S').i32(900).u8(0),
            Msg::new(b'D').i32(900).i32(1).u8(b'K').i16(2).text(b"2").u8(b'n'),
            Msg::new(b'E'),
            Msg::new(b'A').i32(900).i32(901),
            Msg::new(b'c').i32(900).u8(0).i64(0x1000).i64(0x1030).i64(0),
        ];
        let mut events = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            decoder
                .decode(Lsn(index as u64), &message.0, &catalog, &mut events)
                .unwrap_or_else(|err| panic!("message {index}: {err}"));
        }
        let epoch = crate::decode::timestamp_from_pg_micros(0);
        let lines: Vec<String> = events.iter().map(golden::line).collect();
        assert_eq!(
            lines,
            [
                r#"{"stream_start":{"xid":900,"first_segment":true}}"#,
                r#"{"change":{"lsn":"0/3","table":"public.plain","op":"insert","key":{"id":1},"new":{"id":1,"v":"streamed"},"old":null,"unchanged":[]}}"#,
                r#"{"change":{"lsn":"0/4","table":"public.plain","op":"update","key":{"id":2},"new":{"id":2},"old":{"id":1},"unchanged":["v"]}}"#,
                r#"{"message":{"lsn":"0/100","transactional":true,"prefix":"p","content":"hi"}}"#,
                r#"{"change":{"lsn":"0/6","table":"public.plain","op":"truncate","key":null,"new":null,"old":null,"unchanged":[]}}"#,
                r#"{"stream_stop":{}}"#,
                r#"{"stream_start":{"xid":900,"first_segment":false}}"#,
                r#"{"change":{"lsn":"0/9","table":"public.plain","op":"delete","key":{"id":2},"new":null,"old":{"id":2},"unchanged":[]}}"#,
                r#"{"stream_stop":{}}"#,
                r#"{"stream_abort":{"xid":900,"subxid":901}}"#,
                r#"{"stream_commit":{"xid":900,"end_lsn":"0/1030","committed_at":"2000-01-01T00:00:00.000000Z"}}"#,
            ]
        );
        assert_eq!(
            events.last(),
            Some(&Event::StreamCommit {
                xid: 900,
                commit: Commit { end_lsn: Lsn(0x1030), committed_at: epoch }
            })
        );

        // Inside a stream block a change carries the xid: without it the message does not parse, and
        // transaction boundaries are out of place.
        decode_one(&mut decoder, &catalog, &Msg::new(b'S').i32(902).u8(1).0).unwrap();
        let plain_insert = Msg::new(b'I').i32(1).u8(b'N').i16(2).text(b"1").u8(b'n').0;
        assert!(decode_one(&mut decoder, &catalog, &plain_insert).is_err());
        let begin = Msg::new(b'B').i64(0).i64(0).i32(5).0;
        let err = decode_one(&mut decoder, &catalog, &begin).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { at: 0, .. }), "{err:?}");
        let err = decode_one(&mut decoder, &catalog, &Msg::new(b'S').i32(903).u8(1).0).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { at: 0, .. }), "{err:?}");
        assert!(decoder.in_stream);
        decode_one(&mut decoder, &catalog, b"E").unwrap();
        assert!(decode_one(&mut decoder, &catalog, &plain_insert).is_ok());
    }

    #[test]
    fn keeps_an_old_key_only_when_the_key_changed() {
        let (mut decoder, catalog) = plain_decoder();
        // The server also sends the old key when an unchanged key is stored out of line.
        let same =
            Msg::new(b'U').i32(1).u8(b'K').i16(2).text(b"5").u8(b'n').u8(b'N').i16(2).text(b"5").text(b"x");
        let events = decode_one(&mut decoder, &catalog, &same.0).unwrap();
        assert!(
            matches!(&events[..], [Event::Change(c)] if c.old.is_none() && json_of(&c.key) == r#"{"id":5}"#)
        );
        // An old image of nothing but unchanged TOAST is no old image.
        let toast = Msg::new(b'D').i32(1).u8(b'O').i16(2).u8(b'u').u8(b'u');
        let events = decode_one(&mut decoder, &catalog, &toast.0).unwrap();
        assert!(matches!(&events[..], [Event::Change(c)] if c.old.is_none() && c.key.is_none()));
    }

    #[test]
    fn asks_for_the_protocol_the_server_speaks() {
        let options = |name: &str, version| start_options(name, version);
        assert_eq!(
            options("pubsubpull_all", 150_018),
            [
                ("proto_version", "2".to_owned()),
                ("publication_names", "pubsubpull_all".to_owned()),
                ("messages", "true".to_owned())
            ]
        );
        assert_eq!(
            options("pub", 130_015),
            [("proto_version", "1".to_owned()), ("publication_names", "pub".to_owned())]
        );
        assert_eq!(options("My Pub", 140_000)[1].1, "\"My Pub\"");
        assert_eq!(options("a,b", 140_000)[1].1, "\"a,b\"");
        assert_eq!(options("x\"y", 140_000)[1].1, "\"x\"\"y\"");
        assert_eq!(options("Upper", 140_000)[1].1, "\"Upper\"");
    }

    /// A decoder that has read every fixture message, so corrupted changes find their relations.
    fn primed_decoder() -> &'static PgoutputDecoder {
        static PRIMED: std::sync::OnceLock<PgoutputDecoder> = std::sync::OnceLock::new();
        PRIMED.get_or_init(|| {
            let catalog = fixtures::catalog();
            let mut decoder = PgoutputDecoder::default();
            for (lsn, bytes) in fixtures::messages(Plugin::Pgoutput) {
                decoder.decode(lsn, &bytes, &catalog, &mut Vec::new()).unwrap();
            }
            decoder
        })
    }

    /// Decodes `bytes` with a copy of the primed decoder: never a panic, and on error no event and
    /// no change of state.
    fn check_any_input(bytes: &[u8], in_stream: bool, catalog: &Catalog) {
        let mut decoder = primed_decoder().clone();
        decoder.in_stream = in_stream;
        let before = decoder.clone();
        let mut out = Vec::new();
        if decoder.decode(Lsn(1), bytes, catalog, &mut out).is_err() {
            assert!(out.is_empty());
            assert_eq!((decoder.relations, decoder.in_stream), (before.relations, before.in_stream));
        }
    }

    fn fixture_catalog() -> &'static Catalog {
        static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
        CATALOG.get_or_init(fixtures::catalog)
    }

    /// The fixture messages small enough to corrupt quickly (all but the three toasted rows).
    fn small_messages() -> &'static [Vec<u8>] {
        static SMALL: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        SMALL.get_or_init(|| {
            fixtures::messages(Plugin::Pgoutput)
                .into_iter()
                .map(|(_, b)| b)
                .filter(|b| b.len() < 4096)
                .collect()
        })
    }

    proptest! {
        // 2000 cases each; both together take well under a second in a debug build.
        #![proptest_config(fixtures::proptest_config())]

        #[test]
        fn random_bytes_never_panic(
            tag in prop::sample::select(b"BCORYIUDTMSEcAKNn".to_vec()),
            rest in prop::collection::vec(any::<u8>(), 0..64),
            in_stream: bool,
        ) {
            let mut bytes = vec![tag];
            bytes.extend(rest);
            check_any_input(&bytes, in_stream, fixture_catalog());
        }

        #[test]
        fn corrupted_fixture_messages_never_panic(
            index in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate: bool,
            in_stream: bool,
        ) {
            let messages = small_messages();
            let mut bytes = messages[index.index(messages.len())].clone();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            check_any_input(&bytes, in_stream, fixture_catalog());
        }
    }

    #[test]
    fn matches_the_golden_file() {
        let events: Vec<Event> = decode_fixtures().into_iter().map(|(_, event)| event).collect();
        golden::check("pgoutput.expected.ndjson", &events);
    }
}
