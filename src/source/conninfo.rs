//! Connection strings, read the way libpq reads them, for both of our connections to the source
//! database: the replication connection and the ordinary SQL one.
//!
//! Both libpq forms are accepted: URLs (`postgres://user:password@host:port/dbname?key=value`, with
//! percent-decoding, `[::1]` IPv6 hosts and a Unix socket directory as host) and `key=value` lists
//! (values single-quoted when they hold spaces, `\'` and `\\` escapes). Missing parameters fall back
//! to libpq's environment variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, ...) and defaults.
//! An unknown key is an error naming it, so a typo never silently weakens TLS.
//!
//! The password is never printed: neither [`ConnInfo`]'s `Debug` nor its `Display` shows it, and
//! no parse error quotes a value.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;

/// Where libpq looks for the server's Unix socket on Debian when no host is given.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
const DEFAULT_PORT: u16 = 5432;
/// `application_name` when the connection string sets none, so that `pg_stat_activity` tells who
/// we are.
const DEFAULT_APPLICATION_NAME: &str = "pubsubpull";

/// Session settings on every connection, so that values print the same wherever they are read
/// (decoders rely on ISO dates in UTC). They come after the user's `options`, so they win.
const SESSION_OPTIONS: &str = "-c datestyle=ISO -c timezone=UTC -c intervalstyle=postgres \
                               -c extra_float_digits=1 -c client_encoding=UTF8";

const KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "application_name",
    "options",
    "connect_timeout",
];

/// libpq's environment variable for each key.
const ENV_VARS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("application_name", "PGAPPNAME"),
    ("options", "PGOPTIONS"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
];

/// A connection string that cannot be used. Never quotes a value, which might be a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    #[error("unknown connection parameter {0:?}; known ones: {known}", known = KEYS.join(", "))]
    UnknownKey(String),
    #[error("invalid {key}: expected {expected}")]
    InvalidValue { key: String, expected: &'static str },
    #[error("malformed connection string at byte {at}: expected {expected}")]
    Syntax { at: usize, expected: &'static str },
    #[error("several hosts are not supported: give one host")]
    SeveralHosts,
    #[error("no user name: set user in the connection string, or PGUSER")]
    NoUser,
}

/// How much TLS to insist on, as libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first; TLS (unverified) if the server refuses plaintext.
    Allow,
    /// TLS (unverified) when the server offers it, else plaintext. The default.
    Prefer,
    /// TLS, certificate unverified (verified against `sslrootcert` when one is given, as libpq).
    Require,
    /// TLS, certificate chain verified, host name not.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(ConnInfoError::InvalidValue {
                    key: "sslmode".into(),
                    expected: "disable, allow, prefer, require, verify-ca or verify-full",
                })
            }
        })
    }
}

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address (also the name TLS verifies).
    Tcp(String),
    /// The directory holding the server's socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// A parsed connection string with every default filled in.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: Host,
    /// The address to connect to instead of resolving `host` (which TLS still verifies).
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    password: Option<String>,
    pub sslmode: SslMode,
    /// CA certificates (PEM) for verify-ca/verify-full; `system` or unset: the system's roots.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    /// Command-line options for the server session (`-c name=value ...`).
    pub options: Option<String>,
    /// Gives up connecting after this long; `None` waits as long as the operating system does.
    pub connect_timeout: Option<Duration>,
}

impl ConnInfo {
    /// Parses a URL or `key=value` connection string, filling gaps from libpq's environment
    /// variables and defaults.
    pub fn parse(text: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with_env(text, |name| std::env::var(name).ok())
    }

