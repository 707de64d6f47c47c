//! The test binary's global allocator: `System`, plus a count of the heap
//! allocations made on threads that asked to be counted (a proxy runtime's
//! workers), so a test can check what pgsidecar allocates per transaction.
//! Threads that did not ask (every other test's) are only looked at, never
//! counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    /// The counter this thread's allocations go to, if any. Const-initialised
    /// and without a destructor, so reading it never allocates and works
    /// while the thread is being torn down.
    static COUNTER: Cell<Option<&'static AtomicU64>> = const { Cell::new(None) };
}

struct Counting;

fn count() {
    // `try_with` never fails for a const thread-local without destructor;
    // ignoring the error keeps the allocator from ever panicking.
    let _ = COUNTER.try_with(|c| {
        if let Some(counter) = c.get() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
}

// SAFETY: every call is passed unchanged to `System`; counting touches only
// a thread-local cell and an atomic, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// A count of allocations (including reallocations) made on the threads
/// that called [`Allocations::count_this_thread`].
#[derive(Clone, Copy)]
pub struct Allocations(&'static AtomicU64);

impl Allocations {
    /// A new counter at zero. Leaked (8 bytes per test) so that threads
    /// outliving the test can still reach it.
    pub fn new() -> Self {
        Allocations(Box::leak(Box::new(AtomicU64::new(0))))
    }

    /// From now on, this thread's allocations are counted here.
    pub fn count_this_thread(self) {
        COUNTER.with(|c| c.set(Some(self.0)));
    }

    /// Allocations counted so far.
    pub fn so_far(self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
