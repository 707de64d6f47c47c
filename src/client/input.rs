//! Reading a client's frames between requests: waiting for a complete
//! one, refusing an oversized one at its header, and the buffer an idle
//! client lets go of (parked per thread for the next client to read).

use std::pin::Pin;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::poll_read_buf;

use super::buffer_budget::MessageLimits;
use super::idle::check_frontend_tag;
use crate::protocol::{WireError, frame};
use crate::tls::WaitReadable;

/// Buffer kept for a client between requests.
const IDLE_BUFFER: usize = 512;

/// Waits until `cbuf` starts with a complete frame; returns its tag and
/// length (header included, so the caller need not read the header
/// again), or `None` when the client closed the connection.
pub(super) async fn next_frame<S>(
    stream: &mut S,
    cbuf: &mut BytesMut,
    messages: &MessageLimits,
) -> Result<Option<(u8, usize)>, WireError>
where
    S: AsyncRead + WaitReadable + Unpin,
{
    loop {
        if let Some(&tag) = cbuf.first() {
            check_frontend_tag(tag)?;
        }
        if let Some((tag, total)) = frame::header(cbuf)? {
            messages.admit(total)?;
            if cbuf.len() >= total {
                return Ok(Some((tag, total)));
            }
        }
        if !read_more(stream, cbuf, messages).await? {
            return Ok(None);
        }
    }
}

/// Reads more client bytes; false when the client is gone. Refuses a
/// frame in the buffer that is larger than allowed before waiting for it.
pub(super) async fn read_more<S>(
    stream: &mut S,
    cbuf: &mut BytesMut,
    messages: &MessageLimits,
) -> Result<bool, WireError>
where
    S: AsyncRead + WaitReadable + Unpin,
{
    // Check every complete header so that an oversized message later in
    // the buffer is refused before the proxy waits for its body.
    let mut at = 0;
    while let Some((_, total)) = frame::header(&cbuf[at..])? {
        messages.admit(total)?;
        if cbuf.len() - at < total {
            cbuf.reserve(at + total - cbuf.len());
            break;
        }
        at += total;
    }
    messages.settle(cbuf, None);
    if cbuf.is_empty() {
        // Between requests an idle client keeps no buffer (a plain socket
        // says when there is something to read) or a small one (TLS): with
        // thousands of connected clients this is most of their memory.
        if stream.can_wait_unbuffered() {
            // Read at once, and the buffer let go of only if the client
            // has nothing for us yet; taken back when woken. Why not ask
            // the socket whether it is readable first: that asks twice
            // per request (once finding nothing, once when woken, and the
            // read asks again), ~130 instructions each; a wake-up that
            // finds nothing to read (rare) parks the buffer again.
            let read = std::future::poll_fn(|cx| {
                if cbuf.capacity() == 0 {
                    *cbuf = unpark_buffer();
                } else if cbuf.capacity() < IDLE_BUFFER {
                    // Its own buffer, consumed from the front: empty, so
                    // this takes back the consumed room (no allocation),
                    // as `unpark_buffer` would after parking it.
                    cbuf.reserve(IDLE_BUFFER);
                }
                let read = poll_read_buf(Pin::new(&mut *stream), cx, cbuf);
                if read.is_pending() && cbuf.capacity() > 0 {
                    park_buffer(std::mem::take(cbuf));
                }
                read
            })
            .await;
            return Ok(matches!(read, Ok(n) if n > 0));
        } else if cbuf.capacity() > IDLE_BUFFER {
            *cbuf = BytesMut::with_capacity(IDLE_BUFFER);
        }
    } else if cbuf.capacity() - cbuf.len() < 256 {
        cbuf.reserve(IDLE_BUFFER.max(cbuf.len()));
    }
    Ok(matches!(stream.read_buf(cbuf).await, Ok(n) if n > 0))
}

thread_local! {
    /// Buffers that idle clients let go of, for the next clients on this
    /// thread with something to read: a client keeps no buffer between
    /// requests, and freeing one and allocating another cost a `free` and
    /// a `malloc` per request. A few per thread, so the memory idle
    /// clients do not hold stays small.
    /// A `RefCell`, not a `Cell` taken and put back: that moved the list
    /// out and in and dropped an empty one, twice per request.
    static PARKED: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers parked per thread, at most.
const PARKED_BUFFERS: usize = 8;
/// A buffer larger than this is freed rather than parked.
const PARKED_MAX: usize = 8 * IDLE_BUFFER;

/// Keeps an idle client's (empty) buffer for another, if it is small.
fn park_buffer(mut buf: BytesMut) {
    if buf.capacity() > PARKED_MAX {
        return;
    }
    buf.clear();
    // Never borrowed twice: the borrows below call nothing that parks.
    PARKED.with_borrow_mut(|parked| {
        if parked.len() < PARKED_BUFFERS {
            parked.push(buf);
        }
    });
}

/// A parked buffer with room for [`IDLE_BUFFER`] bytes, or a new one.
fn unpark_buffer() -> BytesMut {
    let mut buf = PARKED.with_borrow_mut(Vec::pop).unwrap_or_default();
    if buf.capacity() < IDLE_BUFFER {
        buf.reserve(IDLE_BUFFER);
    }
    buf
}
