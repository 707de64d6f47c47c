//! Which proxy-named prepared statements exist on one server connection: an
//! LRU bounded by `pool.prepared_statements_cache`, so long-lived servers do
//! not accumulate every statement every client ever prepared.

use std::num::NonZeroUsize;

use lru::LruCache;

/// The proxy-wide name of statement `id` on every server.
pub fn statement_name(id: u64) -> String {
    format!("pgsidecar_{id}")
}

/// Prepared statements present on one server, most recently used first.
pub struct PreparedOnServer {
    lru: LruCache<u64, ()>,
}

impl PreparedOnServer {
    pub fn new(capacity: usize) -> Self {
        PreparedOnServer {
            lru: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("at least 1")),
        }
    }

    /// True if statement `id` is prepared here (and marks it used).
    pub fn touch(&mut self, id: u64) -> bool {
        self.lru.get(&id).is_some()
    }

    /// Records statement `id` as prepared here; returns the statement that
    /// had to make room, which the caller must Close on the server.
    pub fn insert(&mut self, id: u64) -> Option<u64> {
        match self.lru.push(id, ()) {
            Some((evicted, ())) if evicted != id => Some(evicted),
            _ => None,
        }
    }

    /// Forgets a statement (its Parse failed, or it was deallocated).
    pub fn remove(&mut self, id: u64) {
        self.lru.pop(&id);
    }

    /// Forgets everything (after DISCARD ALL / DEALLOCATE ALL ran here).
    pub fn clear(&mut self) {
        self.lru.clear();
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut p = PreparedOnServer::new(2);
        assert_eq!(p.insert(1), None);
        assert_eq!(p.insert(2), None);
        assert!(p.touch(1));
        assert_eq!(p.insert(3), Some(2));
        assert!(p.touch(1) && p.touch(3) && !p.touch(2));
        p.remove(1);
        assert!(!p.touch(1));
        assert_eq!(statement_name(7), "pgsidecar_7");
    }
}
