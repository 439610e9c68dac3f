//! TLS client settings per `sslmode`, with rustls, for the replication and the SQL connection alike.
//!
//! As libpq: `allow`, `prefer` and `require` encrypt without verifying the server's certificate
//! (unless `require` is given an `sslrootcert`, which makes it verify the chain as `verify-ca`
//! does); `verify-ca` verifies the chain against `sslrootcert` (or the system's roots when it is
//! unset or `system`) but not the host name; `verify-full` verifies both. The handshake signature
//! is checked in every mode. Unix sockets never use TLS.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::conninfo::{ConnInfo, Host, SslMode};
use super::SourceError;

/// The rustls client configuration `info.sslmode` asks for.
pub fn client_config(info: &ConnInfo) -> Result<ClientConfig, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::TlsConfig(e.to_string()))?;
    let config = match (info.sslmode, &info.sslrootcert) {
        (SslMode::VerifyFull, _) => builder.with_root_certificates(root_store(info)?).with_no_client_auth(),
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { roots: Some(root_store(info)?), provider }))
            .with_no_client_auth(),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { roots: None, provider }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// The name the server's certificate must carry: the host (an IP address when it is one).
pub fn server_name(info: &ConnInfo) -> Result<ServerName<'static>, SourceError> {
    match &info.host {
        Host::Tcp(host) => match host.parse::<IpAddr>() {
            Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
            Err(_) => ServerName::try_from(host.clone())
                .map_err(|_| SourceError::TlsConfig(format!("{host:?} is not a valid host name for TLS"))),
        },
        Host::Unix(_) => Err(SourceError::TlsConfig("TLS is not used over Unix sockets".into())),
    }
}

/// The CA certificates to verify against: `sslrootcert`, or the system's.
fn root_store(info: &ConnInfo) -> Result<RootCertStore, SourceError> {
    let mut roots = RootCertStore::empty();
    match info.sslrootcert.as_deref().filter(|path| *path != Path::new("system")) {
        Some(path) => {
            let cert_error = |source| SourceError::RootCert { path: path.to_owned(), source };
            let pem = std::fs::read(path).map_err(cert_error)?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(cert_error)?;
                roots.add(cert).map_err(|e| cert_error(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            }
            if roots.is_empty() {
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
    Ok(roots)
}

/// Verifies the certificate chain against `roots` but never the host name (sslmode verify-ca), or
/// nothing when there are no roots (allow, prefer, require: encryption without authentication).
#[derive(Debug)]
struct Verifier {
    roots: Option<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            let algorithms = self.provider.signature_verification_algorithms.all;
            verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, algorithms)?;
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
