//! Moves bytes between a client and the server it holds, both directions at
//! once, inspecting only the frames the session asks about. Server bytes
//! are written to the client straight from the server's read buffer; frames
//! the session drops are skipped in place, so a result set is never copied.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use super::buffer_budget::MessageLimits;
use super::limits::{Fired, RelayTimers};
use crate::protocol::frame;
use crate::protocol::{ProtocolError, WireError};

/// Stop reading a side once this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// Server read buffers are topped up to at least this much free space
/// (a server buffer is shared by the many clients that use it in turn).
const SERVER_CHUNK: usize = 16 * 1024;
/// Client read buffers: smaller, since every connected client has one.
const CLIENT_CHUNK: usize = 4 * 1024;
/// A client buffer grows (to CLIENT_CHUNK more) only once it has less free
/// space than this: the session's small between-requests buffer takes a
/// typical request and its follow-ups as it is, and a client streaming
/// more (COPY) fills it at once and then gets the larger one. Growing it on
/// every request cost a reallocation per transaction.
const CLIENT_LOW: usize = 128;
/// Largest server frame the proxy will hold whole to inspect it.
const MAX_INSPECTED: usize = 16 * 1024 * 1024;

/// What the session decides about a client frame.
pub enum ClientStep {
    Continue,
    /// The client sent Terminate.
    Terminate,
    /// Leave this frame (and what follows) in the client buffer until the
    /// server is released: it must be routed on its own.
    Hold,
}

/// What the session decides about an inspected server frame.
pub enum ServerStep {
    Forward,
    /// Swallow it (a reply to a request the proxy injected itself).
    Drop,
    /// Forward it (or drop it, if `false`), then end the relay: the server
    /// can be released.
    Release(bool),
}

/// Bytes the proxy itself sends the client, in order with server output.
#[derive(Default)]
pub struct Outbox(Vec<Own>);

/// Bytes the proxy will have once something has happened (a fleet
/// announcement committed, a WAL position sampled): nothing after them
/// reaches the client before they do.
pub type Later = std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send>>;

enum Own {
    Now(Bytes),
    Later(Later),
}

impl Outbox {
    pub fn push(&mut self, bytes: Bytes) {
        self.0.push(Own::Now(bytes));
    }

    /// Bytes that come when `later` resolves; what follows waits for them.
    pub fn push_later(&mut self, later: Later) {
        self.0.push(Own::Later(later));
    }

    /// What is queued now, in order (a `Later` shows as `None`).
    #[cfg(test)]
    pub fn drain(&mut self) -> Vec<Option<Bytes>> {
        self.0
            .drain(..)
            .map(|own| match own {
                Own::Now(b) => Some(b),
                Own::Later(_) => None,
            })
            .collect()
    }
}

/// The session's part of the relay.
pub trait Flow {
    /// A complete client frame: append what the server must receive to
    /// `to_server`, and any reply the proxy makes itself to `to_client`.
    fn client_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut Outbox,
    ) -> Result<ClientStep, WireError>;
    /// Whether `server_frame` wants to see complete frames with this tag.
    fn inspects(&self, tag: u8) -> bool;
    /// A complete server frame with an inspected tag; `then` receives bytes
    /// to send the client right after it, `to_server` messages the flow
    /// sends the server in answer (a retry).
    fn server_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        to_server: &mut BytesMut,
        then: &mut Outbox,
    ) -> ServerStep;
    /// The transaction status when the server owes nothing, else `None`.
    fn quiet_status(&self) -> Option<super::tx_status::TxStatus>;
    /// `query_timeout` passed and a cancel was sent: the server's
    /// "canceling statement" error should say why.
    fn query_timed_out(&mut self, limit: std::time::Duration);
}

/// The server connection's I/O parts the relay drives.
pub use crate::server::ServerIoParts as ServerIo;

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The session's release point was reached and everything before it was
    /// delivered to the client.
    Released,
    /// The client closed the connection or sent Terminate.
    ClientGone,
    /// The client broke the protocol; the error says how.
    ClientError(WireError),
    /// The server connection closed or failed; its last bytes (a FATAL
    /// error, usually) were delivered to the client.
    ServerGone(Option<std::io::Error>),
    /// The server sent the client a FATAL error (it was terminated:
    /// pg_terminate_backend, idle_in_transaction_session_timeout) and
    /// closed: the client has its one error already.
    ServerEnded,
    /// The client stayed idle past a limit; the error says which.
    Idle(WireError),
    /// The server answered neither a query nor its cancel in time.
    QueryUnanswered(std::time::Duration),
    /// The server connection failed before any of its answer (or anything
    /// else) reached the client: a fresh connection can be given the same
    /// request. Holds the client bytes the relay consumed.
    Unanswered(BytesMut),
}

