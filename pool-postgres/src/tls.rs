//! TLS, done by the manager rather than by tokio-postgres, so that the protocol tracker
//! ([`Tracked`](crate::wire)) wraps the stream above TLS and reads plaintext: the manager
//! sends the 8-byte `SSLRequest` on the runtime's socket, reads the server's `S` or `N`, runs
//! the rustls handshake over the socket, and hands the TLS stream (tracked) to tokio-postgres
//! as if it were a plain socket (`NoTls`, `sslmode=disable`).
//!
//! Cancel requests go in plaintext to the host the connection is on (tokio-postgres's cancel
//! token carries `sslmode=disable`): a server with `ssl = on` accepts them unless its
//! `pg_hba.conf` allows only `hostssl`.

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{PgError, TlsFailure};
use crate::runtime::Stream;

/// How a connection uses TLS: libpq's `sslmode`.
///
/// [`PgManager::from_url`](crate::PgManager::from_url) reads it from the connection string
/// (`sslmode=verify-full`, as libpq; tokio-postgres's own parser knows only `disable`,
/// `prefer` and `require`); [`PgManager::new`](crate::PgManager::new) takes the config's
/// `disable`, `prefer` or `require`; [`PgManager::ssl_mode`](crate::PgManager::ssl_mode)
/// sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext.
    Disable,
    /// TLS if the server offers it, else plaintext; the certificate is not verified. The
    /// default, as libpq's.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not verified unless a root certificate is
    /// given ([`PgManager::ssl_root_cert`](crate::PgManager::ssl_root_cert)), which makes it
    /// `VerifyCa`, as in libpq.
    Require,
    /// TLS, and the server's certificate must chain to a trusted root (its name is not
    /// checked).
    VerifyCa,
    /// TLS, the certificate must chain to a trusted root and name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Reads a `sslmode` value as libpq writes it (`allow` is taken as `prefer`).
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub(crate) fn from_config(mode: tokio_postgres::config::SslMode) -> Self {
        match mode {
            tokio_postgres::config::SslMode::Disable => Self::Disable,
            tokio_postgres::config::SslMode::Require => Self::Require,
            _ => Self::Prefer,
        }
    }
}

/// What a connect needs for TLS: the mode and where trusted roots come from.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    /// A PEM file of trusted root certificates (`sslrootcert`); without it, the Mozilla roots
    /// of `webpki-roots`.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) root_cert: Option<PathBuf>,
}

/// The `SSLRequest` message: its length (8) and the request code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Sets up TLS on `socket` to `target` as the settings ask, over TCP; returns the stream to
/// speak the protocol over (TLS or, under `prefer` with a server that said no, plaintext).
pub(crate) async fn negotiate(
    mut socket: Stream,
    tls: &Tls,
    server_name: &str,
    target: &str,
) -> Result<Stream, PgError> {
    if tls.settings.mode == SslMode::Disable {
        return Ok(socket);
    }
    let io = |source| PgError::Connect {
        target: target.to_owned(),
        source,
    };
    socket.write_all(&SSL_REQUEST).await.map_err(io)?;
    socket.flush().await.map_err(io)?;
    let answer = socket.read_u8().await.map_err(io)?;
    match answer {
        b'S' => handshake(socket, tls, server_name, target).await,
        b'N' if tls.settings.mode == SslMode::Prefer => Ok(socket),
        b'N' => Err(PgError::Tls {
            target: target.to_owned(),
            failure: TlsFailure::Unsupported,
        }),
        other => Err(PgError::Tls {
            target: target.to_owned(),
            failure: TlsFailure::Negotiation(other),
        }),
    }
}

