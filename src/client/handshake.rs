//! The opening of a client connection, before any authentication:
//! SSLRequest/GSSENCRequest answered, CancelRequest recognised, and the
//! StartupMessage read, all under the startup size limit.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::startup::{self, StartupMessage, StartupPacket};
use crate::protocol::{SqlState, WireError};

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

/// Reads packets until a StartupMessage or CancelRequest. Encryption
/// requests are declined with 'N' (TLS is not configured); a client that
/// sent anything after the request before reading the answer is refused,
/// since those bytes would otherwise be treated as if they came after the
/// negotiation (the CVE-2021-23214 class of bug).
pub async fn negotiate<S>(stream: &mut S, buf: &mut BytesMut) -> Result<Opening, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let (packet, len) = loop {
            if let Some(parsed) = startup::parse(buf)? {
                break parsed;
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
                if stream.write_all(b"N").await.is_err() {
                    return Ok(Opening::Closed);
                }
            }
            StartupPacket::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            StartupPacket::Startup(s) => return Ok(Opening::Startup(s)),
        }
    }
}
