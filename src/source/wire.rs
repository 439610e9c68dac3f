//! Buffered message I/O on a [`Transport`]: whole backend messages in, frontend messages out.
//!
//! Reads go into one large buffer (128 KiB at a time) from which messages are split off without
//! copying; writes collect in a second buffer and reach the socket only on [`Wire::flush`]. Both
//! are cancel-safe: a read or flush interrupted at an await point loses no bytes, and an
//! interrupted flush continues on the next one.

use bytes::BytesMut;
use postgres_protocol::message::backend::{ErrorFields, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::protocol::{self, ProtocolError};
use super::transport::Transport;
use super::{ServerError, SourceError};

/// How much to read at once: a few hundred messages of a busy stream per system call.
const READ_SIZE: usize = 128 * 1024;
/// Below this much free space the buffer grows before the next read.
const MIN_FREE: usize = 8 * 1024;

pub(crate) struct Wire {
    io: Transport,
    read_buf: BytesMut,
    /// Frontend messages waiting for [`Wire::flush`].
    pub(crate) write_buf: BytesMut,
}

impl Wire {
    pub(crate) fn new(io: Transport) -> Wire {
        Wire { io, read_buf: BytesMut::with_capacity(READ_SIZE), write_buf: BytesMut::new() }
    }

    /// Whether the connection is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        self.io.is_tls()
    }

    /// The next whole backend message (tag, length and body), read from the socket as needed.
    pub(crate) async fn read_frame(&mut self) -> Result<BytesMut, SourceError> {
        loop {
            if let Some(frame) = protocol::split_frame(&mut self.read_buf)? {
                return Ok(frame);
            }
            if self.read_buf.capacity() - self.read_buf.len() < MIN_FREE {
                // Reuses the allocation when no earlier message still points into it.
                self.read_buf.reserve(READ_SIZE);
            }
            let read = self.io.read_buf(&mut self.read_buf).await.map_err(SourceError::Io)?;
            if read == 0 {
                return Err(SourceError::Closed);
            }
        }
    }

    /// The next backend message, parsed (not for CopyBothResponse, which has no parsed form).
    pub(crate) async fn read_message(&mut self) -> Result<Message, SourceError> {
        let frame = self.read_frame().await?;
        parse_message(frame)
    }

    /// Sends everything in the write buffer.
    pub(crate) async fn flush(&mut self) -> Result<(), SourceError> {
        while !self.write_buf.is_empty() {
            self.io.write_buf(&mut self.write_buf).await.map_err(SourceError::Io)?;
        }
        self.io.flush().await.map_err(SourceError::Io)
    }

    /// Closes the socket (with a TLS close_notify when encrypted). Called after Terminate, when the
    /// session is over whatever happens, so a failure to close cleanly is of no consequence.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.io.shutdown().await;
    }
}

/// Parses one whole frame from [`Wire::read_frame`].
pub(crate) fn parse_message(mut frame: BytesMut) -> Result<Message, SourceError> {
    let tag = frame.first().copied().unwrap_or_default();
    match Message::parse(&mut frame) {
        Ok(Some(message)) => Ok(message),
        // A whole frame always parses to a message or an error; be safe anyway.
        Ok(None) => Err(ProtocolError::Truncated { what: "backend message", at: 0, needed: 5 }.into()),
        Err(_) => {
            Err(ProtocolError::UnknownTag { what: "backend message", at: 0, tag: char::from(tag) }.into())
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
pub(crate) fn server_error(mut fields: ErrorFields<'_>) -> Result<ServerError, SourceError> {
    use fallible_iterator::FallibleIterator;

    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let malformed = |_| ProtocolError::Unexpected {
        what: "error fields",
        at: 0,
        expected: "NUL-terminated fields ending with a NUL byte",
    };
    while let Some(field) = fields.next().map_err(malformed)? {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            // 'V' is never translated; 'S' is, and comes first.
            b'V' => error.severity = value,
            b'S' if error.severity.is_empty() => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    Ok(error)
}

/// Logs a NoticeResponse (a WARNING from the walsender, say); notices never stop the stream.
pub(crate) fn log_notice(fields: ErrorFields<'_>) {
    match server_error(fields) {
        Ok(notice) => {
            tracing::info!(severity = %notice.severity, code = %notice.code, "server notice: {}", notice.message)
        }
        Err(error) => tracing::warn!(error = %error, "malformed server notice"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut frame = BytesMut::from(&[tag][..]);
        frame.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn reads_error_fields_preferring_the_untranslated_severity() {
        let body = b"SFEHLER\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 7\0Hhint\0\0";
        let Message::ErrorResponse(error) = parse_message(frame(b'E', body)).unwrap() else {
            panic!("not an ErrorResponse");
        };
        let error = server_error(error.fields()).unwrap();
        assert_eq!(error.severity, "ERROR");
        assert_eq!(error.code, "55006");
        assert_eq!(error.message, "replication slot \"s\" is active for PID 7");
        assert_eq!((error.detail, error.hint.as_deref()), (None, Some("hint")));
    }

    #[test]
    fn rejects_malformed_error_fields_and_unknown_tags() {
        let Message::ErrorResponse(error) = parse_message(frame(b'E', b"Mno terminator")).unwrap() else {
            panic!("not an ErrorResponse");
        };
        assert!(matches!(server_error(error.fields()), Err(SourceError::Protocol(_))));
        assert!(matches!(
            parse_message(frame(b'W', &[0, 0, 0])),
            Err(SourceError::Protocol(ProtocolError::UnknownTag { tag: 'W', .. }))
        ));
    }
}
