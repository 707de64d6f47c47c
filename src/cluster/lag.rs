//! A replica's freshness as a point in time ("missing WAL the primary wrote
//! after instant X"), packed into one atomic word so the router can read it
//! per transaction without a lock and turn it into seconds with `now`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the monitor knows about how far a replica trails the primary.
/// Storing an instant rather than a number of seconds keeps the lag growing
/// between checks, as real lag does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LagMark {
    /// No primary sample or no replay position yet: freshness is unproven,
    /// so the replica gets no reads.
    Unknown,
    /// Has replayed everything in the newest primary sample: lag 0, even if
    /// the primary has been idle for an hour.
    CaughtUp,
    /// Lacks WAL written after this instant (the conservative bound: lag is
    /// at most `now - since`, see [`Timeline::mark`](super::timeline::Timeline::mark)).
    BehindSince(Instant),
    /// Behind the oldest sample kept: lacks WAL written before this instant,
    /// so its lag is *at least* `now - since`. Never eligible for reads,
    /// since no upper bound is known.
    BeyondTimeline(Instant),
}

impl LagMark {
    /// Lag in time as of `now`; for `BeyondTimeline` a lower bound.
    pub(crate) fn lag(self, now: Instant) -> Option<Duration> {
        match self {
            LagMark::Unknown => None,
            LagMark::CaughtUp => Some(Duration::ZERO),
            LagMark::BehindSince(t) | LagMark::BeyondTimeline(t) => {
                Some(now.saturating_duration_since(t))
            }
        }
    }

    /// Whether the replica is provably no more than `max` behind at `now`.
    /// (The routing path asks [`AtomicLagMark::within_nanos`], tested
    /// against this.)
    #[cfg(test)]
    pub(crate) fn within(self, now: Instant, max: Duration) -> bool {
        match self {
            LagMark::CaughtUp => true,
            LagMark::BehindSince(t) => now.saturating_duration_since(t) <= max,
            LagMark::Unknown | LagMark::BeyondTimeline(_) => false,
        }
    }
}

const TAG_SHIFT: u32 = 62;
const NANOS_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// A [`LagMark`] in one `AtomicU64`: a 2-bit tag and the instant as
/// nanoseconds since the view's epoch (62 bits last 146 years).
#[derive(Debug)]
pub(crate) struct AtomicLagMark(AtomicU64);

impl AtomicLagMark {
    pub(crate) fn new(mark: LagMark, epoch: Instant) -> Self {
        AtomicLagMark(AtomicU64::new(encode(mark, epoch)))
    }

    pub(crate) fn store(&self, mark: LagMark, epoch: Instant) {
        self.0.store(encode(mark, epoch), Ordering::Release);
    }

    /// `self.load(epoch).within(now, max)`, with `now` and `max` as
    /// nanoseconds (since the epoch, and long): the mark is not turned
    /// back into an instant.
    pub(crate) fn within_nanos(&self, now: u64, max: u64) -> bool {
        let bits = self.0.load(Ordering::Acquire);
        match bits >> TAG_SHIFT {
            1 => true,
            2 => now.saturating_sub(bits & NANOS_MASK) <= max,
            _ => false,
        }
    }

    pub(crate) fn load(&self, epoch: Instant) -> LagMark {
        let bits = self.0.load(Ordering::Acquire);
        let at = epoch + Duration::from_nanos(bits & NANOS_MASK);
        match bits >> TAG_SHIFT {
            0 => LagMark::Unknown,
            1 => LagMark::CaughtUp,
            2 => LagMark::BehindSince(at),
            _ => LagMark::BeyondTimeline(at),
        }
    }
}

fn encode(mark: LagMark, epoch: Instant) -> u64 {
    let nanos = |t: Instant| {
        let n = t.saturating_duration_since(epoch).as_nanos();
        u64::try_from(n).unwrap_or(u64::MAX).min(NANOS_MASK)
    };
    match mark {
        LagMark::Unknown => 0,
        LagMark::CaughtUp => 1 << TAG_SHIFT,
        LagMark::BehindSince(t) => (2 << TAG_SHIFT) | nanos(t),
        LagMark::BeyondTimeline(t) => (3 << TAG_SHIFT) | nanos(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_the_atomic_round_trip() {
        let epoch = Instant::now();
        let t = epoch + Duration::from_millis(1234);
        let cell = AtomicLagMark::new(LagMark::Unknown, epoch);
        for mark in [
            LagMark::Unknown,
            LagMark::CaughtUp,
            LagMark::BehindSince(t),
            LagMark::BeyondTimeline(t),
        ] {
            cell.store(mark, epoch);
            assert_eq!(cell.load(epoch), mark);
        }
    }

    #[test]
    fn within_in_nanoseconds_agrees_with_within() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let cell = AtomicLagMark::new(LagMark::Unknown, epoch);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap();
        for mark in [
            LagMark::Unknown,
            LagMark::CaughtUp,
            LagMark::BehindSince(epoch + ms(1000)),
            LagMark::BeyondTimeline(epoch + ms(1000)),
        ] {
            cell.store(mark, epoch);
            for now in [0, 500, 1000, 1999, 2000, 2001, 50_000] {
                for max in [Duration::ZERO, ms(1000), Duration::MAX] {
                    let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
                    assert_eq!(
                        cell.within_nanos(nanos(ms(now)), max_nanos),
                        mark.within(epoch + ms(now), max),
                        "{mark:?} at {now} ms, max {max:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn lag_grows_with_now_and_only_proven_freshness_is_within() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3);
        let max = Duration::from_secs(1);
        assert_eq!(LagMark::CaughtUp.lag(later), Some(Duration::ZERO));
        assert!(LagMark::CaughtUp.within(later, Duration::ZERO));
        assert_eq!(
            LagMark::BehindSince(t0).lag(later),
            Some(Duration::from_secs(3))
        );
        assert!(!LagMark::BehindSince(t0).within(later, max));
        assert!(LagMark::BehindSince(t0).within(t0 + Duration::from_millis(900), max));
        assert_eq!(
            LagMark::BeyondTimeline(t0).lag(later),
            Some(Duration::from_secs(3))
        );
        assert!(!LagMark::BeyondTimeline(later).within(later, max));
        assert_eq!(LagMark::Unknown.lag(later), None);
        assert!(!LagMark::Unknown.within(later, Duration::MAX));
    }
}
