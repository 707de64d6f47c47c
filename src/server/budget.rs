//! The per-node budget gate of a fleet member: how many server connections
//! this process may have open to one node, across all of its pools (every
//! database and user), and the permits that hold that count.
//!
//! The limit is the number of budget slots the member holds on the node
//! (see `crate::fleet`); the fleet coordinator raises it after Postgres
//! granted a slot and lowers it before giving one back. Every server
//! connection holds a [`BudgetPermit`] from before it connects until it is
//! closed, so "open connections ≤ limit" holds at all times, except right
//! after the limit was lowered below what is open: the surplus (*debt*)
//! is paid by closing connections — idle ones at once
//! ([`NodeGate::shed_idle`]), busy ones when their client gives them back.
//!
//! Pools of one node share the member's limit, so the gate also keeps a
//! busy pool from starving another: a waiting attempt of the pool with the
//! fewest connections is served first, and while a pool below its part
//! (limit / pools in use) waits, pools above theirs close connections as
//! they come back instead of keeping them ([`Seat::should_give_back`]).
//!
//! Nothing here runs per query. Opening and closing connections takes the
//! ledger's mutex; a returned connection costs one atomic load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::config::NodeAddr;

/// How long the backends of closed connections are remembered, so that a
/// slot is given back only once they are gone (see
/// [`NodeGate::recently_closed`]).
const REMEMBER_CLOSED: Duration = Duration::from_secs(10);
/// Remembered closed backends at most (older ones are dropped first).
const MAX_REMEMBERED: usize = 1024;

/// A pool whose idle connections the gate may close to make room for
/// another pool of the same node.
pub trait IdleConnections: Send + Sync {
    /// Idle connections now.
    fn idle(&self) -> u32;
    /// Closes one idle connection if there is one (without waiting).
    fn close_one_idle(&self) -> bool;
}

/// A pool's place at the gate: which pool a permit is for, and the flag
/// that tells the pool to close (rather than keep) a connection a client
/// gives back — read with one atomic load per returned connection.
#[derive(Clone)]
pub struct Seat {
    gate: Arc<NodeGate>,
    id: u64,
    give_back: Arc<AtomicBool>,
}

impl Seat {
    pub fn gate(&self) -> &Arc<NodeGate> {
        &self.gate
    }

    /// A permit for one of this pool's connections (see
    /// [`NodeGate::acquire`]).
    pub async fn acquire(&self, wait: Duration) -> Result<BudgetPermit, NoPermit> {
        self.gate.acquire(self.id, wait).await
    }

    /// Whether a connection coming back to this pool should be closed:
    /// the member is over its limit on the node, or another pool of the
    /// node is waiting while this one has more than its part.
    pub fn should_give_back(&self) -> bool {
        self.give_back.load(Ordering::Relaxed)
    }
}

/// One pool's counts.
#[derive(Default)]
struct PoolCount {
    open: u32,
    waiting: u32,
    give_back: Arc<AtomicBool>,
    pool: Option<Weak<dyn IdleConnections>>,
}

/// A connection attempt waiting for a permit.
struct Waiter {
    id: u64,
    pool: u64,
    tx: oneshot::Sender<()>,
}

/// Everything that changes together, under one lock (taken when a
/// connection opens or closes, never per query).
#[derive(Default)]
struct Ledger {
    /// Connections this member may have open (its slots on the node).
    limit: u32,
    /// Connections open or being opened (permits out).
    open: u32,
    pools: HashMap<u64, PoolCount>,
    waiters: VecDeque<Waiter>,
    next_id: u64,
}

impl Ledger {
    /// Hands free permits to waiting attempts: the pool with the fewest
    /// open connections first (so a pool with none is never starved by
    /// busier ones), in arrival order among equals.
    fn grant(&mut self) {
        while self.open < self.limit && !self.waiters.is_empty() {
            let pools = &self.pools;
            let pick = (self.waiters.iter().enumerate())
                .min_by_key(|(i, w)| (pools.get(&w.pool).map_or(0, |p| p.open), *i))
                .map(|(i, _)| i)
                .unwrap_or(0);
            let Some(w) = self.waiters.remove(pick) else {
                break;
            };
            let count = self.pools.entry(w.pool).or_default();
            count.waiting = count.waiting.saturating_sub(1);
            if w.tx.send(()).is_ok() {
                count.open += 1;
                self.open += 1;
            }
        }
        self.flag();
    }

