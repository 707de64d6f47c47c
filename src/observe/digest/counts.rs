//! [`LatencyCounts`]: latencies counted in the buckets of
//! [`latency_histogram`], for the two places every query's latency goes
//! (its fingerprint's statistics and the all-query window), turned into a
//! histogram only when read.

use hdrhistogram::Histogram;

use super::entry::{LatencyMicros, latency_histogram};

/// Sub-buckets per power of two in [`latency_histogram`]'s layout (two
/// significant digits: 256 sub-buckets, the upper half of them used past
/// the first power of two).
const HALF_MAGNITUDE: u32 = 7;
const HALF: usize = 1 << HALF_MAGNITUDE;

/// Counts at first: values below 1,024 µs (the histogram's first range).
const FIRST: usize = 4 * HALF;

/// Latencies as counts in the buckets of [`latency_histogram`] (the same
/// layout: index `i` counts what that histogram's index `i` would), read
/// through a histogram built from them ([`histogram`](Self::histogram),
/// [`take_into`](Self::take_into)).
///
/// Why not the histogram itself: every query is recorded twice (its
/// fingerprint's statistics and the all-query window), and the crate's
/// `record` (range check, minimum, maximum, saturating total) cost about
/// 60 instructions each time; finding the bucket and adding one costs a
/// fifth of that. Quantiles read from them are the histogram's own (the
/// same counts in the same buckets); they are read once a second (the
/// window) or when `/queries` is asked, not per query.
pub(crate) struct LatencyCounts {
    /// Grown on demand, like the auto-resizing histogram: sub-second
    /// latencies need the first few powers of two only.
    counts: Vec<u32>,
}

impl LatencyCounts {
    pub(crate) fn new() -> LatencyCounts {
        LatencyCounts {
            counts: vec![0; FIRST],
        }
    }

    /// Counts one latency.
    #[inline]
    pub(crate) fn record(&mut self, micros: LatencyMicros) {
        let i = index_of(micros.get());
        match self.counts.get_mut(i) {
            Some(c) => *c = c.saturating_add(1),
            None => self.grow_and_record(i),
        }
    }

    #[cold]
    #[inline(never)]
    fn grow_and_record(&mut self, i: usize) {
        self.counts.reserve_exact(i + 1 - self.counts.len());
        self.counts.resize(i + 1, 0);
        self.counts[i] = 1;
    }

    /// Buckets kept (4 bytes each).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.counts.len()
    }

    /// Adds the counts into `into` (a [`latency_histogram`]) and zeroes
    /// them.
    pub(crate) fn take_into(&mut self, into: &mut Histogram<u32>) {
        for (i, c) in self.counts.iter_mut().enumerate() {
            if *c > 0 {
                add(into, i, *c);
                *c = 0;
            }
        }
    }

    /// Adds the counts into `into` (same buckets, grown if need be) and
    /// zeroes them: a thread's private counts merged into the table's.
    pub(crate) fn take_into_counts(&mut self, into: &mut LatencyCounts) {
        if into.counts.len() < self.counts.len() {
            into.counts.resize(self.counts.len(), 0);
        }
        for (c, sum) in self.counts.iter_mut().zip(into.counts.iter_mut()) {
            if *c > 0 {
                *sum = sum.saturating_add(*c);
                *c = 0;
            }
        }
    }

    /// The counts as a [`latency_histogram`].
    pub(crate) fn histogram(&self) -> Histogram<u32> {
        let mut h = latency_histogram();
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                add(&mut h, i, c);
            }
        }
        h
    }
}

fn add(into: &mut Histogram<u32>, index: usize, count: u32) {
    // Auto-resizing, and every value is at most 1 h (latencies are
    // clamped): cannot fail.
    let _ = into.record_n(value_of(index), count);
}

/// The bucket `latency_histogram` counts `v` in (`v` ≥ 1): the power of two
/// past the first 256 values, then which of its 128 sub-buckets.
#[inline]
fn index_of(v: u64) -> usize {
    let bucket = (u64::BITS - (v | (2 * HALF as u64 - 1)).leading_zeros()) - (HALF_MAGNITUDE + 1);
    let sub = (v >> bucket) as usize;
    ((bucket as usize + 1) << HALF_MAGNITUDE) + sub - HALF
}

/// The lowest value counted at `index` (the inverse of [`index_of`]).
fn value_of(index: usize) -> u64 {
    let bucket = (index >> HALF_MAGNITUDE) as u32;
    let sub = (index & (HALF - 1)) as u64;
    if bucket == 0 {
        sub
    } else {
        (sub + HALF as u64) << (bucket - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn micros(v: u64) -> LatencyMicros {
        LatencyMicros::of(Duration::from_micros(v))
    }

    /// Every value (all of 1..5000, then a spread up to the 1 h clamp)
    /// lands in the histogram's own bucket for it, and the quantiles read
    /// from the counts are the histogram's.
    #[test]
    fn counts_land_in_the_histograms_own_buckets() {
        let spread = (1..60).flat_map(|p| {
            let base = 1.3f64.powi(p) as u64;
            [base, base + 1, base * 3 / 2]
        });
        let values: Vec<u64> = (1..5000)
            .chain(spread)
            .chain([3_600_000_000, 3_599_999_999, 1 << 31])
            .map(|v| micros(v).get())
            .collect();
        for &v in &values {
            let mut direct = latency_histogram();
            direct.record(v).unwrap();
            let mut counts = LatencyCounts::new();
            counts.record(micros(v));
            let via = counts.histogram();
            assert_eq!(via.len(), 1);
            assert!(direct.equivalent(via.max(), v), "{v}: {}", via.max());
            assert_eq!(via.value_at_quantile(0.5), direct.value_at_quantile(0.5));
        }
        // All at once: the same quantiles as the histogram itself.
        let mut direct = latency_histogram();
        let mut counts = LatencyCounts::new();
        for &v in &values {
            direct.record(v).unwrap();
            counts.record(micros(v));
        }
        let via = counts.histogram();
        assert_eq!(via.len(), direct.len());
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 1.0] {
            assert_eq!(
                via.value_at_quantile(q),
                direct.value_at_quantile(q),
                "q {q}"
            );
        }
        let mut taken = latency_histogram();
        counts.take_into(&mut taken);
        assert_eq!(taken.len(), direct.len());
        assert_eq!(
            taken.value_at_quantile(0.95),
            direct.value_at_quantile(0.95)
        );
        let mut again = latency_histogram();
        counts.take_into(&mut again);
        assert!(again.is_empty(), "taking them zeroes them");
    }

    /// Like the auto-resizing histogram, they grow only as far as the
    /// slowest latency needs.
    #[test]
    fn fast_latencies_keep_few_counts() {
        let mut counts = LatencyCounts::new();
        counts.record(micros(900));
        assert_eq!(counts.len(), FIRST);
        counts.record(micros(400_000));
        let mut direct = latency_histogram();
        direct.record(400_000).unwrap();
        assert!(counts.len() <= direct.distinct_values(), "{}", counts.len());
    }
}
