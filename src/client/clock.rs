//! The proxy's hot-path clock: [`Tick`], a reading of the monotonic clock
//! in whole nanoseconds, and a held server's [`BatchClock`], read once per
//! batch of frames and shared by everything that asks during that batch
//! (statement start and end, the time a write committed, when the server
//! went back to the pool).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A reading of the monotonic clock, in nanoseconds (on Linux, those of
/// `CLOCK_MONOTONIC`, the clock `Instant` reads).
///
/// Why not `Instant`: a request reads the clock once and then measures
/// against that reading several times (routing's replica health, the
/// checkout's wait, the pool's checks, the statement's duration); each
/// `Instant` subtraction is a call into std's timespec arithmetic (~37
/// instructions with its carries and checks), and `Instant::now` wraps
/// the system call in the same conversion. Nanoseconds in a `u64` make
/// each of those an integer subtraction, and last 584 years from boot.
///
/// Where an `Instant` is needed (the write log, tokio's timers) a tick is
/// converted through one calibration, made once per process: both ways
/// use the same pair of readings, so converting back and forth is exact,
/// and a tick and an `Instant` read at the same moment differ by at most
/// the time between two clock reads (tens of nanoseconds), the converted
/// `Instant` being the later (see [`calibration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(u64);

impl Tick {
    /// The clock now.
    #[inline]
    pub fn now() -> Tick {
        Tick(read_nanos())
    }

    /// Nanoseconds since the clock's origin (on Linux, boot): what a tick
    /// kept in an atomic is.
    #[inline]
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// Nanoseconds from `earlier` to this tick (0 if `earlier` is later).
    #[inline]
    pub fn nanos_since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The time from `earlier` to this tick (zero if `earlier` is later),
    /// as `Instant::saturating_duration_since` gives it.
    #[inline]
    pub fn saturating_duration_since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.nanos_since(earlier))
    }

    /// This tick plus `d`; `None` beyond the clock's range, as
    /// `Instant::checked_add`.
    #[inline]
    pub fn checked_add(self, d: Duration) -> Option<Tick> {
        let nanos = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(nanos).map(Tick)
    }

    /// The tick of `at`, through the process's calibration.
    pub fn of(at: Instant) -> Tick {
        let (instant, tick) = calibration();
        match at.checked_duration_since(instant) {
            Some(after) => Tick(tick.0.saturating_add(nanos_of(after))),
            None => Tick(tick.0.saturating_sub(nanos_of(instant - at))),
        }
    }

    /// The `Instant` of this tick, through the process's calibration (the
    /// calibration's own instant if beyond what `Instant` can hold).
    pub fn instant(self) -> Instant {
        let (instant, tick) = calibration();
        if self >= tick {
            instant.checked_add(Duration::from_nanos(self.0 - tick.0))
        } else {
            instant.checked_sub(Duration::from_nanos(tick.0 - self.0))
        }
        .unwrap_or(instant)
    }
}

/// `d` in whole nanoseconds, saturating.
fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An `Instant` and a tick read back to back, once per process: what
/// converts one into the other. The tick is read first, so that the
/// `Instant` a tick converts to is never earlier than the moment it was
/// read: a write's commit time converted for read-your-writes may come a
/// few nanoseconds late (a replica must have replayed a little more), never
/// early; a request's tick measured against times kept as `Instant`s (the
/// cluster's node health) looks as late, which makes a node look older by
/// as much.
fn calibration() -> (Instant, Tick) {
    static CALIBRATION: OnceLock<(Instant, Tick)> = OnceLock::new();
    *CALIBRATION.get_or_init(|| {
        let tick = Tick::now();
        (Instant::now(), tick)
    })
}

