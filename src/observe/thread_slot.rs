//! Which of the per-thread slots the calling thread counts into: the
//! metrics' shards and the digests' pending tallies both key on it, so
//! that what every transaction records stays in memory only its own
//! core writes.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Slots: more than the worker threads of any sensible configuration;
/// threads beyond that share one (correct, just slower).
pub(crate) const SLOTS: usize = 16;

/// This thread's slot, drawn once per thread. Why a `const` thread-local
/// with a "not drawn yet" value rather than a lazy one: the lazy kind
/// checks its own state on every access (several per transaction), this
/// one only compares the number.
#[inline]
pub(crate) fn index() -> usize {
    const UNDRAWN: usize = usize::MAX;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(UNDRAWN) };
    }
    INDEX.with(|i| match i.get() {
        UNDRAWN => {
            let drawn = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
            i.set(drawn);
            drawn
        }
        drawn => drawn,
    })
}
