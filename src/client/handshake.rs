//! The opening of a client connection, before any authentication:
//! SSLRequest answered ('S' and a TLS handshake when a certificate is
//! configured, 'N' otherwise), GSSENCRequest declined, CancelRequest
//! recognised, and the StartupMessage read, all under the startup size
//! limit. On a Unix socket TLS is never offered (see
//! [`ClientTransport::OFFERS_TLS`]).

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;

use crate::config::ClientTlsMode;
use crate::protocol::startup::{self, StartupMessage, StartupPacket};
use crate::protocol::{SqlState, WireError};
use crate::tls::{ClientTls, ClientTransport, write_flush};

/// What a new connection turned out to be.
pub enum Opening {
    Startup(StartupMessage),
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    /// The client went away before saying anything useful.
    Closed,
}

/// Reads packets until a StartupMessage or CancelRequest, upgrading
/// `stream` to TLS if the client asks and `tls` allows. A client that sent
/// anything after an encryption request before reading the answer is
/// refused: those bytes were sent in plaintext and would otherwise be
/// taken as if they came after the negotiation (the CVE-2021-23214 class
/// of bug, a man-in-the-middle's way to inject a query).
pub async fn negotiate<S: ClientTransport>(
    stream: &mut S,
    buf: &mut BytesMut,
    tls: &ClientTls,
) -> Result<Opening, WireError> {
    let acceptor = tls.acceptor.as_ref().filter(|_| S::OFFERS_TLS);
    let require = S::OFFERS_TLS && tls.mode == ClientTlsMode::Require;
    loop {
        let (packet, len) = loop {
            match early_terminate(buf) {
                Some(true) => return Ok(Opening::Closed),
                // Maybe a Terminate: wait for the rest of it.
                None => {}
                Some(false) => {
                    if let Some(parsed) = startup::parse(buf)? {
                        break parsed;
                    }
                }
            }
            buf.reserve(512);
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return Ok(Opening::Closed),
                Ok(_) => {}
            }
        };
        buf.advance(len);
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                if !buf.is_empty() {
                    return Err(WireError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        "received unencrypted data after an SSL/GSS encryption request",
                    )
                    .with_detail(
                        "a client must wait for the server's answer before sending more",
                    ));
                }
                if stream.is_tls() {
                    return Err(WireError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        "encryption requested again inside TLS",
                    ));
                }
                let acceptor = match (&packet, acceptor) {
                    (StartupPacket::SslRequest, Some(acceptor)) => acceptor,
                    _ => {
                        if write_flush(stream, b"N").await.is_err() {
                            return Ok(Opening::Closed);
                        }
                        continue;
                    }
                };
                if write_flush(stream, b"S").await.is_err() {
                    return Ok(Opening::Closed);
                }
                if let Err(error) = stream.upgrade(acceptor).await {
                    tracing::info!(%error, "client TLS handshake failed");
                    return Ok(Opening::Closed);
                }
            }
            StartupPacket::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            StartupPacket::Startup(_) if require && !stream.is_tls() => {
                return Err(WireError::fatal(
                    SqlState::INVALID_AUTHORIZATION,
                    "pgsidecar requires SSL",
                )
                .with_hint("connect with sslmode=require (proxy.tls_mode = \"require\")"));
            }
            StartupPacket::Startup(s) => return Ok(Opening::Startup(s)),
        }
    }
}

/// A Terminate message where a startup packet belongs: a client closing
/// before it logged in (node-postgres's `connect(); end()` in one tick).
/// Postgres closes such a connection without a word, and so does the
/// proxy. `None` while the buffer may still turn out to be one.
fn early_terminate(buf: &[u8]) -> Option<bool> {
    const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];
    let n = buf.len().min(TERMINATE.len());
    if n == 0 || buf[..n] != TERMINATE[..n] {
        return Some(false);
    }
    (n == TERMINATE.len()).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::early_terminate;

    #[test]
    fn a_terminate_is_told_from_a_startup_packet() {
        assert_eq!(early_terminate(b"X\0\0\0\x04"), Some(true));
        assert_eq!(early_terminate(b"X\0\0"), None);
        assert_eq!(early_terminate(b""), Some(false));
        assert_eq!(early_terminate(b"\0\0\0\x08"), Some(false));
        assert_eq!(early_terminate(b"X\0\0\0\x05"), Some(false));
    }
}
