//! The byte stream to the server: a TCP or Unix socket, with TLS negotiated per `sslmode`.
//!
//! TCP tries every address the host resolves to (or `hostaddr`) in turn, as libpq does, so that
//! `localhost` works whether the server listens on IPv4, IPv6 or both. TLS starts with an
//! SSLRequest; the server's one-byte answer is read alone, so nothing it sent before the handshake
//! can be mistaken for encrypted data.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::conninfo::{ConnInfo, Host, SslMode};
use super::{tls, SourceError};

/// Whether this attempt uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encryption {
    Plain,
    /// TLS when the server offers it, else plaintext (sslmode prefer).
    TlsIfOffered,
    Tls,
}

impl Encryption {
    /// What the first connection attempt uses under `mode` (`allow` tries plaintext first).
    pub(crate) fn first_for(mode: SslMode) -> Encryption {
        match mode {
            SslMode::Disable | SslMode::Allow => Encryption::Plain,
            SslMode::Prefer => Encryption::TlsIfOffered,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Encryption::Tls,
        }
    }
}

/// A connected socket, encrypted or not.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Connects to the server `info` names, negotiating TLS as `encryption` says. Unix sockets
    /// never use TLS (the server does not offer it there).
    pub(crate) async fn open(info: &ConnInfo, encryption: Encryption) -> Result<Transport, SourceError> {
        let connect_error = |source| SourceError::Connect { target: info.target(), source };
        let tcp = match &info.host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", info.port));
                return UnixStream::connect(path).await.map(Transport::Unix).map_err(connect_error);
            }
            Host::Tcp(host) => connect_tcp(host, info).await.map_err(connect_error)?,
        };
        if encryption == Encryption::Plain {
            return Ok(Transport::Tcp(tcp));
        }
        negotiate_tls(tcp, info, encryption).await
    }

    /// Whether the bytes are encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

async fn connect_tcp(host: &str, info: &ConnInfo) -> io::Result<TcpStream> {
    let addresses: Vec<_> = match info.hostaddr {
        Some(addr) => vec![(addr, info.port).into()],
        None => tokio::net::lookup_host((host, info.port)).await?.collect(),
    };
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the host name resolves to no address");
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                // Status updates are small and flushed on purpose; do not let Nagle hold them back.
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    info: &ConnInfo,
    encryption: Encryption,
) -> Result<Transport, SourceError> {
    let io_error = |source| SourceError::Connect { target: info.target(), source };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(io_error)?;
    match tcp.read_u8().await.map_err(io_error)? {
        b'S' => {}
        b'N' if encryption == Encryption::TlsIfOffered => return Ok(Transport::Tcp(tcp)),
        b'N' => return Err(SourceError::TlsRefused { target: info.target(), mode: info.sslmode }),
        other => {
            return Err(SourceError::UnexpectedReply {
                command: "SSLRequest",
                detail: format!("expected 'S' or 'N', got byte {other:#04x}"),
            })
        }
    }
    let connector = TlsConnector::from(Arc::new(tls::client_config(info)?));
    let stream = connector
        .connect(tls::server_name(info)?, tcp)
        .await
        .map_err(|source| SourceError::Tls { target: info.target(), source })?;
    Ok(Transport::Tls(Box::new(stream)))
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Unix(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
