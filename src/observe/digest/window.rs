//! The latency of all queries over the last [`WINDOW_SECONDS`] seconds,
//! kept as one histogram per second so that old seconds drop out: what
//! the `p95_query_time` budget is checked against.

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{latency_histogram, quantile};

/// Length of the window, in one-second slots.
pub(crate) const WINDOW_SECONDS: usize = 30;

/// A ring of per-second histograms, owned by the budget timer.
pub(crate) struct RecentLatency {
    slots: VecDeque<Histogram<u32>>,
}

impl RecentLatency {
    pub(crate) fn new() -> RecentLatency {
        RecentLatency {
            slots: VecDeque::with_capacity(WINDOW_SECONDS + 1),
        }
    }

    /// Adds the latest second's histogram, dropping the oldest slot.
    pub(crate) fn push(&mut self, second: Histogram<u32>) {
        if self.slots.len() == WINDOW_SECONDS {
            self.slots.pop_front();
        }
        self.slots.push_back(second);
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
