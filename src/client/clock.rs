//! A held server's clock: read once per batch of frames and shared by
//! everything that asks during that batch (statement start and end, the
//! time a write committed, when the server went back to the pool).

use std::time::Instant;

/// Why: each `Instant::now()` is a vDSO call and the hot path used to make
/// six per transaction (routing, the checkout's wait, the statement's
/// start and end, the release). Frames processed together (one read of
/// the client's or the server's socket) happen within microseconds of each
/// other, so one reading serves them all: a request costs one read when it
/// is taken (`hold::acquire`, carried into the first batch) and one when
/// its answer is processed (reused by the release).
#[derive(Debug, Default)]
pub struct BatchClock {
    now: Option<Instant>,
    /// `now` was read before the first batch (at acquisition) and holds
    /// for that batch too.
    carried: bool,
}

impl BatchClock {
    /// A clock whose first batch happens at `at` (read when the server
    /// was taken).
    pub fn starting_at(at: Instant) -> Self {
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
    pub fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// The last reading, if this batch made one: the release reuses it.
    pub fn last(&self) -> Option<Instant> {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_per_batch_and_the_first_batch_keeps_the_acquisitions() {
        let at = Instant::now();
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
}