/// The manager's TLS: the settings and, once built, the rustls configuration.
#[derive(Debug, Default)]
pub(crate) struct Tls {
    pub(crate) settings: TlsSettings,
    #[cfg(feature = "rustls")]
    client: std::sync::OnceLock<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl Tls {
    pub(crate) fn new(settings: TlsSettings) -> Self {
        Self {
            settings,
            #[cfg(feature = "rustls")]
            client: std::sync::OnceLock::new(),
        }
    }
}

#[cfg(not(feature = "rustls"))]
async fn handshake(_: Stream, _: &Tls, _: &str, _: &str) -> Result<Stream, PgError> {
    Err(PgError::Config(
        "TLS needs pool-postgres's `rustls` feature (or sslmode=disable)".into(),
    ))
}

#[cfg(feature = "rustls")]
async fn handshake(
    socket: Stream,
    tls: &Tls,
    server_name: &str,
    target: &str,
) -> Result<Stream, PgError> {
    use tokio_rustls::rustls::pki_types::ServerName;

    let config = match tls.client.get() {
        Some(config) => std::sync::Arc::clone(config),
        None => {
            let config = std::sync::Arc::new(verify::client_config(&tls.settings)?);
            // Two connects may build it at once; either result is the same.
            let _ = tls.client.set(std::sync::Arc::clone(&config));
            config
        }
    };
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
        PgError::Config(format!(
            "{server_name:?} is not a host name TLS can verify: {e}"
        ))
    })?;
    match tokio_rustls::TlsConnector::from(config)
        .connect(name, socket)
        .await
    {
        Ok(stream) => Ok(Stream::new(stream)),
        Err(e) => {
            use tokio_rustls::rustls::Error as Rustls;
            let failure = match e.get_ref().and_then(|inner| inner.downcast_ref::<Rustls>()) {
                Some(Rustls::InvalidCertificate(why)) => {
                    TlsFailure::Verification(format!("invalid peer certificate: {why}"))
                }
                Some(other) => TlsFailure::Handshake(other.to_string()),
                None => TlsFailure::Handshake(e.to_string()),
            };
            Err(PgError::Tls {
                target: target.to_owned(),
                failure,
            })
        }
    }
}

#[cfg(feature = "rustls")]
mod verify {
    //! The three ways of checking the server's certificate: not at all (`prefer`,
    //! `require`), its chain only (`verify-ca`), its chain and name (`verify-full`).

    use std::sync::Arc;

    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::client::WebPkiServerVerifier;
    use tokio_rustls::rustls::crypto::{self, CryptoProvider};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{
        CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore,
        SignatureScheme,
    };

    use super::{SslMode, TlsSettings};
    use crate::error::PgError;

    pub(super) fn client_config(settings: &TlsSettings) -> Result<ClientConfig, PgError> {
        let provider = Arc::new(crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Config(format!("TLS: {e}")))?;
        let mode = match (settings.mode, &settings.root_cert) {
            // libpq: a root certificate given under `require` means `verify-ca`.
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(roots(settings)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| PgError::Config(format!("TLS roots: {e}")))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
            _ => Arc::new(Unverified(provider)),
        };
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    fn roots(settings: &TlsSettings) -> Result<RootCertStore, PgError> {
        let Some(path) = &settings.root_cert else {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        };
        let unreadable = |e: &dyn std::fmt::Display| {
            PgError::Config(format!("sslrootcert {}: {e}", path.display()))
        };
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
            let cert = cert.map_err(|e| unreadable(&e))?;
            store.add(cert).map_err(|e| unreadable(&e))?;
        }
        if store.is_empty() {
            return Err(unreadable(&"no certificate in the file"));
        }
        Ok(store)
    }

    /// `verify-ca`: the chain must verify; a name mismatch is accepted.
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
            match self.0.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                // Name checks come after the chain is verified.
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
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

    /// `prefer` and `require`: encryption without authenticating the server, as libpq. The
    /// handshake's signatures are still checked against the certificate presented.
    #[derive(Debug)]
    struct Unverified(Arc<CryptoProvider>);

    impl ServerCertVerifier for Unverified {
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
            crypto::verify_tls12_signature(
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
            crypto::verify_tls13_signature(
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
}