/// Client bytes kept for a retry are at most this much.
const MAX_REPLAY: usize = 1024 * 1024;

enum Chunk {
    /// The next n bytes of the server buffer go to the client.
    Forward(usize),
    /// The next n bytes of the server buffer are dropped.
    Skip(usize),
    /// Bytes made by the proxy.
    Own(Bytes),
    /// Bytes made by the proxy once the future resolves.
    Later(Later),
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Chunk::Forward(n) => write!(f, "Forward({n})"),
            Chunk::Skip(n) => write!(f, "Skip({n})"),
            Chunk::Own(b) => write!(f, "Own({} bytes)", b.len()),
            Chunk::Later(_) => write!(f, "Later"),
        }
    }
}

/// s2c bookkeeping: which scanned server bytes go where.
#[derive(Default)]
struct ServerSide {
    chunks: VecDeque<Chunk>,
    /// Bytes of the server buffer covered by `chunks`.
    scanned: usize,
    /// Bytes still to come of a frame being streamed through.
    partial: usize,
    release: bool,
    /// Bytes were written to the client (server) that may still sit in a
    /// TLS buffer until flushed.
    client_unflushed: bool,
    server_unflushed: bool,
    /// The flow holds client frames back until the server is released.
    client_paused: bool,
    /// Client bytes consumed, kept while `replaying`.
    replay: BytesMut,
    /// Nothing has reached the client yet and the request may still be
    /// retried elsewhere.
    replaying: bool,
    /// The server's first frame was a FATAL error: it was dying when the
    /// request reached it.
    abandoned: bool,
    /// A FATAL error from the server went to the client.
    told_fatal: bool,
    eof: Option<Option<std::io::Error>>,
}

impl ServerSide {
    fn push(&mut self, chunk: Chunk) {
        match (self.chunks.back_mut(), chunk) {
            (Some(Chunk::Forward(n)), Chunk::Forward(m)) => *n += m,
            (_, c) => self.chunks.push_back(c),
        }
    }

    fn add(&mut self, chunk: Chunk) {
        if let Chunk::Forward(n) | Chunk::Skip(n) = chunk {
            self.scanned += n;
        }
        self.push(chunk);
    }

    fn add_own(&mut self, outbox: &mut Outbox) {
        for own in outbox.0.drain(..) {
            self.push(match own {
                Own::Now(b) => Chunk::Own(b),
                Own::Later(later) => Chunk::Later(later),
            });
        }
    }

    /// Scans newly read server bytes into chunks.
    fn scan<F: Flow>(
        &mut self,
        buf: &[u8],
        wbuf: &mut BytesMut,
        flow: &mut F,
    ) -> Result<(), ProtocolError> {
        while !self.release {
            let rest = &buf[self.scanned..];
            if self.partial > 0 {
                let take = self.partial.min(rest.len());
                if take == 0 {
                    break;
                }
                self.partial -= take;
                self.add(Chunk::Forward(take));
                continue;
            }
            let Some((tag, total)) = frame::header(rest)? else {
                break;
            };
            if self.replaying {
                if tag == b'E' && rest.len() < total {
                    break;
                }
                if tag == b'E'
                    && crate::protocol::error::parse_error_fields(&rest[..total]).0 == Some("FATAL")
                {
                    // A backend terminated as the request arrived (killed
                    // while pooled): nothing of the client's ran to
                    // completion, nothing is forwarded. Replies to the
                    // proxy's own preamble (a deferred BEGIN, settings)
                    // may have come first: the BEGIN dies with the server,
                    // and the settings are made again on the next one.
                    self.add(Chunk::Skip(total));
                    self.abandoned = true;
                    break;
                }
            }
            if flow.inspects(tag) {
                if total > MAX_INSPECTED {
                    return Err(ProtocolError::TooLarge {
                        len: total,
                        max: MAX_INSPECTED,
                        limit: "the limit on server messages the proxy reads whole",
                    });
                }
                if rest.len() < total {
                    break;
                }
                let mut then = Outbox::default();
                let step = flow.server_frame(tag, &rest[..total], wbuf, &mut then);
                if matches!(step, ServerStep::Forward | ServerStep::Release(true)) {
                    self.replaying = false;
                    self.told_fatal |= tag == b'E'
                        && crate::protocol::error::parse_error_fields(&rest[..total]).0
                            == Some("FATAL");
                }
                match step {
                    ServerStep::Forward => self.add(Chunk::Forward(total)),
                    ServerStep::Drop => self.add(Chunk::Skip(total)),
                    ServerStep::Release(forward) => {
                        self.add(if forward {
                            Chunk::Forward(total)
                        } else {
                            Chunk::Skip(total)
                        });
                        self.release = true;
                    }
                }
                self.add_own(&mut then);
            } else {
                // Streamed through: the client sees it.
                self.replaying = false;
                let take = total.min(rest.len());
                self.partial = total - take;
                self.add(Chunk::Forward(take));
            }
        }
        Ok(())
    }

