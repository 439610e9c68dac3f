//! Session startup of a replication connection: the startup message, authentication, and the
//! server's parameters up to the first ReadyForQuery.
//!
//! The startup message asks for a logical walsender (`replication=database`) and carries the
//! session settings that make value text the same on every connection. Authentication supports
//! trust, cleartext password, MD5 and SCRAM-SHA-256. SCRAM runs without channel binding (`n`): we
//! do not implement `tls-server-end-point`, and claiming support we lack (`y`) would make a server
//! that offers SCRAM-SHA-256-PLUS refuse us as a downgrade. The password is never logged.

use std::collections::HashMap;

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::conninfo::ConnInfo;
use super::protocol::ProtocolError;
use super::wire::{log_notice, server_error, Wire};
use super::{ErrorContext, SourceError};

/// What the server told us during startup.
pub(crate) struct Session {
    /// ParameterStatus values: `server_version`, `DateStyle`, `TimeZone`, ...
    pub parameters: HashMap<String, String>,
    /// The walsender's process id (BackendKeyData).
    pub backend_pid: Option<u32>,
}

/// Runs startup and authentication on a fresh connection, up to the first ReadyForQuery.
pub(crate) async fn startup(
    wire: &mut Wire,
    info: &ConnInfo,
    context: &mut ErrorContext,
) -> Result<Session, SourceError> {
    let options = info.startup_options();
    let params = [
        ("user", info.user.as_str()),
        ("database", info.dbname.as_str()),
        ("replication", "database"),
        ("application_name", info.application_name.as_str()),
        ("options", options.as_str()),
    ];
    frontend::startup_message(params, &mut wire.write_buf).map_err(invalid_argument)?;
    wire.flush().await?;
    authenticate(wire, info, context).await?;

    let mut session = Session { parameters: HashMap::new(), backend_pid: None };
    loop {
        match wire.read_message().await? {
            Message::ParameterStatus(body) => {
                let (Ok(name), Ok(value)) = (body.name(), body.value()) else {
                    return Err(unexpected("ParameterStatus", "UTF-8 name and value"));
                };
                if name == "server_version" {
                    context.server_major =
                        value.split(|c: char| !c.is_ascii_digit()).next().and_then(|m| m.parse().ok());
                }
                session.parameters.insert(name.to_owned(), value.to_owned());
            }
            Message::BackendKeyData(body) => session.backend_pid = u32::try_from(body.process_id()).ok(),
            Message::ReadyForQuery(_) => return Ok(session),
            Message::NoticeResponse(body) => log_notice(body.fields()),
            Message::ErrorResponse(body) => {
                return Err(SourceError::from_server(server_error(body.fields())?, context))
            }
            _ => {
                return Err(unexpected("startup message", "ParameterStatus, BackendKeyData or ReadyForQuery"))
            }
        }
    }
}

/// Answers the server's authentication requests until AuthenticationOk.
async fn authenticate(wire: &mut Wire, info: &ConnInfo, context: &ErrorContext) -> Result<(), SourceError> {
    let password = || {
        info.password()
            .map(str::as_bytes)
            .ok_or_else(|| SourceError::PasswordMissing { user: info.user.clone() })
    };
    let scram_error = |source| SourceError::Scram { user: info.user.clone(), source };
    let mut scram: Option<ScramSha256> = None;
    loop {
        match wire.read_message().await? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?, &mut wire.write_buf).map_err(invalid_argument)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(info.user.as_bytes(), password()?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut wire.write_buf).map_err(invalid_argument)?;
            }
            Message::AuthenticationSasl(body) => {
                let mechanisms: Vec<String> = body
                    .mechanisms()
                    .map(|m| Ok(m.to_owned()))
                    .collect()
                    .map_err(|_| unexpected("AuthenticationSASL", "NUL-terminated mechanism names"))?;
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(SourceError::UnsupportedAuth {
                        method: format!("SASL ({})", mechanisms.join(", ")),
                    });
                }
                let client = ScramSha256::new(password()?, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut wire.write_buf)
                    .map_err(invalid_argument)?;
                scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let client =
                    scram.as_mut().ok_or_else(|| unexpected("SASLContinue", "AuthenticationSASL first"))?;
                client.update(body.data()).map_err(scram_error)?;
                frontend::sasl_response(client.message(), &mut wire.write_buf).map_err(invalid_argument)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client =
                    scram.as_mut().ok_or_else(|| unexpected("SASLFinal", "AuthenticationSASL first"))?;
                // Checks the server's signature: it proves the server knows the password too.
                client.finish(body.data()).map_err(scram_error)?;
                continue;
            }
            Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationSspi
            | Message::AuthenticationScmCredential => {
                return Err(SourceError::UnsupportedAuth { method: "GSSAPI, SSPI or Kerberos".into() })
            }
            Message::NoticeResponse(body) => {
                log_notice(body.fields());
                continue;
            }
            Message::ErrorResponse(body) => {
                return Err(SourceError::from_server(server_error(body.fields())?, context))
            }
            _ => return Err(unexpected("authentication", "an authentication request")),
        }
        wire.flush().await?;
    }
}

fn unexpected(what: &'static str, expected: &'static str) -> SourceError {
    SourceError::Protocol(ProtocolError::Unexpected { what, at: 0, expected })
}

/// postgres-protocol refuses strings with NUL bytes, which no message can carry.
fn invalid_argument(error: std::io::Error) -> SourceError {
    SourceError::InvalidArgument(error.to_string())
}