    /// [`ConnInfo::parse`] with the environment given as a lookup function.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let trimmed = text.trim_start();
        let params = match ["postgresql://", "postgres://"].iter().find_map(|p| trimmed.strip_prefix(p)) {
            Some(rest) => parse_url(rest)?,
            None => parse_key_values(text)?,
        };
        ConnInfo::from_params(params, env)
    }

    /// The password, if one was given.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The user's `options` followed by the session settings every connection needs.
    pub fn startup_options(&self) -> String {
        match &self.options {
            Some(options) if !options.trim().is_empty() => format!("{options} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_owned(),
        }
    }

    /// Where to connect, for messages: `host:port` or the socket path.
    pub fn target(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Host::Unix(dir), _) => dir.join(format!(".s.PGSQL.{}", self.port)).display().to_string(),
            (Host::Tcp(host), Some(addr)) => format!("{host} ({addr}) port {}", self.port),
            (Host::Tcp(host), None) => format!("{host} port {}", self.port),
        }
    }

    fn from_params(
        mut params: HashMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        if let Some(key) = params.keys().find(|key| !KEYS.contains(&key.as_str())) {
            return Err(ConnInfoError::UnknownKey(key.clone()));
        }
        // libpq: an empty value counts as not given.
        params.retain(|_, value| !value.is_empty());
        for (key, var) in ENV_VARS {
            if !params.contains_key(*key) {
                if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                    params.insert((*key).to_owned(), value);
                }
            }
        }
        let mut take = |key: &str| params.remove(key);
        let invalid = |key: &str, expected| ConnInfoError::InvalidValue { key: key.into(), expected };

        let hostaddr = take("hostaddr")
            .map(|addr| addr.parse::<IpAddr>().map_err(|_| invalid("hostaddr", "an IP address")))
            .transpose()?;
        let host = match take("host") {
            Some(host) if host.contains(',') => return Err(ConnInfoError::SeveralHosts),
            Some(host) if host.starts_with('/') => Host::Unix(host.into()),
            Some(host) => Host::Tcp(host),
            None => match hostaddr {
                Some(addr) => Host::Tcp(addr.to_string()),
                None => Host::Unix(DEFAULT_SOCKET_DIR.into()),
            },
        };
        let port = match take("port") {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| invalid("port", "a port number from 1 to 65535"))?,
            None => DEFAULT_PORT,
        };
        let user = take("user")
            .or_else(|| env("USER").or_else(|| env("LOGNAME")).filter(|u| !u.is_empty()))
            .ok_or(ConnInfoError::NoUser)?;
        let connect_timeout = take("connect_timeout")
            .map(|secs| {
                secs.trim()
                    .parse::<i64>()
                    .map_err(|_| invalid("connect_timeout", "a number of seconds"))
                    // libpq: zero or negative waits indefinitely, and it never waits under 2 s.
                    .map(|secs| (secs > 0).then(|| Duration::from_secs(secs.max(2).unsigned_abs())))
            })
            .transpose()?
            .flatten();
        Ok(ConnInfo {
            host,
            hostaddr,
            port,
            dbname: take("dbname").unwrap_or_else(|| user.clone()),
            password: take("password"),
            sslmode: take("sslmode").map(|mode| mode.parse()).transpose()?.unwrap_or(SslMode::Prefer),
            sslrootcert: take("sslrootcert").map(PathBuf::from),
            application_name: take("application_name").unwrap_or_else(|| DEFAULT_APPLICATION_NAME.into()),
            options: take("options"),
            connect_timeout,
            user,
        })
    }
}

/// Everything but the password.
impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// `host=... port=... dbname=... user=... sslmode=...`, for logs; never the password.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(host) => write!(f, "host={host}")?,
            Host::Unix(dir) => write!(f, "host={}", dir.display())?,
        }
        if let Some(addr) = self.hostaddr {
            write!(f, " hostaddr={addr}")?;
        }
        write!(f, " port={} dbname={} user={} sslmode={}", self.port, self.dbname, self.user, self.sslmode)
    }
}

/// The part of a URL after `postgres://`: `[user[:password]@][host][:port][/dbname][?key=value&...]`.
fn parse_url(rest: &str) -> Result<HashMap<String, String>, ConnInfoError> {
    let offset = "postgres://".len();
    let mut params = HashMap::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (before_query, None),
    };
    let host_port = match authority.split_once('@') {
        Some((userinfo, host_port)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            params.insert("user".into(), decode(user, "user")?);
            if let Some(password) = password {
                params.insert("password".into(), decode(password, "password")?);
            }
            host_port
        }
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(ConnInfoError::Syntax {
            at: offset + authority.len() - host_port.len(),
            expected: "']' closing an IPv6 address",
        })?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    let at = offset + authority.len() - after.len();
                    return Err(ConnInfoError::Syntax { at, expected: "':' or '/' after an IPv6 address" });
                }
            },
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.contains(',') || port.is_some_and(|p| p.contains(',')) {
        return Err(ConnInfoError::SeveralHosts);
    }
    params.insert("host".into(), decode(host, "host")?);
    if let Some(port) = port {
        params.insert("port".into(), decode(port, "port")?);
    }
    if let Some(dbname) = path {
        params.insert("dbname".into(), decode(dbname, "dbname")?);
    }
    for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| ConnInfoError::Syntax {
            at: offset + before_query.len() + 1,
            expected: "key=value pairs after '?'",
        })?;
        let key = decode(key, "parameter name")?;
        let value = decode(value, "parameter value")?;
        // libpq accepts JDBC's `ssl=true` as sslmode=require.
        if key == "ssl" && value == "true" {
            params.insert("sslmode".into(), "require".into());
        } else {
            params.insert(key, value);
        }
    }
    Ok(params)
}

fn decode(text: &str, key: &str) -> Result<String, ConnInfoError> {
    percent_decode_str(text).decode_utf8().map(|s| s.into_owned()).map_err(|_| ConnInfoError::InvalidValue {
        key: key.into(),
        expected: "UTF-8 text after percent-decoding",
    })
}

