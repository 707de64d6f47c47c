//! Lag and read-your-writes floors computed from a primary timeline.

use std::time::{Duration, Instant};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Samples every 100 ms from `t0`, with the given positions.
fn timeline(t0: Instant, lsns: &[u64]) -> Timeline {
    let mut tl = Timeline::new(Some(0));
    for (i, lsn) in lsns.iter().enumerate() {
        tl.push(t0 + ms(100 * i as u64), Lsn(*lsn));
    }
    tl
}

#[test]
fn empty_timeline_knows_nothing() {
    let tl = Timeline::new(Some(0));
    assert_eq!(tl.mark(Lsn(10)), LagMark::Unknown);
    assert_eq!(tl.lsn_after(Instant::now()), None);
    assert_eq!(tl.head().map(|h| h.lsn), None);
    assert_eq!(tl.head(), None);
}

#[test]
fn idle_primary_and_caught_up_replica_means_zero_lag() {
    let t0 = Instant::now();
    // One write, then an hour of idling: still one run.
    let mut tl = timeline(t0, &[50, 100]);
    for i in 2..36_000 {
        tl.push(t0 + ms(100 * i), Lsn(100));
    }
    assert_eq!(
        tl.runs.len(),
        1,
        "old runs aged out, the idle run is merged"
    );
    assert_eq!(tl.mark(Lsn(100)), LagMark::CaughtUp);
    let now = t0 + Duration::from_secs(3600);
    assert_eq!(tl.mark(Lsn(100)).lag(now), Some(Duration::ZERO));
    // Ahead of the last sample (the replica was checked later): also 0.
    assert_eq!(tl.mark(Lsn(120)), LagMark::CaughtUp);
}

#[test]
fn replica_behind_a_known_sample_lags_since_the_sample_before_it() {
    let t0 = Instant::now();
    // Sent at t0, +100, +200, +300 ms.
    let tl = timeline(t0, &[10, 20, 30, 40]);
    // Replayed up to 20: the primary was at 20 when the +100 ms sample was
    // sent, so the missing WAL is younger than that.
    assert_eq!(tl.mark(Lsn(20)), LagMark::BehindSince(t0 + ms(100)));
    assert_eq!(tl.mark(Lsn(25)), LagMark::BehindSince(t0 + ms(100)));
    let now = t0 + ms(1600);
    assert_eq!(tl.mark(Lsn(20)).lag(now), Some(ms(1500)));
    assert!(tl.mark(Lsn(20)).within(now, ms(1500)));
    assert!(!tl.mark(Lsn(20)).within(now, ms(1499)));
}

#[test]
fn merged_runs_use_their_last_send_time() {
    let t0 = Instant::now();
    // Idle at 20 from +100 to +300 ms, then a write.
    let tl = timeline(t0, &[10, 20, 20, 20, 30]);
    assert_eq!(tl.mark(Lsn(20)), LagMark::BehindSince(t0 + ms(300)));
}

#[test]
fn behind_the_oldest_sample_is_at_least_that_old_and_never_fresh() {
    let t0 = Instant::now();
    let tl = timeline(t0, &[10, 20, 30]);
    let mark = tl.mark(Lsn(5));
    assert_eq!(mark, LagMark::BeyondTimeline(t0));
    assert_eq!(mark.lag(t0 + ms(400)), Some(ms(400)));
    assert!(!mark.within(t0 + ms(400), Duration::from_secs(3600)));
}

#[test]
fn lsn_after_is_the_first_sample_sent_strictly_later() {
    let t0 = Instant::now();
    let tl = timeline(t0, &[10, 20, 20, 30]);
    assert_eq!(tl.lsn_after(t0 - ms(1)), Some(Lsn(10)));
    assert_eq!(tl.lsn_after(t0), Some(Lsn(20)), "sent at t is not after t");
    assert_eq!(tl.lsn_after(t0 + ms(150)), Some(Lsn(20)));
    assert_eq!(tl.lsn_after(t0 + ms(250)), Some(Lsn(30)));
    assert_eq!(tl.lsn_after(t0 + ms(300)), None, "not sampled yet");
    assert_eq!(tl.head().map(|h| h.lsn), Some(Lsn(30)));
}

#[test]
fn the_head_answers_recent_questions_and_defers_older_ones() {
    let t0 = Instant::now();
    let tl = timeline(t0, &[10, 20, 30, 30]);
    let head = tl.head().unwrap();
    assert_eq!(head.prev_last_sent, Some(t0 + ms(100)));
    for t in [
        t0 - ms(1),
        t0,
        t0 + ms(50),
        t0 + ms(100),
        t0 + ms(250),
        t0 + ms(300),
    ] {
        if let Some(answer) = head.lsn_after(t) {
            assert_eq!(answer, tl.lsn_after(t), "at {:?}", t - t0);
        } else {
            assert!(t < t0 + ms(100), "deferred only for older t");
        }
    }
    assert_eq!(head.lsn_after(t0 + ms(300)), Some(None));
    assert_eq!(head.lsn_after(t0 + ms(150)), Some(Some(Lsn(30))));
}

#[test]
fn history_is_bounded_by_window_and_capacity() {
    let t0 = Instant::now();
    let mut tl = Timeline::with_limits(Some(0), Duration::from_secs(1), 5);
    for i in 0..8 {
        tl.push(t0 + ms(100 * i), Lsn(i + 1));
    }
    assert_eq!(tl.runs.len(), 5, "capacity");
    assert_eq!(tl.mark(Lsn(1)), LagMark::BeyondTimeline(t0 + ms(300)));
    tl.push(t0 + ms(3000), Lsn(100));
    assert_eq!(
        tl.runs.len(),
        1,
        "everything but the newest is over a second old"
    );
}

#[test]
fn a_position_going_backwards_restarts_the_history() {
    let t0 = Instant::now();
    let mut tl = timeline(t0, &[10, 20, 30]);
    tl.push(t0 + ms(300), Lsn(15));
    assert_eq!(tl.runs.len(), 1);
    assert_eq!(tl.head().map(|h| h.lsn), Some(Lsn(15)));
    assert_eq!(tl.mark(Lsn(12)), LagMark::BeyondTimeline(t0 + ms(300)));
}
