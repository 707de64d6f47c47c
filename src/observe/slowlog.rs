//! The slow-query log: one structured event (target `slow_query`) per
//! query over `observability.slow_query_threshold`, with the normalised
//! text only — never literal values — limited to
//! `observability.slow_query_log_rate` lines per second by a token bucket,
//! so that a database having a bad minute cannot flood the log. What the
//! limit suppressed is summed up in one line every 10 s.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::logsafe;
use crate::observe::observer::QueryEvent;

/// How often suppressed lines are summed up.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// A token bucket: `rate` tokens per second, at most `rate` saved up.
#[derive(Debug)]
pub(crate) struct SlowLog {
    bucket: Mutex<Bucket>,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl SlowLog {
    pub(crate) fn new() -> SlowLog {
        SlowLog {
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: None,
            }),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written at `now` with `rate` lines per second
    /// (0 = no limit). A refusal is counted for the summary.
    pub(crate) fn allow(&self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let mut b = crate::sync::lock(&self.bucket);
        let refill = match b.last {
            Some(last) => now.saturating_duration_since(last).as_secs_f64() * rate,
            None => rate,
        };
        b.tokens = (b.tokens + refill).min(rate);
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            drop(b);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Lines suppressed since the last call.
    pub(crate) fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

/// Writes the slow-query line for `ev`, its text cut at `query_cap`
/// bytes; what the client wrote (names, quoted identifiers) escaped.
pub(crate) fn log_slow(ev: &QueryEvent<'_>, query_cap: usize) {
    tracing::warn!(
        target: "slow_query",
        query = %logsafe::text(ev.normalized, query_cap),
        fingerprint = %format_args!("{:016x}", ev.fingerprint),
        duration_ms = ev.duration.as_secs_f64() * 1000.0,
        node = %ev.node_addr,
        role = ev.role.as_str(),
        user = &*logsafe::name(ev.user),
        database = &*logsafe::name(ev.database),
        application_name = &*logsafe::name(ev.application_name),
        rows = ev.rows,
        sqlstate = ev.error,
        "slow query"
    );
}

/// Writes the summary line if anything was suppressed.
pub(crate) fn log_suppressed(count: u64) {
    if count > 0 {
        tracing::warn!(
            target: "slow_query",
            suppressed = count,
            "suppressed {count} slow-query lines in the last {}s",
            SUMMARY_INTERVAL.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_rate_then_refills() {
        let log = SlowLog::new();
        let t0 = Instant::now();
        let allowed = (0..25).filter(|_| log.allow(10, t0)).count();
        assert_eq!(allowed, 10, "a full second's worth at once");
        assert_eq!(log.take_suppressed(), 15);
        assert_eq!(log.take_suppressed(), 0);
        // Half a second refills five.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| log.allow(10, t1)).count(), 5);
        // Never more than one second's worth saved up.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| log.allow(10, t2)).count(), 10);
    }

    #[test]
    fn zero_means_no_limit() {
        let log = SlowLog::new();
        let now = Instant::now();
        assert!((0..1000).all(|_| log.allow(0, now)));
        assert_eq!(log.take_suppressed(), 0);
    }
}