    /// Recomputes every pool's give-back flag. Over the limit: every pool
    /// gives back. Otherwise a pool gives back while it has more than its
    /// part (limit / pools in use, at least 1) and another pool that has
    /// less than its part is waiting.
    fn flag(&mut self) {
        let over = self.open > self.limit;
        let active = self
            .pools
            .values()
            .filter(|p| p.open > 0 || p.waiting > 0)
            .count()
            .max(1) as u32;
        let part = (self.limit / active).max(1);
        let starved = self.pools.values().any(|p| p.waiting > 0 && p.open < part);
        for p in self.pools.values() {
            let give_back = over || (starved && p.open > part);
            p.give_back.store(give_back, Ordering::Relaxed);
        }
    }
}

/// One node's gate. Created once per node and kept for the life of the
/// process (pools come and go on reload, their connections keep permits).
pub struct NodeGate {
    node: NodeAddr,
    ledger: Mutex<Ledger>,
    /// Connection attempts that had to wait, ever.
    waited: AtomicU64,
    /// Told when an attempt starts waiting, so the coordinator can ask the
    /// fleet for a slot without waiting for its next round.
    wanted: Notify,
    /// (when, backend pid) of connections closed lately.
    closed: Mutex<VecDeque<(Instant, i32)>>,
}

/// A server connection's claim on its node's budget; gives it back when
/// dropped with the connection.
pub struct BudgetPermit {
    gate: Arc<NodeGate>,
    pool: u64,
    backend_pid: i32,
}

impl BudgetPermit {
    /// The backend this permit's connection logged into (0 until known).
    pub fn set_backend_pid(&mut self, pid: i32) {
        self.backend_pid = pid;
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.gate.release(self.pool, self.backend_pid);
    }
}

/// No permit within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoPermit {
    pub waited: Duration,
    /// The member's limit on the node when it gave up.
    pub limit: u32,
}

/// What the coordinator and the console see of a gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateState {
    /// Slots the member may use (its share).
    pub limit: u32,
    /// Open (or opening) connections beyond `limit`, being closed.
    pub debt: u32,
    /// Connections open or being opened.
    pub open: u32,
    /// Connection attempts waiting for a permit.
    pub waiting: u32,
    /// Attempts that ever had to wait.
    pub waited: u64,
    /// Idle connections in the node's pools.
    pub idle: u32,
}

impl GateState {
    /// Slots backing a permit, used or not: the member must keep holding
    /// at least this many.
    pub fn backed(&self) -> u32 {
        self.limit + self.debt
    }
}

impl NodeGate {
    /// A gate with limit 0: nothing opens until the coordinator holds a slot.
    pub fn new(node: NodeAddr) -> Arc<NodeGate> {
        Arc::new(NodeGate {
            node,
            ledger: Mutex::new(Ledger::default()),
            waited: AtomicU64::new(0),
            wanted: Notify::new(),
            closed: Mutex::new(VecDeque::new()),
        })
    }

    pub fn node(&self) -> &NodeAddr {
        &self.node
    }

    /// Gives a pool of this node its seat; `pool` is whose idle
    /// connections may be closed when another pool needs the room.
    pub fn seat(self: &Arc<Self>, pool: Option<Weak<dyn IdleConnections>>) -> Seat {
        let mut ledger = lock(&self.ledger);
        // Forget pools whose seat is gone (the pool was dropped) and that
        // hold nothing.
        ledger
            .pools
            .retain(|_, p| p.open > 0 || p.waiting > 0 || Arc::strong_count(&p.give_back) > 1);
        ledger.next_id += 1;
        let id = ledger.next_id;
        let give_back = Arc::new(AtomicBool::new(false));
        ledger.pools.insert(
            id,
            PoolCount {
                give_back: give_back.clone(),
                pool,
                ..PoolCount::default()
            },
        );
        ledger.flag();
        Seat {
            gate: self.clone(),
            id,
            give_back,
        }
    }