/// `key = value key='quoted value' ...`, as libpq's conninfo_parse.
fn parse_key_values(text: &str) -> Result<HashMap<String, String>, ConnInfoError> {
    let bytes = text.as_bytes();
    let mut params = HashMap::new();
    let mut i = 0;
    let skip_space = |i: &mut usize| {
        while bytes.get(*i).is_some_and(u8::is_ascii_whitespace) {
            *i += 1;
        }
    };
    loop {
        skip_space(&mut i);
        if i == bytes.len() {
            return Ok(params);
        }
        let key_start = i;
        while bytes.get(i).is_some_and(|b| *b != b'=' && !b.is_ascii_whitespace()) {
            i += 1;
        }
        let key = &text[key_start..i];
        skip_space(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err(ConnInfoError::Syntax { at: i, expected: "'=' after a parameter name" });
        }
        i += 1;
        skip_space(&mut i);
        let mut value = Vec::new();
        if bytes.get(i) == Some(&b'\'') {
            let quote_at = i;
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(ConnInfoError::Syntax { at: quote_at, expected: "a closing quote" }),
                    Some(b'\'') => break,
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(byte) => {
                        value.push(*byte);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            while let Some(byte) = bytes.get(i).filter(|b| !b.is_ascii_whitespace()) {
                if *byte == b'\\' && i + 1 < bytes.len() {
                    value.push(bytes[i + 1]);
                    i += 2;
                } else {
                    value.push(*byte);
                    i += 1;
                }
            }
        }
        // Only ASCII bytes were removed, so the value is still UTF-8.
        let value = String::from_utf8(value)
            .map_err(|_| ConnInfoError::Syntax { at: key_start, expected: "UTF-8 text" })?;
        params.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    fn parse(text: &str) -> ConnInfo {
        ConnInfo::parse_with_env(text, env(&[("USER", "osuser")])).unwrap()
    }

    fn parse_err(text: &str) -> ConnInfoError {
        ConnInfo::parse_with_env(text, env(&[("USER", "osuser")])).unwrap_err()
    }

    #[test]
    fn reads_full_urls() {
        let info = parse("postgresql://ann:p%40ss%20word@db.example.com:6543/sales%20db?sslmode=verify-full&application_name=etl&connect_timeout=10");
        assert_eq!(info.host, Host::Tcp("db.example.com".into()));
        assert_eq!(info.port, 6543);
        assert_eq!(info.user, "ann");
        assert_eq!(info.password(), Some("p@ss word"));
        assert_eq!(info.dbname, "sales db");
        assert_eq!(info.sslmode, SslMode::VerifyFull);
        assert_eq!(info.application_name, "etl");
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(10)));
        let short = parse("postgres://ann@localhost");
        assert_eq!((short.port, short.dbname.as_str(), short.password()), (5432, "ann", None));
        assert_eq!(parse("postgres://h/d?ssl=true").sslmode, SslMode::Require);
    }

    #[test]
    fn reads_ipv6_and_socket_directory_hosts() {
        let info = parse("postgres://u@[::1]:5433/d");
        assert_eq!((info.host, info.port), (Host::Tcp("::1".into()), 5433));
        assert_eq!(parse("postgres://u@[fe80::1]/d").host, Host::Tcp("fe80::1".into()));
        assert_eq!(parse("postgres://%2Ftmp%2Fpg/d").host, Host::Unix("/tmp/pg".into()));
        assert_eq!(parse("postgres:///d?host=/run/pg&port=5434").host, Host::Unix("/run/pg".into()));
        assert_eq!(parse("postgres:///d").host, Host::Unix("/var/run/postgresql".into()));
        assert!(matches!(parse_err("postgres://[::1/d"), ConnInfoError::Syntax { .. }));
        assert!(matches!(parse_err("postgres://[::1]x/d"), ConnInfoError::Syntax { .. }));
    }

    #[test]
    fn reads_key_value_lists_with_quotes_and_escapes() {
        let info = parse(
            r"host=127.0.0.1 port = 5433 dbname='my db' user=bob password='it\'s a \\ secret' options='-c search_path=x'",
        );
        assert_eq!(info.host, Host::Tcp("127.0.0.1".into()));
        assert_eq!(info.port, 5433);
        assert_eq!(info.dbname, "my db");
        assert_eq!(info.password(), Some(r"it's a \ secret"));
        assert_eq!(info.options.as_deref(), Some("-c search_path=x"));
        assert_eq!(parse(r"user=a\ b").user, "a b");
        assert_eq!(parse("user=a dbname=''").dbname, "a", "an empty value counts as unset");
        assert_eq!(parse("user=\u{e9}l\u{e8}ve").user, "\u{e9}l\u{e8}ve");
    }

    #[test]
    fn fills_defaults_from_the_environment_like_libpq() {
        let info = ConnInfo::parse_with_env("", env(&[("USER", "osuser")])).unwrap();
        assert_eq!(info.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!((info.port, info.user.as_str(), info.dbname.as_str()), (5432, "osuser", "osuser"));
        assert_eq!(info.sslmode, SslMode::Prefer);
        assert_eq!(info.application_name, "pubsubpull");
        let vars = [("PGHOST", "pg.internal"), ("PGUSER", "svc"), ("PGPASSWORD", "pw"), ("PGPORT", "6000")];
        let info = ConnInfo::parse_with_env("dbname=x", env(&vars)).unwrap();
        assert_eq!(info.host, Host::Tcp("pg.internal".into()));
        assert_eq!((info.user.as_str(), info.password(), info.port), ("svc", Some("pw"), 6000));
        let given = ConnInfo::parse_with_env("user=me", env(&vars)).unwrap();
        assert_eq!(given.user, "me", "the string wins over the environment");
        assert_eq!(ConnInfo::parse_with_env("", env(&[])), Err(ConnInfoError::NoUser));
    }

    #[test]
    fn uses_hostaddr_as_host_when_no_host_is_given() {
        let info = parse("hostaddr=127.0.0.1 user=u");
        assert_eq!(info.host, Host::Tcp("127.0.0.1".into()));
        let both = parse("host=db.example.com hostaddr=::1 user=u");
        assert_eq!((both.host, both.hostaddr), (Host::Tcp("db.example.com".into()), "::1".parse().ok()));
    }

    #[test]
    fn rejects_bad_strings_with_clear_errors() {
        assert_eq!(parse_err("host=x sslcert=/a"), ConnInfoError::UnknownKey("sslcert".into()));
        assert_eq!(parse_err("postgres://h/d?sslmod=require"), ConnInfoError::UnknownKey("sslmod".into()));
        assert!(parse_err("postgres://h/d?bogus=1").to_string().contains("\"bogus\""));
        assert_eq!(
            parse_err("host"),
            ConnInfoError::Syntax { at: 4, expected: "'=' after a parameter name" }
        );
        assert!(matches!(parse_err("password='open"), ConnInfoError::Syntax { at: 9, .. }));
        assert!(matches!(parse_err("port=0"), ConnInfoError::InvalidValue { .. }));
        assert!(matches!(parse_err("port=99999"), ConnInfoError::InvalidValue { .. }));
        assert!(matches!(parse_err("sslmode=on"), ConnInfoError::InvalidValue { .. }));
        assert!(matches!(parse_err("hostaddr=db.example.com"), ConnInfoError::InvalidValue { .. }));
        assert!(matches!(parse_err("connect_timeout=soon"), ConnInfoError::InvalidValue { .. }));
        assert_eq!(parse_err("host=a,b"), ConnInfoError::SeveralHosts);
        assert_eq!(parse_err("postgres://a:1,b:2/d"), ConnInfoError::SeveralHosts);
        assert!(matches!(parse_err("postgres://u:%FF@h/d"), ConnInfoError::InvalidValue { .. }));
    }

    #[test]
    fn treats_short_or_zero_timeouts_like_libpq() {
        assert_eq!(parse("user=u connect_timeout=0").connect_timeout, None);
        assert_eq!(parse("user=u connect_timeout=-5").connect_timeout, None);
        assert_eq!(parse("user=u connect_timeout=1").connect_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn never_shows_the_password() {
        let secret = "hunter2-Zq9";
        for text in [
            format!("postgres://ann:{secret}@db/x"),
            format!("host=db user=ann password='{secret}'"),
            format!("host=db user=ann password={secret}"),
        ] {
            let info = parse(&text);
            assert_eq!(info.password(), Some(secret));
            for shown in [format!("{info:?}"), format!("{info:#?}"), info.to_string()] {
                assert!(!shown.contains(secret), "password shown in {shown}");
            }
            assert!(format!("{info:?}").contains("<hidden>"));
        }
        let bad = format!("host=db password='{secret}");
        assert!(!parse_err(&bad).to_string().contains(secret));
        let bad = format!("postgres://ann:{secret}%FF@db/x");
        assert!(!parse_err(&bad).to_string().contains(secret));
    }

    #[test]
    fn puts_the_session_settings_after_the_users_options() {
        let info = parse("user=u options='-c work_mem=64MB'");
        let options = info.startup_options();
        assert!(options.starts_with("-c work_mem=64MB -c datestyle=ISO"), "{options}");
        assert!(options.ends_with("-c client_encoding=UTF8"));
        assert_eq!(parse("user=u").startup_options(), SESSION_OPTIONS);
    }
}
