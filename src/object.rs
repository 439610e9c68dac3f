//! The change object (SPEC "The change object") as JSON text, written in two parts: the change's
//! own fields, known as soon as the change is decoded, and its transaction's fields, some known
//! only at COMMIT. `tail` writes both at once; the feed stores the first, in a shorter form (see
//! [`encode_stored`]), and serves both.

use std::io::{self, Write};
use std::sync::Arc;

use crate::assemble::Transaction;
use crate::decode::{Change, Op, Row, TableName};
use crate::lsn::Lsn;

/// Writes `{"lsn":…,"table":…,"op":…,"key":…,"new":…,"old":…,"unchanged":[…]` into `out`
/// (cleared first), without the closing brace: the transaction's fields follow.
pub fn encode_change(out: &mut Vec<u8>, change: &Change) {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        lsn: Lsn,
        table: &'a TableName,
        op: Op,
        key: &'a Option<Row>,
        new: &'a Option<Row>,
        old: &'a Option<Row>,
        unchanged: &'a [Arc<str>],
    }
    out.clear();
    let body = Body {
        lsn: change.lsn,
        table: &change.table,
        op: change.op,
        key: &change.key,
        new: &change.new,
        old: &change.old,
        unchanged: &change.unchanged,
    };
    serde_json::to_writer(&mut *out, &body).expect("serializing to memory cannot fail");
    out.pop(); // the closing brace
}

/// The defaults of the last two fields, left out of a stored body when both have them.
const DEFAULT_TAIL: &str = ",\"old\":null,\"unchanged\":[]";

/// Writes the change's own fields as the feed stores them: as [`encode_change`] does, less the
/// `table` (a column of the feed) and less `"old":null,"unchanged":[]` when both are empty (most
/// changes). [`expand_stored`] gives the fields back. A full body ends with `]` (its `unchanged`
/// array), a short one never does: `new` is an object or null.
pub fn encode_stored(out: &mut Vec<u8>, change: &Change) {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        lsn: Lsn,
        op: Op,
        key: &'a Option<Row>,
        new: &'a Option<Row>,
    }
    #[derive(serde::Serialize)]
    struct Tail<'a> {
        old: &'a Option<Row>,
        unchanged: &'a [Arc<str>],
    }
    out.clear();
    let body = Body { lsn: change.lsn, op: change.op, key: &change.key, new: &change.new };
    serde_json::to_writer(&mut *out, &body).expect("serializing to memory cannot fail");
    out.pop(); // the closing brace
    if change.old.is_some() || !change.unchanged.is_empty() {
        let start = out.len();
        let tail = Tail { old: &change.old, unchanged: &change.unchanged };
        serde_json::to_writer(&mut *out, &tail).expect("serializing to memory cannot fail");
        out[start] = b','; // its opening brace
        out.pop(); // its closing brace
    }
}

/// Appends the fields of a body [`encode_stored`] wrote, `table` put back, as [`encode_change`]
/// writes them (without the braces): `"lsn":…,"table":…,"op":…,…,"unchanged":[…]`.
pub fn expand_stored(out: &mut String, table: &str, body: &str) {
    let body = body.strip_prefix('{').unwrap_or(body);
    // `"lsn":"X/Y",` comes first; an LSN holds no comma.
    let (lsn, rest) = body.split_at(body.find(',').map_or(body.len(), |at| at + 1));
    out.push_str(lsn);
    out.push_str("\"table\":");
    out.push_str(&serde_json::to_string(table).expect("strings serialize"));
    out.push(',');
    out.push_str(rest);
    if !rest.ends_with(']') {
        out.push_str(DEFAULT_TAIL);
    }
}

/// Writes `,"xid":…,"committed_at":…,"context":…}`: the transaction's fields and the closing brace.
pub fn write_transaction_fields(out: &mut impl Write, txn: &Transaction) -> io::Result<()> {
    out.write_all(b",\"xid\":")?;
    serde_json::to_writer(&mut *out, &txn.xid)?;
    match txn.committed_at {
        Some(at) => write!(out, ",\"committed_at\":\"{}\"", at.format("%Y-%m-%dT%H:%M:%S%.6fZ"))?,
        None => out.write_all(b",\"committed_at\":null")?,
    }
    out.write_all(b",\"context\":")?;
    serde_json::to_writer(&mut *out, &txn.context)?;
    out.write_all(b"}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{fixtures, Event, Plugin};

    /// Every change of the golden captures, stored then expanded, is the change object's fields.
    #[test]
    fn stored_bodies_expand_to_the_change_objects_fields() {
        let (mut full, mut stored) = (Vec::new(), Vec::new());
        let mut shorter = 0;
        let events = [Plugin::Pgoutput, Plugin::Wal2json, Plugin::TestDecoding].map(fixtures::decode_all);
        let changes = events.iter().flatten().filter_map(|event| match event {
            Event::Change(change) => Some(change),
            _ => None,
        });
        for change in changes {
            encode_change(&mut full, change);
            encode_stored(&mut stored, change);
            let mut expanded = String::from("{");
            expand_stored(&mut expanded, &change.table.to_string(), std::str::from_utf8(&stored).unwrap());
            assert_eq!(expanded.as_bytes(), &full[..], "{}", String::from_utf8_lossy(&stored));
            shorter += full.len() - stored.len();
        }
        assert!(shorter > 0);
    }
}
