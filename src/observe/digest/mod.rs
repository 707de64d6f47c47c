//! Query digests: statistics per query fingerprint, bounded by
//! `observability.max_fingerprints` in number and by
//! `observability.max_query_text` / `max_query_memory` in bytes of text
//! and plans, plus the recent all-query latency window the p95 budget is
//! checked against.
//!
//! Many worker threads record at once, so the table is split into shards
//! (a mutex each) chosen by fingerprint: two queries contend only if their
//! fingerprints share a shard. Each shard is an LRU of its share of the
//! bound, so eviction is least-recently-seen per shard — close to global
//! LRU when fingerprints spread evenly, which hashes do.
//!
//! A worker thread first adds into its own slot (`local`): the table
//! gathers the slots whenever it is read and once a second (the window
//! timer), so reads are exact and recency is the gathering's.

mod counts;
mod entry;
mod local;
mod tally;
mod window;

#[cfg(test)]
mod tests;

use parking_lot::{Mutex, MutexGuard};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lru::LruCache;

use counts::LatencyCounts;
use entry::{Digest, LatencyMicros};
pub use entry::{DigestSnapshot, PlanSample};
pub(crate) use entry::{latency_histogram, nanos_of, quantile};
use local::Local;
pub(crate) use window::RecentLatency;

use crate::cluster::Role;
use crate::observe::thread_slot;

/// Shards at most (fewer when the bound is smaller, so none is empty).
const MAX_SHARDS: usize = 16;

struct Shard {
    digests: LruCache<u64, Digest>,
    /// Text and plan bytes its digests hold ([`Digest::bytes`]).
    bytes: usize,
    /// Latencies of every query since the window timer last took them.
    window: LatencyCounts,
}

impl Shard {
    /// Forgets least recently seen digests (never `keep`) until `more`
    /// bytes fit in `budget`.
    fn make_room(&mut self, more: usize, budget: usize, keep: Option<u64>) {
        while self.bytes + more > budget {
            let Some((&fp, _)) = self.digests.peek_lru() else {
                return;
            };
            if Some(fp) == keep {
                // The one being grown is the oldest: demote the others.
                if self.digests.len() == 1 {
                    return;
                }
                self.digests.promote(&fp);
                continue;
            }
            if let Some(old) = self.digests.pop(&fp) {
                self.bytes -= old.bytes();
            }
        }
    }
}

/// Default bytes of text per fingerprint and in all (the config's).
const DEFAULT_TEXT: usize = 8 * 1024;
const DEFAULT_MEMORY: usize = 16 * 1024 * 1024;

/// One finished query, as the digest table needs it.
pub(crate) struct Sample<'a> {
    pub(crate) fingerprint: u64,
    pub(crate) normalized: &'a Arc<str>,
    pub(crate) role: Role,
    pub(crate) duration: Duration,
    pub(crate) rows: u64,
    pub(crate) error: bool,
}

/// The digest table.
pub(crate) struct Digests {
    shards: Box<[Mutex<Shard>]>,
    /// Per-thread pending tallies ([`thread_slot::index`]).
    locals: Box<[Local]>,
    /// Bytes of text kept per fingerprint.
    max_text: AtomicUsize,
    /// Each shard's share of the bytes all digests may hold.
    shard_bytes: AtomicUsize,
}

impl Digests {
    /// A table holding at most `max` fingerprints (at least one per shard).
    pub(crate) fn new(max: usize) -> Digests {
        let count = MAX_SHARDS.min(max.max(1));
        let shards = (0..count)
            .map(|i| {
                Mutex::new(Shard {
                    digests: LruCache::new(share(max, count, i)),
                    bytes: 0,
                    window: LatencyCounts::new(),
                })
            })
            .collect();
        let digests = Digests {
            shards,
            locals: (0..thread_slot::SLOTS).map(|_| Local::new()).collect(),
            max_text: AtomicUsize::new(0),
            shard_bytes: AtomicUsize::new(0),
        };
        digests.set_byte_limits(DEFAULT_TEXT, DEFAULT_MEMORY);
        digests
    }

    /// Sets the bytes of text kept per new fingerprint and the bytes all
    /// may hold (a reload), forgetting the least recently seen to fit.
    pub(crate) fn set_byte_limits(&self, max_text: usize, max_memory: usize) {
        let per_shard = max_memory / self.shards.len();
        self.max_text.store(max_text, Ordering::Relaxed);
        self.shard_bytes.store(per_shard, Ordering::Relaxed);
        for shard in self.shards.iter() {
            shard.lock().make_room(0, per_shard, None);
        }
    }

