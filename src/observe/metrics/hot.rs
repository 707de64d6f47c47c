//! Per-thread buffers for the metrics every transaction touches
//! (`queries_total`, `query_duration_seconds`, `pool_wait_seconds`,
//! `transactions_total`, `routing_decisions_total`), added into the
//! registered metrics whenever the registry is read.
//!
//! Why: a Prometheus counter or histogram is a handful of atomics shared by
//! every worker thread; bumping them from two cores on every transaction
//! moves their cache lines back and forth, which cost about 4 % of `-S`
//! throughput. Each thread instead counts into its own shard (a mutex only
//! that thread takes, on its own cache line), and a scrape takes the
//! shards' counts: exact, and the hot path touches nothing shared.

use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{Histogram, IntCounter};

use super::labels::LabelCache;
use crate::observe::thread_slot;

/// One thread's counts since the last flush.
struct Shard {
    /// `[primary, replica]` per configured node.
    queries: Vec<[LocalIntCounter; 2]>,
    query_duration: [LocalHistogram; 2],
    pool_wait: LocalHistogram,
    /// Per routing reason, found by pointer (the reasons are static).
    routing: Vec<(&'static str, u64)>,
    /// Where in `routing` the last reason counted is.
    last_routing: usize,
}

impl Shard {
    /// Why by pointer first: the reasons are static strings, so the same
    /// reason is nearly always the same pointer, and comparing the text of
    /// every entry passed on the way cost a `memcmp` call each. Why the
    /// last one first: a load routes most requests for one reason, and
    /// walking the entries before it cost ~30 instructions a transaction.
    #[inline]
    fn count_routing(&mut self, reason: &'static str) {
        if let Some((r, n)) = self.routing.get_mut(self.last_routing)
            && std::ptr::eq(*r, reason)
        {
            *n += 1;
            return;
        }
        match self
            .routing
            .iter()
            .position(|(r, _)| std::ptr::eq(*r, reason))
        {
            Some(i) => {
                self.routing[i].1 += 1;
                self.last_routing = i;
            }
            None => self.count_routing_by_text(reason),
        }
    }

    /// The same text at another address (one string per crate that
    /// names it), or a reason not seen yet.
    #[cold]
    #[inline(never)]
    fn count_routing_by_text(&mut self, reason: &'static str) {
        match self.routing.iter().position(|(r, _)| *r == reason) {
            Some(i) => {
                self.routing[i].1 += 1;
                self.last_routing = i;
            }
            None => {
                self.last_routing = self.routing.len();
                self.routing.push((reason, 1));
            }
        }
    }
}

/// Keeps the shard on a cache line of its own.
#[repr(align(128))]
struct Padded {
    shard: Mutex<Shard>,
    /// `transactions_total` since the last flush. Why an atomic beside
    /// the lock rather than a counter under it: it is counted alone, once
    /// per transaction, and one atomic add costs a fraction of taking and
    /// releasing the lock (a shard shared by two threads stays exact).
    transactions: AtomicU64,
}

pub(crate) struct Hot {
    shards: Box<[Padded]>,
    routing: LabelCache,
    transactions: IntCounter,
}

/// The global handles a shard flushes into.
pub(crate) struct Targets<'a> {
    pub(crate) queries: &'a [[IntCounter; 2]],
    pub(crate) query_duration: &'a [Histogram; 2],
    pub(crate) pool_wait: &'a Histogram,
    pub(crate) transactions: &'a IntCounter,
}

impl Hot {
    pub(crate) fn new(t: &Targets<'_>, routing: LabelCache) -> Hot {
        let shards = (0..thread_slot::SLOTS)
            .map(|_| Padded {
                shard: Mutex::new(Shard {
                    queries: t
                        .queries
                        .iter()
                        .map(|q| q.each_ref().map(|c| c.local()))
                        .collect(),
                    query_duration: t.query_duration.each_ref().map(|h| h.local()),
                    pool_wait: t.pool_wait.local(),
                    routing: Vec::new(),
                    last_routing: 0,
                }),
                transactions: AtomicU64::new(0),
            })
            .collect();
        Hot {
            shards,
            routing,
            transactions: t.transactions.clone(),
        }
    }

    fn shard(&self) -> MutexGuard<'_, Shard> {
        self.shards[thread_slot::index()].shard.lock()
    }

    /// Counts a statement; false if `node` has no counters (the node list
    /// changed without a restart), for the caller to count it elsewhere.
    pub(crate) fn query(&self, role: usize, node: usize, duration: Duration) -> bool {
        let shard = &mut *self.shard();
        shard.query_duration[role].observe(duration.as_secs_f64());
        match shard.queries.get_mut(node) {
            Some(counters) => {
                counters[role].inc();
                true
            }
            None => false,
        }
    }

    pub(crate) fn pool_wait(&self, waited: Duration) {
        self.shard().pool_wait.observe(waited.as_secs_f64());
    }

    #[inline]
    pub(crate) fn transaction(&self) {
        self.shards[thread_slot::index()]
            .transactions
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn routing(&self, reason: &'static str) {
        self.shard().count_routing(reason);
    }

    /// A request routed for `reason` took a server after `waited`: both
    /// counted under one lock of the shard.
    pub(crate) fn acquired(&self, reason: &'static str, waited: Duration) {
        let shard = &mut *self.shard();
        shard.count_routing(reason);
        shard.pool_wait.observe(waited.as_secs_f64());
    }

    /// The routing counters, by label (also counted into directly).
    pub(crate) fn routing_labels(&self) -> &LabelCache {
        &self.routing
    }

    /// Adds every shard's counts into the registered metrics.
    pub(crate) fn flush(&self) {
        for padded in self.shards.iter() {
            let n = padded.transactions.swap(0, Ordering::Relaxed);
            if n > 0 {
                self.transactions.inc_by(n);
            }
            let shard = &mut *padded.shard.lock();
            for counters in &shard.queries {
                counters.iter().for_each(LocalIntCounter::flush);
            }
            shard.query_duration.iter().for_each(LocalHistogram::flush);
            shard.pool_wait.flush();
            for (reason, n) in &mut shard.routing {
                if *n > 0 {
                    self.routing.get(reason).inc_by(*n);
                    *n = 0;
                }
            }
        }
    }
}
