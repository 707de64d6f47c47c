//! Query cancellation towards servers: where a cancel for a connection's
//! query must go and sending the CancelRequest there. Here, beside the
//! connection that knows its target, so that the server layer does not
//! reach up into the client's (matching a client's CancelRequest to its
//! server is the client registry's job).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::startup::encode_cancel;

/// How long a server may take to close the cancel connection (Postgres
/// does as soon as it has signalled the backend).
const CANCEL_DONE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a cancel for a client must go right now.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub server: SocketAddr,
    pub pid: i32,
    pub secret: Arc<[u8]>,
}

/// Sends a CancelRequest to a server and waits until the server has dealt
/// with it (closed the connection). Why wait: libpq's PQcancel returns only
/// then, so a client knows its cancel is spent once it returns; a signal
/// still on its way when the proxy answers the client would cancel whatever
/// that server runs next, possibly another client's query.
pub async fn send_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect(target.server).await?;
    s.write_all(&encode_cancel(target.pid, &target.secret))
        .await?;
    s.shutdown().await?;
    let mut sink = [0u8; 16];
    tokio::time::timeout(CANCEL_DONE_TIMEOUT, async {
        while s.read(&mut sink).await? > 0 {}
        Ok(())
    })
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the server did not close the cancel connection",
        ))
    })
}
