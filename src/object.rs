//! The change object (SPEC "The change object") as JSON text, written in two parts: the change's
//! own fields, known as soon as the change is decoded, and its transaction's fields, some known
//! only at COMMIT. `tail` writes both at once; the feed stores the first and serves both.

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
