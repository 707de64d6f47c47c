//! The admin console: a virtual database `pgsidecar` that users listed in
//! `[admin] users` open with psql to see pools, clients, servers, nodes and
//! query statistics, and to RELOAD, PAUSE and RESUME. PgBouncer's column
//! names are used where PgBouncer has the command. It answers simple
//! queries only and never touches a server.

mod commands;
mod table;

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::protocol::backend;
use crate::protocol::frame::{self, fe};
use crate::protocol::{SqlState, WireError};
use crate::proxy::Shared;

/// The console's database name.
pub const DATABASE: &str = "pgsidecar";

/// Largest console command accepted.
const MAX_COMMAND: usize = 64 * 1024;

/// The ParameterStatus values a console client is shown at login.
pub fn parameter_status(out: &mut BytesMut) {
    for (name, value) in [
        (
            "server_version",
            concat!(env!("CARGO_PKG_VERSION"), " (pgsidecar)"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        backend::parameter_status(out, name, value);
    }
}

/// Serves a logged-in console client until it leaves.
pub async fn run<S>(mut stream: S, mut buf: BytesMut, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut skip_to_sync = false;
    loop {
        let (tag, body) = match read_frame(&mut stream, &mut buf).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                let _ = crate::tls::write_flush(&mut stream, &e.to_bytes()).await;
                return;
            }
        };
        let mut out = BytesMut::new();
        match tag {
            fe::TERMINATE => return,
            fe::QUERY => {
                let sql =
                    std::str::from_utf8(body.strip_suffix(b"\0").unwrap_or(&body)).unwrap_or("");
                match commands::execute(sql, &shared).await {
                    Ok(reply) => reply.encode(&mut out),
                    Err(e) => e.encode(&mut out),
                }
                backend::ready_for_query(&mut out, b'I');
            }
            fe::SYNC => {
                skip_to_sync = false;
                backend::ready_for_query(&mut out, b'I');
            }
            _ if skip_to_sync => {}
            _ => {
                skip_to_sync = true;
                WireError::error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "the pgsidecar console answers simple queries only",
                )
                .with_hint("use psql, or a driver's simple-query mode")
                .encode(&mut out);
            }
        }
        if !out.is_empty() && crate::tls::write_flush(&mut stream, &out).await.is_err() {
            return;
        }
    }
}

/// Reads one message; `None` when the client left.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<(u8, BytesMut)>, WireError> {
    loop {
        if let Some((tag, total)) = frame::header(buf)? {
            if total > MAX_COMMAND {
                return Err(crate::protocol::ProtocolError::TooLarge {
                    len: total,
                    max: MAX_COMMAND,
                    limit: "the console's limit on commands",
                }
                .into());
            }
            if buf.len() >= total {
                let mut f = buf.split_to(total);
                f.advance(frame::HEADER_LEN);
                return Ok(Some((tag, f)));
            }
        }
        buf.reserve(1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}
