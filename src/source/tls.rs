//! TLS client settings per `sslmode`, with rustls, for the replication and the SQL connection alike.
//!
//! As libpq: `allow`, `prefer` and `require` encrypt without verifying the server's certificate
//! (unless `require` is given an `sslrootcert`, which makes it verify the chain as `verify-ca`
//! does); `verify-ca` verifies the chain against `sslrootcert` (or the system's roots when it is
//! unset or `system`) but not the host name; `verify-full` verifies both. The handshake signature
//! is checked in every mode. Unix sockets never use TLS.
//!
//! A server certificate that is itself in the `sslrootcert` file is trusted as it is (within its
//! validity period), as OpenSSL does: the self-signed certificates PostgreSQL's documentation
//! shows how to make are marked as CAs, which webpki alone refuses to accept as a server's.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_cert::der::Decode;

use super::conninfo::{ConnInfo, Host, SslMode};
use super::SourceError;

/// The rustls client configuration `info.sslmode` asks for.
pub fn client_config(info: &ConnInfo) -> Result<ClientConfig, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (trust, check_name) = match (info.sslmode, &info.sslrootcert) {
        (SslMode::VerifyFull, _) => (Some(trust(info)?), true),
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => (Some(trust(info)?), false),
        _ => (None, false),
    };
    let verifier = Verifier { trust, check_name, provider: provider.clone() };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::TlsConfig(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The name the server's certificate must carry: the host (an IP address when it is one).
pub(crate) fn server_name(info: &ConnInfo) -> Result<ServerName<'static>, SourceError> {
    match &info.host {
        Host::Tcp(host) => match host.parse::<IpAddr>() {
            Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
            Err(_) => ServerName::try_from(host.clone())
                .map_err(|_| SourceError::TlsConfig(format!("{host:?} is not a valid host name for TLS"))),
        },
        Host::Unix(_) => Err(SourceError::TlsConfig("TLS is not used over Unix sockets".into())),
    }
}

/// What a verified certificate must chain to.
#[derive(Debug)]
struct Trust {
    roots: RootCertStore,
    /// The certificates of the `sslrootcert` file, trusted as server certificates too.
    certs: Vec<CertificateDer<'static>>,
}

/// The CA certificates to verify against: `sslrootcert`, or the system's.
fn trust(info: &ConnInfo) -> Result<Trust, SourceError> {
    let mut roots = RootCertStore::empty();
    let mut certs = Vec::new();
    match info.sslrootcert.as_deref().filter(|path| *path != Path::new("system")) {
        Some(path) => {
            let cert_error = |source| SourceError::RootCert { path: path.to_owned(), source };
            let pem = std::fs::read(path).map_err(cert_error)?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(cert_error)?;
                roots
                    .add(cert.clone())
                    .map_err(|e| cert_error(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                certs.push(cert);
            }
            if certs.is_empty() {
                let none = io::Error::new(io::ErrorKind::InvalidData, "no PEM certificate in the file");
                return Err(cert_error(none));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(SourceError::TlsConfig(
                    "no system root certificates found: set sslrootcert to the server's CA certificate"
                        .into(),
                ));
            }
        }
    }
    Ok(Trust { roots, certs })
}

/// Checks that `now` is within the validity period of `cert`.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = parsed.tbs_certificate.validity;
    let now = now.as_secs();
    if now < validity.not_before.to_unix_duration().as_secs() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if now > validity.not_after.to_unix_duration().as_secs() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// Verifies the certificate against `trust` and, when `check_name`, the host name; verifies
/// nothing without `trust` (allow, prefer, require: encryption without authentication).
#[derive(Debug)]
struct Verifier {
    trust: Option<Trust>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(trust) = &self.trust else { return Ok(ServerCertVerified::assertion()) };
        let cert = ParsedCertificate::try_from(end_entity)?;
        if trust.certs.contains(end_entity) {
            check_validity(end_entity, now)?;
        } else {
            let algorithms = self.provider.signature_verification_algorithms.all;
            verify_server_cert_signed_by_trust_anchor(&cert, &trust.roots, intermediates, now, algorithms)?;
        }
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
