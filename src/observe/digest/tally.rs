//! [`Tally`]: the numbers one fingerprint's statistics add up (calls,
//! errors, rows, times, roles, latency buckets), kept apart from its text
//! and plan so that a worker thread can add into a private one and merge
//! it into the shared table later ([`super::local`]).

use std::time::Duration;

use super::counts::LatencyCounts;
use super::entry::{LatencyMicros, nanos_of};
use crate::cluster::Role;

/// Counts and times of a fingerprint's queries.
pub(crate) struct Tally {
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) rows: u64,
    /// Times in whole nanoseconds (see [`nanos_of`]): adding and
    /// comparing `Duration`s (seconds and nanoseconds, carried) cost
    /// several times as much, once per query.
    pub(crate) total_nanos: u64,
    pub(crate) min_nanos: u64,
    pub(crate) max_nanos: u64,
    /// Calls by role: `[primary, replica]`.
    pub(crate) by_role: [u64; 2],
    /// In the buckets of [`super::latency_histogram`], made a histogram
    /// when a snapshot is taken (see [`LatencyCounts`]).
    pub(crate) latency: LatencyCounts,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            calls: 0,
            errors: 0,
            rows: 0,
            total_nanos: 0,
            min_nanos: u64::MAX,
            max_nanos: 0,
            by_role: [0; 2],
            latency: LatencyCounts::new(),
        }
    }

    /// Adds one query; `micros` is `duration` as the histogram records it.
    #[inline]
    pub(crate) fn add(
        &mut self,
        role: Role,
        duration: Duration,
        micros: LatencyMicros,
        rows: u64,
        error: bool,
    ) {
        self.calls += 1;
        self.errors += u64::from(error);
        self.rows = self.rows.saturating_add(rows);
        let nanos = nanos_of(duration);
        self.total_nanos = self.total_nanos.saturating_add(nanos);
        self.min_nanos = self.min_nanos.min(nanos);
        self.max_nanos = self.max_nanos.max(nanos);
        self.by_role[usize::from(role == Role::Replica)] += 1;
        self.latency.record(micros);
    }

    /// Adds everything counted here into `into` and starts again from
    /// nothing (keeping the latency buckets' allocation).
    pub(crate) fn take_into(&mut self, into: &mut Tally) {
        into.calls += self.calls;
        into.errors += self.errors;
        into.rows = into.rows.saturating_add(self.rows);
        into.total_nanos = into.total_nanos.saturating_add(self.total_nanos);
        into.min_nanos = into.min_nanos.min(self.min_nanos);
        into.max_nanos = into.max_nanos.max(self.max_nanos);
        into.by_role[0] += self.by_role[0];
        into.by_role[1] += self.by_role[1];
        self.latency.take_into_counts(&mut into.latency);
        self.calls = 0;
        self.errors = 0;
        self.rows = 0;
        self.total_nanos = 0;
        self.min_nanos = u64::MAX;
        self.max_nanos = 0;
        self.by_role = [0; 2];
    }
}
