//! A logical replication connection (a walsender session) and its commands.
//!
//! The walsender speaks only the simple query protocol: [`ReplicationConnection::simple_query`]
//! returns rows as text. On top of it: `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT` and
//! `START_REPLICATION`, which turns the connection into a [`ReplicationStream`]. Identifiers and
//! literals in commands are quoted, so no slot name, plugin name or option value can change the
//! command. A failed command leaves the connection usable (errors are read up to ReadyForQuery).

use std::collections::HashMap;
use std::str::FromStr;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::conninfo::{ConnInfo, SslMode};
use super::protocol::{self, ProtocolError, COPY_BOTH_RESPONSE_TAG};
use super::startup::startup;
use super::stream::ReplicationStream;
use super::transport::{Encryption, Transport};
use super::wire::{log_notice, parse_message, server_error, Wire};
use super::{ErrorContext, SourceError};
use crate::lsn::Lsn;

/// One result row of a simple query: each column's text, `None` for NULL.
pub type TextRow = Vec<Option<String>>;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier.
    pub system_id: u64,
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database the connection decodes.
    pub dbname: String,
}

/// A walsender session in logical (database) replication mode.
pub struct ReplicationConnection {
    wire: Wire,
    context: ErrorContext,
    parameters: HashMap<String, String>,
    backend_pid: Option<u32>,
}

