//! The server-facing side: asking Postgres for TLS (SSLRequest) on a fresh
//! connection and wrapping it, as `[cluster] server_tls` says — "prefer"
//! falls back to plaintext when the server declines, "require" insists,
//! "verify-full" also checks the certificate against
//! `server_tls_ca_file` and the node's host name.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::stream::ServerStream;
use super::verify::{AnyCert, ChainOnly};
use super::{TlsError, load_certs, provider};
use crate::config::{ClusterConfig, ServerTlsMode};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How the proxy encrypts its connections to Postgres.
#[derive(Clone)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls({})", self.mode)
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls {
            mode: ServerTlsMode::Disable,
            connector: None,
        }
    }
}

/// Why a server connection could not be encrypted.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    #[error("the server does not accept SSL connections (server_tls = \"{0}\")")]
    Declined(ServerTlsMode),
    #[error("unexpected answer {0:#04x} to SSLRequest")]
    Unexpected(u8),
    #[error("host name `{0}` cannot be checked against a certificate")]
    BadName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Builds the connector for `[cluster] server_tls`; reads the CA file now.
pub fn build_server_tls(cluster: &ClusterConfig) -> Result<ServerTls, TlsError> {
    let mode = cluster.server_tls;
    if mode == ServerTlsMode::Disable {
        return Ok(ServerTls::default());
    }
    let rustls_error = |source| TlsError::Rustls {
        key: "cluster.server_tls",
        source,
    };
    let roots = match &cluster.server_tls_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs("cluster.server_tls_ca_file", path)? {
                roots.add(cert).map_err(|source| TlsError::Rustls {
                    key: "cluster.server_tls_ca_file",
                    source,
                })?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match (mode, roots) {
        // libpq's "prefer" and "require" without a root certificate do not
        // verify: they protect against eavesdropping, not impersonation.
        (ServerTlsMode::Prefer, _) | (ServerTlsMode::Require, None) => {
            Arc::new(AnyCert::new(provider()))
        }
        (ServerTlsMode::Require, Some(roots)) => Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Rustls {
                    key: "cluster.server_tls_ca_file",
                    source: rustls::Error::General(e.to_string()),
                })?,
        )),
        (_, roots) => {
            let roots = roots.ok_or(TlsError::Empty {
                key: "cluster.server_tls_ca_file",
                what: "CA certificate (verify-full needs one)",
                path: Default::default(),
            })?;
            WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Rustls {
                    key: "cluster.server_tls_ca_file",
                    source: rustls::Error::General(e.to_string()),
                })?
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(ServerTls {
        mode,
        connector: Some(TlsConnector::from(Arc::new(config))),
    })
}

impl ServerTls {
    /// Asks the server at the other end of `tcp` for TLS and wraps the
    /// connection, or keeps it plain if allowed. `host` is the node's
    /// configured host name, checked by "verify-full".
    pub async fn negotiate(
        &self,
        mut tcp: TcpStream,
        host: &str,
    ) -> Result<ServerStream, NegotiateError> {
        let Some(connector) = &self.connector else {
            return Ok(ServerStream::Plain(tcp));
        };
        tcp.write_all(&SSL_REQUEST).await?;
        // Exactly one byte: anything the server sent after it must be read
        // by the TLS layer (and fail there), never taken as plaintext.
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {}
            b'N' if self.mode == ServerTlsMode::Prefer => return Ok(ServerStream::Plain(tcp)),
            b'N' => return Err(NegotiateError::Declined(self.mode)),
            other => return Err(NegotiateError::Unexpected(other)),
        }
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| NegotiateError::BadName(host.to_string()))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(NegotiateError::Handshake)?;
        Ok(ServerStream::Tls(Box::new(tls)))
    }
}
