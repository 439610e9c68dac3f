//! Transaction assembly: the decoders' events regrouped as whole transactions, in commit order,
//! each change paired with what its transaction says about it (xid, commit time, audit context).
//!
//! The audit-context join: the trigger on tracked tables writes one `pubsubpull.context` row per
//! transaction, in that transaction, so the row reaches the stream inside the transaction it
//! describes. Its last version (`set_context` may update it after the first change) becomes the
//! transaction's context; it is known for sure only at COMMIT. A context row is never passed on as
//! a change, and can only describe the transaction that wrote it.
//!
//! Logical decoding already sends transactions whole and in commit order (we do not ask pgoutput to
//! stream in-progress ones), so assembly is a small state machine. What differs between plugins is
//! *when* the transaction's data is known: pgoutput and wal2json give the commit time at BEGIN,
//! test_decoding only at COMMIT. Consumers that need it before then hold the changes in a
//! [`SpillBuffer`], which keeps memory bounded whatever the transaction size.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};

use crate::decode::{Begin, Change, Commit, Event, Op, Row, TableName, Timestamp, Xid};
use crate::lsn::Lsn;
use crate::tracking::{is_context_table, PARTITIONS_MESSAGE, TRACKED_TABLE};

/// The transaction being assembled, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transaction {
    pub xid: Option<Xid>,
    /// Start of the commit record, when the plugin says it at BEGIN.
    pub final_lsn: Option<Lsn>,
    pub committed_at: Option<Timestamp>,
    /// The transaction's `pubsubpull.context` row (less its key and time), as last written.
    pub context: Option<Row>,
    /// Nothing above can change any more before COMMIT: a consumer may pass changes on at once.
    pub settled: bool,
}

/// What an event means for the transaction stream.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// A transaction began.
    Begin,
    /// A change of the current transaction ([`Assembler::current`]).
    Change(Change),
    /// The current transaction committed, all its changes given; `txn` completed with what COMMIT said.
    Commit { txn: Transaction, end_lsn: Lsn },
    /// The set of tracked tables changed (a `pubsubpull.tracked` row was written).
    TrackingChanged,
    /// The tracked tables' partitions from here on, as `pubsubpull.tracked_partitions()` lists them.
    Partitions(Vec<u8>),
    /// Nothing for the consumer (logical decoding messages, context rows).
    Nothing,
}

/// Why the event sequence is not a sequence of whole transactions.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AssembleError {
    #[error("{0} outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("BEGIN inside a transaction")]
    NestedBegin,
    #[error("streamed in-progress transactions are not requested and not supported")]
    Streaming,
}

/// Tracks the transaction in progress.
#[derive(Debug, Default)]
pub struct Assembler {
    current: Option<Transaction>,
    /// Context rows may come (the pubsubpull schema is installed), so a transaction's context is
    /// sure only at COMMIT.
    joins_context: bool,
}

impl Assembler {
    /// An assembler for a database where context rows may (`joins_context`) or cannot appear.
    pub fn new(joins_context: bool) -> Assembler {
        Assembler { current: None, joins_context }
    }

    /// The transaction in progress, if any.
    pub fn current(&self) -> Option<&Transaction> {
        self.current.as_ref()
    }

    /// Whether we are between transactions, so that everything received has been accounted for.
    pub fn is_idle(&self) -> bool {
        self.current.is_none()
    }

    /// Feeds one event.
    pub fn push(&mut self, event: Event) -> Result<Step, AssembleError> {
        match event {
            Event::Begin(Begin { xid, final_lsn, committed_at }) => {
                if self.current.is_some() {
                    return Err(AssembleError::NestedBegin);
                }
                let settled = committed_at.is_some() && !self.joins_context;
                self.current = Some(Transaction { xid, final_lsn, committed_at, context: None, settled });
                Ok(Step::Begin)
            }
            Event::Change(change) => {
                let txn = self.current.as_mut().ok_or(AssembleError::OutsideTransaction("change"))?;
                if is_context_table(&change.table) {
                    if matches!(change.op, Op::Insert | Op::Update) {
                        txn.context = change.new.map(context_of);
                    }
                    Ok(Step::Nothing)
                } else if is(&change.table, TRACKED_TABLE) {
                    Ok(Step::TrackingChanged)
                } else {
                    Ok(Step::Change(change))
                }
            }
            Event::Commit(Commit { end_lsn, committed_at }) => {
                let mut txn = self.current.take().ok_or(AssembleError::OutsideTransaction("COMMIT"))?;
                txn.committed_at = committed_at.or(txn.committed_at);
                txn.settled = true;
                Ok(Step::Commit { txn, end_lsn })
            }
            Event::Message(message) if message.transactional && message.prefix == PARTITIONS_MESSAGE => {
                Ok(Step::Partitions(message.content))
            }
            // Non-transactional messages arrive outside transactions; we pass on none of them.
            Event::Message(_) => Ok(Step::Nothing),
            Event::StreamStart { .. }
            | Event::StreamStop
            | Event::StreamCommit { .. }
            | Event::StreamAbort { .. } => Err(AssembleError::Streaming),
        }
    }
}

fn is(table: &TableName, (schema, name): (&str, &str)) -> bool {
    table.schema == schema && table.name == name
}

/// What a change object says of its transaction's context: the context row less its key and time.
fn context_of(row: Row) -> Row {
    Row(row.0.into_iter().filter(|(column, _)| !matches!(&**column, "xid" | "created_at")).collect())
}

