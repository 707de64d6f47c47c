//! Choosing a replica for one read: the eligible one with the fewest
//! outstanding queries, a lease that counts the read until dropped, and,
//! when none qualifies, the reason (for `routing_decisions_total{reason}`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::NodeId;
use super::lsn::Lsn;
use super::node::Role;

/// One outstanding read on replica `id`. Hold it for as long as the read
/// (transaction) runs; dropping it gives the count back.
pub struct ReplicaLease {
    pub id: NodeId,
    counter: Arc<AtomicU64>,
}

impl ReplicaLease {
    pub(crate) fn new(id: NodeId, counter: Arc<AtomicU64>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        ReplicaLease { id, counter }
    }
}

impl Drop for ReplicaLease {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for ReplicaLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaLease")
            .field("id", &self.id)
            .finish()
    }
}

/// Why no replica may serve a read: the reason of the replica that came
/// closest to eligible (checks run in the order of the variants), so the
/// label says what stands between the read and a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NoReplica {
    /// No node currently has the replica role (none configured, or the
    /// only one was promoted).
    #[error("no replica is configured or still in the replica role")]
    NoneConfigured,
    /// Every replica failed its last health check (or was never checked).
    #[error("every replica is failing its health checks")]
    AllUnhealthy,
    /// Every healthy replica lags more than the allowed maximum, or its lag
    /// cannot be proven yet.
    #[error("every healthy replica lags more than max_replica_lag")]
    AllLagging,
    /// Fresh replicas exist but none has replayed the client's last write.
    #[error("no fresh replica has replayed this client's latest write yet")]
    BehindReadYourWritesFloor,
}

impl NoReplica {
    /// snake_case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NoReplica::NoneConfigured => "none_configured",
            NoReplica::AllUnhealthy => "all_unhealthy",
            NoReplica::AllLagging => "all_lagging",
            NoReplica::BehindReadYourWritesFloor => "behind_read_your_writes_floor",
        }
    }
}

/// What the choice needs to know about one node, read from its atomics.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub id: NodeId,
    pub role: Role,
    /// Last check succeeded recently and it is not refused.
    pub healthy: bool,
    /// Its lag is proven to be within the maximum asked for.
    pub fresh: bool,
    pub replay: Option<Lsn>,
    pub outstanding: u64,
}

/// The eligible candidate with the fewest outstanding reads (the first of
/// equals, so callers rotate the order to spread ties), or why none is.
#[cfg(test)]
pub(crate) fn pick(
    candidates: impl Iterator<Item = Candidate>,
    min_lsn: Option<Lsn>,
) -> Result<NodeId, NoReplica> {
    let mut picker = Picker::new(min_lsn);
    candidates.for_each(|c| picker.offer(c));
    picker.picked()
}

/// [`pick`] one candidate at a time: the router offers each node as it
/// reads it, in a plain loop. Why not an iterator handed to `pick`: its
/// adapters (rotation, role filter) were not inlined, and choosing among
/// two nodes cost ~150 instructions per routed read.
pub(crate) struct Picker {
    min_lsn: Option<Lsn>,
    best: Option<(NodeId, u64)>,
    why: NoReplica,
}

impl Picker {
    pub(crate) fn new(min_lsn: Option<Lsn>) -> Self {
        Picker {
            min_lsn,
            best: None,
            why: NoReplica::NoneConfigured,
        }
    }

    /// Considers `c` (ignored unless it is a replica).
    #[inline]
    pub(crate) fn offer(&mut self, c: Candidate) {
        if c.role != Role::Replica {
            return;
        }
        let verdict = if !c.healthy {
            NoReplica::AllUnhealthy
        } else if !c.fresh {
            NoReplica::AllLagging
        } else if self
            .min_lsn
            .is_some_and(|floor| c.replay.is_none_or(|r| r < floor))
        {
            NoReplica::BehindReadYourWritesFloor
        } else {
            if self.best.is_none_or(|(_, b)| c.outstanding < b) {
                self.best = Some((c.id, c.outstanding));
            }
            return;
        };
        self.why = self.why.max_progress(verdict);
    }

