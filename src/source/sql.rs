//! The ordinary SQL connection to the source database (tokio-postgres), opened from the same
//! connection string as the replication connection, with the same TLS rules and session settings.

use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{ConnInfo, Host, SslMode};
use super::{tls, ErrorContext, ServerError, SourceError};

impl ConnInfo {
    /// The tokio-postgres configuration for this connection string. tokio-postgres knows only
    /// disable, prefer and require; certificate checks come from the TLS connector
    /// [`ConnInfo::connect_sql`] passes along.
    pub fn sql_config(&self) -> Config {
        let mut config = Config::new();
        match &self.host {
            Host::Tcp(host) => config.host(host),
            Host::Unix(dir) => config.host_path(dir),
        };
        if let Some(addr) = self.hostaddr {
            config.hostaddr(addr);
        }
        config
            .port(self.port)
            .dbname(&self.dbname)
            .user(&self.user)
            .application_name(&self.application_name)
            .options(self.startup_options())
            .ssl_mode(self.sql_ssl_mode());
        if let Some(password) = self.password() {
            config.password(password);
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout(timeout);
        }
        config
    }

    /// Opens the SQL connection and spawns its connection task. With `sslmode=allow`, a plaintext
    /// connection the server rejects is retried with TLS, as libpq does.
    pub async fn connect_sql(&self) -> Result<Client, SourceError> {
        let mut config = self.sql_config();
        let context = ErrorContext { user: self.user.clone(), ..ErrorContext::default() };
        if config.get_ssl_mode() == PgSslMode::Disable && self.sslmode != SslMode::Allow {
            return spawn_connection(&config, NoTls).await.map_err(|e| sql_error(e, &context));
        }
        let connector = MakeRustlsConnect::new(tls::client_config(self)?);
        match spawn_connection(&config, connector.clone()).await.map_err(|e| sql_error(e, &context)) {
            Err(SourceError::Rejected { .. })
                if self.sslmode == SslMode::Allow && matches!(self.host, Host::Tcp(_)) =>
            {
                config.ssl_mode(PgSslMode::Require);
                spawn_connection(&config, connector).await.map_err(|e| sql_error(e, &context))
            }
            result => result,
        }
    }

    fn sql_ssl_mode(&self) -> PgSslMode {
        match (&self.host, self.sslmode) {
            // As libpq: no TLS over Unix sockets, whatever sslmode says.
            (Host::Unix(_), _) | (_, SslMode::Disable | SslMode::Allow) => PgSslMode::Disable,
            (_, SslMode::Prefer) => PgSslMode::Prefer,
            (_, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => PgSslMode::Require,
        }
    }
}

async fn spawn_connection<T>(config: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error, "source SQL connection ended");
        }
    });
    Ok(client)
}

/// Server errors get the same clear mapping as on the replication connection.
fn sql_error(error: tokio_postgres::Error, context: &ErrorContext) -> SourceError {
    match error.as_db_error() {
        Some(db) => SourceError::from_server(
            ServerError {
                severity: db.parsed_severity().map_or_else(|| db.severity().to_owned(), |s| s.to_string()),
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
            },
            context,
        ),
        None => SourceError::Sql(error),
    }
}