/// Lines of bytes held until their transaction commits: in memory up to a limit, then in an
/// anonymous temporary file, so that a transaction of any size costs bounded memory.
pub struct SpillBuffer {
    memory: Vec<u8>,
    file: Option<File>,
    limit: usize,
    lines: u64,
}

impl SpillBuffer {
    /// A buffer that keeps at most `limit` bytes in memory.
    pub fn new(limit: usize) -> SpillBuffer {
        SpillBuffer { memory: Vec::new(), file: None, limit, lines: 0 }
    }

    /// Number of lines held.
    pub fn len(&self) -> u64 {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Appends one line; `line` must not contain `\n`.
    pub fn push(&mut self, line: &[u8]) -> io::Result<()> {
        debug_assert!(!line.contains(&b'\n'));
        self.memory.extend_from_slice(line);
        self.memory.push(b'\n');
        self.lines += 1;
        if self.memory.len() >= self.limit {
            let file = match &mut self.file {
                Some(file) => file,
                None => self.file.insert(tempfile::tempfile()?),
            };
            file.write_all(&self.memory)?;
            self.memory.clear();
        }
        Ok(())
    }

    /// Hands every line (without its newline) to `each`, in order, and empties the buffer.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.seek(SeekFrom::Start(0))?;
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                each(line.strip_suffix(b"\n").unwrap_or(&line))?;
            }
        }
        for line in self.memory.split(|&b| b == b'\n') {
            if !line.is_empty() {
                each(line)?;
            }
        }
        self.memory.clear();
        self.lines = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Value;
    use std::sync::Arc;

    fn change(lsn: u64) -> Change {
        Change {
            lsn: Lsn(lsn),
            table: Arc::new(TableName::new("public", "t")),
            op: Op::Truncate,
            key: None,
            new: None,
            old: None,
            unchanged: vec![],
        }
    }

    #[test]
    fn completes_transactions_with_what_commit_says() {
        let mut assembler = Assembler::default();
        let begin = Begin { xid: Some(7), final_lsn: None, committed_at: None };
        assert_eq!(assembler.push(Event::Begin(begin)), Ok(Step::Begin));
        assert_eq!(assembler.push(Event::Change(change(1))), Ok(Step::Change(change(1))));
        let at = crate::decode::timestamp_from_pg_micros(1);
        let step = assembler.push(Event::Commit(Commit { end_lsn: Lsn(9), committed_at: at }));
        let txn =
            Transaction { xid: Some(7), final_lsn: None, committed_at: at, context: None, settled: true };
        assert_eq!(step, Ok(Step::Commit { txn, end_lsn: Lsn(9) }));
        assert!(assembler.is_idle());
    }

    fn context_row(op: Op, app: &str) -> Change {
        let app = Value::Json(serde_json::value::RawValue::from_string(app.to_owned()).unwrap());
        let row = Row(vec![
            ("xid".into(), Value::Int(7)),
            ("app".into(), app),
            ("db_user".into(), Value::Text("web".into())),
            ("created_at".into(), Value::Text("2026-11-28 10:00:00+00".into())),
        ]);
        let partition = Arc::new(TableName::new("pubsubpull", "context_20261128"));
        Change { table: partition, op, new: Some(row), ..change(2) }
    }

    #[test]
    fn joins_the_last_context_row_of_the_transaction() {
        let mut assembler = Assembler::new(true);
        assembler.push(Event::Begin(Begin::default())).unwrap();
        assert_eq!(assembler.push(Event::Change(context_row(Op::Insert, "null"))), Ok(Step::Nothing));
        assert_eq!(assembler.push(Event::Change(change(3))), Ok(Step::Change(change(3))));
        // set_context after the first change updates the row: the whole transaction gets it.
        assembler.push(Event::Change(context_row(Op::Update, r#"{"user":"alice"}"#))).unwrap();
        let Ok(Step::Commit { txn, .. }) =
            assembler.push(Event::Commit(Commit { end_lsn: Lsn(9), committed_at: None }))
        else {
            panic!("commit expected")
        };
        let context = serde_json::to_string(&txn.context).unwrap();
        assert_eq!(context, r#"{"app":{"user":"alice"},"db_user":"web"}"#);
        // The next transaction starts without one.
        assembler.push(Event::Begin(Begin::default())).unwrap();
        assert_eq!(assembler.current().unwrap().context, None);
    }

    #[test]
    fn rejects_events_out_of_place() {
        let mut assembler = Assembler::default();
        assert!(assembler.push(Event::Change(change(1))).is_err());
        assert!(assembler.push(Event::Commit(Commit { end_lsn: Lsn(1), committed_at: None })).is_err());
        assembler.push(Event::Begin(Begin::default())).unwrap();
        assert_eq!(assembler.push(Event::Begin(Begin::default())), Err(AssembleError::NestedBegin));
    }

    #[test]
    fn spill_buffer_keeps_order_across_memory_and_file() {
        let mut buffer = SpillBuffer::new(64);
        let lines: Vec<String> = (0..1000).map(|i| format!("{{\"n\":{i}}}")).collect();
        for line in &lines {
            buffer.push(line.as_bytes()).unwrap();
        }
        assert_eq!(buffer.len(), 1000);
        assert!(buffer.file.is_some(), "spilled to a file");
        assert!(buffer.memory.len() < 64 + 16);
        let mut seen = Vec::new();
        buffer
            .drain(|line| {
                seen.push(String::from_utf8(line.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, lines);
        assert!(buffer.is_empty());
        buffer.push(b"again").unwrap();
        let mut again = Vec::new();
        buffer
            .drain(|line| {
                again.push(line.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(again, vec![b"again".to_vec()]);
    }
}
