//! The source stage: the replication connection to PostgreSQL.
//!
//! Released tokio-postgres cannot open a replication connection, so this module speaks that
//! protocol itself over `postgres-protocol`'s message codecs: TCP or Unix socket, TLS per `sslmode`
//! ([`tls`]), startup with `replication=database` and authentication (trust, password, MD5,
//! SCRAM-SHA-256), the walsender's simple-query commands ([`ReplicationConnection`]), the slot
//! ([`ensure_slot`]), and the CopyBoth stream of WAL data and keepalives with the standby status
//! updates that move the slot ([`ReplicationStream`]). Ordinary SQL (slot checks, the catalog) goes
//! through tokio-postgres on a second connection ([`ConnInfo::connect_sql`]).
//!
//! Guarantees: the slot's confirmed position only ever moves to a *flushed* LSN the caller reported,
//! and never backwards; keepalives that ask for a reply are answered at once (with the positions
//! already reported), so an idle stream is not dropped by `wal_sender_timeout`; every server error
//! becomes a [`SourceError`] that says what to fix and whether retrying can help
//! ([`SourceError::is_transient`]).

pub mod catalog;
pub mod connection;
pub mod conninfo;
pub mod protocol;
pub mod slot;
mod sql;
mod startup;
pub mod stream;
pub mod tls;
mod transport;
mod wire;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use catalog::load_catalog;
pub use connection::{ReplicationConnection, SystemInfo, TextRow};
pub use conninfo::{ConnInfo, ConnInfoError, Host, SslMode};
pub use protocol::{Keepalive, ProtocolError, ReplicationMessage, XLogData};
pub use slot::{ensure_slot, validate_slot_name, SlotState};
pub use stream::ReplicationStream;

/// Why the source stage failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Config(#[from] ConnInfoError),
    #[error("cannot use sslrootcert {path}")]
    RootCert {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("TLS settings: {0}")]
    TlsConfig(String),
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {target} timed out after {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("TLS handshake with {target} failed")]
    Tls {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("the server at {target} does not accept TLS, which sslmode={mode} requires")]
    TlsRefused { target: String, mode: SslMode },
    #[error("password authentication failed for user {user:?}")]
    PasswordFailed {
        user: String,
        #[source]
        source: Box<ServerError>,
    },
    #[error(
        "the server asks for a password for user {user:?} and none was given: \
         put it in the connection string or in PGPASSWORD"
    )]
    PasswordMissing { user: String },
    #[error("SCRAM authentication of user {user:?} failed: the server's answer is invalid")]
    Scram {
        user: String,
        #[source]
        source: io::Error,
    },
    #[error("the server asks for {method} authentication, which pubsubpull does not support")]
    UnsupportedAuth { method: String },
    #[error(
        "the server refused the connection for user {user:?}: check its pg_hba.conf rules, and use \
         sslmode=require (or stronger) when they accept only TLS connections"
    )]
    Rejected {
        user: String,
        #[source]
        source: Box<ServerError>,
    },
    #[error(
        "role {user:?} may not open a replication connection: grant it with \
         ALTER ROLE {user} REPLICATION (as a superuser)"
    )]
    NoReplicationPrivilege {
        user: String,
        #[source]
        source: Box<ServerError>,
    },
    #[error(
        "logical decoding requires wal_level = logical: set wal_level = logical in postgresql.conf \
         (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
    )]
    WalLevel {
        #[source]
        source: Box<ServerError>,
    },
    #[error(
        "replication slot {slot:?} is in use by another consumer (walsender PID {pid}): stop that \
         consumer or use another slot",
        pid = .pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string())
    )]
    SlotActive {
        slot: String,
        pid: Option<u32>,
        #[source]
        source: Box<ServerError>,
    },
    #[error("replication slot {slot:?} does not exist")]
    SlotMissing {
        slot: String,
        #[source]
        source: Box<ServerError>,
    },
    #[error("replication slot {slot:?} already exists: use another slot name")]
    SlotExists {
        slot: String,
        #[source]
        source: Box<ServerError>,
    },
    #[error(
        "output plugin {plugin:?} is not installed on the database server: install it there \
         (wal2json: apt-get install postgresql-{major}-wal2json; pgoutput and test_decoding come \
         with PostgreSQL)",
        major = .server_major.map_or_else(|| "<version>".to_owned(), |major| major.to_string())
    )]
    PluginMissing {
        plugin: String,
        server_major: Option<u32>,
        #[source]
        source: Box<ServerError>,
    },
    #[error(
        "output plugin {plugin} is not allowed on this server: since its 2026 security releases (15.19 and \
         later), PostgreSQL lets only the plugins of output_plugin_libraries decode (pgoutput and test_decoding by \
         default). Add it (ALTER SYSTEM SET output_plugin_libraries = 'pgoutput, test_decoding, {plugin}', \
         then SELECT pg_reload_conf(), as a superuser) or use --plugin pgoutput"
    )]
    PluginNotAllowed {
        plugin: String,
        #[source]
        source: Box<ServerError>,
    },
    #[error(
        "replication slot {slot:?} was created with plugin {existing}, not {wanted}: drop it with \
         SELECT pg_drop_replication_slot('{slot}') or use another --slot"
    )]
    PluginMismatch { slot: String, existing: String, wanted: String },
    #[error("replication slot {slot:?} belongs to database {database:?}: use another --slot")]
    SlotInOtherDatabase { slot: String, database: String },
    #[error("invalid replication slot name {0:?}: use 1 to 63 lowercase letters, digits and underscores")]
    InvalidSlotName(String),
    #[error("invalid command argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Server(#[from] Box<ServerError>),
    #[error("unexpected reply to {command}: {detail}")]
    UnexpectedReply { command: &'static str, detail: String },
    #[error("the server broke the protocol")]
    Protocol(#[from] ProtocolError),
    #[error("lost the connection to the server")]
    Io(#[source] io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error(transparent)]
    Sql(#[from] tokio_postgres::Error),
}

impl SourceError {
    /// Whether retrying later can succeed (connection lost or refused, server restarting, too many
    /// connections, slot busy), as opposed to a setting or privilege someone must fix first.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { .. }
            | SourceError::ConnectTimeout { .. }
            | SourceError::Io(_)
            | SourceError::Closed
            | SourceError::SlotActive { .. } => true,
            SourceError::Tls { source, .. } => is_connection_lost(source),
            SourceError::Server(error) => error.is_transient(),
            SourceError::Sql(error) => {
                error.is_closed()
                    || error.as_db_error().is_some_and(|db| is_transient_code(db.code().code()))
                    || std::error::Error::source(error).is_some_and(|cause| cause.is::<io::Error>())
            }
            _ => false,
        }
    }

    /// Turns an ErrorResponse into the error that says what to fix, using what the caller was doing.
    pub(crate) fn from_server(error: ServerError, context: &ErrorContext) -> SourceError {
        let error = Box::new(error);
        let slot = || context.slot.clone().or_else(|| first_quoted(&error.message)).unwrap_or_default();
        let plugin = || context.plugin.clone().or_else(|| first_quoted(&error.message)).unwrap_or_default();
        match error.code.as_str() {
            "28P01" => SourceError::PasswordFailed { user: context.user.clone(), source: error },
            "28000" => SourceError::Rejected { user: context.user.clone(), source: error },
            "42501" if error.message.contains("may not be used as an output plugin") => {
                SourceError::PluginNotAllowed { plugin: plugin(), source: error }
            }
            "42501" if error.message.contains("replication") => {
                SourceError::NoReplicationPrivilege { user: context.user.clone(), source: error }
            }
            "55000" if error.message.contains("wal_level") => SourceError::WalLevel { source: error },
            "55006" => SourceError::SlotActive { slot: slot(), pid: pid_in(&error.message), source: error },
            "42704" if context.slot.is_some() => SourceError::SlotMissing { slot: slot(), source: error },
            "42710" if context.slot.is_some() => SourceError::SlotExists { slot: slot(), source: error },
            "58P01" => SourceError::PluginMissing {
                plugin: plugin(),
                server_major: context.server_major,
                source: error,
            },
            _ => SourceError::Server(error),
        }
    }
}

/// What a connection was doing, to name things in errors.
#[derive(Clone, Debug, Default)]
pub(crate) struct ErrorContext {
    pub user: String,
    /// The server's major version (`15`), from its `server_version` parameter.
    pub server_major: Option<u32>,
    pub slot: Option<String>,
    pub plugin: Option<String>,
}

/// An error the server reported (ErrorResponse), with its SQLSTATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC`.
    pub severity: String,
    /// The SQLSTATE, e.g. `55006`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// Whether the condition passes by itself: connection trouble (class 08), server shutting down
    /// or starting (57P01-57P03), too many connections (53300), serialization failure or deadlock.
    pub fn is_transient(&self) -> bool {
        is_transient_code(&self.code)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

fn is_transient_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01")
}

fn is_connection_lost(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | TimedOut | ConnectionRefused
    )
}

