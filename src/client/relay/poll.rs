//! The relay's poll loop: client frames handed to the flow as they come,
//! the flow's output written to the server, server bytes read and scanned,
//! and the scanned chunks written to the client, until the server is
//! released or a side ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use super::server_side::{Chunk, ServerSide};
use super::{
    CLIENT_CHUNK, CLIENT_LOW, ClientStep, Flow, HIGH_WATER, MAX_REPLAY, Outbox, RelayEnd,
    SERVER_CHUNK,
};
use crate::client::buffer_budget::MessageLimits;
use crate::client::limits::{Fired, RelayTimers};
use crate::protocol::WireError;
use crate::protocol::frame;
use crate::tls::WaitReadable;

/// What processing the client's buffer came to.
pub(super) enum ClientSide {
    /// Everything complete was handled; more may come.
    Open,
    /// The client sent Terminate.
    Terminated,
    /// The flow holds the remaining frames back; stop reading.
    Paused,
}

/// Splits complete client frames off `cbuf`, passes them to the flow.
///
/// Why the buffer is advanced (and the replay copy made, and its size
/// checked) once, after the loop, not per frame: an extended-protocol
/// request is five frames, and each `advance`, small copy and check cost
/// tens of instructions.
pub(super) fn process_client<F: Flow>(
    cbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    side: &mut ServerSide<'_>,
    flow: &mut F,
    messages: &MessageLimits,
) -> Result<ClientSide, WireError> {
    let mut done = Consumed::default();
    let mut outbox = Outbox::default();
    let end = client_frames(cbuf, &mut done, &mut outbox, wbuf, side, flow, messages);
    outbox.finish();
    if side.replaying && done.used > 0 {
        // What earlier batches kept for a retry, and this one's frames:
        // checked before copying, so a large message is not copied a
        // third time just to find it is too long. Once too long, no retry
        // (nothing later is kept either: `replaying` stays false).
        let kept = side.replay.as_deref().map_or(0, BytesMut::len);
        side.replaying = kept + done.used <= MAX_REPLAY;
        if side.replaying
            && let Some(replay) = side.replay.as_deref_mut()
        {
            replay.extend_from_slice(&cbuf[..done.used]);
        }
    }
    if done.used > 0 {
        cbuf.advance(done.used);
    }
    if done.wanted > 0 {
        cbuf.reserve(done.wanted);
    }
    end
}

/// What [`client_frames`] took from the client's buffer.
#[derive(Default)]
struct Consumed {
    /// Bytes of frames handled (they leave the buffer, and are kept for a
    /// retry while one is possible).
    used: usize,
    /// More room the incomplete frame at the end needs.
    wanted: usize,
}

/// The loop of [`process_client`], over the buffer's bytes from
/// `done.used` on. `outbox` is the flow's for this batch (emptied after
/// each frame).
#[inline]
fn client_frames<F: Flow>(
    cbuf: &[u8],
    done: &mut Consumed,
    outbox: &mut Outbox,
    wbuf: &mut BytesMut,
    side: &mut ServerSide<'_>,
    flow: &mut F,
    messages: &MessageLimits,
) -> Result<ClientSide, WireError> {
    flow.next_batch();
    loop {
        let rest = &cbuf[done.used..];
        if let Some(&tag) = rest.first() {
            crate::client::idle::check_frontend_tag(tag)?;
        }
        let Some((tag, total)) = frame::header(rest)? else {
            return Ok(ClientSide::Open);
        };
        messages.admit(total)?;
        if rest.len() < total {
            done.wanted = total - rest.len();
            return Ok(ClientSide::Open);
        }
        let step = flow.client_frame(tag, &rest[..total], wbuf, outbox)?;
        side.add_own(outbox);
        match step {
            // (Kept for a retry after the loop, all at once.)
            ClientStep::Continue => done.used += total,
            ClientStep::Terminate => return Ok(ClientSide::Terminated),
            ClientStep::Hold => return Ok(ClientSide::Paused),
        }
    }
}

