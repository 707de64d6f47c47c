//! `ClusterView`: the router's read side of the cluster — current primary,
//! replica choice, read-your-writes floors, status — answered from atomics
//! and arc-swap snapshots, never by I/O, never behind a lock the monitor
//! holds across anything slow.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};

use super::NodeId;
use super::choose::{Candidate, NoReplica, Picker, ReplicaLease};
use super::lsn::Lsn;
use super::memory::Memory;
use super::node::{NodeState, NodeStatus, Role};
use super::timeline::{Head, Timeline};
use super::update::MonitorState;
use crate::client::clock::Tick;
use crate::config::{Config, NodeAddr};

/// `primary` value meaning no node holds the primary role.
const NO_PRIMARY: usize = usize::MAX;
/// Until the monitor says otherwise: how old a node's last successful
/// check may be for it to count as healthy.
const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3);

/// What the proxy knows about the configured nodes, kept fresh by the
/// monitor ([`spawn_monitor`](Self::spawn_monitor)).
///
/// Nodes are fixed at construction: `NodeId` `0` is `cluster.primary`,
/// `1..` are `cluster.replicas` in order. A reload that changes the node
/// list needs a new view (a restart); the monitor picks up everything else
/// (check interval, timeouts, credentials) on reload.
///
/// # Replica lag
/// Lag in bytes is the newest primary position minus the replica's replay
/// position. Lag in seconds is `now - (send time of the last primary sample
/// that the replica had fully replayed)` — an upper bound, over by at most
/// one check interval plus a round trip, so a replica is never believed
/// fresher than it is. A replica that has replayed the newest sample has lag
/// 0 however long the primary has been idle. One that is behind every sample
/// kept ([`TIMELINE_WINDOW`](super::TIMELINE_WINDOW)) reports a lower bound
/// and is never eligible; so is one whose lag is not known yet.
///
/// The monitor does not ask which primary a replica follows. After a
/// failover, a replica still following the dead primary stops advancing,
/// so the new primary's first write makes it lag and it loses its reads.
#[derive(Debug)]
pub struct ClusterView {
    pub(crate) nodes: Vec<NodeState>,
    /// Origin of the instants packed into atomics.
    pub(crate) epoch: Instant,
    /// `epoch` as a tick: what a request's tick is measured from
    /// ([`nanos_at`](Self::nanos_at)).
    epoch_tick: Tick,
    pub(crate) primary: AtomicUsize,
    /// While `primary` is none: why, for the clients refused.
    pub(crate) no_primary: ArcSwapOption<String>,
    /// Monitor-only bookkeeping; the router never takes this lock.
    pub(crate) monitor: Mutex<MonitorState>,
    /// Written by the primary's monitor task; read by the router only for
    /// read-your-writes floors older than the newest run (rare).
    pub(crate) timeline: RwLock<Timeline>,
    pub(crate) head: ArcSwapOption<Head>,
    pub(crate) changes: watch::Sender<u64>,
    /// Bumped on every change `changes` sees and on every health change:
    /// what requests queued for a node wait on to give it up.
    pub(crate) moves: watch::Sender<u64>,
    pub(crate) stale_after_nanos: AtomicU64,
    /// Wakes the primary's monitor task to sample now rather than at the
    /// end of its interval.
    pub(crate) sample_wanted: Notify,
    /// Told after every primary sample.
    pub(crate) sampled: Notify,
}

impl ClusterView {
    /// A view of `config`'s nodes: the configured primary is the primary,
    /// and nothing is healthy until the monitor has checked it.
    pub fn new(config: &Config) -> Arc<ClusterView> {
        let epoch = Instant::now();
        let addrs = std::iter::once(&config.cluster.primary).chain(&config.cluster.replicas);
        let nodes: Vec<NodeState> = addrs
            .enumerate()
            .map(|(id, addr)| {
                let role = if id == 0 {
                    Role::Primary
                } else {
                    Role::Replica
                };
                NodeState::new(addr.clone(), role, epoch)
            })
            .collect();
        let (changes, _) = watch::channel(0);
        let (moves, _) = watch::channel(0);
        let monitor = MonitorState::new(&nodes, Memory::from_config(config));
        let (primary, why_none) = monitor.initial(&nodes);
        if let Some(id) = primary {
            nodes[id].set_role(Role::Primary);
        }
        Arc::new(ClusterView {
            monitor: Mutex::new(monitor),
            nodes,
            epoch,
            epoch_tick: Tick::of(epoch),
            primary: AtomicUsize::new(primary.unwrap_or(NO_PRIMARY)),
            no_primary: ArcSwapOption::new(why_none.map(Arc::new)),
            timeline: RwLock::new(Timeline::new(primary)),
            head: ArcSwapOption::empty(),
            changes,
            moves,
            stale_after_nanos: AtomicU64::new(DEFAULT_STALE_AFTER.as_nanos() as u64),
            sample_wanted: Notify::new(),
            sampled: Notify::new(),
        })
    }

