//! The latency of all queries over the last `[budgets] window` seconds,
//! kept as one histogram per second so that old seconds drop out: what
//! the `p95_query_time` budget is checked against.

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{latency_histogram, quantile};

/// A ring of per-second histograms, owned by the budget timer, and their
/// sum.
///
/// Why the sum is kept: the budget is checked every second, and merging
/// the whole window (30 histograms by default) into a new one each time
/// cost more than the hot path of thousands of transactions; adding the
/// new second and taking the oldest away costs two merges, whatever the
/// window.
pub(crate) struct RecentLatency {
    slots: VecDeque<Histogram<u32>>,
    /// The sum of `slots` (the same counts as merging them afresh).
    total: Histogram<u32>,
}

impl RecentLatency {
    pub(crate) fn new() -> RecentLatency {
        RecentLatency {
            slots: VecDeque::new(),
            total: latency_histogram(),
        }
    }

    /// Adds the latest second's histogram, keeping the last `seconds`
    /// slots (the window may change on reload).
    pub(crate) fn push(&mut self, second: Histogram<u32>, seconds: usize) {
        // The sum grows as needed (it auto-resizes like the seconds).
        let mut exact = self.total.add(&second).is_ok();
        self.slots.push_back(second);
        while self.slots.len() > seconds.max(1) {
            if let Some(old) = self.slots.pop_front() {
                exact = exact && self.total.subtract(&old).is_ok();
            }
        }
        if !exact {
            // Not expected (the sum holds every count it is asked to
            // take away); sum the window afresh rather than drift.
            self.total = latency_histogram();
            for slot in &self.slots {
                let _ = self.total.add(slot);
            }
        }
    }

    /// The `q`-quantile over the window; `None` without any query.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.total.is_empty()).then(|| quantile(&self.total, q))
    }
}
