//! Query digests: statistics per query fingerprint, bounded by
//! `observability.max_fingerprints`, plus the recent all-query latency
//! window the p95 budget is checked against.
//!
//! Many worker threads record at once, so the table is split into shards
//! (a mutex each) chosen by fingerprint: two queries contend only if their
//! fingerprints share a shard. Each shard is an LRU of its share of the
//! bound, so eviction is least-recently-seen per shard — close to global
//! LRU when fingerprints spread evenly, which hashes do.

mod entry;
mod window;

#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lru::LruCache;

use entry::{Digest, record_latency};
pub use entry::{DigestSnapshot, PlanSample};
pub(crate) use entry::{latency_histogram, quantile};
pub(crate) use window::RecentLatency;

use crate::cluster::Role;

/// Shards at most (fewer when the bound is smaller, so none is empty).
const MAX_SHARDS: usize = 16;

struct Shard {
    digests: LruCache<u64, Digest>,
    /// Latencies of every query since the window timer last took them.
    window: Histogram<u32>,
}

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
}

impl Digests {
    /// A table holding at most `max` fingerprints (at least one per shard).
    pub(crate) fn new(max: usize) -> Digests {
        let count = MAX_SHARDS.min(max.max(1));
        let shards = (0..count)
            .map(|i| {
                Mutex::new(Shard {
                    digests: LruCache::new(share(max, count, i)),
                    window: latency_histogram(),
                })
            })
            .collect();
        Digests { shards }
    }

    /// Changes the bound (a reload), evicting least recently seen entries.
    pub(crate) fn resize(&self, max: usize) {
        let count = self.shards.len();
        for (i, shard) in self.shards.iter().enumerate() {
            lock(shard).digests.resize(share(max, count, i));
        }
    }

    /// Adds a finished query. With `claim = Some((interval, now))`, if no
    /// plan was requested for this fingerprint within `interval`, claims
    /// one and returns true (the caller then queues the request).
    pub(crate) fn record(&self, s: &Sample<'_>, claim: Option<(Duration, Instant)>) -> bool {
        let mut shard = self.shard(s.fingerprint);
        let shard = &mut *shard;
        record_latency(&mut shard.window, s.duration);
        let digest = shard
            .digests
            .get_or_insert_mut(s.fingerprint, || Digest::new(s.normalized.clone()));
        digest.add(s.role, s.duration, s.rows, s.error);
        claim.is_some_and(|(interval, now)| digest.claim_explain(now, interval))
    }

    /// Gives a claim back (the request could not be queued).
    pub(crate) fn unclaim_explain(&self, fingerprint: u64) {
        if let Some(d) = self.shard(fingerprint).digests.peek_mut(&fingerprint) {
            d.explain_requested = None;
        }
    }

    /// Stores a sampled plan (if the fingerprint is still kept).
    pub(crate) fn set_plan(&self, fingerprint: u64, plan: Arc<PlanSample>) {
        if let Some(d) = self.shard(fingerprint).digests.peek_mut(&fingerprint) {
            d.plan = Some(plan);
        }
    }

    /// Copies of every digest (unordered). Does not touch recency.
    pub(crate) fn snapshots(&self) -> Vec<DigestSnapshot> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            out.extend(shard.digests.iter().map(|(fp, d)| d.snapshot(*fp)));
        }
        out
    }

    /// One fingerprint's statistics.
    pub(crate) fn get(&self, fingerprint: u64) -> Option<DigestSnapshot> {
        let shard = self.shard(fingerprint);
        shard
            .digests
            .peek(&fingerprint)
            .map(|d| d.snapshot(fingerprint))
    }

    /// Fingerprints kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).digests.len()).sum()
    }

    /// Moves every shard's window into `into` (which then holds the
    /// latencies recorded since the previous call).
    pub(crate) fn take_window(&self, into: &mut Histogram<u32>) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            // Both histograms auto-resize, so adding cannot run out of range.
            let _ = into.add(&shard.window);
            shard.window.reset();
        }
    }

    fn shard(&self, fingerprint: u64) -> MutexGuard<'_, Shard> {
        // Fibonacci hashing spreads fingerprints with poor low bits too.
        let mixed = fingerprint.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let index = (mixed >> 32) as usize % self.shards.len();
        lock(&self.shards[index])
    }
}

/// Shard `i`'s share of `max` entries among `count` shards (at least 1).
fn share(max: usize, count: usize, i: usize) -> NonZeroUsize {
    let n = max / count + usize::from(i < max % count);
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
