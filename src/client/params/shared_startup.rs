//! Startup settings shared by every client that sent the same ones.
//!
//! Why: a sidecar's clients are one application's connections, nearly
//! all logging in with the same parameters, and each kept its own copy
//! in a map whose first node alone is 456 bytes: about a ninth of an
//! idle client's memory (massif, 2,000 idle clients). Clients now share
//! one immutable copy per distinct set of settings; the first change a
//! client makes copies it (`ClientParams::current_mut`).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;

use super::Settings;

/// Distinct startup settings in use, by hash. Why a process-wide table
/// rather than one in the proxy's shared state: its entries are
/// immutable values found by their content (like interned strings), so
/// two proxies in one process (tests) sharing it changes nothing.
static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        keys: RandomState::new(),
        by_hash: HashMap::new(),
        sweep_at: SWEEP_MIN,
    })
});

/// Entries before the first sweep of settings no client uses any more.
const SWEEP_MIN: usize = 64;

struct Table {
    /// Random keys: the settings are what clients sent, and hashes they
    /// could predict would let them pile their logins into one list.
    keys: RandomState,
    /// Weak: settings the last client using them dropped go with it
    /// (their entry is swept later).
    by_hash: HashMap<u64, Vec<Weak<Settings>>>,
    /// Sweep once the table has this many entries: twice what the last
    /// sweep left, so sweeping costs O(1) per login on average.
    sweep_at: usize,
}

/// The shared copy of `settings` (made and kept if none is in use).
pub(super) fn share(settings: Settings) -> Arc<Settings> {
    let mut table = TABLE.lock();
    let hash = table.keys.hash_one(&settings);
    let same = table.by_hash.entry(hash).or_default();
    same.retain(|w| w.strong_count() > 0);
    if let Some(found) = same
        .iter()
        .find_map(|w| w.upgrade().filter(|s| **s == settings))
    {
        return found;
    }
    let shared = Arc::new(settings);
    same.push(Arc::downgrade(&shared));
    if table.by_hash.len() >= table.sweep_at {
        table.by_hash.retain(|_, same| {
            same.retain(|w| w.strong_count() > 0);
            !same.is_empty()
        });
        table.sweep_at = (table.by_hash.len() * 2).max(SWEEP_MIN);
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::params::ParamValue;

    fn settings(app: &str) -> Settings {
        [(
            Box::<str>::from("application_name"),
            ParamValue::Raw(app.into()),
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn equal_settings_share_one_copy_and_unused_ones_go() {
        let a = share(settings("shared-startup-test-a"));
        let b = share(settings("shared-startup-test-a"));
        assert!(Arc::ptr_eq(&a, &b), "the same settings share one copy");
        let c = share(settings("shared-startup-test-c"));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(
            c.get("application_name"),
            Some(&ParamValue::Raw("shared-startup-test-c".into()))
        );
        // Once no client holds them, the next login with them makes a
        // new copy (the old one was freed, not kept by the table).
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
        let again = share(settings("shared-startup-test-a"));
        assert_eq!(Arc::strong_count(&again), 1);
        // Many distinct settings, none kept: the sweep keeps the table
        // from growing with them.
        for i in 0..1_000 {
            drop(share(settings(&format!("shared-startup-test-{i}"))));
        }
        assert!(TABLE.lock().by_hash.len() < 1_000);
    }
}