    /// The consumed request, for a retry, if one is still possible.
    fn take_replay(&mut self) -> Option<BytesMut> {
        std::mem::take(&mut self.replaying).then(|| std::mem::take(&mut self.replay))
    }

    fn pending_bytes(&self) -> usize {
        self.scanned
    }
}

/// What processing the client's buffer came to.
enum ClientSide {
    /// Everything complete was handled; more may come.
    Open,
    /// The client sent Terminate.
    Terminated,
    /// The flow holds the remaining frames back; stop reading.
    Paused,
}

/// Splits complete client frames off `cbuf`, passes them to the flow.
fn process_client<F: Flow>(
    cbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    side: &mut ServerSide,
    flow: &mut F,
    messages: &MessageLimits,
) -> Result<ClientSide, WireError> {
    let mut outbox = Outbox::default();
    loop {
        if let Some(&tag) = cbuf.first() {
            super::idle::check_frontend_tag(tag)?;
        }
        let Some((tag, total)) = frame::header(cbuf)? else {
            return Ok(ClientSide::Open);
        };
        messages.admit(total)?;
        if cbuf.len() < total {
            cbuf.reserve(total - cbuf.len());
            return Ok(ClientSide::Open);
        }
        let step = flow.client_frame(tag, &cbuf[..total], wbuf, &mut outbox)?;
        side.add_own(&mut outbox);
        match step {
            ClientStep::Continue => {
                if side.replaying {
                    // Checked before copying: a large message is not
                    // copied a third time just to find it is too long.
                    side.replaying = side.replay.len() + total <= MAX_REPLAY;
                    if side.replaying {
                        side.replay.extend_from_slice(&cbuf[..total]);
                    }
                }
                cbuf.advance(total);
            }
            ClientStep::Terminate => return Ok(ClientSide::Terminated),
            ClientStep::Hold => return Ok(ClientSide::Paused),
        }
    }
}

/// Makes room for `chunk` more bytes once less than `low` is free.
fn reserve(buf: &mut BytesMut, low: usize, chunk: usize) {
    if buf.capacity() - buf.len() < low {
        buf.reserve(chunk);
    }
}

/// Runs the relay until the flow releases the server or a side ends.
/// `cbuf` may already hold client bytes; unprocessed bytes stay in it.
pub async fn relay<S, F>(
    client: &mut S,
    cbuf: &mut BytesMut,
    server: ServerIo<'_>,
    flow: &mut F,
    messages: &MessageLimits,
    timers: &mut RelayTimers,
    mut replay: Option<&mut BytesMut>,
) -> RelayEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Flow,
{
    let ServerIo {
        stream: sstream,
        rbuf,
        wbuf,
    } = server;
    // The caller's buffer, so that a request's copy costs no allocation.
    let mut side = ServerSide {
        replaying: replay.is_some(),
        replay: replay
            .as_deref_mut()
            .map(std::mem::take)
            .unwrap_or_default(),
        chunks: SPARE_CHUNKS.take(),
        ..ServerSide::default()
    };
    side.replay.clear();
    let end = 'relay: {
        // Frames already read from the client are handled before any I/O.
        match process_client(cbuf, wbuf, &mut side, flow, messages) {
            Err(e) => break 'relay RelayEnd::ClientError(e),
            Ok(ClientSide::Terminated) => break 'relay RelayEnd::ClientGone,
            Ok(ClientSide::Paused) => side.client_paused = true,
            Ok(ClientSide::Open) => {}
        }
        let mut relay = Relay {
            client,
            cbuf,
            server: sstream,
            rbuf,
            wbuf,
            side: &mut side,
            flow,
            messages,
            timers,
        };
        poll_fn(|cx| relay.poll(cx)).await
    };
    if side.chunks.capacity() <= KEPT_CHUNKS {
        side.chunks.clear();
        SPARE_CHUNKS.set(std::mem::take(&mut side.chunks));
    }
    if let Some(scratch) = replay
        && side.replay.capacity() <= KEPT_REPLAY
    {
        *scratch = side.replay;
    }
    end
}