    /// Text and plan bytes held by every digest.
    pub fn bytes(&self) -> usize {
        self.gather();
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// Changes the bound (a reload), evicting least recently seen entries.
    pub(crate) fn resize(&self, max: usize) {
        let count = self.shards.len();
        for (i, shard) in self.shards.iter().enumerate() {
            let mut shard = shard.lock();
            let cap = share(max, count, i);
            while shard.digests.len() > cap.get() {
                if let Some((_, old)) = shard.digests.pop_lru() {
                    shard.bytes -= old.bytes();
                }
            }
            shard.digests.resize(cap);
        }
    }

    /// Adds a finished query. With `claim = Some((interval, now))`, if no
    /// plan was requested for this fingerprint within `interval`, claims
    /// one and returns true (the caller then queues the request).
    pub(crate) fn record(&self, s: &Sample<'_>, claim: Option<(Duration, Instant)>) -> bool {
        let micros = LatencyMicros::of(s.duration);
        // Nearly every query: counted in this thread's slot. A claim needs
        // the table's last request time, and a slot full of other
        // fingerprints leaves the query to the table.
        if claim.is_none() && self.locals[thread_slot::index()].0.lock().add(s, micros) {
            return false;
        }
        let mut shard = self.shard(s.fingerprint);
        let shard = &mut *shard;
        shard.window.record(micros);
        self.with_entry(shard, s.fingerprint, s.normalized, |digest| {
            digest
                .tally
                .add(s.role, s.duration, micros, s.rows, s.error);
            claim.is_some_and(|(interval, now)| digest.claim_explain(now, interval))
        })
    }

    /// Runs `f` on `fingerprint`'s digest in `shard` (made most recent),
    /// added first if new (making room for its text).
    fn with_entry<R>(
        &self,
        shard: &mut Shard,
        fingerprint: u64,
        normalized: &Arc<str>,
        f: impl FnOnce(&mut Digest) -> R,
    ) -> R {
        // A known fingerprint (nearly always): one hash lookup, not a
        // `contains` and then a `get_mut`.
        if let Some(digest) = shard.digests.get_mut(&fingerprint) {
            return f(digest);
        }
        let mut digest = Digest::new(capped(normalized, self.max_text.load(Ordering::Relaxed)));
        let result = f(&mut digest);
        let budget = self.shard_bytes.load(Ordering::Relaxed);
        shard.make_room(digest.bytes(), budget, None);
        shard.bytes += digest.bytes();
        if let Some((_, old)) = shard.digests.push(fingerprint, digest) {
            shard.bytes -= old.bytes();
        }
        result
    }

    /// Adds every thread's pending tallies into the table (before it is
    /// read, and once a second by the window timer).
    fn gather(&self) {
        for local in self.locals.iter() {
            let mut pending = local.0.lock();
            for e in pending.entries.iter_mut().filter(|e| e.tally.calls > 0) {
                let mut shard = self.shard(e.fingerprint);
                self.with_entry(&mut shard, e.fingerprint, &e.normalized, |digest| {
                    e.tally.take_into(&mut digest.tally);
                });
            }
        }
    }

    /// Gives a claim back (the request could not be queued).
    pub(crate) fn unclaim_explain(&self, fingerprint: u64) {
        if let Some(d) = self.shard(fingerprint).digests.peek_mut(&fingerprint) {
            d.explain_requested = None;
        }
    }

    /// Stores a sampled plan (if the fingerprint is still kept), making
    /// room for its bytes among the other digests of its shard.
    /// A plan that could not fit in the shard's share even alone is not
    /// kept.
    pub(crate) fn set_plan(&self, fingerprint: u64, plan: Arc<PlanSample>) {
        let budget = self.shard_bytes.load(Ordering::Relaxed);
        let mut shard = self.shard(fingerprint);
        let shard = &mut *shard;
        let Some(d) = shard.digests.peek_mut(&fingerprint) else {
            return;
        };
        let (old, new) = (d.bytes(), d.normalized.len() + plan.bytes);
        if new > budget {
            return;
        }
        d.plan = Some(plan);
        shard.bytes = shard.bytes - old + new;
        shard.make_room(0, budget, Some(fingerprint));
    }

    /// Copies of every digest (unordered). Touches recency only by
    /// gathering the threads' tallies first.
    pub(crate) fn snapshots(&self) -> Vec<DigestSnapshot> {
        self.gather();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            out.extend(shard.digests.iter().map(|(fp, d)| d.snapshot(*fp)));
        }
        out
    }

    /// One fingerprint's statistics.
    pub(crate) fn get(&self, fingerprint: u64) -> Option<DigestSnapshot> {
        self.gather();
        let shard = self.shard(fingerprint);
        shard
            .digests
            .peek(&fingerprint)
            .map(|d| d.snapshot(fingerprint))
    }

    /// Fingerprints kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.gather();
        self.shards.iter().map(|s| s.lock().digests.len()).sum()
    }

    /// Moves every shard's window into `into` (which then holds the
    /// latencies recorded since the previous call).
    pub(crate) fn take_window(&self, into: &mut Histogram<u32>) {
        self.gather();
        for local in self.locals.iter() {
            local.0.lock().window.take_into(into);
        }
        for shard in self.shards.iter() {
            shard.lock().window.take_into(into);
        }
    }

    fn shard(&self, fingerprint: u64) -> MutexGuard<'_, Shard> {
        // Fibonacci hashing spreads fingerprints with poor low bits too.
        let mixed = fingerprint.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let high = (mixed >> 32) as usize;
        let count = self.shards.len();
        // The same shard as `%`, without a division when the count is a
        // power of two (always, past 16 fingerprints): once per query.
        let index = if count.is_power_of_two() {
            high & (count - 1)
        } else {
            high % count
        };
        self.shards[index].lock()
    }
}

/// `text` if it has at most `max` bytes, else its first `max` bytes (on
/// a character boundary) and `…`, in an allocation of their own.
fn capped(text: &Arc<str>, max: usize) -> Arc<str> {
    if text.len() <= max {
        return text.clone();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(format!("{}…", &text[..end]))
}

/// Shard `i`'s share of `max` entries among `count` shards (at least 1).
fn share(max: usize, count: usize, i: usize) -> NonZeroUsize {
    let n = max / count + usize::from(i < max % count);
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}