/// After a read that found nothing: whether it left the waker registered
/// with the socket. Not when the task's budget ran out: the read may then
/// have yielded without looking at the socket (tokio's cooperative
/// scheduling), and only a read that did look may be skipped later.
#[inline]
fn registered() -> bool {
    tokio::task::coop::has_budget_remaining()
}

/// Makes room for `chunk` more bytes once less than `low` is free.
fn reserve(buf: &mut BytesMut, low: usize, chunk: usize) {
    if buf.capacity() - buf.len() < low {
        buf.reserve(chunk);
    }
}

/// The sockets whose read found nothing during one [`Relay::poll`] call.
#[derive(Default)]
struct Drained {
    client: bool,
    server: bool,
}

/// The relay's parts while it runs, borrowed for one `relay` call: the
/// client's socket and buffer, the server's I/O parts, the scanned server
/// bytes, the flow, and the limits it checks.
pub(super) struct Relay<'r, 's, S, F> {
    pub(super) client: &'r mut S,
    pub(super) cbuf: &'r mut BytesMut,
    pub(super) server: &'r mut crate::tls::ServerStream,
    pub(super) rbuf: &'r mut BytesMut,
    pub(super) wbuf: &'r mut BytesMut,
    pub(super) side: &'r mut ServerSide<'s>,
    pub(super) flow: &'r mut F,
    pub(super) messages: &'r MessageLimits,
    pub(super) timers: &'r mut RelayTimers,
}

