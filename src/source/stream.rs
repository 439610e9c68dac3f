//! The replication stream: WAL data and keepalives in, standby status updates out.
//!
//! This is the hot path. Reads fill a 128 KiB buffer, messages are split off it without copying,
//! and an [`XLogData`](super::XLogData)'s `data` is a slice of what was read. Writes reach the
//! socket only when a status update is sent.
//!
//! LSNs: the caller reports *written* and *flushed* with [`ReplicationStream::send_status`]; the
//! slot's confirmed position follows *flushed*. Reported positions never move backwards: a lower
//! one than already reported is ignored (PostgreSQL 15.18 does not move the slot back either, but
//! the positions in `pg_stat_replication` would jump back).
//!
//! A keepalive that asks for a reply is answered at once with the positions already reported
//! (never more), so an idle stream survives `wal_sender_timeout`; the keepalive is still handed to
//! the caller, which may then report newer positions. A caller that has flushed everything it
//! received should report the keepalive's `wal_end`: that lets the slot advance while tables are
//! idle, and lets a shutting-down server, which waits until everything sent is confirmed, stop at
//! once (it then ends the stream, and [`ReplicationStream::next`] returns `None`).

use std::time::SystemTime;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::protocol::{self, ReplicationMessage, StandbyStatus, COPY_DATA_TAG, COPY_DONE_TAG};
use super::wire::{log_notice, parse_message, server_error, Wire};
use super::{ErrorContext, SourceError};
use crate::lsn::Lsn;

/// A started replication: [`next`](Self::next) until `None`, [`finish`](Self::finish) to stop.
pub struct ReplicationStream {
    wire: Wire,
    context: ErrorContext,
    /// The highest *written* LSN reported.
    written: Lsn,
    /// The highest *flushed* LSN reported: what the slot may confirm.
    flushed: Lsn,
    /// Whether and how the server ended the stream.
    ended: Ended,
}

/// How the server ended the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Not,
    /// CopyDone: the session continues once we answer with ours.
    CopyDone,
    /// CommandComplete without CopyDone: a walsender that stops because the server shuts down
    /// (having sent everything and seen it confirmed) and exits right after.
    Exit,
}

impl ReplicationStream {
    pub(crate) fn new(wire: Wire, context: ErrorContext) -> ReplicationStream {
        ReplicationStream { wire, context, written: Lsn::ZERO, flushed: Lsn::ZERO, ended: Ended::Not }
    }

    /// The next XLogData or keepalive; `None` once the server has ended the stream (when it shuts
    /// down, for one: reconnect to go on).
    ///
    /// Cancel-safe as to data: dropping the future at an await point loses no WAL data, and a
    /// keepalive reply interrupted on its way out is sent at the next call.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, SourceError> {
        if self.ended != Ended::Not {
            return Ok(None);
        }
        if !self.wire.write_buf.is_empty() {
            self.wire.flush().await?;
        }
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.first().copied() {
                Some(COPY_DATA_TAG) => {
                    let message = protocol::parse_copy_data(protocol::frame_body(frame.freeze()))?;
                    if let ReplicationMessage::Keepalive(keepalive) = &message {
                        if keepalive.reply_requested {
                            self.queue_status();
                            self.wire.flush().await?;
                        }
                    }
                    return Ok(Some(message));
                }
                Some(COPY_DONE_TAG) => {
                    self.ended = Ended::CopyDone;
                    return Ok(None);
                }
                _ => match parse_message(frame)? {
                    Message::CommandComplete(_) => {
                        self.ended = Ended::Exit;
                        return Ok(None);
                    }
                    Message::ErrorResponse(body) => {
                        return Err(SourceError::from_server(server_error(body.fields())?, &self.context))
                    }
                    Message::NoticeResponse(body) => log_notice(body.fields()),
                    Message::ParameterStatus(_) => {}
                    _ => {
                        return Err(SourceError::Protocol(protocol::ProtocolError::Unexpected {
                            what: "message in the replication stream",
                            at: 0,
                            expected: "CopyData, CopyDone, CommandComplete or an error",
                        }))
                    }
                },
            }
        }
    }

    /// Reports how far the caller has got: `written` (received and written out) and `flushed`
    /// (stored durably; the slot confirms up to it). Lower positions than already reported are
    /// ignored.
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn) -> Result<(), SourceError> {
        self.flushed = self.flushed.max(flushed);
        self.written = self.written.max(written).max(self.flushed);
        self.queue_status();
        self.wire.flush().await
    }

    /// The highest *flushed* LSN reported so far (`0/0` before the first report).
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Ends the stream cleanly: CopyDone, the server's remaining messages up to ReadyForQuery, then
    /// Terminate. WAL data still in flight is discarded; the slot keeps the reported position.
    pub async fn finish(mut self) -> Result<(), SourceError> {
        if self.ended == Ended::Exit {
            // The walsender has exited; there is nobody left to say goodbye to.
            self.wire.shutdown().await;
            return Ok(());
        }
        frontend::copy_done(&mut self.wire.write_buf);
        self.wire.flush().await?;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.first().copied() {
                Some(COPY_DATA_TAG | COPY_DONE_TAG) => continue,
                _ => match parse_message(frame)? {
                    Message::CommandComplete(_) | Message::ParameterStatus(_) => {}
                    Message::NoticeResponse(body) => log_notice(body.fields()),
                    Message::ErrorResponse(body) => {
                        return Err(SourceError::from_server(server_error(body.fields())?, &self.context))
                    }
                    Message::ReadyForQuery(_) => break,
                    _ => {
                        return Err(SourceError::Protocol(protocol::ProtocolError::Unexpected {
                            what: "message after CopyDone",
                            at: 0,
                            expected: "CommandComplete or ReadyForQuery",
                        }))
                    }
                },
            }
        }
        frontend::terminate(&mut self.wire.write_buf);
        self.wire.flush().await?;
        self.wire.shutdown().await;
        Ok(())
    }

    /// Queues a status update with the reported positions (applied = flushed: we apply nothing).
    fn queue_status(&mut self) {
        let status = StandbyStatus {
            written: self.written,
            flushed: self.flushed,
            applied: self.flushed,
            client_time: protocol::pg_epoch_micros(SystemTime::now()),
            reply_requested: false,
        };
        protocol::encode_standby_status(&status, &mut self.wire.write_buf);
    }
}