thread_local! {
    /// The chunk list of the relay that ended last on this thread, for the
    /// next: a relay runs per transaction, and its list would otherwise be
    /// allocated and freed every time. (A relay in progress keeps its own;
    /// one that ends on another thread leaves its list there.)
    static SPARE_CHUNKS: std::cell::Cell<VecDeque<Chunk>> = const {
        std::cell::Cell::new(VecDeque::new())
    };
}

/// A chunk list longer than this is not kept for the next relay.
const KEPT_CHUNKS: usize = 64;

/// A replay buffer larger than this is not kept for the next request
/// (every client keeps one).
const KEPT_REPLAY: usize = 1024;

/// The relay's parts while it runs, borrowed for one `relay` call: the
/// client's socket and buffer, the server's I/O parts, the scanned server
/// bytes, the flow, and the limits it checks.
struct Relay<'r, S, F> {
    client: &'r mut S,
    cbuf: &'r mut BytesMut,
    server: &'r mut crate::tls::ServerStream,
    rbuf: &'r mut BytesMut,
    wbuf: &'r mut BytesMut,
    side: &'r mut ServerSide,
    flow: &'r mut F,
    messages: &'r MessageLimits,
    timers: &'r mut RelayTimers,
}

impl<S, F> Relay<'_, S, F>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Flow,
{
    /// Moves bytes each way until nothing moves, then waits (for a socket
    /// or a limit).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            let mut progress = false;
            if let Some(end) = self.client_to_proxy(cx, &mut progress) {
                return Poll::Ready(end);
            }
            self.proxy_to_server(cx, &mut progress);
            if let Some(end) = self.server_to_proxy(cx, &mut progress) {
                return Poll::Ready(end);
            }
            if let Some(end) = self.proxy_to_client(cx, &mut progress) {
                return Poll::Ready(end);
            }
            if let Some(end) = self.finished() {
                return Poll::Ready(end);
            }
            if !progress {
                return self.wait(cx);
            }
        }
    }

    /// Reads client bytes and hands their complete frames to the flow.
    #[inline]
    fn client_to_proxy(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Option<RelayEnd> {
        let side = &mut *self.side;
        if self.wbuf.len() >= HIGH_WATER || side.release || side.client_paused || side.eof.is_some()
        {
            return None;
        }
        reserve(self.cbuf, CLIENT_LOW, CLIENT_CHUNK);
        match poll_read_buf(Pin::new(&mut *self.client), cx, self.cbuf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Some(RelayEnd::ClientGone),
            Poll::Ready(Ok(_)) => {
                *progress = true;
                self.timers.client_activity();
                match process_client(self.cbuf, self.wbuf, side, self.flow, self.messages) {
                    Err(e) => Some(RelayEnd::ClientError(e)),
                    Ok(ClientSide::Terminated) => Some(RelayEnd::ClientGone),
                    Ok(ClientSide::Paused) => {
                        side.client_paused = true;
                        None
                    }
                    Ok(ClientSide::Open) => None,
                }
            }
            Poll::Pending => None,
        }
    }

    /// Writes and flushes what the flow queued for the server.
    #[inline]
    fn proxy_to_server(&mut self, cx: &mut Context<'_>, progress: &mut bool) {
        let side = &mut *self.side;
        if !self.wbuf.is_empty() && side.eof.is_none() {
            match Pin::new(&mut *self.server).poll_write(cx, self.wbuf) {
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    side.server_unflushed = true;
                    *progress = true;
                }
                Poll::Ready(Err(e)) => side.eof = Some(Some(e)),
                Poll::Pending => {}
            }
        }
        // A large message has gone: its buffers and charge go back.
        self.messages.settle(self.cbuf, Some(self.wbuf));
        if side.server_unflushed && side.eof.is_none() {
            match Pin::new(&mut *self.server).poll_flush(cx) {
                Poll::Ready(Ok(())) => side.server_unflushed = false,
                Poll::Ready(Err(e)) => side.eof = Some(Some(e)),
                Poll::Pending => {}
            }
        }
    }

    /// Reads server bytes and scans them into chunks for the client.
    #[inline]
    fn server_to_proxy(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Option<RelayEnd> {
        let side = &mut *self.side;
        if side.eof.is_some() || side.release || side.pending_bytes() >= HIGH_WATER {
            return None;
        }
        reserve(self.rbuf, SERVER_CHUNK / 4, SERVER_CHUNK);
        match poll_read_buf(Pin::new(&mut *self.server), cx, self.rbuf) {
            Poll::Ready(Ok(0)) => {
                side.eof = Some(None);
                *progress = true;
            }
            Poll::Ready(Ok(_)) => {
                *progress = true;
                if let Err(e) = side.scan(self.rbuf, self.wbuf, self.flow) {
                    return Some(RelayEnd::ServerGone(Some(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e,
                    ))));
                }
                if side.abandoned
                    && let Some(replay) = side.take_replay()
                {
                    return Some(RelayEnd::Unanswered(replay));
                }
            }
            Poll::Ready(Err(e)) => {
                side.eof = Some(Some(e));
                *progress = true;
            }
            Poll::Pending => {}
        }
        None
    }

    /// Writes the scanned chunks to the client, in order, and flushes.
    #[inline]
    fn proxy_to_client(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Option<RelayEnd> {
        let side = &mut *self.side;
        let rbuf = &mut *self.rbuf;
        let client = &mut *self.client;
        let mut wrote = false;
        while let Some(chunk) = side.chunks.front_mut() {
            match chunk {
                Chunk::Skip(n) => {
                    rbuf.advance(*n);
                    side.scanned -= *n;
                    side.chunks.pop_front();
                }
                Chunk::Later(later) => match later.as_mut().poll(cx) {
                    Poll::Ready(bytes) => {
                        *chunk = Chunk::Own(bytes);
                        *progress = true;
                    }
                    Poll::Pending => break,
                },
                Chunk::Own(b) if b.is_empty() => {
                    side.chunks.pop_front();
                }
                Chunk::Own(b) => {
                    // Something reached the client: no retry from here on.
                    side.replaying = false;
                    match Pin::new(&mut *client).poll_write(cx, b) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            return Some(RelayEnd::ClientGone);
                        }
                        Poll::Ready(Ok(w)) => {
                            b.advance(w);
                            if b.is_empty() {
                                side.chunks.pop_front();
                            }
                            wrote = true;
                            *progress = true;
                        }
                        Poll::Pending => break,
                    }
                }
                Chunk::Forward(n) => match Pin::new(&mut *client).poll_write(cx, &rbuf[..*n]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Some(RelayEnd::ClientGone);
                    }
                    Poll::Ready(Ok(w)) => {
                        rbuf.advance(w);
                        side.scanned -= w;
                        *n -= w;
                        if *n == 0 {
                            side.chunks.pop_front();
                        }
                        wrote = true;
                        *progress = true;
                    }
                    Poll::Pending => break,
                },
            }
        }
        side.client_unflushed |= wrote;
        if side.client_unflushed {
            match Pin::new(&mut *client).poll_flush(cx) {
                Poll::Ready(Ok(())) => side.client_unflushed = false,
                Poll::Ready(Err(_)) => return Some(RelayEnd::ClientGone),
                Poll::Pending => {}
            }
        }
        None
    }

    /// How the relay ends once everything owed to the client is written:
    /// the server released, or gone.
    #[inline]
    fn finished(&mut self) -> Option<RelayEnd> {
        let side = &mut *self.side;
        if !side.chunks.is_empty() || side.client_unflushed {
            return None;
        }
        if side.release {
            return Some(RelayEnd::Released);
        }
        let err = side.eof.take()?;
        Some(match side.take_replay() {
            Some(replay) => RelayEnd::Unanswered(replay),
            None if side.told_fatal => RelayEnd::ServerEnded,
            None => RelayEnd::ServerGone(err),
        })
    }

    /// Nothing moved: waits, with the idle or query limit that applies.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let side = &*self.side;
        let quiet = self.flow.quiet_status().filter(|_| {
            self.wbuf.is_empty() && side.chunks.is_empty() && !side.release && side.eof.is_none()
        });
        match self.timers.poll(cx, quiet) {
            None => Poll::Pending,
            Some(Fired::Idle(error)) => Poll::Ready(RelayEnd::Idle(error)),
            Some(Fired::QueryUnanswered(limit)) => Poll::Ready(RelayEnd::QueryUnanswered(limit)),
            Some(Fired::QueryCancelled(limit)) => {
                self.flow.query_timed_out(limit);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests;
