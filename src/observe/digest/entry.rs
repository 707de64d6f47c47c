//! One fingerprint's statistics: counts, times, latencies by histogram
//! bucket for percentiles, routes, and the last sampled plan.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use super::tally::Tally;
use crate::observe::explain::PlanSummary;

/// Highest latency a histogram tracks (longer ones count as this): 1 h.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 2 significant digits (≤ 1%
/// error). Auto-resizing from a small range, so a fingerprint whose
/// queries all take under a second costs a few KB, not the full range.
pub(crate) fn latency_histogram() -> Histogram<u32> {
    let mut h = Histogram::new_with_bounds(1, 1_000, 2).expect("static, valid bounds");
    h.auto(true);
    h
}

/// Records `d` (whole microseconds, at least 1, at most 1 h).
#[cfg(test)]
pub(crate) fn record_latency(h: &mut Histogram<u32>, d: Duration) {
    // Auto-resize only fails on absurd values, excluded by the clamp.
    let _ = h.record(LatencyMicros::of(d).0);
}

/// A latency as the histograms record it: whole microseconds, at least
/// 1, at most 1 h. Worked out once per query for the two places it is
/// counted in (its fingerprint's [`LatencyCounts`] and the all-query
/// window's).
#[derive(Clone, Copy)]
pub(crate) struct LatencyMicros(u64);

impl LatencyMicros {
    /// Why not `as_micros()`: its 128-bit result and the conversion back
    /// cost more than the rest of this, once per query; whole seconds
    /// past the bound are clamped before they could overflow.
    #[inline]
    pub(crate) fn of(d: Duration) -> LatencyMicros {
        let secs = d.as_secs().min(MAX_MICROS / 1_000_000);
        let micros = secs * 1_000_000 + u64::from(d.subsec_micros());
        LatencyMicros(micros.clamp(1, MAX_MICROS))
    }

    /// The microseconds.
    #[inline]
    pub(crate) fn get(self) -> u64 {
        self.0
    }
}

/// `q`-quantile of `h` as a duration (zero if empty).
pub(crate) fn quantile(h: &Histogram<u32>, q: f64) -> Duration {
    if h.is_empty() {
        Duration::ZERO
    } else {
        Duration::from_micros(h.value_at_quantile(q))
    }
}

/// `d` in whole nanoseconds, saturating (at 584 years).
#[inline]
pub(crate) fn nanos_of(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// A plan the EXPLAIN sampler got for a fingerprint.
#[derive(Clone, Debug)]
pub struct PlanSample {
    pub summary: PlanSummary,
    /// `EXPLAIN (FORMAT JSON)` output as the server returned it.
    pub plan: serde_json::Value,
    /// When it was taken.
    pub at: SystemTime,
    /// Address of the node it was taken on.
    pub node: String,
    /// The generic plan (no parameter values were known) rather than the
    /// plan for one query's literals or captured parameters.
    pub generic: bool,
    /// Size of `plan` as JSON text, counted against
    /// `observability.max_query_memory`.
    pub bytes: usize,
}

/// Live statistics of one fingerprint (behind its shard's lock).
pub(crate) struct Digest {
    pub(crate) normalized: Arc<str>,
    pub(crate) tally: Tally,
    pub(crate) plan: Option<Arc<PlanSample>>,
    /// Last time a plan was requested, for `explain_min_interval`.
    pub(crate) explain_requested: Option<Instant>,
}

impl Digest {
    pub(crate) fn new(normalized: Arc<str>) -> Digest {
        Digest {
            normalized,
            tally: Tally::new(),
            plan: None,
            explain_requested: None,
        }
    }

    /// Text and plan bytes, what `max_query_memory` bounds.
    pub(crate) fn bytes(&self) -> usize {
        self.normalized.len() + self.plan.as_ref().map_or(0, |p| p.bytes)
    }

    /// Claims the right to request a plan now if none was requested within
    /// `interval`.
    pub(crate) fn claim_explain(&mut self, now: Instant, interval: Duration) -> bool {
        let due = self
            .explain_requested
            .is_none_or(|t| now.saturating_duration_since(t) >= interval);
        if due {
            self.explain_requested = Some(now);
        }
        due
    }

    pub(crate) fn snapshot(&self, fingerprint: u64) -> DigestSnapshot {
        let t = &self.tally;
        let latency = t.latency.histogram();
        DigestSnapshot {
            fingerprint,
            query: self.normalized.clone(),
            calls: t.calls,
            errors: t.errors,
            rows: t.rows,
            total: Duration::from_nanos(t.total_nanos),
            min: if t.calls == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(t.min_nanos)
            },
            max: Duration::from_nanos(t.max_nanos),
            mean: self.mean(),
            p50: quantile(&latency, 0.50),
            p95: quantile(&latency, 0.95),
            p99: quantile(&latency, 0.99),
            primary: t.by_role[0],
            replica: t.by_role[1],
            plan: self.plan.clone(),
        }
    }

    fn mean(&self) -> Duration {
        let t = &self.tally;
        Duration::from_nanos(t.total_nanos.checked_div(t.calls).unwrap_or(0))
    }
}

