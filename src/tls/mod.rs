//! TLS with rustls (ring provider): the client-facing acceptor built from
//! `[proxy] tls_cert`/`tls_key`, the connector the proxy uses towards
//! Postgres (`[cluster] server_tls`), and the stream types that let the
//! session and relay code run over plain TCP or TLS alike.
//!
//! The SSLRequest exchange itself is done by the proxy (see
//! `client::handshake` and `server::login`), never by a library, so that
//! bytes buffered before the handshake can be refused (CVE-2021-23214).

mod accept;
mod connect;
mod stream;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use accept::{ClientTls, build_client_tls};
pub use connect::{NegotiateError, ServerTls, build_server_tls};
pub use stream::{ClientStream, ClientTransport, ServerStream, WaitReadable, write_flush};

/// A certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path} (`{key}`): {reason}")]
    Pem {
        key: &'static str,
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} (`{key}`) holds no {what}")]
    Empty {
        key: &'static str,
        what: &'static str,
        path: PathBuf,
    },
    #[error("TLS setup with `{key}` failed: {source}")]
    Rustls {
        key: &'static str,
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// The config key whose file or setting failed.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Pem { key, .. }
            | TlsError::Empty { key, .. }
            | TlsError::Rustls { key, .. } => key,
        }
    }

    /// What went wrong, without the key (for an error that names it).
    pub fn problem(&self) -> String {
        match self {
            TlsError::Pem {
                what, path, reason, ..
            } => format!("cannot read {what} from {}: {reason}", path.display()),
            TlsError::Empty { what, path, .. } => format!("{} holds no {what}", path.display()),
            TlsError::Rustls { source, .. } => format!("TLS setup failed: {source}"),
        }
    }
}

/// The crypto provider every TLS config uses: ring, to keep builds light.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file.
fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let pem_error = |e: rustls_pki_types::pem::Error| TlsError::Pem {
        key,
        what: "certificates",
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            what: "PEM certificate",
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}
