//! The client-facing side: the acceptor for clients that ask for TLS, and
//! whether plaintext clients are still let in (`[proxy] tls_mode`).

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::{TlsError, load_certs, provider};
use crate::config::{ClientTlsMode, ProxyConfig};

/// How clients may connect.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    /// Present unless the mode is "disable".
    pub acceptor: Option<TlsAcceptor>,
}

impl ClientTls {
    /// No TLS: SSLRequest is answered 'N'.
    pub fn disabled() -> Self {
        ClientTls {
            mode: ClientTlsMode::Disable,
            acceptor: None,
        }
    }
}

/// Loads `[proxy] tls_cert`/`tls_key` for the configured mode. Files are
/// read now, so a reload picks up a renewed certificate.
pub fn build_client_tls(proxy: &ProxyConfig) -> Result<ClientTls, TlsError> {
    let mode = proxy.tls_mode();
    let (Some(cert), Some(key), true) = (
        &proxy.tls_cert,
        &proxy.tls_key,
        mode != ClientTlsMode::Disable,
    ) else {
        return Ok(ClientTls::disabled());
    };
    use rustls_pki_types::pem::PemObject;
    let certs = load_certs("proxy.tls_cert", cert)?;
    let private =
        rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
            key: "proxy.tls_key",
            what: "a private key",
            path: key.clone(),
            reason: e.to_string(),
        })?;
    let rustls_error = |source| TlsError::Rustls {
        key: "proxy.tls_cert",
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(rustls_error)?;
    // libpq 17 offers ALPN "postgresql"; clients that offer none still work.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(ClientTls {
        mode,
        acceptor: Some(TlsAcceptor::from(Arc::new(config))),
    })
}
