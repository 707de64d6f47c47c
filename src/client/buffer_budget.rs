//! Memory that large client messages may hold, across all clients.
//!
//! The proxy reads a client message whole before it routes it (it must
//! see a Query's text), and the relay copies it into the server's write
//! buffer, so a message costs twice its size while it passes. Messages up
//! to [`LARGE`] are not counted (every client's buffers hold that much);
//! a larger one is charged `2 × size` against `proxy.max_message_memory`
//! before its body is read, and a message that would go past the limit
//! closes its connection with SQLSTATE 53200 naming the key. Once the
//! message has gone to the server, the buffers are replaced by small ones
//! (the memory goes back to the allocator) and the charge is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;

use crate::protocol::frame;
use crate::protocol::{ProtocolError, SqlState, WireError};

/// Messages up to this size are not charged.
pub const LARGE: usize = 1024 * 1024;

/// A message is held twice while it passes: read, and copied for the server.
const COPIES: usize = 2;

/// The budget all clients share (`proxy.max_message_memory`).
#[derive(Debug, Default)]
pub struct BufferBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl BufferBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        let budget = Arc::new(BufferBudget::default());
        budget.set_limit(limit);
        budget
    }

    /// A reload: applies to charges taken from now on.
    pub fn set_limit(&self, limit: u64) {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes charged by all clients now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One client's message limits and its share of the budget.
#[derive(Debug)]
pub struct MessageLimits {
    /// `proxy.max_message_size` at login.
    pub max_message: usize,
    budget: Arc<BufferBudget>,
    /// Bytes this client holds of the budget (0 almost always).
    charged: AtomicUsize,
}

impl MessageLimits {
    pub fn new(max_message: usize, budget: Arc<BufferBudget>) -> Self {
        MessageLimits {
            max_message,
            budget,
            charged: AtomicUsize::new(0),
        }
    }

    /// Checks a message's declared length before its body is read: over
    /// `max_message_size` is a protocol error; a large one is charged
    /// (once: a client's charge covers its largest message until
    /// [`settle`](Self::settle)).
    #[inline]
    pub fn admit(&self, total: usize) -> Result<(), WireError> {
        if total <= LARGE && total <= self.max_message {
            return Ok(());
        }
        self.admit_large(total)
    }

    fn admit_large(&self, total: usize) -> Result<(), WireError> {
        if total > self.max_message {
            return Err(ProtocolError::TooLarge {
                len: total,
                max: self.max_message,
                limit: ProtocolError::MAX_MESSAGE_SIZE,
            }
            .into());
        }
        if total <= LARGE {
            return Ok(());
        }
        let need = total.saturating_mul(COPIES);
        let charged = self.charged.load(Ordering::Relaxed);
        if need <= charged {
            return Ok(());
        }
        if !self.budget.take(need - charged) {
            return Err(WireError::fatal(
                SqlState::OUT_OF_MEMORY,
                format!(
                    "out of memory for large messages: a message of {total} bytes would take the \
                     memory held for large client messages past proxy.max_message_memory ({} bytes)",
                    self.budget.limit.load(Ordering::Relaxed)
                ),
            )
            .with_hint("retry when other large messages have passed, or raise proxy.max_message_memory"));
        }
        self.charged.store(need, Ordering::Relaxed);
        Ok(())
    }

    /// After a large message has gone to the server: once `cbuf` holds no
    /// part of another large message and `wbuf` (the server's write
    /// buffer, if the caller has it) is drained, both are replaced by
    /// small buffers and the charge is given back. A plain load when
    /// nothing is charged.
    #[inline]
    pub fn settle(&self, cbuf: &mut BytesMut, wbuf: Option<&mut BytesMut>) {
        let charged = self.charged.load(Ordering::Relaxed);
        if charged != 0 {
            self.settle_charged(charged, cbuf, wbuf);
        }
    }

    #[cold]
    fn settle_charged(&self, charged: usize, cbuf: &mut BytesMut, wbuf: Option<&mut BytesMut>) {
        let pending = matches!(frame::header(cbuf), Ok(Some((_, total))) if total > LARGE);
        if pending || cbuf.len() > LARGE || wbuf.as_ref().is_some_and(|w| !w.is_empty()) {
            return;
        }
        // The capacity of a BytesMut says nothing about the allocation
        // behind it once it has been advanced: replace it outright.
        *cbuf = BytesMut::from(&cbuf[..]);
        if let Some(wbuf) = wbuf {
            *wbuf = BytesMut::new();
        }
        self.charged.store(0, Ordering::Relaxed);
        self.budget.give_back(charged);
    }
}

impl Drop for MessageLimits {
    fn drop(&mut self) {
        let charged = *self.charged.get_mut();
        if charged > 0 {
            self.budget.give_back(charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_messages_are_charged_until_settled_and_refused_past_the_limit() {
        let budget = BufferBudget::new(10 * LARGE as u64);
        let a = MessageLimits::new(64 * LARGE, budget.clone());
        let b = MessageLimits::new(64 * LARGE, budget.clone());
        a.admit(100).unwrap();
        assert_eq!(budget.used(), 0, "small messages are free");
        a.admit(3 * LARGE).unwrap();
        a.admit(2 * LARGE).unwrap();
        assert_eq!(budget.used(), 6 * LARGE, "charged once, for the largest");
        let e = b.admit(3 * LARGE).unwrap_err();
        assert_eq!(e.code, SqlState::OUT_OF_MEMORY);
        assert!(e.message.contains("proxy.max_message_memory"), "{e:?}");
        b.admit(2 * LARGE).unwrap();
        assert_eq!(budget.used(), 10 * LARGE);
        let e = a.admit(65 * LARGE).unwrap_err();
        assert!(e.message.contains("proxy.max_message_size"), "{e:?}");

        // Not while the server's copy is still being written.
        let mut cbuf = BytesMut::new();
        let mut wbuf = BytesMut::from(&b"Q"[..]);
        a.settle(&mut cbuf, Some(&mut wbuf));
        assert_eq!(budget.used(), 10 * LARGE);
        wbuf.clear();
        a.settle(&mut cbuf, Some(&mut wbuf));
        assert_eq!(budget.used(), 4 * LARGE);
        drop(b);
        assert_eq!(
            budget.used(),
            0,
            "a client that leaves gives its charge back"
        );
    }
}
