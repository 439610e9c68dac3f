//! test_decoding output: one line of text a message.
//!
//! Lines: `BEGIN 730`, `COMMIT 730 (at 2026-11-28 10:42:39.369663+00)`, `table public.t: INSERT:
//! id[integer]:1 name[text]:'it''s'` (also `UPDATE: old-key: ... new-tuple: ...`, `DELETE: ...`,
//! `(no-tuple-data)` for a missing tuple), `table public.a, public.b: TRUNCATE: restart_seqs cascade`
//! and `message: transactional: 1 prefix: p, sz: 5 content:hello`. Names are quoted as SQL
//! identifiers, each column carries its type as `format_type` names it (looked up in the [`Catalog`]
//! by that name), values are unquoted for numbers and booleans, single-quoted with `''` for a quote
//! and no other escaping (so they may hold newlines) for everything else, `null`, or
//! `unchanged-toast-datum`. The parser scans bytes; it never splits on spaces or quotes blindly.
//!
//! What test_decoding does not say, so that these changes can be poorer than pgoutput's:
//! - Old images (`old-key` and deletes) leave out NULL columns: with REPLICA IDENTITY FULL, `old`
//!   lacks the columns that were NULL (they are not invented here).
//! - `COMMIT` tells no commit LSN; [`Begin`] has neither commit LSN nor commit time.
//! - A change without tuple data (`(no-tuple-data)`) has no `new` (insert, update) or `old` (delete).

use std::borrow::Cow;
use std::sync::Arc;

use memchr::{memchr, memchr2, memmem};

use super::names::Names;
use super::value::decode_text;
use super::{
    parse_pg_timestamptz, Begin, Catalog, Change, Commit, DecodeError, Decoder, Event, Message, Op, Row,
    TableInfo, TableName, TypeRef, Value,
};
use crate::lsn::Lsn;

/// The options `START_REPLICATION` passes to test_decoding for this decoder.
pub fn start_options() -> Vec<(&'static str, String)> {
    vec![("include-xids", "1".to_owned()), ("include-timestamp", "1".to_owned())]
}

/// Decodes test_decoding lines.
#[derive(Default)]
pub struct TestDecodingDecoder {
    names: Names,
}

impl Decoder for TestDecodingDecoder {
    fn decode(
        &mut self,
        lsn: Lsn,
        data: &[u8],
        catalog: &Catalog,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let before = out.len();
        let decoded = self.decode_line(lsn, data, catalog, out);
        if decoded.is_err() {
            out.truncate(before);
        }
        decoded
    }
}

impl TestDecodingDecoder {
    fn decode_line(
        &mut self,
        lsn: Lsn,
        data: &[u8],
        catalog: &Catalog,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        if data.starts_with(b"table ") {
            self.decode_table_line(lsn, Line::new(utf8(data)?, "table ".len()), catalog, out)
        } else if data.starts_with(b"BEGIN") {
            out.push(decode_begin(Line::new(utf8(data)?, "BEGIN".len()))?);
            Ok(())
        } else if data.starts_with(b"COMMIT") {
            out.push(decode_commit(lsn, Line::new(utf8(data)?, "COMMIT".len()))?);
            Ok(())
        } else if data.starts_with(b"message: ") {
            out.push(decode_message(lsn, data)?);
            Ok(())
        } else {
            Err(DecodeError::Malformed {
                at: 0,
                expected: "a line starting with BEGIN, COMMIT, table or message",
            })
        }
    }

    fn decode_table_line(
        &mut self,
        lsn: Lsn,
        mut line: Line<'_>,
        catalog: &Catalog,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let (schema, name) = line.qualified_name()?;
        let table = self.names.table(&schema, &name);
        if line.rest().starts_with(", ") || line.rest().starts_with(": TRUNCATE:") {
            return self.decode_truncate(lsn, line, table, out);
        }
        line.expect(": ", "`: ` after the table name")?;
        let op = if line.eat("INSERT:") {
            Op::Insert
        } else if line.eat("UPDATE:") {
            Op::Update
        } else if line.eat("DELETE:") {
            Op::Delete
        } else {
            return Err(line.error("INSERT:, UPDATE:, DELETE: or TRUNCATE:"));
        };
        let info =
            catalog.table(&table).ok_or_else(|| DecodeError::UnknownTable(TableName::clone(&table)))?;
        let (new, old) = match op {
            Op::Insert => (self.tuple_or_none(&mut line, catalog)?, None),
            Op::Update => {
                let old = if line.eat(" old-key:") {
                    let old = self.tuple(&mut line, catalog, true)?;
                    line.expect(" new-tuple:", "` new-tuple:` after the old key")?;
                    Some(old)
                } else {
                    None
                };
                (self.tuple_or_none(&mut line, catalog)?, old)
            }
            _ => (None, self.tuple_or_none(&mut line, catalog)?),
        };
        line.end()?;
        out.push(Event::Change(change(lsn, table, info, op, new, old)));
        Ok(())
    }

