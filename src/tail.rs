//! `pubsubpull tail`: a better `pg_recvlogical`. Streams a slot's changes as normalized change
//! objects, one JSON object per line, whichever the plugin.
//!
//! Whole transactions only, in commit order, each change with its transaction's audit context
//! (see [`crate::assemble`]). Where the pubsubpull schema is installed, only tracked tables'
//! changes are written. The slot is confirmed up to the end of the last transaction whose lines
//! were flushed to the output (see [`crate::pipeline`]), never further: the next run continues
//! after what this one wrote.

use std::io::{self, Write};

use crate::assemble::{SpillBuffer, Transaction};
use crate::decode::Change;
use crate::lsn::Lsn;
use crate::object;
use crate::pipeline::{self, PipelineError, Sink, StreamOptions, Summary};
use crate::source::ConnInfo;

/// Memory a transaction's held lines may take before they go to a temporary file.
const SPILL_MEMORY: usize = 8 << 20;

/// Streams changes to `out` as NDJSON until the end position, a signal or the server's end.
pub async fn tail(
    conninfo: &ConnInfo,
    options: &StreamOptions,
    out: impl Write,
) -> Result<Summary, PipelineError> {
    // Lines wait for COMMIT where the commit time (test_decoding) or the context (where the
    // pubsubpull schema is installed) may come late; a transaction's lines are never split.
    let mut sink = NdjsonSink {
        out: io::BufWriter::with_capacity(1 << 18, out),
        held: SpillBuffer::new(SPILL_MEMORY),
        line: Vec::with_capacity(4096),
    };
    let (_, summary) = pipeline::stream(conninfo, options, &mut sink).await?;
    Ok(summary)
}

/// Change objects, one per line.
struct NdjsonSink<W: Write> {
    out: io::BufWriter<W>,
    /// The current transaction's lines, less what is known only at COMMIT.
    held: SpillBuffer,
    /// Scratch space for one line.
    line: Vec<u8>,
}

impl<W: Write> Sink for NdjsonSink<W> {
    type Error = io::Error;

    async fn change(&mut self, txn: &Transaction, change: &Change) -> io::Result<()> {
        object::encode_change(&mut self.line, change);
        if txn.settled {
            write_line(&mut self.out, &self.line, txn)
        } else {
            self.held.push(&self.line)
        }
    }

    async fn commit(&mut self, txn: &Transaction, _end_lsn: Lsn) -> io::Result<()> {
        let out = &mut self.out;
        self.held.drain(|line| write_line(out, line, txn))
    }

    async fn flush(&mut self, up_to: Lsn) -> io::Result<Lsn> {
        self.out.flush()?;
        Ok(up_to)
    }
}

fn write_line(out: &mut impl Write, body: &[u8], txn: &Transaction) -> io::Result<()> {
    out.write_all(body)?;
    object::write_transaction_fields(out, txn)?;
    out.write_all(b"\n")
}
