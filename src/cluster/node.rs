//! One node as the router sees it: role, health, replay position, lag and
//! outstanding queries, each in its own atomic so that reading them costs
//! no lock. Only the monitor writes them (serialised by the view's monitor
//! lock); the router reads them and bumps `outstanding`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;

use super::NodeId;
use super::lag::{AtomicLagMark, LagMark};
use super::lsn::Lsn;
use crate::config::NodeAddr;

/// What a node does, as it last reported (`pg_is_in_recovery()`); before
/// its first check, what the config says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts writes. A node reporting this is not necessarily the one
    /// [`ClusterView::primary`](super::ClusterView::primary) routes writes
    /// to: a second, refused primary also has this role (and is unhealthy).
    Primary,
    /// In recovery, streaming from a primary: may serve reads.
    Replica,
}

impl Role {
    /// Lower-case label for metrics (`node_up{role}`) and the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time copy of one node's state, for metrics and the admin
/// console (not for routing decisions, which read the atomics directly).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub addr: NodeAddr,
    pub role: Role,
    /// Its last check succeeded and it is not a refused second primary.
    pub healthy: bool,
    /// Replicas only: `pg_last_wal_replay_lsn()` at the last check.
    pub replay_lsn: Option<Lsn>,
    /// Replicas only: newest primary position minus `replay_lsn`.
    pub lag_bytes: Option<u64>,
    /// Replicas only: see [`ClusterView`](super::ClusterView) on how this is
    /// computed. A lower bound when the replica is behind all history kept.
    pub lag_seconds: Option<f64>,
    /// Primaries only: timeline ID of the WAL it writes.
    pub timeline_id: Option<u32>,
    /// Why it is unhealthy (failed check, or refused as a second primary).
    pub last_error: Option<String>,
    /// Reads currently leased to it by [`choose_replica`](super::ClusterView::choose_replica).
    pub outstanding: u64,
}

const ROLE_PRIMARY: u8 = 0;
const ROLE_REPLICA: u8 = 1;

/// The shared, lock-free state of one node.
#[derive(Debug)]
pub(crate) struct NodeState {
    pub(crate) addr: NodeAddr,
    role: AtomicU8,
    healthy: AtomicBool,
    /// Nanoseconds after the view's epoch of the last successful check;
    /// 0 = never.
    last_ok: AtomicU64,
    /// 0 = unknown (0/0 is never a valid position).
    replay_lsn: AtomicU64,
    /// 0 = unknown (timeline IDs start at 1).
    timeline_id: AtomicU32,
    pub(crate) lag: AtomicLagMark,
    /// Shared with the leases so they can give their count back on drop.
    pub(crate) outstanding: Arc<AtomicU64>,
    last_error: ArcSwapOption<String>,
}

impl NodeState {
    pub(crate) fn new(addr: NodeAddr, role: Role, epoch: Instant) -> Self {
        NodeState {
            addr,
            role: AtomicU8::new(role_bits(role)),
            healthy: AtomicBool::new(false),
            last_ok: AtomicU64::new(0),
            replay_lsn: AtomicU64::new(0),
            timeline_id: AtomicU32::new(0),
            lag: AtomicLagMark::new(LagMark::Unknown, epoch),
            outstanding: Arc::new(AtomicU64::new(0)),
            last_error: ArcSwapOption::empty(),
        }
    }

    pub(crate) fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            ROLE_PRIMARY => Role::Primary,
            _ => Role::Replica,
        }
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.role.store(role_bits(role), Ordering::Release);
    }

    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Healthy, and its last success is no older than `stale_after` (so a
    /// node whose monitor stopped running does not stay routable forever),
    /// with the times as nanoseconds since the view's epoch (as `last_ok`
    /// is kept): no instant is built from the stored count, which the hot
    /// path's choice of a replica would do for every node.
    pub(crate) fn healthy_at_nanos(&self, now: u64, stale_after: u64) -> bool {
        self.healthy()
            && match self.last_ok.load(Ordering::Acquire) {
                0 => false,
                ok => now.saturating_sub(ok) <= stale_after,
            }
    }

    pub(crate) fn set_health(&self, healthy: bool, error: Option<Arc<String>>) {
        self.last_error.store(error);
        self.healthy.store(healthy, Ordering::Release);
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.load().as_deref().cloned()
    }

    pub(crate) fn set_last_ok(&self, at: Instant, epoch: Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.last_ok.store(nanos, Ordering::Release);
    }

    pub(crate) fn replay_lsn(&self) -> Option<Lsn> {
        match self.replay_lsn.load(Ordering::Acquire) {
            0 => None,
            n => Some(Lsn(n)),
        }
    }

    pub(crate) fn set_replay_lsn(&self, lsn: Option<Lsn>) {
        self.replay_lsn
            .store(lsn.map_or(0, |l| l.0), Ordering::Release);
    }

    pub(crate) fn timeline_id(&self) -> Option<u32> {
        match self.timeline_id.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    pub(crate) fn set_timeline_id(&self, tli: Option<u32>) {
        self.timeline_id.store(tli.unwrap_or(0), Ordering::Release);
    }

    pub(crate) fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }
}

fn role_bits(role: Role) -> u8 {
    match role {
        Role::Primary => ROLE_PRIMARY,
        Role::Replica => ROLE_REPLICA,
    }
}
