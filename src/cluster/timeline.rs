//! The primary's recent history: (time the check query was *sent*, WAL
//! position) samples, from which a replica's lag in seconds and the
//! read-your-writes floor ("first position sampled after t") are read.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::NodeId;
use super::lag::LagMark;
use super::lsn::Lsn;

/// How much history is kept. A replica further behind than this gets no
/// reads whatever `max_replica_lag` says (its lag has no upper bound).
pub const TIMELINE_WINDOW: Duration = Duration::from_secs(600);
/// At most this many distinct positions are kept (10 minutes of a busy
/// primary at the default 100 ms interval is 6000).
pub const TIMELINE_CAPACITY: usize = 8192;

/// Consecutive samples that saw the same position, merged: an idle primary
/// costs one entry however long it idles, and both queries below give the
/// same answers as with every sample kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first_sent: Instant,
    last_sent: Instant,
    lsn: Lsn,
}

/// The newest run, published on its own so the common read-your-writes
/// question (a commit that just happened) is answered without a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub lsn: Lsn,
    /// When the newest sample's query was sent.
    pub last_sent: Instant,
    /// When the last sample of the previous run was sent: for any `t` at or
    /// after it, the first sample sent after `t` is in the newest run.
    pub prev_last_sent: Option<Instant>,
}

impl Head {
    /// `Some(answer)` if the head alone answers [`Timeline::lsn_after`].
    pub(crate) fn lsn_after(&self, t: Instant) -> Option<Option<Lsn>> {
        if self.last_sent <= t {
            Some(None)
        } else if self.prev_last_sent.is_none_or(|p| p <= t) {
            Some(Some(self.lsn))
        } else {
            None
        }
    }
}

/// Samples of one primary. A new primary starts a new timeline, since its
/// positions say nothing about when the old one wrote what.
#[derive(Debug)]
pub(crate) struct Timeline {
    owner: Option<NodeId>,
    runs: VecDeque<Run>,
    window: Duration,
    capacity: usize,
}

impl Timeline {
    /// An empty timeline fed by node `owner` (`None`: no primary).
    pub(crate) fn new(owner: Option<NodeId>) -> Self {
        Timeline::with_limits(owner, TIMELINE_WINDOW, TIMELINE_CAPACITY)
    }

    pub(crate) fn with_limits(owner: Option<NodeId>, window: Duration, capacity: usize) -> Self {
        Timeline {
            owner,
            runs: VecDeque::new(),
            window,
            capacity: capacity.max(1),
        }
    }

    /// The node whose samples this holds.
    pub(crate) fn owner(&self) -> Option<NodeId> {
        self.owner
    }

    /// Adds a sample: the check query was sent at `sent` and saw `lsn`.
    /// A position older than the last one (impossible on one primary)
    /// restarts the history rather than corrupt the ordering searches need.
    pub(crate) fn push(&mut self, sent: Instant, lsn: Lsn) {
        match self.runs.back_mut() {
            Some(last) if last.lsn == lsn => last.last_sent = last.last_sent.max(sent),
            Some(last) if last.lsn > lsn || last.last_sent > sent => {
                self.runs.clear();
                self.runs.push_back(Run::at(sent, lsn));
            }
            _ => self.runs.push_back(Run::at(sent, lsn)),
        }
        while self.runs.len() > self.capacity {
            self.runs.pop_front();
        }
        while self.runs.len() > 1
            && self
                .runs
                .front()
                .is_some_and(|r| sent.saturating_duration_since(r.last_sent) > self.window)
        {
            self.runs.pop_front();
        }
    }

    /// The position seen by the first sample whose query was sent strictly
    /// after `t`; `None` until such a sample exists. If that sample has aged
    /// out, a later (higher) position is returned, which is a stricter floor.
    pub(crate) fn lsn_after(&self, t: Instant) -> Option<Lsn> {
        let i = self.runs.partition_point(|r| r.last_sent <= t);
        self.runs.get(i).map(|r| r.lsn)
    }

    /// The newest run with what lock-free readers need.
    pub(crate) fn head(&self) -> Option<Head> {
        let last = self.runs.back()?;
        let prev = self
            .runs
            .len()
            .checked_sub(2)
            .and_then(|i| self.runs.get(i));
        Some(Head {
            lsn: last.lsn,
            last_sent: last.last_sent,
            prev_last_sent: prev.map(|r| r.last_sent),
        })
    }

    /// How far a replica that has replayed up to `replay` trails.
    ///
    /// Let `k` be the first run beyond `replay`. The primary was still at or
    /// below `replay` when the last sample before `k` was *read*, which was
    /// after that sample was *sent*; so every byte the replica lacks is
    /// younger than that send time, and `now - send time` is an upper bound
    /// on the lag, over by at most one check interval plus a round trip.
    /// (The other choice, `k`'s send time, can under-report by as much.)
    pub(crate) fn mark(&self, replay: Lsn) -> LagMark {
        let k = self.runs.partition_point(|r| r.lsn <= replay);
        match (k, self.runs.front()) {
            (_, None) => LagMark::Unknown,
            (k, _) if k == self.runs.len() => LagMark::CaughtUp,
            (0, Some(oldest)) => LagMark::BeyondTimeline(oldest.first_sent),
            (k, _) => match self.runs.get(k - 1) {
                Some(before) => LagMark::BehindSince(before.last_sent),
                None => LagMark::Unknown,
            },
        }
    }
}

impl Run {
    fn at(sent: Instant, lsn: Lsn) -> Self {
        Run {
            first_sent: sent,
            last_sent: sent,
            lsn,
        }
    }
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