    /// A permit for one connection of pool `pool`, waiting up to `wait`.
    /// While it waits it closes an idle connection of another pool of the
    /// node if there is one, and tells the coordinator that this member
    /// wants more.
    async fn acquire(
        self: &Arc<Self>,
        pool: u64,
        wait: Duration,
    ) -> Result<BudgetPermit, NoPermit> {
        let permit = || BudgetPermit {
            gate: self.clone(),
            pool,
            backend_pid: 0,
        };
        let (id, rx) = {
            let mut ledger = lock(&self.ledger);
            if ledger.open < ledger.limit && ledger.waiters.is_empty() {
                ledger.open += 1;
                ledger.pools.entry(pool).or_default().open += 1;
                ledger.flag();
                return Ok(permit());
            }
            let (tx, rx) = oneshot::channel();
            ledger.next_id += 1;
            let id = ledger.next_id;
            ledger.waiters.push_back(Waiter { id, pool, tx });
            ledger.pools.entry(pool).or_default().waiting += 1;
            ledger.flag();
            (id, rx)
        };
        let mut waiting = Waiting {
            gate: self,
            id,
            pool,
            rx: Some(rx),
        };
        self.waited.fetch_add(1, Ordering::Relaxed);
        self.wanted.notify_one();
        self.shed_idle(1);
        let rx = waiting.rx.as_mut().expect("set above");
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(())) => {
                waiting.rx = None;
                Ok(permit())
            }
            _ => {
                // The guard returns a permit granted at the last moment.
                drop(waiting);
                Err(NoPermit {
                    waited: wait,
                    limit: lock(&self.ledger).limit,
                })
            }
        }
    }

    /// Resolves when a connection attempt starts waiting for a permit.
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// Sets the limit. Lowering it below what is open creates debt: pools
    /// close connections as they come back, and the caller closes idle
    /// ones with [`shed_idle`](Self::shed_idle).
    pub fn set_limit(&self, new: u32) {
        let mut ledger = lock(&self.ledger);
        ledger.limit = new;
        ledger.grant();
    }

    /// Closes up to `n` idle connections, from the pools with the most
    /// idle first. Returns how many it closed.
    pub fn shed_idle(&self, n: u32) -> u32 {
        let mut pools: Vec<Arc<dyn IdleConnections>> = lock(&self.ledger)
            .pools
            .values()
            .filter_map(|p| p.pool.as_ref()?.upgrade())
            .collect();
        pools.sort_by_key(|p| std::cmp::Reverse(p.idle()));
        let mut closed = 0;
        for pool in pools {
            while closed < n && pool.idle() > 0 && pool.close_one_idle() {
                closed += 1;
            }
        }
        closed
    }

    pub fn state(&self) -> GateState {
        let (limit, open, waiting, pools) = {
            let l = lock(&self.ledger);
            let pools: Vec<_> = l
                .pools
                .values()
                .filter_map(|p| p.pool.as_ref()?.upgrade())
                .collect();
            (l.limit, l.open, l.waiters.len() as u32, pools)
        };
        GateState {
            limit,
            debt: open.saturating_sub(limit),
            open,
            waiting,
            waited: self.waited.load(Ordering::Relaxed),
            idle: pools.iter().map(|p| p.idle()).sum(),
        }
    }

    /// Backend pids of connections closed in the last few seconds: a slot
    /// is given back only once none of them is still in
    /// `pg_stat_activity`, so that a backend that is still exiting never
    /// overlaps with the connection another member opens on that slot.
    pub fn recently_closed(&self) -> Vec<i32> {
        let mut closed = lock(&self.closed);
        let now = Instant::now();
        while closed
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > REMEMBER_CLOSED)
        {
            closed.pop_front();
        }
        closed.iter().map(|(_, pid)| *pid).collect()
    }

    fn release(&self, pool: u64, backend_pid: i32) {
        {
            let mut ledger = lock(&self.ledger);
            ledger.open = ledger.open.saturating_sub(1);
            if let Some(p) = ledger.pools.get_mut(&pool) {
                p.open = p.open.saturating_sub(1);
            }
            ledger.grant();
        }
        if backend_pid != 0 {
            let mut closed = lock(&self.closed);
            if closed.len() >= MAX_REMEMBERED {
                closed.pop_front();
            }
            closed.push_back((Instant::now(), backend_pid));
        }
    }
}