    /// `table a, b: TRUNCATE: flags`, `first` being the name already read: one change per table.
    /// The flags are checked and dropped (the model has no place for them); the catalog is not
    /// consulted, as a truncate needs nothing from it.
    fn decode_truncate(
        &mut self,
        lsn: Lsn,
        mut line: Line<'_>,
        first: Arc<TableName>,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let truncate = |table| {
            Event::Change(Change {
                lsn,
                table,
                op: Op::Truncate,
                key: None,
                new: None,
                old: None,
                unchanged: Vec::new(),
            })
        };
        out.push(truncate(first));
        while line.eat(", ") {
            let (schema, name) = line.qualified_name()?;
            out.push(truncate(self.names.table(&schema, &name)));
        }
        line.expect(": TRUNCATE:", "`: TRUNCATE:` after the table names")?;
        if !line.eat(" (no-flags)") {
            let restart_seqs = line.eat(" restart_seqs");
            let cascade = line.eat(" cascade");
            if !restart_seqs && !cascade {
                return Err(line.error("(no-flags), restart_seqs or cascade"));
            }
        }
        line.end()
    }

    /// ` (no-tuple-data)`, or a tuple up to the end of the line.
    fn tuple_or_none(
        &mut self,
        line: &mut Line<'_>,
        catalog: &Catalog,
    ) -> Result<Option<Tuple>, DecodeError> {
        if line.eat(" (no-tuple-data)") {
            Ok(None)
        } else {
            self.tuple(line, catalog, false).map(Some)
        }
    }

    /// Columns (` name[type]:value` each) up to the end of the line, or up to ` new-tuple:` for an
    /// old key.
    fn tuple(&mut self, line: &mut Line<'_>, catalog: &Catalog, old_key: bool) -> Result<Tuple, DecodeError> {
        let mut row = Vec::with_capacity(16);
        let mut toast = Vec::new();
        while !(line.is_end() || old_key && line.rest().starts_with(" new-tuple:")) {
            line.expect(" ", "a space before the next column")?;
            let name = line.identifier()?;
            line.expect("[", "`[` and a type after the column name")?;
            let type_name = line.type_name()?;
            let kind = catalog
                .type_by_name(type_name)
                .ok_or_else(|| DecodeError::UnknownType(TypeRef::Name(type_name.to_owned())))?;
            let datum = line.datum()?;
            let name = self.names.column(&name);
            match datum {
                Datum::Null => row.push((name, Value::Null)),
                Datum::UnchangedToast => toast.push((row.len(), name)),
                Datum::Text(text) => {
                    let value = decode_text(kind, &text)
                        .map_err(|source| DecodeError::Value { column: name.to_string(), source })?;
                    row.push((name, value));
                }
            }
        }
        Ok(Tuple { row: Row(row), toast })
    }
}

/// A tuple as printed: the columns with a value, and the unchanged TOAST ones with the position
/// they would take in the row.
struct Tuple {
    row: Row,
    toast: Vec<(usize, Arc<str>)>,
}

/// Applies the normalization rules: unchanged TOAST columns come from the old image when it has
/// them; the key is projected from the new row, or the old one for deletes.
fn change(
    lsn: Lsn,
    table: Arc<TableName>,
    info: &TableInfo,
    op: Op,
    new: Option<Tuple>,
    old: Option<Tuple>,
) -> Change {
    let old = old.map(|old| old.row);
    let mut unchanged = Vec::new();
    let new = new.map(|Tuple { mut row, toast }| {
        for (at, name) in toast.into_iter().rev() {
            match old.as_ref().and_then(|old| old.get(&name)) {
                Some(value) => row.0.insert(at, (name, value.clone())),
                None => unchanged.push(name),
            }
        }
        unchanged.reverse();
        row
    });
    // The server also logs an unchanged key when it is stored out of line: only a changed one is `old`.
    let old = match (op, &new) {
        (Op::Update, Some(new)) if !info.full_identity => old.filter(|old| !old.agrees_with(new)),
        _ => old,
    };
    let key = match op {
        Op::Delete => old.as_ref().and_then(|old| old.project(&info.key)),
        _ => new.as_ref().and_then(|new| new.project(&info.key)),
    };
    Change { lsn, table, op, key, new, old, unchanged }
}

