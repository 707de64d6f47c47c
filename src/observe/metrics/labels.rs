//! Counters keyed by a `&'static str` label, resolved once per label and
//! then found by a short scan, so that counting a routing decision or an
//! error kind formats nothing and hashes no string.

use std::sync::RwLock;

use prometheus::{IntCounter, IntCounterVec};

/// One label dimension of an [`IntCounterVec`] with cached children.
pub(crate) struct LabelCache {
    vec: IntCounterVec,
    /// Few entries (a dozen reasons/kinds): a scan beats hashing.
    cached: RwLock<Vec<(&'static str, IntCounter)>>,
}

impl LabelCache {
    /// Caches `vec` (which must have exactly one label) with `preset`
    /// children created up front, so they are exported at zero.
    pub(crate) fn new(vec: IntCounterVec, preset: &[&'static str]) -> LabelCache {
        let cache = LabelCache {
            vec,
            cached: RwLock::new(Vec::with_capacity(preset.len() + 4)),
        };
        for label in preset {
            cache.get(label);
        }
        cache
    }

    /// The counter for `label`, for callers that keep it (no lookup at all).
    pub(crate) fn get(&self, label: &'static str) -> IntCounter {
        let mut cached = crate::sync::write(&self.cached);
        if let Some((_, c)) = cached.iter().find(|(l, _)| same(l, label)) {
            return c.clone();
        }
        let counter = self.vec.with_label_values(&[label]);
        cached.push((label, counter.clone()));
        counter
    }
}

/// Pointer equality first: labels are usually the same static string.
fn same(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}