impl ReplicationConnection {
    /// Connects and authenticates, with TLS as `info.sslmode` says and within
    /// `info.connect_timeout`. With `sslmode=allow`, a plaintext connection the server rejects
    /// is retried with TLS, as libpq does.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConnection, SourceError> {
        let first = Encryption::first_for(info.sslmode);
        match ReplicationConnection::connect_with(info, first).await {
            Err(SourceError::Rejected { .. }) if info.sslmode == SslMode::Allow => {
                ReplicationConnection::connect_with(info, Encryption::Tls).await
            }
            result => result,
        }
    }

    async fn connect_with(
        info: &ConnInfo,
        encryption: Encryption,
    ) -> Result<ReplicationConnection, SourceError> {
        let attempt = async {
            let mut wire = Wire::new(Transport::open(info, encryption).await?);
            let mut context = ErrorContext { user: info.user.clone(), ..ErrorContext::default() };
            let session = startup(&mut wire, info, &mut context).await?;
            tracing::debug!(server = %info.target(), tls = wire.is_tls(), pid = ?session.backend_pid, "replication connection open");
            Ok(ReplicationConnection {
                wire,
                context,
                parameters: session.parameters,
                backend_pid: session.backend_pid,
            })
        };
        match info.connect_timeout {
            Some(timeout) => tokio::time::timeout(timeout, attempt)
                .await
                .unwrap_or_else(|_| Err(SourceError::ConnectTimeout { target: info.target(), timeout })),
            None => attempt.await,
        }
    }

    /// A parameter the server reported (`server_version`, `TimeZone`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The process id of our walsender on the server.
    pub fn backend_pid(&self) -> Option<u32> {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.wire.is_tls()
    }

    /// Runs one command with the simple query protocol; returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<TextRow>, SourceError> {
        frontend::query(sql, &mut self.wire.write_buf)
            .map_err(|e| SourceError::InvalidArgument(e.to_string()))?;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.wire.read_message().await? {
                Message::RowDescription(_) | Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                Message::DataRow(body) => rows.push(text_row(&body)?),
                Message::ErrorResponse(body) => error = Some(server_error(body.fields())?),
                Message::NoticeResponse(body) => log_notice(body.fields()),
                Message::ParameterStatus(body) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                // The walsender is ready for the next command: the error, if any, is complete.
                Message::ReadyForQuery(_) => break,
                _ => {
                    return Err(unexpected(
                        "reply to a simple query",
                        "rows, CommandComplete or ReadyForQuery",
                    ))
                }
            }
        }
        match error {
            Some(error) => Err(SourceError::from_server(error, &self.context)),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`: which cluster, timeline, WAL position and database this is.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        const COMMAND: &str = "IDENTIFY_SYSTEM";
        let rows = self.simple_query(COMMAND).await?;
        let [system_id, timeline, xlogpos, dbname] = single_row::<4>(COMMAND, rows)?;
        Ok(SystemInfo {
            system_id: parse_column(COMMAND, "systemid", system_id)?,
            timeline: parse_column(COMMAND, "timeline", timeline)?,
            xlogpos: parse_column(COMMAND, "xlogpos", xlogpos)?,
            dbname: dbname
                .ok_or_else(|| reply_error(COMMAND, "no database: not a logical replication connection"))?,
        })
    }

    /// `CREATE_REPLICATION_SLOT`: a logical slot `name` for output plugin `plugin`, dropped at the
    /// end of this session when `temporary`. Returns the consistent point: the slot streams the
    /// transactions that commit after it.
    pub async fn create_slot(
        &mut self,
        name: &str,
        plugin: &str,
        temporary: bool,
    ) -> Result<Lsn, SourceError> {
        const COMMAND: &str = "CREATE_REPLICATION_SLOT";
        super::slot::validate_slot_name(name)?;
        let temporary = if temporary { " TEMPORARY" } else { "" };
        // NOEXPORT_SNAPSHOT: nobody reads the snapshot, and exporting one would tie up the session.
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL {} NOEXPORT_SNAPSHOT",
            quote_identifier(name),
            quote_identifier(plugin)
        );
        self.context.slot = Some(name.to_owned());
        self.context.plugin = Some(plugin.to_owned());
        let result = self.simple_query(&sql).await;
        self.context.slot = None;
        self.context.plugin = None;
        let [_slot_name, consistent_point, _snapshot, _plugin] = single_row::<4>(COMMAND, result?)?;
        parse_column(COMMAND, "consistent_point", consistent_point)
    }

    /// `START_REPLICATION SLOT name LOGICAL start (options)`: streams the slot's changes from
    /// `start` (`Lsn::ZERO`: from the slot's confirmed position). `options` go to the output plugin.
    pub async fn start(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, String)],
    ) -> Result<ReplicationStream, SourceError> {
        let mut sql = format!("START_REPLICATION SLOT {} LOGICAL {start}", quote_identifier(slot));
        if !options.is_empty() {
            let options: Vec<String> = options
                .iter()
                .map(|(name, value)| format!("{} {}", quote_identifier(name), quote_literal(value)))
                .collect();
            sql.push_str(&format!(" ({})", options.join(", ")));
        }
        frontend::query(&sql, &mut self.wire.write_buf)
            .map_err(|e| SourceError::InvalidArgument(e.to_string()))?;
        self.wire.flush().await?;
        self.context.slot = Some(slot.to_owned());
        loop {
            let frame = self.wire.read_frame().await?;
            if frame.first() == Some(&COPY_BOTH_RESPONSE_TAG) {
                protocol::parse_copy_both_response(&protocol::frame_body(frame.freeze()))?;
                tracing::debug!(slot, %start, "replication started");
                return Ok(ReplicationStream::new(self.wire, self.context));
            }
            match parse_message(frame)? {
                Message::NoticeResponse(body) => log_notice(body.fields()),
                Message::ErrorResponse(body) => {
                    return Err(SourceError::from_server(server_error(body.fields())?, &self.context))
                }
                _ => return Err(unexpected("reply to START_REPLICATION", "CopyBothResponse or an error")),
            }
        }
    }
}

/// A double-quoted identifier, for a replication command or SQL (`"` doubled).
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted literal for a replication command (`'` doubled; the replication grammar has no
/// backslash escapes).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn text_row(body: &postgres_protocol::message::backend::DataRowBody) -> Result<TextRow, SourceError> {
    use fallible_iterator::FallibleIterator;

    let buffer = body.buffer();
    body.ranges()
        .map(|range| Ok(range.map(|range| String::from_utf8_lossy(&buffer[range]).into_owned())))
        .collect()
        .map_err(|_| unexpected("DataRow", "column lengths within the message"))
}

fn single_row<const N: usize>(
    command: &'static str,
    rows: Vec<TextRow>,
) -> Result<[Option<String>; N], SourceError> {
    let [row] = <[TextRow; 1]>::try_from(rows)
        .map_err(|rows| reply_error(command, format!("expected one row, got {}", rows.len())))?;
    let columns = row.len();
    row.try_into().map_err(|_| reply_error(command, format!("expected {N} columns, got {columns}")))
}

fn parse_column<T: FromStr>(
    command: &'static str,
    column: &str,
    value: Option<String>,
) -> Result<T, SourceError> {
    let value = value.ok_or_else(|| reply_error(command, format!("{column} is null")))?;
    value.parse().map_err(|_| reply_error(command, format!("invalid {column} {value:?}")))
}

fn reply_error(command: &'static str, detail: impl Into<String>) -> SourceError {
    SourceError::UnexpectedReply { command, detail: detail.into() }
}

fn unexpected(what: &'static str, expected: &'static str) -> SourceError {
    SourceError::Protocol(ProtocolError::Unexpected { what, at: 0, expected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_names_and_values_so_they_cannot_change_the_command() {
        assert_eq!(quote_identifier("slot"), "\"slot\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\'"), r"'a\'''");
    }
}