/// `BEGIN` and an optional xid (option include-xids).
fn decode_begin(mut line: Line<'_>) -> Result<Event, DecodeError> {
    let xid = if line.eat(" ") { Some(line.number("a transaction id")?) } else { None };
    line.end()?;
    Ok(Event::Begin(Begin { xid, final_lsn: None, committed_at: None }))
}

/// `COMMIT`, an optional xid and an optional ` (at TIME)` (option include-timestamp).
fn decode_commit(lsn: Lsn, mut line: Line<'_>) -> Result<Event, DecodeError> {
    if !line.rest().starts_with(" (") && line.eat(" ") {
        line.number::<u32>("a transaction id")?;
    }
    let committed_at = if line.eat(" (at ") {
        let at = line.at;
        let time = line.rest().strip_suffix(')').ok_or(line.error("`)` at the end of the line"))?;
        line.at += time.len() + 1;
        let time = parse_pg_timestamptz(time)
            .ok_or(DecodeError::Malformed { at, expected: "a time like 2026-11-28 10:42:39.369663+00" })?;
        Some(time)
    } else {
        None
    };
    line.end()?;
    Ok(Event::Commit(Commit { end_lsn: lsn, committed_at }))
}

/// `message: transactional: 1 prefix: PREFIX, sz: N content:CONTENT`. The prefix is printed as is
/// and the content holds any N bytes, so the line is split where the byte count fits.
fn decode_message(lsn: Lsn, data: &[u8]) -> Result<Event, DecodeError> {
    const HEAD: &[u8] = b"message: transactional: ";
    const PREFIX: &[u8] = b" prefix: ";
    const SIZE: &[u8] = b", sz: ";
    const CONTENT: &[u8] = b" content:";
    if !data.starts_with(HEAD) {
        return Err(DecodeError::Malformed { at: 0, expected: "`message: transactional: `" });
    }
    let transactional = match data.get(HEAD.len()) {
        Some(b'1') => true,
        Some(b'0') => false,
        _ => return Err(DecodeError::Malformed { at: HEAD.len(), expected: "transactional 0 or 1" }),
    };
    let prefix_at = HEAD.len() + 1 + PREFIX.len();
    if !data[HEAD.len() + 1..].starts_with(PREFIX) {
        return Err(DecodeError::Malformed { at: HEAD.len() + 1, expected: "` prefix: `" });
    }
    let rest = &data[prefix_at..];
    for found in memmem::find_iter(rest, SIZE) {
        let digits_at = found + SIZE.len();
        let digits = rest[digits_at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let after_digits = &rest[digits_at + digits..];
        let Some(content) = after_digits.strip_prefix(CONTENT) else { continue };
        let size = std::str::from_utf8(&rest[digits_at..digits_at + digits])
            .ok()
            .and_then(|d| d.parse::<usize>().ok());
        if size != Some(content.len()) {
            continue;
        }
        let prefix = std::str::from_utf8(&rest[..found])
            .map_err(|e| DecodeError::InvalidUtf8 { at: prefix_at + e.valid_up_to() })?;
        return Ok(Event::Message(Message {
            lsn,
            transactional,
            prefix: prefix.to_owned(),
            content: content.to_vec(),
        }));
    }
    Err(DecodeError::Malformed { at: prefix_at, expected: "`, sz: N content:` followed by exactly N bytes" })
}

fn utf8(data: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(data).map_err(|e| DecodeError::InvalidUtf8 { at: e.valid_up_to() })
}

/// A column value as printed.
enum Datum<'a> {
    Null,
    UnchangedToast,
    Text(Cow<'a, str>),
}

/// A line and the byte the parser is at (always on a character boundary: it only ever steps over
/// ASCII delimiters or to the end).
struct Line<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Line<'a> {
    fn new(text: &'a str, at: usize) -> Line<'a> {
        Line { text, at }
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.at..).unwrap_or_default()
    }

    fn is_end(&self) -> bool {
        self.at >= self.text.len()
    }

    fn error(&self, expected: &'static str) -> DecodeError {
        DecodeError::Malformed { at: self.at, expected }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.is_end() {
            Ok(())
        } else {
            Err(self.error("the end of the line"))
        }
    }

    fn eat(&mut self, literal: &str) -> bool {
        let found = self.rest().starts_with(literal);
        if found {
            self.at += literal.len();
        }
        found
    }

    fn expect(&mut self, literal: &str, expected: &'static str) -> Result<(), DecodeError> {
        if self.eat(literal) {
            Ok(())
        } else {
            Err(self.error(expected))
        }
    }

    /// An unsigned decimal number.
    fn number<T: std::str::FromStr>(&mut self, expected: &'static str) -> Result<T, DecodeError> {
        let digits = self.rest().bytes().take_while(u8::is_ascii_digit).count();
        let number = self.rest()[..digits].parse().map_err(|_| self.error(expected))?;
        self.at += digits;
        Ok(number)
    }

    /// `schema.name`, each part an identifier.
    fn qualified_name(&mut self) -> Result<(Cow<'a, str>, Cow<'a, str>), DecodeError> {
        let schema = self.identifier()?;
        self.expect(".", "`.` between schema and table name")?;
        Ok((schema, self.identifier()?))
    }

    /// An identifier as `quote_identifier` prints it: double-quoted with `""` for a quote, or bare.
    fn identifier(&mut self) -> Result<Cow<'a, str>, DecodeError> {
        if self.rest().starts_with('"') {
            return self.quoted(b'"', "a closing double quote after the identifier");
        }
        let length = self.rest().bytes().take_while(|b| !b".[:, \"'".contains(b)).count();
        if length == 0 {
            return Err(self.error("an identifier"));
        }
        let identifier = &self.rest()[..length];
        self.at += length;
        Ok(Cow::Borrowed(identifier))
    }

    /// A string between `quote`s, the quote doubled inside; the parser is on the opening quote.
    fn quoted(&mut self, quote: u8, expected: &'static str) -> Result<Cow<'a, str>, DecodeError> {
        let start = self.at + 1;
        let (end, doubled) = closing_quote(self.text.as_bytes(), start, quote).ok_or(self.error(expected))?;
        let inner = self.text.get(start..end).ok_or(self.error(expected))?;
        self.at = end + 1;
        Ok(if doubled {
            let quote = char::from(quote);
            Cow::Owned(inner.replace(&format!("{quote}{quote}"), &quote.to_string()))
        } else {
            Cow::Borrowed(inner)
        })
    }

    /// A type name up to the `]:` that closes it (it may hold `[]` and quoted identifiers), which is
    /// consumed too.
    fn type_name(&mut self) -> Result<&'a str, DecodeError> {
        const EXPECTED: &str = "a type name closed by `]:`";
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut from = start;
        loop {
            let found =
                bytes.get(from..).and_then(|rest| memchr2(b'"', b']', rest)).ok_or(self.error(EXPECTED))?;
            let at = from + found;
            if bytes[at] == b'"' {
                from = closing_quote(bytes, at + 1, b'"').ok_or(self.error(EXPECTED))?.0 + 1;
            } else if bytes.get(at + 1) == Some(&b':') {
                let name = self.text.get(start..at).ok_or(self.error(EXPECTED))?;
                self.at = at + 2;
                return Ok(name);
            } else {
                from = at + 1;
            }
        }
    }

    /// A value: quoted text, a bit string `B'0101'`, `null`, `unchanged-toast-datum`, or an
    /// unquoted number or boolean.
    fn datum(&mut self) -> Result<Datum<'a>, DecodeError> {
        const EXPECTED: &str = "a closing quote after the value";
        let rest = self.rest().as_bytes();
        match rest {
            [b'\'', ..] => self.quoted(b'\'', EXPECTED).map(Datum::Text),
            [b'B', b'\'', ..] => {
                self.at += 1;
                self.quoted(b'\'', EXPECTED).map(Datum::Text)
            }
            _ => {
                let length = memchr(b' ', rest).unwrap_or(rest.len());
                if length == 0 {
                    return Err(self.error("a value"));
                }
                let token = &self.rest()[..length];
                self.at += length;
                Ok(match token {
                    "null" => Datum::Null,
                    "unchanged-toast-datum" => Datum::UnchangedToast,
                    _ => Datum::Text(Cow::Borrowed(token)),
                })
            }
        }
    }
}

