//! The server's side of a relay: which scanned server bytes go to the
//! client, which are dropped, and what the proxy adds in between (chunks
//! written in order by the poll loop), and the scan that hands inspected
//! frames to the flow.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{Flow, Later, MAX_INSPECTED, Outbox, Own, ServerStep};
use crate::protocol::ProtocolError;
use crate::protocol::frame;

pub(super) enum Chunk {
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

/// [`ServerSide::fatal`]: the server's first frame was a FATAL error.
const ABANDONED: u8 = 1;
/// [`ServerSide::fatal`]: a FATAL error from the server went to the client.
const TOLD_FATAL: u8 = 2;

/// The sockets whose last read in this relay found nothing (and so left
/// the task's waker registered with them, until they become readable).
///
/// Why: each wake-up is for one socket, but the relay does not know which,
/// and reading the other (the server when the client sent a statement,
/// the client when the server answered) cost a readiness check under the
/// socket's lock and a waker comparison (~170 instructions), about ten
/// times per TPC-B transaction. A socket armed and not readable is not
/// read: its readiness is one atomic load
/// ([`WaitReadable::surely_unreadable`](crate::tls::WaitReadable::surely_unreadable)).
/// A socket that last gave bytes is read until it finds nothing, as
/// before: that read registers the waker. One byte, a bit per socket
/// (the relay's state is part of every client's task).
#[derive(Default, Clone, Copy)]
pub(super) struct Armed(u8);

impl Armed {
    const CLIENT: u8 = 1;
    const SERVER: u8 = 2;

    #[inline]
    pub(super) fn client(self) -> bool {
        self.0 & Self::CLIENT != 0
    }

    #[inline]
    pub(super) fn server(self) -> bool {
        self.0 & Self::SERVER != 0
    }

    #[inline]
    pub(super) fn set_client(&mut self, armed: bool) {
        self.set(Self::CLIENT, armed);
    }

    #[inline]
    pub(super) fn set_server(&mut self, armed: bool) {
        self.set(Self::SERVER, armed);
    }

