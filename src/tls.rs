//! TLS on both sides, with rustls and its ring provider (one provider, chosen explicitly,
//! so no process-wide default is needed).
//!
//! - Towards clients: `client_tls` with a certificate chain and key; ALPN `postgresql`
//!   for PostgreSQL 17's direct TLS. The acceptor is rebuilt on reload, so certificate
//!   files are re-read.
//! - Towards servers: per cluster, libpq's `sslmode` meanings. `prefer` and `require`
//!   encrypt without verifying the certificate (as libpq does); `verify-ca` checks the
//!   chain against `tls_ca_file`; `verify-full` also checks that it names the host.
//!
//! Builds rustls configurations from the configuration only; sockets are `net`'s business.

use crate::config::{self, ClientTlsMode, Config, ServerTlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN protocol name PostgreSQL clients use for direct TLS.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {cause}")]
    Pem {
        path: PathBuf,
        cause: rustls_pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |cause| TlsError::Pem {
        path: path.to_owned(),
        cause,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certificates)
}

/// Loads every certificate, key and CA file the configuration names, as startup and
/// `--check-config` do, so a missing or broken file is reported before anything runs.
pub fn check(config: &Config) -> Result<(), TlsError> {
    ClientTls::load(config)?;
    for cluster in config.clusters.values() {
        ServerTls::load(cluster)?;
    }
    Ok(())
}

/// What `client_tls` asks for, with the acceptor when it is not disabled.
pub struct ClientTls {
    pub mode: ClientTlsMode,
    pub acceptor: Option<TlsAcceptor>,
}

impl ClientTls {
    /// Loads the certificate and key named by the configuration.
    pub fn load(config: &Config) -> Result<Self, TlsError> {
        let (ClientTlsMode::Allow | ClientTlsMode::Require, Some(cert), Some(key)) = (
            config.client_tls,
            &config.client_tls_cert_file,
            &config.client_tls_key_file,
        ) else {
            return Ok(ClientTls {
                mode: ClientTlsMode::Disable,
                acceptor: None,
            });
        };
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|cause| TlsError::Pem {
            path: key.clone(),
            cause,
        })?;
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        server_config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ClientTls {
            mode: config.client_tls,
            acceptor: Some(TlsAcceptor::from(Arc::new(server_config))),
        })
    }
}

/// How sluice secures the connections to one cluster.
pub struct ServerTls {
    pub mode: ServerTlsMode,
    pub connector: TlsConnector,
    /// The name sent as SNI and, under verify-full, checked against the certificate.
    pub name: ServerName<'static>,
}

impl ServerTls {
    /// `None` when the cluster's `tls` is `disable`.
    pub fn load(cluster: &config::Cluster) -> Result<Option<Arc<Self>>, TlsError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match cluster.tls {
            ServerTlsMode::Disable => return Ok(None),
            ServerTlsMode::Prefer | ServerTlsMode::Require => {
                Arc::new(AnyCertificate(provider.clone()))
            }
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull => {
                let path = cluster
                    .tls_ca_file
                    .as_deref()
                    .expect("validated: verify modes have a tls_ca_file");
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(certificates(path)?);
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| Error::General(e.to_string()))?;
                if cluster.tls == ServerTlsMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let name = ServerName::try_from(cluster.host.clone())
            .map_err(|e| Error::General(format!("invalid host name for TLS: {e}")))?;
        Ok(Some(Arc::new(ServerTls {
            mode: cluster.tls,
            connector: TlsConnector::from(Arc::new(client_config)),
            name,
        })))
    }
}

/// `prefer`/`require`: encryption without authentication, as libpq's sslmode=require.
/// Handshake signatures are still checked, so the session keys belong to the peer.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
