//! The classification cache: fingerprint → `Arc<StatementInfo>`, shared by
//! all worker threads.
//!
//! Sharded `RwLock<HashMap>`: a hit takes one shard's read lock, so hits on
//! different (or the same) shards never block each other; only inserts take
//! a write lock. Eviction is CLOCK-like ("second chance"): a hit sets an
//! entry's `hot` bit with a relaxed atomic store (under the read lock), and
//! a full shard evicts the first entry whose bit is clear, clearing bits on
//! the way. That approximates LRU without any bookkeeping on the hit path.
//! Each shard is also bounded in bytes (normalised text and table names),
//! so that large distinct statements cannot grow it without limit.

use super::fingerprint::Fingerprint;
use super::types::StatementInfo;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 64;

/// The key already is a strong hash: use its bits directly.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

struct Entry {
    info: Arc<StatementInfo>,
    hot: AtomicBool,
}

type Map = HashMap<Fingerprint, Entry, BuildHasherDefault<PassThrough>>;

struct Shard {
    map: Map,
    /// [`heap_bytes`] of its entries.
    bytes: usize,
}

/// Bytes an entry holds besides its fixed size: its text and table names.
fn heap_bytes(info: &StatementInfo) -> usize {
    info.normalized.len()
        + info
            .tables_read
            .iter()
            .chain(info.tables_written.iter())
            .map(|t| t.len() + 16)
            .sum::<usize>()
}

/// Bounded concurrent map from fingerprint to classification.
pub(crate) struct Cache {
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
    bytes_per_shard: usize,
}

impl Cache {
    /// At most about `capacity` entries (rounded up to a multiple of the
    /// shard count) and `bytes` of text; `0` entries disables caching.
    pub(crate) fn new(capacity: usize, bytes: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        let shards = (0..SHARDS)
            .map(|_| {
                RwLock::new(Shard {
                    map: Map::with_capacity_and_hasher(0, Default::default()),
                    bytes: 0,
                })
            })
            .collect();
        Self {
            shards,
            per_shard,
            bytes_per_shard: bytes / SHARDS,
        }
    }

    fn shard(&self, fp: Fingerprint) -> &RwLock<Shard> {
        // High bits pick the shard; the map hashes with the low bits.
        &self.shards[((fp.0 >> 64) as usize) % SHARDS]
    }

    /// Allocation-free lookup.
    pub(crate) fn get(&self, fp: Fingerprint) -> Option<Arc<StatementInfo>> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // map itself is still consistent, so keep using it.
        let shard = crate::sync::read(self.shard(fp));
        let entry = shard.map.get(&fp)?;
        if !entry.hot.load(Ordering::Relaxed) {
            entry.hot.store(true, Ordering::Relaxed);
        }
        Some(Arc::clone(&entry.info))
    }

    /// Inserts unless present; returns the entry that ends up cached (the
    /// earlier one if two threads raced on the same miss).
    pub(crate) fn insert(&self, info: Arc<StatementInfo>) -> Arc<StatementInfo> {
        if self.per_shard == 0 {
            return info;
        }
        let fp = info.fingerprint;
        let mut shard = crate::sync::write(self.shard(fp));
        if let Some(existing) = shard.map.get(&fp) {
            return Arc::clone(&existing.info);
        }
        let size = heap_bytes(&info);
        if size > self.bytes_per_shard {
            // Not worth a whole shard: classified again next time.
            return info;
        }
        while !shard.map.is_empty()
            && (shard.map.len() >= self.per_shard || shard.bytes + size > self.bytes_per_shard)
        {
            evict_one(&mut shard);
        }
        shard.bytes += size;
        shard.map.insert(
            fp,
            Entry {
                info: Arc::clone(&info),
                hot: AtomicBool::new(false),
            },
        );
        info
    }

    /// Number of cached statements.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| crate::sync::read(s).map.len())
            .sum()
    }
}

/// Second chance: the first entry not hit since the last sweep goes.
fn evict_one(shard: &mut Shard) {
    let mut victim = None;
    for (fp, entry) in shard.map.iter() {
        if !entry.hot.swap(false, Ordering::Relaxed) {
            victim = Some(*fp);
            break;
        }
    }
    // Every entry was hot (and now is not): take the first one.
    let victim = victim.or_else(|| shard.map.keys().next().copied());
    if let Some(entry) = victim.and_then(|fp| shard.map.remove(&fp)) {
        shard.bytes -= heap_bytes(&entry.info);
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("len", &self.len())
            .field("capacity", &(self.per_shard * SHARDS))
            .finish()
    }
}
