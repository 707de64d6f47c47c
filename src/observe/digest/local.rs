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
//! where it was found last) and the table gathers the slots when it is
//! read and once a second: exact, and ~85 fewer instructions per `-S`
//! transaction on one thread (callgrind, `Digests::record` and
//! `Observer::record`).

use std::sync::Arc;

use parking_lot::Mutex;

use super::Sample;
use super::counts::LatencyCounts;
use super::entry::LatencyMicros;
use super::tally::Tally;

/// Places remembered per slot (see [`Pending::hints`]): with a handful of
/// hot fingerprints, two seldom share one.
const HINTS: usize = 256;

/// The hint of a fingerprint: its low bits (it is a hash).
#[inline]
fn hint_of(fingerprint: u64) -> usize {
    (fingerprint as usize) & (HINTS - 1)
}

/// Fingerprints a slot tallies between gatherings; queries of others go
/// straight to the shared table (as all did before), so a workload with
/// thousands of fingerprints keeps its hottest ones here and costs no
/// more than it did. Each holds its latency buckets (2 KiB at first).
const FINGERPRINTS: usize = 16;
const _: () = assert!(FINGERPRINTS <= u8::MAX as usize);

/// One thread's slot, on a cache line of its own.
#[repr(align(128))]
pub(super) struct Local(pub(super) Mutex<Pending>);

impl Local {
    pub(super) fn new() -> Local {
        Local(Mutex::new(Pending {
            entries: Vec::new(),
            hints: [0; HINTS],
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
    /// Where a fingerprint was last found, by its low bits (checked, so
    /// one that moved or shares the bits only costs the search). Why not
    /// the last query's place: a transaction runs several statements and
    /// the clients of a thread interleave theirs, so the next query's
    /// fingerprint was seldom the last one's (TPC-B: 5 searches of 6,
    /// ~60 instructions each).
    hints: [u8; HINTS],
    /// Latencies of this thread's queries for the all-query window.
    pub(super) window: LatencyCounts,
}

impl Pending {
    /// Adds `s` if its fingerprint has (or can take) an entry here; false
    /// if the slot is full of others (the caller records it in the table).
    #[inline]
    pub(super) fn add(&mut self, s: &Sample<'_>, micros: LatencyMicros) -> bool {
        let hint = hint_of(s.fingerprint);
        let i = match self.entries.get(usize::from(self.hints[hint])) {
            Some(e) if e.fingerprint == s.fingerprint => usize::from(self.hints[hint]),
            _ => match self.find(s) {
                Some(i) => {
                    // (An index below FINGERPRINTS, which fits.)
                    self.hints[hint] = i as u8;
                    i
                }
                None => return false,
            },
        };
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::Role;
    use crate::observe::digest::entry::LatencyMicros;

    fn add(p: &mut Pending, fingerprint: u64, text: &Arc<str>) -> bool {
        let s = Sample {
            fingerprint,
            normalized: text,
            role: Role::Primary,
            duration: Duration::from_millis(1),
            rows: 1,
            error: false,
        };
        p.add(&s, LatencyMicros::of(s.duration))
    }

    fn calls(p: &Pending, fingerprint: u64) -> u64 {
        p.entries
            .iter()
            .filter(|e| e.fingerprint == fingerprint)
            .map(|e| e.tally.calls)
            .sum()
    }

    /// Fingerprints that share a hint, interleaved, and an entry given
    /// to another fingerprint while a hint still points at it: each
    /// query is counted under its own fingerprint.
    #[test]
    fn hints_are_only_hints() {
        let Local(slot) = Local::new();
        let mut p = slot.into_inner();
        let text: Arc<str> = "q".into();
        let (a, b, c) = (1u64, 1 + HINTS as u64, 2u64);
        for _ in 0..3 {
            for fp in [a, b, c] {
                assert!(add(&mut p, fp, &text));
            }
        }
        assert_eq!((calls(&p, a), calls(&p, b), calls(&p, c)), (3, 3, 3));
        // A gathering leaves a's entry without calls; d takes it.
        p.entries[0].tally.calls = 0;
        let d = 3u64;
        assert!(add(&mut p, d, &text));
        assert!(add(&mut p, a, &text));
        assert_eq!((calls(&p, a), calls(&p, d)), (1, 1));
        assert_eq!(p.entries.len(), 4);
        // Full of others: the table's.
        for fp in 100..100 + FINGERPRINTS as u64 {
            add(&mut p, fp, &text);
        }
        assert_eq!(p.entries.len(), FINGERPRINTS);
        assert!(!add(&mut p, 1_000, &text));
    }
}
