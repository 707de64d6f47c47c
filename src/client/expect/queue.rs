//! The list behind [`Expectations`](super::Expectations): entries added at
//! the back and taken from the front, as a `VecDeque` would, but as a `Vec`
//! read from a moving head.
//!
//! Why not a `VecDeque`: every message sent adds an entry and every answer
//! takes one, five of each per extended-protocol transaction, and a ring
//! buffer pays for its wrap-around on each (the physical index of the back
//! on a push, of the new head on a pop, a two-part view on a look past the
//! head). Here a push is a `Vec` push, a pop a bump of the head, and the
//! list starts again from the start of its buffer once it runs empty —
//! which it does at every ReadyForQuery of a request-response client, so
//! the taken entries never pile up. A client that keeps requests
//! outstanding without end (pipelining in session mode) never empties it:
//! the taken entries are then dropped from the front once they are at
//! least half the list, so it stays within twice what is outstanding.

use super::Expect;

/// Entries taken before they are dropped from the buffer's front, at least.
const COMPACT_AT: usize = 32;

#[derive(Debug, Default, Clone)]
pub(super) struct Queue {
    /// Taken entries (before `head`), then the queue, in order.
    items: Vec<Expect>,
    head: usize,
}

impl Queue {
    /// Empties it, keeping its capacity.
    #[inline]
    pub(super) fn clear(&mut self) {
        self.items.clear();
        self.head = 0;
    }

    #[inline]
    pub(super) fn push_back(&mut self, e: Expect) {
        if self.head >= COMPACT_AT && self.head * 2 >= self.items.len() {
            self.compact();
        }
        self.items.push(e);
    }

    /// Drops the taken entries from the buffer (rare: see the module doc).
    #[cold]
    fn compact(&mut self) {
        self.items.drain(..self.head);
        self.head = 0;
    }

    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<Expect> {
        let e = *self.items.get(self.head)?;
        self.head += 1;
        if self.head == self.items.len() {
            self.clear();
        }
        Some(e)
    }

    #[inline]
    pub(super) fn front(&self) -> Option<&Expect> {
        self.items.get(self.head)
    }

    #[inline]
    pub(super) fn front_mut(&mut self) -> Option<&mut Expect> {
        self.items.get_mut(self.head)
    }

    /// The entry `i` places behind the front.
    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<&Expect> {
        self.items.get(self.head + i)
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.head == self.items.len()
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.items.len() - self.head
    }

    /// The entries, front first.
    pub(super) fn as_slice(&self) -> &[Expect] {
        &self.items[self.head..]
    }

    /// Takes the first `n` entries out, front first.
    pub(super) fn drain_front(&mut self, n: usize) -> impl Iterator<Item = Expect> + '_ {
        let end = (self.head + n).min(self.items.len());
        self.items.drain(self.head..end)
    }

    /// Keeps only the entries `keep` says yes to, in order.
    pub(super) fn retain(&mut self, keep: impl FnMut(&Expect) -> bool) {
        self.items.drain(..self.head);
        self.head = 0;
        self.items.retain(keep);
    }
}

/// Equal when the same entries are queued, whatever was taken before.
impl PartialEq for Queue {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Queue {}
