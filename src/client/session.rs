//! One client's life after login: wait for a request, take a server from the
//! pool, relay until the server can be released (transaction end in
//! transaction mode, disconnect in session mode), and leave the server clean
//! when the client goes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cancel::{CancelHandle, CancelTarget};
use super::relay::{self, ClientStep, Flow, RelayEnd, ServerStep};
use super::tracker::Tracker;
use crate::config::PoolMode;
use crate::protocol::backend;
use crate::protocol::frame::{self, be, fe};
use crate::protocol::{ProtocolError, SqlState, WireError};
use crate::server::{Lease, ServerConn, ServerPool};

/// Time allowed for the proxy's own clean-up statements (ROLLBACK,
/// DISCARD ALL) before the server connection is closed instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a session needs besides its socket.
pub struct SessionCtx {
    pub pool: Arc<ServerPool>,
    pub mode: PoolMode,
    pub max_message: usize,
    pub cancel: CancelHandle,
}

/// A server connection held by the session, with its protocol position.
struct Held {
    lease: Lease,
    tracker: Tracker,
}

/// The relay's view of the session for one stretch of work on a server.
struct TxFlow<'a> {
    tracker: &'a mut Tracker,
    release_when_idle: bool,
}

impl Flow for TxFlow<'_> {
    fn client_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
    ) -> Result<ClientStep, WireError> {
        check_frontend_tag(tag)?;
        if tag == fe::TERMINATE {
            return Ok(ClientStep::Terminate);
        }
        self.tracker.sent(tag);
        to_server.extend_from_slice(frame);
        Ok(ClientStep::Continue)
    }

    fn inspects(&self, tag: u8) -> bool {
        matches!(tag, be::READY_FOR_QUERY | be::COPY_IN_RESPONSE)
    }

    fn server_frame(&mut self, tag: u8, frame: &[u8]) -> ServerStep {
        let quiet = self.tracker.received(tag, frame::ready_status(frame));
        if quiet && self.release_when_idle && self.tracker.is_reusable() {
            ServerStep::ForwardAndRelease
        } else {
            ServerStep::Forward
        }
    }
}

/// Refuses message types a client may not send after login, as Postgres
/// does, without bothering a server with them.
fn check_frontend_tag(tag: u8) -> Result<(), WireError> {
    match tag {
        fe::QUERY
        | fe::PARSE
        | fe::BIND
        | fe::DESCRIBE
        | fe::EXECUTE
        | fe::CLOSE
        | fe::SYNC
        | fe::FLUSH
        | fe::FUNCTION_CALL
        | fe::TERMINATE
        | fe::COPY_DATA
        | fe::COPY_DONE
        | fe::COPY_FAIL => Ok(()),
        other => Err(ProtocolError::Unexpected {
            tag: other,
            when: "after login",
        }
        .into()),
    }
}

/// Runs a logged-in client until it leaves.
pub async fn run<S>(mut stream: S, mut cbuf: BytesMut, ctx: SessionCtx)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut held: Option<Held> = None;
    let result = serve(&mut stream, &mut cbuf, &ctx, &mut held).await;
    if let Err(e) = result {
        let _ = stream.write_all(&e.to_bytes()).await;
    }
    ctx.cancel.slot.set(None);
    if let Some(h) = held {
        leave_server_clean(h, ctx.mode).await;
    }
}

