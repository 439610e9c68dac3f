//! Transaction assembly: the decoders' events regrouped as whole transactions, in commit order,
//! each change paired with what its transaction says about it (xid, commit time).
//!
//! Logical decoding already sends transactions whole and in commit order (we do not ask pgoutput to
//! stream in-progress ones), so assembly is a small state machine. What differs between plugins is
//! *when* the transaction's data is known: pgoutput and wal2json give the commit time at BEGIN,
//! test_decoding only at COMMIT. Consumers that need it before then hold the changes in a
//! [`SpillBuffer`], which keeps memory bounded whatever the transaction size.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};

use crate::decode::{Begin, Change, Commit, Event, Timestamp, Xid};
use crate::lsn::Lsn;

/// The transaction being assembled, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transaction {
    pub xid: Option<Xid>,
    /// Start of the commit record, when the plugin says it at BEGIN.
    pub final_lsn: Option<Lsn>,
    pub committed_at: Option<Timestamp>,
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
    /// Nothing for the consumer (logical decoding messages).
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
}

impl Assembler {
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
                self.current = Some(Transaction { xid, final_lsn, committed_at });
                Ok(Step::Begin)
            }
            Event::Change(change) if self.current.is_some() => Ok(Step::Change(change)),
            Event::Change(_) => Err(AssembleError::OutsideTransaction("change")),
            Event::Commit(Commit { end_lsn, committed_at }) => {
                let mut txn = self.current.take().ok_or(AssembleError::OutsideTransaction("COMMIT"))?;
                txn.committed_at = committed_at.or(txn.committed_at);
                Ok(Step::Commit { txn, end_lsn })
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
    use crate::decode::{Op, TableName};
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
        let txn = Transaction { xid: Some(7), final_lsn: None, committed_at: at };
        assert_eq!(step, Ok(Step::Commit { txn, end_lsn: Lsn(9) }));
        assert!(assembler.is_idle());
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
