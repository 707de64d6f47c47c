//! One client's life after login: wait for a request, take a server from the
//! pool, relay until the server can be released (transaction end in
//! transaction mode, disconnect in session mode), and leave the server clean
//! when the client goes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cancel::{CancelHandle, CancelTarget};
use super::expect::Expectations;
use super::flow::{SessionFlow, check_frontend_tag};
use super::idle::{self, Idle};
use super::prepared::{ClientStatements, StatementRegistry};
use super::relay::{self, RelayEnd, ServerIo};
use crate::config::PoolMode;
use crate::protocol::backend;
use crate::protocol::frame::{self, fe};
use crate::protocol::{ProtocolError, SqlState, WireError};
use crate::server::{Lease, ServerPool};

/// Time allowed for the proxy's own clean-up statements (ROLLBACK,
/// DISCARD ALL) before the server connection is closed instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a session needs besides its socket.
pub struct SessionCtx {
    pub pool: Arc<ServerPool>,
    pub mode: PoolMode,
    pub max_message: usize,
    pub cancel: CancelHandle,
    pub registry: Arc<StatementRegistry>,
}

/// A server connection held by the session, with what it still owes.
struct Held {
    lease: Lease,
    expect: Expectations,
    /// The client's unnamed statement exists on this server.
    unnamed_here: bool,
}

/// Per-client state that outlives any one server.
#[derive(Default)]
struct ClientState {
    statements: ClientStatements,
}

/// Runs a logged-in client until it leaves.
pub async fn run<S>(mut stream: S, mut cbuf: BytesMut, ctx: SessionCtx)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tracing::Instrument;
    let mut held: Option<Held> = None;
    let mut client = ClientState::default();
    let span = tracing::debug_span!("client", pid = ctx.cancel.slot.pid);
    let result = serve(&mut stream, &mut cbuf, &ctx, &mut client, &mut held)
        .instrument(span)
        .await;
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
    client: &mut ClientState,
    held: &mut Option<Held>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Replies made while idle, written once no further request is buffered.
    let mut out = BytesMut::new();
    loop {
        if held.is_none() {
            // Idle: nothing is held until a request needs a server.
            let Some(tag) = next_frame(stream, cbuf, ctx.max_message).await? else {
                return Ok(());
            };
            check_frontend_tag(tag)?;
            let (_, total) = frame::header(cbuf)?.expect("complete frame");
            match idle::answer(
                tag,
                &cbuf[..total],
                &mut client.statements,
                &ctx.registry,
                &ctx.pool,
                &mut out,
            )? {
                Idle::Terminate => return Ok(()),
                Idle::Answered => {
                    cbuf.advance(total);
                    if !matches!(frame::complete(cbuf), Ok(Some(_))) {
                        write(stream, &out).await?;
                        out.clear();
                    }
                    continue;
                }
                Idle::NeedServer => {
                    write(stream, &out).await?;
                    out.clear();
                }
            }
            match ctx.pool.checkout().await {
                Ok(lease) => {
                    *held = Some(Held {
                        lease,
                        expect: Expectations::default(),
                        unnamed_here: false,
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
        ctx.cancel.slot.set(Some(CancelTarget {
            server: h.lease.peer,
            pid: h.lease.params.backend_pid,
            secret: h.lease.params.backend_secret.clone(),
        }));
        let (io, state) = h.lease.split();
        let mut flow = SessionFlow {
            expect: &mut h.expect,
            statements: &mut client.statements,
            registry: &ctx.registry,
            server: state,
            pool: &ctx.pool,
            unnamed_here: &mut h.unnamed_here,
            release_when_idle: ctx.mode == PoolMode::Transaction,
        };
        let io = ServerIo {
            stream: io.stream,
            rbuf: io.rbuf,
            wbuf: io.wbuf,
        };
        let end = relay::relay(stream, cbuf, io, &mut flow, ctx.max_message).await;
        ctx.cancel.slot.set(None);
        tracing::debug!(pid = ctx.cancel.slot.pid, ?end, status = %char::from(h.expect.status()), "relay ended");
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
    if bytes.is_empty() {
        return Ok(());
    }
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
    let Held {
        mut lease, expect, ..
    } = held;
    if !expect.is_quiet() {
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
    let script = match (expect.status(), mode) {
        (b'I', PoolMode::Transaction) => return,
        (b'I', PoolMode::Session) => "DISCARD ALL",
        (_, PoolMode::Transaction) => "ROLLBACK",
        (_, PoolMode::Session) => "ROLLBACK; DISCARD ALL",
    };
    if mode == PoolMode::Session {
        // DISCARD ALL drops every prepared statement on the server.
        lease.state.prepared.clear();
    }
    match tokio::time::timeout(CLEANUP_TIMEOUT, lease.run_internal(script)).await {
        Ok(Ok(b'I')) => {}
        _ => lease.mark_broken(),
    }
}