/// The first `"quoted"` name in a server message (`replication slot "x" is active for PID 7`).
fn first_quoted(message: &str) -> Option<String> {
    let (_, rest) = message.split_once('"')?;
    rest.split_once('"').map(|(name, _)| name.to_owned())
}

/// The number after `PID` in a server message.
fn pid_in(message: &str) -> Option<u32> {
    let (_, rest) = message.split_once("PID ")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str, message: &str) -> ServerError {
        ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn names_the_slot_and_pid_of_a_busy_slot() {
        let context = ErrorContext { user: "u".into(), ..ErrorContext::default() };
        let error = server_error("55006", "replication slot \"feed_1\" is active for PID 4242");
        let error = SourceError::from_server(error, &context);
        assert!(matches!(&error, SourceError::SlotActive { slot, pid: Some(4242), .. } if slot == "feed_1"));
        assert!(error.is_transient());
        assert!(error.to_string().contains("PID 4242"), "{error}");
    }

    #[test]
    fn tells_transient_from_permanent_server_errors() {
        let context = ErrorContext::default();
        for (code, transient) in
            [("57P01", true), ("53300", true), ("08006", true), ("42601", false), ("3D000", false)]
        {
            let error = SourceError::from_server(server_error(code, "x"), &context);
            assert_eq!(error.is_transient(), transient, "{code}");
        }
        let wal_level = server_error("55000", "logical decoding requires wal_level >= logical");
        assert!(!SourceError::from_server(wal_level, &context).is_transient());
    }

    #[test]
    fn prints_server_errors_with_their_sqlstate_detail_and_hint() {
        let mut error = server_error("42704", "replication slot \"s\" does not exist");
        error.hint = Some("Create it first.".into());
        assert_eq!(
            error.to_string(),
            "ERROR: replication slot \"s\" does not exist (SQLSTATE 42704); hint: Create it first."
        );
    }
}