    #[inline]
    fn set(&mut self, bit: u8, armed: bool) {
        if armed {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// s2c bookkeeping: which scanned server bytes go where.
pub(super) struct ServerSide<'r> {
    /// Server bytes that go to the client before anything in `chunks`.
    /// Why not a `Forward` chunk like the others: nearly every reply is
    /// only forwarded frames, and a plain count costs no list operations
    /// (each added frame used to look at and merge into the list's back)
    /// and no list at all (one is taken from the thread's spares only
    /// when something else comes; ~100 instructions per `-S`
    /// transaction, more for extended with its five replies).
    pub(super) lead: usize,
    /// What comes after `lead`, in order; no memory until first used.
    pub(super) chunks: VecDeque<Chunk>,
    /// Bytes of the server buffer covered by `lead` and `chunks`.
    pub(super) scanned: usize,
    /// Bytes still to come of a frame being streamed through.
    pub(super) partial: usize,
    pub(super) release: bool,
    /// Bytes were written to the client (server) that may still sit in a
    /// TLS buffer until flushed.
    pub(super) client_unflushed: bool,
    pub(super) server_unflushed: bool,
    /// The flow holds client frames back until the server is released.
    pub(super) client_paused: bool,
    /// Client bytes consumed, kept while `replaying`: the session's buffer
    /// for them, borrowed, not moved in and back out (32 bytes more in the
    /// relay's state, which is part of every client's task, and two moves
    /// per transaction).
    pub(super) replay: Option<&'r mut BytesMut>,
    /// Nothing has reached the client yet and the request may still be
    /// retried elsewhere.
    pub(super) replaying: bool,
    /// FATAL errors from the server, one bit each: [`ABANDONED`], the
    /// server's first frame was one (it was dying when the request reached
    /// it); [`TOLD_FATAL`], one went to the client. One byte for both:
    /// `armed` took the other.
    fatal: u8,
    /// The sockets whose last read found nothing (see [`Armed`]).
    pub(super) armed: Armed,
    /// The server connection closed (or failed: `server_error`). Two
    /// fields, not an `Option<Option<io::Error>>`: that takes 16 bytes,
    /// this one byte more beside the flags above, and the relay's state is
    /// part of every client's task (`lead` took the 8 bytes).
    server_ended: bool,
    server_error: Option<std::io::Error>,
}

impl<'r> ServerSide<'r> {
    /// A relay's server side, keeping the client's bytes in `replay` (its
    /// earlier content dropped) for a retry when there is one.
    #[inline]
    pub(super) fn new(mut replay: Option<&'r mut BytesMut>) -> Self {
        if let Some(replay) = replay.as_deref_mut() {
            replay.clear();
        }
        ServerSide {
            lead: 0,
            chunks: VecDeque::new(),
            scanned: 0,
            partial: 0,
            release: false,
            client_unflushed: false,
            server_unflushed: false,
            client_paused: false,
            replaying: replay.is_some(),
            replay,
            fatal: 0,
            armed: Armed::default(),
            server_ended: false,
            server_error: None,
        }
    }

    /// The server's first frame was a FATAL error.
    #[inline]
    pub(super) fn abandoned(&self) -> bool {
        self.fatal & ABANDONED != 0
    }

    /// A FATAL error from the server went to the client.
    #[inline]
    pub(super) fn told_fatal(&self) -> bool {
        self.fatal & TOLD_FATAL != 0
    }

    /// Whether the server connection closed or failed.
    #[inline]
    pub(super) fn server_ended(&self) -> bool {
        self.server_ended
    }

    /// The server connection closed (`None`) or failed.
    pub(super) fn end_server(&mut self, error: Option<std::io::Error>) {
        self.server_ended = true;
        self.server_error = error;
    }

    /// How the server connection ended, if it did (taken: the relay ends).
    pub(super) fn take_server_end(&mut self) -> Option<Option<std::io::Error>> {
        std::mem::take(&mut self.server_ended).then(|| self.server_error.take())
    }

    #[inline]
    fn push(&mut self, chunk: Chunk) {
        match chunk {
            Chunk::Forward(n) if self.chunks.is_empty() => self.lead += n,
            chunk => self.push_listed(chunk),
        }
    }

    /// Adds a chunk after the others, taking a spare list for the first.
    #[inline(never)]
    fn push_listed(&mut self, chunk: Chunk) {
        if self.chunks.capacity() == 0 {
            self.chunks = super::take_spare_chunks();
        }
        match (self.chunks.back_mut(), chunk) {
            (Some(Chunk::Forward(n)), Chunk::Forward(m)) => *n += m,
            (_, c) => self.chunks.push_back(c),
        }
    }

    /// Whether scanned bytes or the proxy's own still wait for the client.
    #[inline]
    pub(super) fn owes_client(&self) -> bool {
        self.lead > 0 || !self.chunks.is_empty()
    }

    #[inline]
    pub(super) fn add(&mut self, chunk: Chunk) {
        if let Chunk::Forward(n) | Chunk::Skip(n) = chunk {
            self.scanned += n;
        }
        self.push(chunk);
    }

    #[inline]
    pub(super) fn add_own(&mut self, outbox: &mut Outbox) {
        // Nearly always empty (it is offered every frame the flow sees):
        // a drain of nothing still costs its set-up and drop.
        if !outbox.0.is_empty() {
            self.add_outbox(outbox);
        }
    }

    #[inline(never)]
    fn add_outbox(&mut self, outbox: &mut Outbox) {
        for own in outbox.0.drain(..) {
            self.push(match own {
                Own::Now(b) => Chunk::Own(b),
                Own::Later(later) => Chunk::Later(later),
            });
        }
    }

    /// Scans newly read server bytes into chunks.
    pub(super) fn scan<F: Flow>(
        &mut self,
        buf: &[u8],
        wbuf: &mut BytesMut,
        flow: &mut F,
    ) -> Result<(), ProtocolError> {
        flow.next_batch();
        // One for the whole read, not one per frame: `add_own` leaves it
        // empty, and each per-frame one cost an out-of-line drop.
        let mut then = Outbox::default();
        let scanned = self.scan_frames(buf, wbuf, flow, &mut then);
        then.finish();
        scanned
    }

    /// The loop of [`scan`](Self::scan), with its outbox.
    #[inline]
    fn scan_frames<F: Flow>(
        &mut self,
        buf: &[u8],
        wbuf: &mut BytesMut,
        flow: &mut F,
        then: &mut Outbox,
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
                    self.fatal |= ABANDONED;
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
                let step = flow.server_frame(tag, &rest[..total], wbuf, then);
                if matches!(step, ServerStep::Forward | ServerStep::Release(true)) {
                    self.replaying = false;
                    if tag == b'E'
                        && crate::protocol::error::parse_error_fields(&rest[..total]).0
                            == Some("FATAL")
                    {
                        self.fatal |= TOLD_FATAL;
                    }
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
                self.add_own(then);
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
    pub(super) fn take_replay(&mut self) -> Option<BytesMut> {
        std::mem::take(&mut self.replaying)
            .then(|| self.replay.as_deref_mut().map(std::mem::take))
            .flatten()
    }

    pub(super) fn pending_bytes(&self) -> usize {
        self.scanned
    }
}