/// A copy of one fingerprint's statistics, for `/queries`.
#[derive(Clone, Debug)]
pub struct DigestSnapshot {
    pub fingerprint: u64,
    /// Normalised text (literals replaced by `$n`).
    pub query: Arc<str>,
    pub calls: u64,
    /// Calls the server answered with an error.
    pub errors: u64,
    pub rows: u64,
    pub total: Duration,
    pub min: Duration,
    pub max: Duration,
    pub mean: Duration,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    /// Calls that ran on the primary / on a replica.
    pub primary: u64,
    pub replica: u64,
    pub plan: Option<Arc<PlanSample>>,
}

#[cfg(test)]
mod tests {
    use super::{Digest, LatencyMicros, MAX_MICROS, nanos_of};
    use crate::cluster::Role;
    use std::time::Duration;

    #[test]
    fn times_add_up_in_whole_nanoseconds() {
        assert_eq!(nanos_of(Duration::new(2, 5)), 2_000_000_005);
        assert_eq!(nanos_of(Duration::MAX), u64::MAX);
        let mut d = Digest::new("select $1".into());
        assert_eq!(d.snapshot(1).min, Duration::ZERO, "no call yet");
        for (role, us) in [(Role::Primary, 1_500), (Role::Replica, 500)] {
            let t = Duration::from_micros(us);
            d.tally.add(role, t, LatencyMicros::of(t), 1, false);
        }
        let s = d.snapshot(1);
        assert_eq!(s.total, Duration::from_millis(2));
        assert_eq!(
            (s.min, s.max),
            (Duration::from_micros(500), Duration::from_micros(1_500))
        );
        assert_eq!(s.mean, Duration::from_millis(1));
        // Saturates rather than wrapping.
        d.tally.add(
            Role::Primary,
            Duration::MAX,
            LatencyMicros::of(Duration::MAX),
            0,
            false,
        );
        assert_eq!(d.snapshot(1).total, Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn latencies_are_whole_microseconds_from_one_to_an_hour() {
        let of = |d: Duration| LatencyMicros::of(d).0;
        assert_eq!(of(Duration::ZERO), 1);
        assert_eq!(of(Duration::from_nanos(1_999)), 1);
        assert_eq!(of(Duration::from_nanos(2_000)), 2);
        assert_eq!(of(Duration::new(3, 456_789_999)), 3_456_789);
        assert_eq!(of(Duration::from_secs(3_600)), MAX_MICROS);
        assert_eq!(of(Duration::new(3_599, 999_999_999)), MAX_MICROS - 1);
        assert_eq!(of(Duration::new(3_600, 1_000)), MAX_MICROS);
        assert_eq!(of(Duration::MAX), MAX_MICROS);
    }
}