/// The position of the quote closing a string that starts at `from`, and whether a doubled quote
/// was seen inside.
fn closing_quote(bytes: &[u8], from: usize, quote: u8) -> Option<(usize, bool)> {
    let mut at = from;
    let mut doubled = false;
    loop {
        let found = at + memchr(quote, bytes.get(at..)?)?;
        if bytes.get(found + 1) == Some(&quote) {
            doubled = true;
            at = found + 2;
        } else {
            return Some((found, doubled));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;

    use super::*;
    use crate::decode::fixtures::golden;
    use crate::decode::{fixtures, Plugin};

    static CATALOG: LazyLock<Catalog> = LazyLock::new(fixtures::catalog);

    fn json<T: serde::Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    fn decode_one(data: &[u8]) -> Result<Vec<Event>, DecodeError> {
        fixtures::decode_one(&mut TestDecodingDecoder::default(), data, &CATALOG)
    }

    fn decode_change(line: &str) -> Change {
        match decode_one(line.as_bytes()) {
            Ok(events) => match &events[..] {
                [Event::Change(change)] => change.clone(),
                other => panic!("{other:?}"),
            },
            Err(e) => panic!("{line}: {e}"),
        }
    }

    #[test]
    fn maps_every_kind_of_value() {
        let events = fixtures::decode_all(Plugin::TestDecoding);
        let kinds = fixtures::changes_of(&events, "public", "kinds");
        let rows: Vec<String> = kinds.iter().map(|change| json(&change.new)).collect();
        // The same row as wal2json's and pgoutput's.
        assert_eq!(
            rows[0],
            r#"{"id":1,"i2":1,"i4":2,"i8":9223372036854775807,"f4":1.5,"f8":0.1,"num":"12345678901234.123456","b":true,"t":"it's \"quoted\" \\back\\slash","vc":"line1\nline2","bp":"é☃","j":{"b":1,"a":[1,2.50,"x"],"n":123456789012345678901234567890},"jb":{"k":{"z":null}},"ints":[1,null,3],"texts":["a b","c\"d",null,"NULL","","é"],"nested":[[1,2],[3,4]],"jbs":[{"x":1},null],"nums":["1.10","NaN"],"by":"\\x00ff10","d":"2026-11-28","ts":"2026-11-28 10:42:39.369663","tstz":"2026-11-28 08:42:39.369663+00","iv":"1 day 02:03:04","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","m":"it's complicated","p":42,"tl":["x","y"],"ip":"192.168.0.1/24","pt":"(1,2)","bx":["(1,1),(0,0)","(2,2),(1,1)"],"char":"v'al "}"#
        );
        assert_eq!(
            rows[1],
            r#"{"id":2,"i2":-32768,"i4":-2147483648,"i8":-9223372036854775808,"f4":"NaN","f8":"Infinity","num":"NaN","b":false,"t":"","vc":"","bp":"   ","j":[],"jb":"just a string","ints":[],"texts":[],"nested":[],"jbs":[],"nums":[],"by":"\\x","d":"-infinity","ts":"infinity","tstz":"2000-01-01 00:00:00+00","iv":"-1 mons","u":"00000000-0000-0000-0000-000000000000","m":"sad","p":1,"tl":[],"ip":"::1","pt":"(0,0)","bx":[],"char":"     "}"#
        );
        assert_eq!(
            rows[2],
            r#"{"id":3,"i2":null,"i4":null,"i8":null,"f4":"-Infinity","f8":-0.0,"num":"-0.000001","b":null,"t":null,"vc":null,"bp":null,"j":null,"jb":null,"ints":null,"texts":null,"nested":null,"jbs":null,"nums":null,"by":null,"d":null,"ts":null,"tstz":null,"iv":null,"u":null,"m":null,"p":null,"tl":null,"ip":null,"pt":null,"bx":null,"char":null}"#
        );
        assert_eq!(
            kinds.iter().map(|change| json(&change.key)).collect::<Vec<_>>(),
            [r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#]
        );
        assert!(kinds.iter().all(|c| c.op == Op::Insert && c.old.is_none() && c.unchanged.is_empty()));
        assert_eq!(kinds[0].lsn, lsn("0/1E441D8"));
    }

    #[test]
    fn frames_transactions() {
        let events = fixtures::decode_all(Plugin::TestDecoding);
        assert_eq!(events[0], Event::Begin(Begin { xid: Some(810), final_lsn: None, committed_at: None }));
        assert_eq!(
            events[4],
            Event::Commit(Commit {
                end_lsn: lsn("0/1E447D0"),
                committed_at: parse_pg_timestamptz("2026-11-28 11:20:05.808831+00")
            })
        );
        let begins = events.iter().filter(|e| matches!(e, Event::Begin(_))).count();
        let commits = events.iter().filter(|e| matches!(e, Event::Commit(_))).count();
        assert_eq!((begins, commits), (34, 34));
    }

    #[test]
    fn full_identity_gives_whole_old_rows_less_nulls() {
        let events = fixtures::decode_all(Plugin::TestDecoding);
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
        let nokey = fixtures::changes_of(&events, "public", "nokey");
        assert_eq!(json(&nokey[2].key), r#"{"a":2,"b":null}"#);
        // test_decoding leaves NULL columns out of old images: b was NULL.
        assert_eq!(json(&nokey[3].old), r#"{"a":2}"#);
        assert_eq!(json(&nokey[3].key), r#"{"a":2,"b":"y"}"#);
        for delete in &nokey[4..6] {
            assert_eq!(
                (delete.op, json(&delete.key), json(&delete.old)),
                (Op::Delete, r#"{"a":1,"b":"x"}"#.to_owned(), r#"{"a":1,"b":"x"}"#.to_owned())
            );
        }
    }

    #[test]
    fn unchanged_toast_is_filled_from_old_images_or_named() {
        let events = fixtures::decode_all(Plugin::TestDecoding);
        let toasty = fixtures::changes_of(&events, "public", "toasty");
        let big = match toasty[0].new.as_ref().and_then(|new| new.get("big")) {
            Some(Value::Text(big)) => big.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(big.len(), 96_000);
        assert_eq!(json(&toasty[1].new), r#"{"id":1,"small":"changed"}"#);
        assert_eq!(toasty[1].unchanged, [Arc::from("big")]);
        assert!(toasty[1].old.is_none());
        let update = fixtures::changes_of(&events, "public", "toasty_full")[1];
        let new = update.new.as_ref().unwrap();
        assert_eq!(new.0.iter().map(|(name, _)| &**name).collect::<Vec<_>>(), ["id", "small", "big"]);
        assert_eq!(new.get("small"), Some(&Value::Text("changed".into())));
        assert_eq!(new.get("big"), Some(&Value::Text(big.clone())));
        assert_eq!(update.old.as_ref().and_then(|old| old.get("big")), Some(&Value::Text(big)));
        assert!(update.unchanged.is_empty());
    }

    #[test]
    fn reads_quoted_identifiers_and_type_names() {
        let events = fixtures::decode_all(Plugin::TestDecoding);
        let odd = fixtures::changes_of(&events, "Odd Schema", "Tab\"le é");
        assert_eq!(odd.len(), 3);
        assert_eq!(json(&odd[0].new), r#"{"Col Space":1,"UPPER":"UP","quo\"te":"q\"uote","ünï":"ü"}"#);
        assert_eq!(
            (json(&odd[1].key), json(&odd[1].old)),
            (r#"{"Col Space":1}"#.to_owned(), "null".to_owned())
        );
        assert_eq!(json(&odd[2].old), r#"{"Col Space":1}"#);
        // Type names with quotes, spaces and brackets; bit strings; `"char"`; a value with `]:`.
        let change = decode_change(concat!(
            r#"table "Odd Schema"."Tab""le é": INSERT: "Col Space"[integer]:7 "#,
            r#"rows["Odd Schema"."Tab""le é"[]]:'{"(1,UP)"}' bits[bit varying]:B'0101' c["char"]:'x' "#,
            r#"arr[character varying[]]:'{"a]:b"}' "UPPER"[text]:'x]:y'"#,
        ));
        assert_eq!(
            json(&change.new),
            r#"{"Col Space":7,"rows":["(1,UP)"],"bits":"0101","c":"x","arr":["a]:b"],"UPPER":"x]:y"}"#
        );
        assert_eq!(json(&change.key), r#"{"Col Space":7}"#);
    }

    #[test]
    fn reads_changes_without_tuple_data() {
        let delete = decode_change("table public.plain: DELETE: (no-tuple-data)");
        assert_eq!((delete.op, delete.key, delete.old), (Op::Delete, None, None));
        let insert = decode_change("table public.plain: INSERT: (no-tuple-data)");
        assert_eq!((insert.op, insert.new), (Op::Insert, None));
        let update =
            decode_change("table public.plain: UPDATE: old-key: id[integer]:1 new-tuple: (no-tuple-data)");
        assert_eq!((json(&update.old), update.new), (r#"{"id":1}"#.to_owned(), None));
    }

    #[test]
    fn matches_the_golden_file() {
        golden::check("test_decoding.expected.ndjson", &fixtures::decode_all(Plugin::TestDecoding));
    }

    #[test]
    fn rejects_malformed_lines() {
        let cases: [(&[u8], &str); 21] = [
            (b"", "at byte 0: expected a line starting with BEGIN, COMMIT, table or message"),
            (b"ROLLBACK 5", "at byte 0: expected a line starting with BEGIN, COMMIT, table or message"),
            (b"BEGIN x", "at byte 6: expected a transaction id"),
            (b"BEGIN 99999999999", "at byte 6: expected a transaction id"),
            (b"COMMIT 5 (at yesterday)", "at byte 13: expected a time"),
            (b"COMMIT 5 (at 2026-11-28 11:20:05+00", "expected `)` at the end of the line"),
            (
                b"table public.plain: UPSERT: id[integer]:1",
                "at byte 20: expected INSERT:, UPDATE:, DELETE: or TRUNCATE:",
            ),
            (
                b"table public.plain: INSERT: id[integer]:1 v[text]:'one",
                "at byte 50: expected a closing quote",
            ),
            (b"table \"public.plain: INSERT: id[integer]:1", "at byte 6: expected a closing double quote"),
            (b"table public.plain: INSERT: id[integer:1", "at byte 31: expected a type name closed by `]:`"),
            (b"table public.plain: INSERT: id[integer]:", "at byte 40: expected a value"),
            (b"table public.plain: INSERT: id[integer]:1x", "column id: value \"1x\" is not valid integer"),
            (b"table public.plain: INSERT: id[integer]:99999999999999999999", "not valid integer"),
            (
                b"table public.plain: INSERT: v[text]:'a'b",
                "at byte 39: expected a space before the next column",
            ),
            (
                b"table public.plain: INSERT: id[no such type]:1",
                "type \"no such type\" is not in the catalog",
            ),
            (b"table public.nowhere: INSERT: id[integer]:1", "table public.nowhere is not in the catalog"),
            (b"table public.plain: INSERT: v[text]:'\xff'", "invalid UTF-8 at byte 37"),
            (
                b"table a.b, c.d: TRUNCATE: everything",
                "at byte 25: expected (no-flags), restart_seqs or cascade",
            ),
            (b"table a.b, c.d: INSERT: x[integer]:1", "expected `: TRUNCATE:` after the table names"),
            (
                b"message: transactional: 1 prefix: p, sz: 6 content:hello",
                "expected `, sz: N content:` followed by exactly N bytes",
            ),
            (
                b"message: transactional: 2 prefix: p, sz: 0 content:",
                "at byte 24: expected transactional 0 or 1",
            ),
        ];
        for (data, expected) in cases {
            let error = decode_one(data).expect_err(&String::from_utf8_lossy(data));
            let text = error.to_string();
            assert!(
                text.contains(expected),
                "{:?}: {text:?} does not say {expected:?}",
                String::from_utf8_lossy(data)
            );
        }
        // A whole truncate or nothing: the first table is not left behind.
        assert!(decode_one(b"table a.b, c.d: TRUNCATE: oops").is_err());
        assert!(decode_one(b"table public.plain: INSERT: id[mood2]:1").unwrap_err().is_catalog_miss());
    }

    #[test]
    fn truncated_messages_fail_cleanly_or_parse_shorter() {
        for (_, data) in fixtures::messages(Plugin::TestDecoding) {
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
                // A cut between two columns, or inside an unquoted value, is a valid shorter line.
                if let Ok(events) = decode_one(&data[..cut]) {
                    assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(&data[..cut]));
                }
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
        fn random_lines_never_panic(line in "(table|BEGIN|COMMIT|message: transactional: 1 prefix: )[ -~'\"\\[\\]:,.é]{0,80}") {
            let _ = decode_one(line.as_bytes());
        }

        #[test]
        fn corrupted_fixtures_never_panic(data in fixtures::corrupted_messages(Plugin::TestDecoding)) {
            let _ = decode_one(&data);
        }
    }
}