    /// Number of configured nodes; ids are `0..node_count()`.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The node writes go to: the configured primary until another node
    /// wins the role (see the `roles` module); `None` while no node claims
    /// it (e.g. the old primary came back as a replica and nothing was
    /// promoted). Combine with [`is_healthy`](Self::is_healthy) to fail fast.
    pub fn primary(&self) -> Option<NodeId> {
        match self.primary.load(Ordering::Acquire) {
            NO_PRIMARY => None,
            id => Some(id),
        }
    }

    /// Why [`primary`](Self::primary) is none, in words for a client.
    pub fn no_primary_reason(&self) -> String {
        match self.no_primary.load().as_deref() {
            Some(why) => why.clone(),
            None => "every node is down or in recovery".into(),
        }
    }

    /// The node's configured address.
    ///
    /// # Panics
    /// If `id` is not below [`node_count`](Self::node_count).
    pub fn addr(&self, id: NodeId) -> &NodeAddr {
        &self.nodes[id].addr
    }

    /// Its last check succeeded, recently, and it is not a refused second
    /// primary. Unknown ids are not healthy.
    pub fn is_healthy(&self, id: NodeId) -> bool {
        self.is_healthy_at(id, Instant::now())
    }

    /// [`is_healthy`](Self::is_healthy) at the caller's clock reading.
    pub fn is_healthy_at(&self, id: NodeId, now: Instant) -> bool {
        self.is_healthy_on(id, self.nanos_since_epoch(now))
    }

    /// [`is_healthy`](Self::is_healthy) at a reading already in the
    /// view's time ([`nanos_since_epoch`](Self::nanos_since_epoch)).
    pub fn is_healthy_on(&self, id: NodeId, now_nanos: u64) -> bool {
        let stale_after = self.stale_after_nanos.load(Ordering::Relaxed);
        self.nodes
            .get(id)
            .is_some_and(|n| n.healthy_at_nanos(now_nanos, stale_after))
    }

    /// `now` as the view keeps its times: nanoseconds since its epoch
    /// (zero before it, at most `u64::MAX`, 584 years on), meaningful to
    /// this view only.
    ///
    /// Why callers work it out themselves: the view compares every node's
    /// last answer and lag with the request's one clock reading, and
    /// turning an `Instant` into this is a subtraction of two instants (a
    /// call into std, ~40 instructions). Routing does it once per request
    /// and asks every question of that request in these terms (the
    /// replica's choice, the health of the node its checkout waits for).
    /// The seconds and nanoseconds are combined here rather than through
    /// `as_nanos`, whose 128-bit product and conversion back cost a
    /// third as much again.
    pub fn nanos_since_epoch(&self, now: Instant) -> u64 {
        nanos_of(now.saturating_duration_since(self.epoch))
    }

    /// [`nanos_since_epoch`](Self::nanos_since_epoch) of a tick: one
    /// integer subtraction. What a request asks in (its one reading of
    /// the clock is a tick); the same, for a tick converted from an
    /// `Instant`, as the `Instant`'s (the conversions are exact), and a
    /// tick read now looks later than an `Instant` read now by at most
    /// the calibration's few nanoseconds (clock.rs), which makes the
    /// nodes look as much older.
    #[inline]
    pub fn nanos_at(&self, now: Tick) -> u64 {
        now.nanos_since(self.epoch_tick)
    }

    /// A primary exists and answered its last check recently (`/readyz`).
    pub fn primary_ready(&self) -> bool {
        self.primary().is_some_and(|p| self.is_healthy(p))
    }

