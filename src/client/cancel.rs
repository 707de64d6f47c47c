//! Query cancellation towards servers: where a client's cancel must go and
//! sending the CancelRequest there. (Matching a client's CancelRequest to
//! its server is the registry's job.)

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::protocol::startup::encode_cancel;

/// Where a cancel for a client must go right now.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub server: SocketAddr,
    pub pid: i32,
    pub secret: Arc<[u8]>,
}

/// Sends a CancelRequest to a server.
pub async fn send_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect(target.server).await?;
    s.write_all(&encode_cancel(target.pid, &target.secret))
        .await?;
    s.shutdown().await
}