/// A waiting attempt. Dropped before its permit arrived (timed out, or
/// the attempt was cancelled), it leaves the queue; if the permit was
/// granted in the meantime, it gives it back.
struct Waiting<'a> {
    gate: &'a Arc<NodeGate>,
    id: u64,
    pool: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let granted = {
            let mut ledger = lock(&self.gate.ledger);
            if let Some(at) = ledger.waiters.iter().position(|w| w.id == self.id) {
                ledger.waiters.remove(at);
                if let Some(p) = ledger.pools.get_mut(&self.pool) {
                    p.waiting = p.waiting.saturating_sub(1);
                }
                ledger.flag();
                false
            } else {
                rx.try_recv().is_ok()
            }
        };
        if granted {
            self.gate.release(self.pool, 0);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_millis(1);

    fn gate() -> Arc<NodeGate> {
        NodeGate::new("h:1".parse().unwrap())
    }

    #[tokio::test]
    async fn nothing_opens_without_a_slot() {
        let seat = gate().seat(None);
        let err = seat.acquire(NOW).await.err().unwrap();
        assert_eq!(err.limit, 0);
        let s = seat.gate().state();
        assert_eq!((s.waited, s.waiting), (1, 0));
    }

    #[tokio::test]
    async fn open_connections_never_exceed_the_limit() {
        let g = gate();
        let seat = g.seat(None);
        g.set_limit(2);
        let a = seat.acquire(NOW).await.unwrap();
        let _b = seat.acquire(NOW).await.unwrap();
        assert!(seat.acquire(NOW).await.is_err());
        assert_eq!(g.state().open, 2);
        drop(a);
        assert_eq!(g.state().open, 1);
        let _c = seat.acquire(NOW).await.unwrap();
        assert!(!seat.should_give_back());
    }

    #[tokio::test]
    async fn lowering_the_limit_is_debt_paid_by_closing() {
        let g = gate();
        let seat = g.seat(None);
        g.set_limit(3);
        let mut a = seat.acquire(NOW).await.unwrap();
        a.set_backend_pid(101);
        let b = seat.acquire(NOW).await.unwrap();
        g.set_limit(1);
        let s = g.state();
        assert_eq!((s.limit, s.debt, s.open, s.backed()), (1, 1, 2, 2));
        assert!(seat.should_give_back(), "over the limit: close on return");
        assert!(seat.acquire(NOW).await.is_err(), "no new ones");
        drop(a);
        let s = g.state();
        assert_eq!((s.limit, s.debt, s.open, s.backed()), (1, 0, 1, 1));
        assert!(!seat.should_give_back());
        assert!(seat.acquire(NOW).await.is_err(), "at the limit");
        assert_eq!(g.recently_closed(), vec![101]);
        drop(b);
        let _c = seat.acquire(NOW).await.unwrap();
    }

    #[tokio::test]
    async fn a_waiting_attempt_gets_the_next_permit() {
        let g = gate();
        let seat = g.seat(None);
        let waiter = tokio::spawn({
            let seat = seat.clone();
            async move { seat.acquire(Duration::from_secs(10)).await }
        });
        tokio::time::timeout(Duration::from_secs(5), g.wanted())
            .await
            .unwrap();
        assert_eq!(g.state().waiting, 1);
        g.set_limit(1);
        let _permit = waiter.await.unwrap().expect("granted");
        let s = g.state();
        assert_eq!(
            (s.waiting, s.open),
            (0, 1),
            "the permit went with the attempt"
        );
    }

    #[tokio::test]
    async fn a_pool_with_no_connection_is_served_first_and_others_give_back() {
        let g = gate();
        let busy = g.seat(None);
        let starved = g.seat(None);
        g.set_limit(2);
        let a = busy.acquire(NOW).await.unwrap();
        let _b = busy.acquire(NOW).await.unwrap();
        // The busy pool wants a third, then the other pool wants its first.
        let busy_more = tokio::spawn({
            let busy = busy.clone();
            async move { busy.acquire(Duration::from_secs(10)).await.map(|_| ()) }
        });
        tokio::time::timeout(Duration::from_secs(5), g.wanted())
            .await
            .unwrap();
        let first = tokio::spawn({
            let starved = starved.clone();
            async move { starved.acquire(Duration::from_secs(10)).await }
        });
        tokio::time::timeout(Duration::from_secs(5), g.wanted())
            .await
            .unwrap();
        assert!(busy.should_give_back(), "busy holds more than its part (1)");
        assert!(!starved.should_give_back());
        drop(a);
        let permit = first.await.unwrap().expect("the starved pool got it");
        assert!(!busy.should_give_back(), "each has its part now");
        assert_eq!(g.state().waiting, 1);
        drop(permit);
        busy_more.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_timed_out_attempt_leaves_the_queue() {
        let g = gate();
        let seat = g.seat(None);
        assert!(seat.acquire(NOW).await.is_err());
        g.set_limit(1);
        let s = g.state();
        assert_eq!(
            (s.waiting, s.open),
            (0, 0),
            "nothing granted to a gone attempt"
        );
        let _p = seat.acquire(NOW).await.unwrap();
    }

    struct FakePool(Mutex<u32>);
    impl IdleConnections for FakePool {
        fn idle(&self) -> u32 {
            *self.0.lock().unwrap()
        }
        fn close_one_idle(&self) -> bool {
            let mut n = self.0.lock().unwrap();
            *n = n.saturating_sub(1);
            true
        }
    }

    #[tokio::test]
    async fn sheds_idle_connections_from_the_idlest_pool_first() {
        let g = gate();
        let a: Arc<dyn IdleConnections> = Arc::new(FakePool(Mutex::new(1)));
        let b: Arc<dyn IdleConnections> = Arc::new(FakePool(Mutex::new(3)));
        let _sa = g.seat(Some(Arc::downgrade(&a)));
        let _sb = g.seat(Some(Arc::downgrade(&b)));
        assert_eq!(g.state().idle, 4);
        assert_eq!(g.shed_idle(2), 2);
        assert_eq!((a.idle(), b.idle()), (1, 1));
        assert_eq!(g.shed_idle(5), 2);
        assert_eq!(g.state().idle, 0);
    }
}
