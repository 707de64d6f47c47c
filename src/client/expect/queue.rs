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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::expect::Synthetic;

    fn reply(n: usize) -> Expect {
        Expect::Reply(if n.is_multiple_of(2) {
            Synthetic::ParseComplete
        } else {
            Synthetic::CloseComplete
        })
    }

    #[test]
    fn first_in_first_out_and_empty_starts_over() {
        let mut q = Queue::default();
        assert!(q.is_empty() && q.front().is_none() && q.pop_front().is_none());
        q.push_back(reply(0));
        q.push_back(reply(1));
        assert_eq!((q.len(), q.get(1)), (2, Some(&reply(1))));
        assert_eq!(q.pop_front(), Some(reply(0)));
        assert_eq!(q.front(), Some(&reply(1)));
        assert_eq!(q.pop_front(), Some(reply(1)));
        // Emptied: back to the start of its buffer.
        assert!(q.is_empty());
        assert_eq!((q.head, q.items.len()), (0, 0));
    }

    /// A queue that is never emptied (requests always outstanding) stays
    /// within about twice what is queued.
    #[test]
    fn a_queue_never_emptied_stays_bounded() {
        let mut q = Queue::default();
        q.push_back(reply(0));
        for n in 1..10_000 {
            q.push_back(reply(n));
            assert_eq!(q.pop_front(), Some(reply(n - 1)));
            assert_eq!(q.len(), 1);
        }
        assert!(q.items.len() <= 2 * COMPACT_AT + 2, "{}", q.items.len());
        assert_eq!(q.front(), Some(&reply(9_999)));
    }

    #[test]
    fn drain_retain_and_equality_see_only_what_is_queued() {
        let mut q = Queue::default();
        for n in 0..5 {
            q.push_back(reply(n));
        }
        q.pop_front();
        let drained: Vec<_> = q.drain_front(2).collect();
        assert_eq!(drained, vec![reply(1), reply(2)]);
        assert_eq!(q.as_slice(), &[reply(3), reply(4)]);
        let mut other = Queue::default();
        other.push_back(reply(3));
        other.push_back(reply(4));
        assert_eq!(q, other);
        q.retain(|e| *e != reply(3));
        assert_eq!(q.as_slice(), &[reply(4)]);
    }
}