    /// The replica to send a read to: among replicas that are healthy, no
    /// more than `max_lag` behind (in seconds, see the type's docs) and,
    /// given a read-your-writes floor, have replayed at least `min_lsn`,
    /// the one with the fewest outstanding reads (ties rotate). The lease
    /// counts the read until dropped.
    pub fn choose_replica(
        &self,
        min_lsn: Option<Lsn>,
        max_lag: Duration,
    ) -> Result<ReplicaLease, NoReplica> {
        self.choose_replica_on(self.nanos_since_epoch(Instant::now()), min_lsn, max_lag)
    }

    /// [`choose_replica`](Self::choose_replica) as of `now`.
    #[cfg(test)]
    pub(crate) fn choose_replica_at(
        &self,
        now: Instant,
        min_lsn: Option<Lsn>,
        max_lag: Duration,
    ) -> Result<ReplicaLease, NoReplica> {
        self.choose_replica_on(self.nanos_since_epoch(now), min_lsn, max_lag)
    }

    /// [`choose_replica`](Self::choose_replica) as of a reading already
    /// in the view's time ([`nanos_since_epoch`](Self::nanos_since_epoch)).
    pub(crate) fn choose_replica_on(
        &self,
        now_nanos: u64,
        min_lsn: Option<Lsn>,
        max_lag: Duration,
    ) -> Result<ReplicaLease, NoReplica> {
        // Times as the nodes keep them (nanoseconds since the epoch),
        // worked out by the caller once per request instead of two
        // instants built per replica.
        let stale_after = self.stale_after_nanos.load(Ordering::Relaxed);
        let now = now_nanos;
        let max_lag = nanos_of(max_lag);
        let n = self.nodes.len();
        let mut id = next_rotation(n);
        let mut picker = Picker::new(min_lsn);
        // The primary is skipped before its health and lag are read: it is
        // never a candidate, and reading them cost half of every choice.
        for _ in 0..n {
            let node = &self.nodes[id];
            let role = node.role();
            if role == Role::Replica {
                picker.offer(Candidate {
                    id,
                    role,
                    healthy: node.healthy_at_nanos(now, stale_after),
                    fresh: node.lag.within_nanos(now, max_lag),
                    replay: node.replay_lsn(),
                    outstanding: node.outstanding(),
                });
            }
            // The next node in rotation, without a division per node.
            id += 1;
            if id == n {
                id = 0;
            }
        }
        let id = picker.picked()?;
        Ok(ReplicaLease::new(id, self.nodes[id].outstanding.clone()))
    }

    /// Read-your-writes floor for a write that committed at `t`: the WAL
    /// position seen by the first primary sample whose query was *sent*
    /// after `t`. `None` until the monitor has taken such a sample (the
    /// client's reads stay on the primary meanwhile). Since the commit was
    /// complete before that query was sent, the position includes it.
    pub fn lsn_after(&self, t: Instant) -> Option<Lsn> {
        if let Some(head) = self.head.load().as_deref()
            && let Some(answer) = head.lsn_after(t)
        {
            return answer;
        }
        crate::sync::read(&self.timeline).lsn_after(t)
    }

