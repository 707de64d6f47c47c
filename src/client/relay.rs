//! Moves bytes between a client and the server it holds, both directions at
//! once, inspecting only the frames the session asks about. Server bytes
//! are written to the client straight from the server's read buffer; frames
//! the session drops are skipped in place, so a result set is never copied.
//! This file holds what the session sees (the [`Flow`] trait, the steps,
//! [`RelayEnd`]) and the entry point; `poll.rs` the loop that drives both
//! sockets, `server_side.rs` the scanned server bytes and where they go.

use std::collections::VecDeque;
use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

mod poll;
mod server_side;

use poll::{ClientSide, Relay, process_client};
use server_side::{Chunk, ServerSide};

use super::buffer_budget::MessageLimits;
use super::limits::RelayTimers;
use crate::protocol::WireError;
use crate::tls::WaitReadable;

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

    /// Drops an outbox that has been emptied: one that never held
    /// anything (nearly always) owns no memory and is forgotten. Why:
    /// its drop is a call out of line (~24 instructions), made twice per
    /// request (the client's frames, the server's answer).
    #[inline]
    fn finish(self) {
        if self.0.capacity() == 0 {
            std::mem::forget(self);
        }
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
    /// A new batch of frames (one read of either socket) is about to be
    /// handed over: what it asks of the clock is read once (clock.rs).
    fn next_batch(&mut self) {}
}

/// The server connection's I/O parts the relay drives.
pub use crate::server::ServerIoParts as ServerIo;

/// Why a relay ended. Its errors are boxed: they are rare, and an end is
/// moved several times on its way out of every relay (a `WireError` inline
/// made it 104 bytes, copied at each move).
#[derive(Debug)]
pub enum RelayEnd {
    /// The session's release point was reached and everything before it was
    /// delivered to the client.
    Released,
    /// The client closed the connection or sent Terminate.
    ClientGone,
    /// The client broke the protocol; the error says how.
    ClientError(Box<WireError>),
    /// The server connection closed or failed; its last bytes (a FATAL
    /// error, usually) were delivered to the client.
    ServerGone(Option<std::io::Error>),
    /// The server sent the client a FATAL error (it was terminated:
    /// pg_terminate_backend, idle_in_transaction_session_timeout) and
    /// closed: the client has its one error already.
    ServerEnded,
    /// The client stayed idle past a limit; the error says which.
    Idle(Box<WireError>),
    /// The server answered neither a query nor its cancel in time.
    QueryUnanswered(std::time::Duration),
    /// The server connection failed before any of its answer (or anything
    /// else) reached the client: a fresh connection can be given the same
    /// request. Holds the client bytes the relay consumed.
    Unanswered(BytesMut),
}

/// Client bytes kept for a retry are at most this much.
const MAX_REPLAY: usize = 1024 * 1024;

/// Runs the relay until the flow releases the server or a side ends.
/// `cbuf` may already hold client bytes; unprocessed bytes stay in it.
pub async fn relay<S, F>(
    client: &mut S,
    cbuf: &mut BytesMut,
    server: ServerIo<'_>,
    flow: &mut F,
    messages: &MessageLimits,
    timers: &mut RelayTimers,
    replay: Option<&mut BytesMut>,
) -> RelayEnd
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin,
    F: Flow,
{
    let ServerIo {
        stream: sstream,
        rbuf,
        wbuf,
    } = server;
    // The caller's buffer, so that a request's copy costs no allocation.
    let mut side = ServerSide::new(replay);
    let end = 'relay: {
        // Frames already read from the client are handled before any I/O.
        match process_client(cbuf, wbuf, &mut side, flow, messages) {
            Err(e) => break 'relay RelayEnd::ClientError(Box::new(e)),
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
    let ServerSide { chunks, replay, .. } = side;
    keep_spare_chunks(chunks);
    if let Some(scratch) = replay
        && scratch.capacity() > KEPT_REPLAY
    {
        *scratch = BytesMut::new();
    }
    end
}

/// A spare chunk list for a relay on this thread, or a new one.
fn take_spare_chunks() -> VecDeque<Chunk> {
    SPARE_CHUNKS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// Keeps an ended relay's chunk list for the next one on this thread, if
/// it is small and there is room.
fn keep_spare_chunks(mut chunks: VecDeque<Chunk>) {
    let capacity = chunks.capacity();
    if capacity == 0 {
        // Owns no memory and no chunks: nothing to keep, nothing leaks,
        // and a deque's drop would walk both (empty) halves of its ring.
        std::mem::forget(chunks);
        return;
    }
    if capacity > KEPT_CHUNKS {
        return;
    }
    chunks.clear();
    // Never borrowed twice: dropping a list of cleared chunks parks none.
    SPARE_CHUNKS.with_borrow_mut(|spare| {
        if spare.len() < SPARE_LISTS {
            spare.push(chunks);
        }
    });
}

thread_local! {
    /// The chunk lists of the relays that ended last on this thread, for
    /// the next ones that need one (a relay whose server bytes are all
    /// forwarded needs none: `ServerSide::lead`): a relay runs per
    /// transaction, and its list would otherwise be allocated and freed
    /// every time. Several, not one:
    /// relays overlap (16 clients on a pool of 5 run up to five at once on
    /// one thread), and with a single spare every relay but the first to
    /// start allocated a list and freed another when it ended (~200
    /// instructions per `-S` transaction). (One that ends on another
    /// thread leaves its list there.)
    static SPARE_CHUNKS: std::cell::RefCell<Vec<VecDeque<Chunk>>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// A chunk list longer than this is not kept for the next relay.
const KEPT_CHUNKS: usize = 64;
/// Spare chunk lists kept per thread, at most (a few KiB at most: each
/// holds at most [`KEPT_CHUNKS`] chunks of 40 bytes).
const SPARE_LISTS: usize = 8;

/// A replay buffer larger than this is not kept for the next request
/// (every client keeps one).
const KEPT_REPLAY: usize = 1024;

#[cfg(test)]
mod tests;