    /// The choice, or why there is none.
    #[inline]
    pub(crate) fn picked(self) -> Result<NodeId, NoReplica> {
        self.best.map(|(id, _)| id).ok_or(self.why)
    }
}

impl NoReplica {
    /// The reason of the replica that got furthest through the checks.
    fn max_progress(self, other: NoReplica) -> NoReplica {
        let rank = |r: NoReplica| match r {
            NoReplica::NoneConfigured => 0,
            NoReplica::AllUnhealthy => 1,
            NoReplica::AllLagging => 2,
            NoReplica::BehindReadYourWritesFloor => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: NodeId, outstanding: u64, replay: u64) -> Candidate {
        Candidate {
            id,
            role: Role::Replica,
            healthy: true,
            fresh: true,
            replay: Some(Lsn(replay)),
            outstanding,
        }
    }

    #[test]
    fn least_outstanding_eligible_replica_wins_first_of_equals() {
        let nodes = [replica(1, 3, 100), replica(2, 1, 100), replica(3, 1, 100)];
        assert_eq!(pick(nodes.into_iter(), None), Ok(2));
        let primary = Candidate {
            role: Role::Primary,
            ..replica(0, 0, 100)
        };
        let nodes = [primary, replica(1, 2, 100)];
        assert_eq!(pick(nodes.into_iter(), None), Ok(1), "never the primary");
    }

    #[test]
    fn ineligible_replicas_are_skipped_even_when_idle() {
        let sick = Candidate {
            healthy: false,
            ..replica(1, 0, 100)
        };
        let stale = Candidate {
            fresh: false,
            ..replica(2, 0, 100)
        };
        let behind = replica(3, 0, 40);
        let busy = replica(4, 9, 100);
        let nodes = [sick, stale, behind, busy];
        assert_eq!(pick(nodes.into_iter(), Some(Lsn(50))), Ok(4));
    }

    #[test]
    fn the_reason_is_the_furthest_any_replica_got() {
        let sick = Candidate {
            healthy: false,
            ..replica(1, 0, 100)
        };
        let stale = Candidate {
            fresh: false,
            ..replica(2, 0, 100)
        };
        let unknown_replay = Candidate {
            replay: None,
            ..replica(3, 0, 0)
        };
        assert_eq!(pick([].into_iter(), None), Err(NoReplica::NoneConfigured));
        let primary_only = Candidate {
            role: Role::Primary,
            ..replica(0, 0, 1)
        };
        assert_eq!(
            pick([primary_only].into_iter(), None),
            Err(NoReplica::NoneConfigured)
        );
        assert_eq!(pick([sick].into_iter(), None), Err(NoReplica::AllUnhealthy));
        assert_eq!(
            pick([sick, stale].into_iter(), None),
            Err(NoReplica::AllLagging)
        );
        let floor = Some(Lsn(200));
        let got = pick([stale, replica(4, 0, 100), sick].into_iter(), floor);
        assert_eq!(got, Err(NoReplica::BehindReadYourWritesFloor));
        let got = pick([unknown_replay].into_iter(), floor);
        assert_eq!(got, Err(NoReplica::BehindReadYourWritesFloor));
        assert_eq!(pick([replica(4, 0, 200)].into_iter(), floor), Ok(4));
    }

    #[test]
    fn labels_are_snake_case() {
        assert_eq!(NoReplica::AllLagging.as_str(), "all_lagging");
        assert_eq!(
            NoReplica::BehindReadYourWritesFloor.as_str(),
            "behind_read_your_writes_floor"
        );
        assert!(
            NoReplica::AllUnhealthy
                .to_string()
                .contains("health checks")
        );
    }

    #[test]
    fn a_lease_counts_until_dropped() {
        let counter = Arc::new(AtomicU64::new(0));
        let a = ReplicaLease::new(1, counter.clone());
        let b = ReplicaLease::new(1, counter.clone());
        assert_eq!(counter.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(counter.load(Ordering::Relaxed), 1);
        assert_eq!(format!("{b:?}"), "ReplicaLease { id: 1 }");
        drop(b);
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }
}