/// `CLOCK_MONOTONIC` in nanoseconds: one call (the vDSO's), then a
/// multiplication and an addition.
#[cfg(target_os = "linux")]
#[inline]
fn read_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC is
    // always available on Linux (std's `Instant::now` reads it the same
    // way), so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // Both fields are non-negative for CLOCK_MONOTONIC.
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Elsewhere, nanoseconds of `Instant` since a process epoch: what the
/// system clock `Instant` reads is not known here, so it is read through
/// `Instant` itself (slower, exact).
#[cfg(not(target_os = "linux"))]
fn read_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Starts at 1 second, so that a tick of an `Instant` read before the
    // epoch does not saturate at once.
    nanos_of(EPOCH.get_or_init(Instant::now).elapsed()).saturating_add(1_000_000_000)
}

/// Why: each clock reading is a vDSO call and the hot path used to make
/// six per transaction (routing, the checkout's wait, the statement's
/// start and end, the release). Frames processed together (one read of
/// the client's or the server's socket) happen within microseconds of each
/// other, so one reading serves them all: a request costs one read when it
/// is taken (`hold::acquire`, carried into the first batch) and one when
/// its answer is processed (reused by the release).
#[derive(Debug, Default)]
pub struct BatchClock {
    now: Option<Tick>,
    /// `now` was read before the first batch (at acquisition) and holds
    /// for that batch too.
    carried: bool,
}

impl BatchClock {
    /// A clock whose first batch happens at `at` (read when the server
    /// was taken).
    pub fn starting_at(at: Tick) -> Self {
        BatchClock {
            now: Some(at),
            carried: true,
        }
    }

    /// A new batch of frames starts: the next [`now`](Self::now) reads the
    /// clock again (except in the first batch, which keeps the
    /// acquisition's reading).
    pub fn next_batch(&mut self) {
        if !std::mem::take(&mut self.carried) {
            self.now = None;
        }
    }

    /// The time of the current batch, read on first use.
    pub fn now(&mut self) -> Tick {
        *self.now.get_or_insert_with(Tick::now)
    }

    /// The last reading, if this batch made one: the release reuses it.
    pub fn last(&self) -> Option<Tick> {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_per_batch_and_the_first_batch_keeps_the_acquisitions() {
        let at = Tick::now();
        let mut clock = BatchClock::starting_at(at);
        clock.next_batch();
        assert_eq!(clock.now(), at, "the first batch is the acquisition's");
        clock.next_batch();
        assert_eq!(clock.last(), None, "a later batch reads again");
        let second = clock.now();
        assert!(second >= at);
        assert_eq!(clock.now(), second, "and only once");
        assert_eq!(clock.last(), Some(second));
    }

    #[test]
    fn ticks_and_instants_convert_both_ways_exactly() {
        let t = Tick::now();
        assert_eq!(Tick::of(t.instant()), t);
        let i = Instant::now();
        assert_eq!(Tick::of(i).instant(), i);
        // Before the calibration too.
        let early = Tick(t.0 - 5_000_000_000);
        assert_eq!(Tick::of(early.instant()), early);
        assert_eq!(
            t.instant().duration_since(early.instant()),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn ticks_follow_the_clock_instants_read() {
        let before = Instant::now();
        let t = Tick::now();
        let after = Instant::now();
        // Converted, a tick is never earlier than the moment it was read
        // (the calibration errs late) and not much later either.
        assert!(t.instant() >= before);
        assert!(t.instant() <= after + Duration::from_millis(100));
        let later = Tick::now();
        assert!(later >= t);
        assert_eq!(
            later.saturating_duration_since(t),
            Duration::from_nanos(later.0 - t.0)
        );
        assert_eq!(t.saturating_duration_since(later), Duration::ZERO);
    }

    #[test]
    fn adding_saturates_into_none_as_instants_do() {
        let t = Tick(10);
        assert_eq!(t.checked_add(Duration::from_nanos(5)), Some(Tick(15)));
        assert_eq!(t.checked_add(Duration::MAX), None);
        assert_eq!(Tick(u64::MAX).checked_add(Duration::from_nanos(1)), None);
    }
}
