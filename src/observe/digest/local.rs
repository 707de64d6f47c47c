//! Per-thread pending digest statistics: what a worker thread's queries
//! added since the table last gathered them ([`super::Digests::gather`]).
//!
//! Why: a query's statistics went to the shared table, where finding
//! the fingerprint hashes it and moves its LRU node, and where, with more
//! than one worker thread (`worker_threads = 0`), every worker's queries
//! of the hot statement (pgbench's, or any app's most frequent one) hit
//! the same lock, node, counters and bucket, moving those cache lines
//! between cores on every query. A thread now adds into its own slot (a
//! lock only it takes, on its own cache line, and the fingerprint found
//! where the last query's was) and the table gathers the slots when it is
//! read and once a second: exact, and ~85 fewer instructions per `-S`
//! transaction on one thread (callgrind, `Digests::record` and
//! `Observer::record`).

use std::sync::Arc;

use parking_lot::Mutex;

use super::Sample;
use super::counts::LatencyCounts;
use super::entry::LatencyMicros;
use super::tally::Tally;

/// Fingerprints a slot tallies between gatherings; queries of others go
/// straight to the shared table (as all did before), so a workload with
/// thousands of fingerprints keeps its hottest ones here and costs no
/// more than it did. Each holds its latency buckets (2 KiB at first).
const FINGERPRINTS: usize = 16;

/// One thread's slot, on a cache line of its own.
#[repr(align(128))]
pub(super) struct Local(pub(super) Mutex<Pending>);

impl Local {
    pub(super) fn new() -> Local {
        Local(Mutex::new(Pending {
            entries: Vec::new(),
            last: 0,
            window: LatencyCounts::new(),
        }))
    }
}

/// A fingerprint's queries since the last gathering. Kept (with zero
/// calls) after it, so that the hot fingerprint keeps its place and its
/// buckets: an entry with no calls may be taken by another fingerprint.
pub(super) struct Entry {
    pub(super) fingerprint: u64,
    pub(super) normalized: Arc<str>,
    pub(super) tally: Tally,
}

pub(super) struct Pending {
    pub(super) entries: Vec<Entry>,
    /// Where the last query's fingerprint was found: nearly always the
    /// next one's too.
    last: usize,
    /// Latencies of this thread's queries for the all-query window.
    pub(super) window: LatencyCounts,
}

impl Pending {
    /// Adds `s` if its fingerprint has (or can take) an entry here; false
    /// if the slot is full of others (the caller records it in the table).
    #[inline]
    pub(super) fn add(&mut self, s: &Sample<'_>, micros: LatencyMicros) -> bool {
        let i = match self.entries.get(self.last) {
            Some(e) if e.fingerprint == s.fingerprint => self.last,
            _ => match self.find(s) {
                Some(i) => i,
                None => return false,
            },
        };
        self.last = i;
        self.entries[i]
            .tally
            .add(s.role, s.duration, micros, s.rows, s.error);
        self.window.record(micros);
        true
    }

    /// The entry of `s`'s fingerprint, a free one given to it, or a new
    /// one if there is room.
    #[cold]
    fn find(&mut self, s: &Sample<'_>) -> Option<usize> {
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.fingerprint == s.fingerprint)
        {
            return Some(i);
        }
        if let Some(i) = self.entries.iter().position(|e| e.tally.calls == 0) {
            let e = &mut self.entries[i];
            e.fingerprint = s.fingerprint;
            e.normalized = s.normalized.clone();
            return Some(i);
        }
        if self.entries.len() < FINGERPRINTS {
            self.entries.push(Entry {
                fingerprint: s.fingerprint,
                normalized: s.normalized.clone(),
                tally: Tally::new(),
            });
            return Some(self.entries.len() - 1);
        }
        None
    }
}