impl<S, F> Relay<'_, '_, S, F>
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin,
    F: Flow,
{
    /// Moves bytes each way until nothing moves, then waits (for a socket
    /// or a limit).
    ///
    /// Why the server is read first: a wake-up is most often the server's
    /// answer, and once it releases the server the client is not read
    /// again (its next request waits for the session, which reads it
    /// anyway). Why a read that found nothing is not tried again in the
    /// same call: its waker is registered, so new bytes wake the task and
    /// it is polled again; asking meanwhile costs a readiness check under
    /// the socket's lock (~150 instructions) and finds nothing. A `-S`
    /// transaction used to make six reads, two of them such repeats.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let mut drained = Drained::default();
        loop {
            let mut progress = false;
            if let Some(end) = self.server_to_proxy(cx, &mut progress, &mut drained.server) {
                return Poll::Ready(end);
            }
            if let Some(end) = self.proxy_to_client(cx, &mut progress) {
                return Poll::Ready(end);
            }
            if let Some(end) = self.client_to_proxy(cx, &mut progress, &mut drained.client) {
                return Poll::Ready(end);
            }
            self.proxy_to_server(cx, &mut progress);
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
    fn client_to_proxy(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut bool,
        drained: &mut bool,
    ) -> Option<RelayEnd> {
        let side = &mut *self.side;
        if *drained
            || self.wbuf.len() >= HIGH_WATER
            || side.release
            || side.client_paused
            || side.server_ended()
        {
            return None;
        }
        if side.armed.client() && self.client.surely_unreadable() {
            *drained = true;
            return None;
        }
        reserve(self.cbuf, CLIENT_LOW, CLIENT_CHUNK);
        let read = poll_read_buf(Pin::new(&mut *self.client), cx, self.cbuf);
        side.armed.set_client(read.is_pending() && registered());
        match read {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Some(RelayEnd::ClientGone),
            Poll::Ready(Ok(_)) => {
                *progress = true;
                self.timers.client_activity();
                match process_client(self.cbuf, self.wbuf, side, self.flow, self.messages) {
                    Err(e) => Some(RelayEnd::ClientError(Box::new(e))),
                    Ok(ClientSide::Terminated) => Some(RelayEnd::ClientGone),
                    Ok(ClientSide::Paused) => {
                        side.client_paused = true;
                        None
                    }
                    Ok(ClientSide::Open) => None,
                }
            }
            Poll::Pending => {
                *drained = true;
                None
            }
        }
    }

    /// Writes and flushes what the flow queued for the server.
    #[inline]
    fn proxy_to_server(&mut self, cx: &mut Context<'_>, progress: &mut bool) {
        let side = &mut *self.side;
        if !self.wbuf.is_empty() && !side.server_ended() {
            match Pin::new(&mut *self.server).poll_write(cx, self.wbuf) {
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    side.server_unflushed = true;
                    *progress = true;
                }
                Poll::Ready(Err(e)) => side.end_server(Some(e)),
                Poll::Pending => {}
            }
        }
        // A large message has gone: its buffers and charge go back.
        self.messages.settle(self.cbuf, Some(self.wbuf));
        if side.server_unflushed && !side.server_ended() {
            match Pin::new(&mut *self.server).poll_flush(cx) {
                Poll::Ready(Ok(())) => side.server_unflushed = false,
                Poll::Ready(Err(e)) => side.end_server(Some(e)),
                Poll::Pending => {}
            }
        }
    }

    /// Reads server bytes and scans them into chunks for the client.
    #[inline]
    fn server_to_proxy(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut bool,
        drained: &mut bool,
    ) -> Option<RelayEnd> {
        let side = &mut *self.side;
        if *drained || side.server_ended() || side.release || side.pending_bytes() >= HIGH_WATER {
            return None;
        }
        if side.armed.server() && self.server.surely_unreadable() {
            *drained = true;
            return None;
        }
        reserve(self.rbuf, SERVER_CHUNK / 4, SERVER_CHUNK);
        let read = poll_read_buf(Pin::new(&mut *self.server), cx, self.rbuf);
        side.armed.set_server(read.is_pending() && registered());
        match read {
            Poll::Ready(Ok(0)) => {
                side.end_server(None);
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
                if side.abandoned()
                    && let Some(replay) = side.take_replay()
                {
                    return Some(RelayEnd::Unanswered(replay));
                }
            }
            Poll::Ready(Err(e)) => {
                side.end_server(Some(e));
                *progress = true;
            }
            Poll::Pending => *drained = true,
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
        loop {
            if side.lead > 0 {
                match Pin::new(&mut *client).poll_write(cx, &rbuf[..side.lead]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Some(RelayEnd::ClientGone);
                    }
                    Poll::Ready(Ok(w)) => {
                        // (Scanning a forwarded frame already ended any retry.)
                        rbuf.advance(w);
                        side.scanned -= w;
                        side.lead -= w;
                        wrote = true;
                        *progress = true;
                        continue;
                    }
                    Poll::Pending => break,
                }
            }
            let Some(chunk) = side.chunks.front_mut() else {
                break;
            };
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
        if side.owes_client() || side.client_unflushed {
            return None;
        }
        if side.release {
            return Some(RelayEnd::Released);
        }
        let err = side.take_server_end()?;
        Some(match side.take_replay() {
            Some(replay) => RelayEnd::Unanswered(replay),
            None if side.told_fatal() => RelayEnd::ServerEnded,
            None => RelayEnd::ServerGone(err),
        })
    }

    /// Nothing moved: waits, with the idle or query limit that applies.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let side = &*self.side;
        let quiet = self.flow.quiet_status().filter(|_| {
            self.wbuf.is_empty() && !side.owes_client() && !side.release && !side.server_ended()
        });
        match self.timers.poll(cx, quiet) {
            None => Poll::Pending,
            Some(Fired::Idle(error)) => Poll::Ready(RelayEnd::Idle(Box::new(error))),
            Some(Fired::QueryUnanswered(limit)) => Poll::Ready(RelayEnd::QueryUnanswered(limit)),
            Some(Fired::QueryCancelled(limit)) => {
                self.flow.query_timed_out(limit);
                Poll::Pending
            }
        }
    }
}