/// The request loop. Returns `Err` with a final error for the client.
async fn serve<S>(
    stream: &mut S,
    cbuf: &mut BytesMut,
    ctx: &SessionCtx,
    held: &mut Option<Held>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if held.is_none() {
            // Idle: nothing is held until a request needs a server.
            let Some(tag) = next_frame(stream, cbuf, ctx.max_message).await? else {
                return Ok(());
            };
            check_frontend_tag(tag)?;
            match tag {
                fe::TERMINATE => return Ok(()),
                fe::SYNC | fe::FLUSH if cbuf_only_this(cbuf) => {
                    // Nothing to synchronise with: answer without a server.
                    let sync = tag == fe::SYNC;
                    cbuf.clear();
                    if sync {
                        let mut out = BytesMut::new();
                        backend::ready_for_query(&mut out, b'I');
                        write(stream, &out).await?;
                    }
                    continue;
                }
                _ => {}
            }
            match ctx.pool.checkout().await {
                Ok(lease) => {
                    *held = Some(Held {
                        lease,
                        tracker: Tracker::default(),
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "checkout failed");
                    fail_request(stream, cbuf, ctx, e.to_wire()).await?;
                    continue;
                }
            }
        }
        let Some(h) = held.as_mut() else { continue };
        let server: &mut ServerConn = &mut h.lease;
        ctx.cancel.slot.set(Some(CancelTarget {
            server: server.peer,
            pid: server.params.backend_pid,
            secret: server.params.backend_secret.clone(),
        }));
        let mut flow = TxFlow {
            tracker: &mut h.tracker,
            release_when_idle: ctx.mode == PoolMode::Transaction,
        };
        let end = relay::relay(stream, cbuf, server, &mut flow, ctx.max_message).await;
        ctx.cancel.slot.set(None);
        match end {
            RelayEnd::Released => {
                *held = None;
            }
            RelayEnd::ClientGone => return Ok(()),
            RelayEnd::ClientError(e) => return Err(e),
            RelayEnd::ServerGone(err) => {
                let h = held.take().expect("held above");
                let mut lease = h.lease;
                lease.mark_broken();
                tracing::warn!(server = %lease.addr, error = ?err, "server connection lost");
                return Err(WireError::fatal(
                    SqlState::ADMIN_SHUTDOWN,
                    format!("the server connection to {} was lost", lease.addr),
                )
                .with_detail("the current transaction, if any, was not committed"));
            }
        }
    }
}

/// True if the buffer holds exactly one complete frame.
fn cbuf_only_this(cbuf: &BytesMut) -> bool {
    matches!(frame::header(cbuf), Ok(Some((_, total))) if total == cbuf.len())
}

/// Waits until `cbuf` starts with a complete frame; returns its tag, or
/// `None` when the client closed the connection.
async fn next_frame<S>(
    stream: &mut S,
    cbuf: &mut BytesMut,
    max_message: usize,
) -> Result<Option<u8>, WireError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some((tag, total)) = frame::header(cbuf)? {
            if total > max_message {
                return Err(ProtocolError::TooLarge {
                    len: total,
                    max: max_message,
                }
                .into());
            }
            if cbuf.len() >= total {
                return Ok(Some(tag));
            }
            cbuf.reserve(total - cbuf.len());
        } else if cbuf.capacity() - cbuf.len() < 512 {
            cbuf.reserve(2048);
        }
        match stream.read_buf(cbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Answers a request that could not get a server: the error, then skip the
/// rest of the request (up to Sync for the extended protocol) and report
/// ReadyForQuery so the client can carry on.
async fn fail_request<S>(
    stream: &mut S,
    cbuf: &mut BytesMut,
    ctx: &SessionCtx,
    error: WireError,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = error.to_bytes();
    loop {
        let Some(tag) = next_frame(stream, cbuf, ctx.max_message).await? else {
            return Ok(());
        };
        let (_, total) = frame::header(cbuf)?.expect("complete frame");
        cbuf.advance(total);
        if matches!(tag, fe::QUERY | fe::SYNC | fe::FUNCTION_CALL) {
            break;
        }
        if tag == fe::TERMINATE {
            return Ok(());
        }
    }
    backend::ready_for_query(&mut out, b'I');
    write(stream, &out).await
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), WireError> {
    // A client that cannot be written to is gone; the caller's next read
    // will see it.
    let _ = stream.write_all(bytes).await;
    Ok(())
}

/// Returns a server the client is leaving: reusable as is, after a
/// ROLLBACK (client left inside a transaction) and, in session mode, after
/// DISCARD ALL; anything else closes it, so no transaction or session state
/// reaches the next client.
async fn leave_server_clean(held: Held, mode: PoolMode) {
    let Held { mut lease, tracker } = held;
    if !tracker.is_quiet() {
        // A query is still running: cancel it and close the connection.
        let target = CancelTarget {
            server: lease.peer,
            pid: lease.params.backend_pid,
            secret: lease.params.backend_secret.clone(),
        };
        tokio::spawn(async move {
            let _ = super::cancel::send_cancel(&target).await;
        });
        lease.mark_broken();
        return;
    }
    let script = match (tracker.status(), mode) {
        (b'I', PoolMode::Transaction) => return,
        (b'I', PoolMode::Session) => "DISCARD ALL",
        (_, PoolMode::Transaction) => "ROLLBACK",
        (_, PoolMode::Session) => "ROLLBACK; DISCARD ALL",
    };
    match tokio::time::timeout(CLEANUP_TIMEOUT, lease.run_internal(script)).await {
        Ok(Ok(b'I')) => {}
        _ => lease.mark_broken(),
    }
}