    /// [`lsn_after`](Self::lsn_after), waiting for the sample if it has
    /// not been taken yet: the primary's monitor task is asked to take one
    /// at once (one round trip) rather than at the end of its interval.
    /// `None` if no sample came within `limit` (the primary is not
    /// answering, or there is none).
    pub async fn lsn_after_soon(&self, t: Instant, limit: Duration) -> Option<Lsn> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let sampled = self.sampled.notified();
            tokio::pin!(sampled);
            sampled.as_mut().enable();
            if let Some(lsn) = self.lsn_after(t) {
                return Some(lsn);
            }
            self.sample_wanted.notify_one();
            tokio::time::timeout_at(deadline, sampled).await.ok()?;
        }
    }

    /// The newest WAL position sampled on the current primary.
    pub fn latest_primary_lsn(&self) -> Option<Lsn> {
        self.head.load().as_deref().map(|h| h.lsn)
    }

    /// Every node's state, for metrics and the admin console.
    pub fn status(&self) -> Vec<NodeStatus> {
        self.status_at(Instant::now())
    }

    /// [`status`](Self::status) as of `now`.
    pub(crate) fn status_at(&self, now: Instant) -> Vec<NodeStatus> {
        let latest = self.latest_primary_lsn();
        let now_nanos = self.nanos_since_epoch(now);
        self.nodes
            .iter()
            .enumerate()
            .map(|(id, node)| {
                let role = node.role();
                let replica = role == Role::Replica;
                let replay_lsn = node.replay_lsn().filter(|_| replica);
                NodeStatus {
                    id,
                    addr: node.addr.clone(),
                    role,
                    healthy: self.is_healthy_on(id, now_nanos),
                    replay_lsn,
                    lag_bytes: replay_lsn.zip(latest).map(|(r, l)| l.bytes_since(r)),
                    lag_seconds: replica
                        .then(|| node.lag.load(self.epoch).lag(now))
                        .flatten()
                        .map(|d| d.as_secs_f64()),
                    timeline_id: node.timeline_id().filter(|_| !replica),
                    last_error: node.last_error(),
                    outstanding: node.outstanding(),
                }
            })
            .collect()
    }

    /// A receiver whose value (a generation number) goes up whenever the
    /// primary changes, a node's role changes, or a node is refused or
    /// stops being refused as a second primary. Not on health changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Resolves once a request queued for a server of `node` should stop
    /// waiting for it: work for a replica once the monitor finds it
    /// unhealthy; work for the primary (`Role::Primary`) once another node,
    /// or none, is the primary. A primary that is merely down is still
    /// waited for: it may come back before a promotion. Subscribes only
    /// when first polled, so a checkout raced against this that completes
    /// at once costs no reference count.
    pub async fn given_up(&self, node: NodeId, role: Role) {
        let mut moves = self.moves.subscribe();
        let _ = moves.wait_for(|_| self.gives_up(node, role)).await;
    }

    /// Whether a request queued for `node` as `role` should stop waiting
    /// now (what [`given_up`](Self::given_up) waits for). Queued checkouts
    /// ask it when they start waiting and whenever [`moves`](Self::moves)
    /// changes.
    pub fn gives_up(&self, node: NodeId, role: Role) -> bool {
        self.gives_up_at(node, role, Tick::now())
    }

    /// [`gives_up`](Self::gives_up) at the caller's clock reading.
    pub fn gives_up_at(&self, node: NodeId, role: Role, now: Tick) -> bool {
        match role {
            Role::Replica => !self.is_healthy_on(node, self.nanos_at(now)),
            Role::Primary => self.primary() != Some(node),
        }
    }

    /// Changes when the primary changes or a node's health does: what can
    /// make [`gives_up`](Self::gives_up) true.
    pub fn moves(&self) -> watch::Receiver<u64> {
        self.moves.subscribe()
    }

    /// The primary, waiting up to `limit` for one while there is none
    /// (during a promotion, or while the monitor has not settled which of
    /// several claimants may take writes).
    pub async fn wait_for_primary(&self, limit: Duration) -> Option<NodeId> {
        if let Some(id) = self.primary() {
            return Some(id);
        }
        let mut moves = self.moves.subscribe();
        let found = moves.wait_for(|_| self.primary().is_some());
        let _ = tokio::time::timeout(limit, found).await;
        self.primary()
    }

    pub(crate) fn set_primary(&self, id: Option<NodeId>) {
        self.primary
            .store(id.unwrap_or(NO_PRIMARY), Ordering::Release);
    }
}

/// `d` in whole nanoseconds, saturating (at 584 years): the same as
/// `u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)` without its
/// 128-bit arithmetic.
#[inline]
fn nanos_of(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// A per-thread rotating start index below `n` (0 if there is none), so
/// equal candidates share the load without every read bumping one shared
/// counter. Wrapped by a comparison rather than taken modulo `n`: a
/// 64-bit division takes tens of cycles, once per read.
#[inline]
fn next_rotation(n: usize) -> usize {
    thread_local! {
        static NEXT: Cell<usize> = const { Cell::new(0) };
    }
    NEXT.with(|c| {
        let v = c.get();
        let v = if v >= n { 0 } else { v };
        c.set(v + 1);
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_are_those_of_as_nanos_saturated() {
        let as_nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        for d in [
            Duration::ZERO,
            Duration::new(0, 999_999_999),
            Duration::new(3, 7),
            Duration::new(u64::MAX / 1_000_000_000, 0),
            Duration::new(u64::MAX / 1_000_000_000, 999_999_999),
            Duration::new(u64::MAX / 1_000_000_000 + 1, 0),
            Duration::MAX,
        ] {
            assert_eq!(nanos_of(d), as_nanos(d), "{d:?}");
        }
    }
}
