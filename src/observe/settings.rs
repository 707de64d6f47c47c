//! Hot-path copies of the reloadable observability keys, in atomics, so
//! that recording a query reads a couple of words instead of loading the
//! config. The background timer refreshes them every second, so a reload
//! takes effect within a second.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{Config, ExplainMode};
use crate::observe::digest::nanos_of;

#[derive(Debug)]
pub(crate) struct Settings {
    enabled: AtomicBool,
    slow_nanos: AtomicU64,
    explain: AtomicU8,
    sample_rate_bits: AtomicU64,
    min_interval_nanos: AtomicU64,
    max_query_text: AtomicUsize,
}

impl Settings {
    pub(crate) fn new(config: &Config) -> Settings {
        let s = Settings {
            enabled: AtomicBool::new(true),
            slow_nanos: AtomicU64::new(0),
            explain: AtomicU8::new(0),
            sample_rate_bits: AtomicU64::new(0),
            min_interval_nanos: AtomicU64::new(0),
            max_query_text: AtomicUsize::new(0),
        };
        s.refresh(config);
        s
    }

    pub(crate) fn refresh(&self, config: &Config) {
        let o = &config.observability;
        self.enabled.store(o.enabled, Ordering::Relaxed);
        self.slow_nanos
            .store(nanos(o.slow_query_threshold), Ordering::Relaxed);
        self.explain.store(
            match o.explain {
                ExplainMode::Off => 0,
                ExplainMode::Slow => 1,
                ExplainMode::Sample => 2,
            },
            Ordering::Relaxed,
        );
        self.sample_rate_bits
            .store(o.explain_sample_rate.to_bits(), Ordering::Relaxed);
        self.min_interval_nanos
            .store(nanos(o.explain_min_interval), Ordering::Relaxed);
        self.max_query_text
            .store(o.max_query_text as usize, Ordering::Relaxed);
    }

    /// `max_query_text`: bytes of normalised text kept and logged.
    pub(crate) fn max_query_text(&self) -> usize {
        self.max_query_text.load(Ordering::Relaxed)
    }

    /// `observability.enabled`: digests, slow log and EXPLAIN run.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// `duration` is over `slow_query_threshold`.
    /// (Whole nanoseconds by `nanos_of`, saturating like `nanos`: without
    /// the 128-bit `as_nanos` and its conversion, once per query.)
    #[inline]
    pub(crate) fn is_slow(&self, duration: Duration) -> bool {
        nanos_of(duration) > self.slow_nanos.load(Ordering::Relaxed)
    }

    pub(crate) fn explain(&self) -> ExplainMode {
        match self.explain.load(Ordering::Relaxed) {
            0 => ExplainMode::Off,
            1 => ExplainMode::Slow,
            _ => ExplainMode::Sample,
        }
    }

    pub(crate) fn sample_rate(&self) -> f64 {
        f64::from_bits(self.sample_rate_bits.load(Ordering::Relaxed))
    }

    pub(crate) fn min_interval(&self) -> Duration {
        Duration::from_nanos(self.min_interval_nanos.load(Ordering::Relaxed))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
