//! The latency of all queries over the last `[budgets] window` seconds,
//! kept as one histogram per second so that old seconds drop out: what
//! the `p95_query_time` budget is checked against.

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{latency_histogram, quantile};

/// A ring of per-second histograms, owned by the budget timer.
pub(crate) struct RecentLatency {
    slots: VecDeque<Histogram<u32>>,
}

impl RecentLatency {
    pub(crate) fn new() -> RecentLatency {
        RecentLatency {
            slots: VecDeque::new(),
        }
    }

    /// Adds the latest second's histogram, keeping the last `seconds`
    /// slots (the window may change on reload).
    pub(crate) fn push(&mut self, second: Histogram<u32>, seconds: usize) {
        self.slots.push_back(second);
        while self.slots.len() > seconds.max(1) {
            self.slots.pop_front();
        }
    }

    /// The `q`-quantile over the window; `None` without any query.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let mut all = latency_histogram();
        for slot in &self.slots {
            let _ = all.add(slot);
        }
        (!all.is_empty()).then(|| quantile(&all, q))
    }
}
