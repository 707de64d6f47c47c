//! The per-node budget gate of a fleet member: how many server connections
//! this process may have open to one node, across all of its pools (every
//! database and user), and the permits that hold that count.
//!
//! The limit is the number of budget slots the member holds on the node
//! (see `crate::fleet`); the fleet coordinator raises it after Postgres
//! granted a slot and lowers it before giving one back. Every server
//! connection holds a [`BudgetPermit`] from before it connects until it is
//! closed, so "open connections ≤ limit" holds at all times, except right
//! after the limit was lowered below what is open: the surplus is then
//! *debt*, paid by closing connections — idle ones at once
//! ([`NodeGate::shed_idle`]), busy ones when their client gives them back
//! (the pool asks [`NodeGate::over_limit`], one atomic load, only when a
//! connection returns). A permit paying debt is forgotten instead of
//! returned, so the slot behind it can be given back to the fleet.
//!
//! Nothing here runs per query. Opening and closing connections takes the
//! ledger's mutex; returning a connection reads one atomic.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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

/// Limit and debt, changed together.
#[derive(Debug, Default)]
struct Ledger {
    /// Connections this member may have open (its slots on the node).
    limit: u32,
    /// Permits out beyond `limit`: forgotten when they come back.
    debt: u32,
}

/// One node's gate. Created once per node and kept for the life of the
/// process (pools come and go on reload, their connections keep permits).
pub struct NodeGate {
    node: NodeAddr,
    /// Available permits = limit + debt − permits out.
    permits: Arc<Semaphore>,
    ledger: Mutex<Ledger>,
    /// `ledger.debt`, readable without the lock.
    debt: AtomicU32,
    /// Connection attempts waiting for a permit now.
    waiting: AtomicU32,
    /// Connection attempts that had to wait, ever.
    waited: AtomicU64,
    /// Told when an attempt starts waiting, so the coordinator can ask the
    /// fleet for a slot without waiting for its next round.
    wanted: Notify,
    pools: Mutex<Vec<Weak<dyn IdleConnections>>>,
    /// (when, backend pid) of connections closed lately.
    closed: Mutex<VecDeque<(Instant, i32)>>,
}

/// A server connection's claim on its node's budget; gives it back (or
/// pays debt) when dropped with the connection.
pub struct BudgetPermit {
    permit: Option<OwnedSemaphorePermit>,
    gate: Arc<NodeGate>,
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
        if let Some(permit) = self.permit.take() {
            self.gate.give_back(permit, self.backend_pid);
        }
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
            permits: Arc::new(Semaphore::new(0)),
            ledger: Mutex::new(Ledger::default()),
            debt: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            waited: AtomicU64::new(0),
            wanted: Notify::new(),
            pools: Mutex::new(Vec::new()),
            closed: Mutex::new(VecDeque::new()),
        })
    }

    pub fn node(&self) -> &NodeAddr {
        &self.node
    }

    /// Lists a pool of this node among those whose idle connections may be
    /// closed when another pool needs the room.
    pub fn register(&self, pool: Weak<dyn IdleConnections>) {
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// A permit for one connection, waiting up to `wait`. While it waits it
    /// closes an idle connection of another pool of the node if there is
    /// one, and tells the coordinator that this member wants more.
    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Result<BudgetPermit, NoPermit> {
        let wrap = |permit| BudgetPermit {
            permit: Some(permit),
            gate: self.clone(),
            backend_pid: 0,
        };
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(wrap(permit));
        }
        let _waiting = Waiting::start(self);
        self.wanted.notify_one();
        self.shed_idle(1);
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(wrap(permit)),
            // The semaphore is never closed; treat it like a timeout.
            Ok(Err(_)) | Err(_) => Err(NoPermit {
                waited: wait,
                limit: lock(&self.ledger).limit,
            }),
        }
    }

    /// Resolves when a connection attempt starts waiting for a permit.
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// Whether more connections are open than the limit allows: a
    /// connection coming back now should be closed. One atomic load.
    pub fn over_limit(&self) -> bool {
        self.debt.load(Ordering::Relaxed) > 0
    }

    /// Sets the limit. Lowering it below what is open creates debt; the
    /// caller then closes idle connections with [`shed_idle`](Self::shed_idle).
    pub fn set_limit(&self, new: u32) {
        let mut ledger = lock(&self.ledger);
        if new > ledger.limit {
            let grow = new - ledger.limit;
            let pay = grow.min(ledger.debt);
            ledger.debt -= pay;
            self.permits.add_permits((grow - pay) as usize);
        } else if new < ledger.limit {
            let shrink = ledger.limit - new;
            let forgotten = self.permits.forget_permits(shrink as usize) as u32;
            ledger.debt += shrink - forgotten;
        }
        ledger.limit = new;
        self.debt.store(ledger.debt, Ordering::Relaxed);
    }

    /// Closes up to `n` idle connections, from the pools with the most
    /// idle first. Returns how many it closed.
    pub fn shed_idle(&self, n: u32) -> u32 {
        let mut pools: Vec<Arc<dyn IdleConnections>> =
            lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
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
        let (limit, debt) = {
            let l = lock(&self.ledger);
            (l.limit, l.debt)
        };
        let available = self.permits.available_permits() as u32;
        let idle = lock(&self.pools)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.idle())
            .sum();
        GateState {
            limit,
            debt,
            open: (limit + debt).saturating_sub(available),
            waiting: self.waiting.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
            idle,
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

    fn give_back(&self, permit: OwnedSemaphorePermit, backend_pid: i32) {
        {
            let mut ledger = lock(&self.ledger);
            if ledger.debt > 0 {
                ledger.debt -= 1;
                self.debt.store(ledger.debt, Ordering::Relaxed);
                permit.forget();
            } else {
                drop(permit);
            }
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

/// Counts an attempt among the waiting while it waits (also if the
/// attempt is dropped).
struct Waiting<'a>(&'a NodeGate);

impl<'a> Waiting<'a> {
    fn start(gate: &'a NodeGate) -> Self {
        gate.waiting.fetch_add(1, Ordering::Relaxed);
        gate.waited.fetch_add(1, Ordering::Relaxed);
        Waiting(gate)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Arc<NodeGate> {
        NodeGate::new("h:1".parse().unwrap())
    }

    const NOW: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn nothing_opens_without_a_slot() {
        let g = gate();
        let err = g.acquire(NOW).await.err().unwrap();
        assert_eq!(err.limit, 0);
        assert_eq!(g.state().waited, 1);
        assert_eq!(g.state().waiting, 0);
    }

    #[tokio::test]
    async fn open_connections_never_exceed_the_limit() {
        let g = gate();
        g.set_limit(2);
        let a = g.acquire(NOW).await.unwrap();
        let _b = g.acquire(NOW).await.unwrap();
        assert!(g.acquire(NOW).await.is_err());
        assert_eq!(g.state().open, 2);
        drop(a);
        assert_eq!(g.state().open, 1);
        let _c = g.acquire(NOW).await.unwrap();
        assert!(!g.over_limit());
    }

    #[tokio::test]
    async fn lowering_the_limit_turns_open_connections_into_debt() {
        let g = gate();
        g.set_limit(3);
        let mut a = g.acquire(NOW).await.unwrap();
        a.set_backend_pid(101);
        let b = g.acquire(NOW).await.unwrap();
        // One unused permit is forgotten at once, one open one is debt.
        g.set_limit(1);
        let s = g.state();
        assert_eq!((s.limit, s.debt, s.open, s.backed()), (1, 1, 2, 2));
        assert!(g.over_limit());
        assert!(g.acquire(NOW).await.is_err(), "over the limit: no new ones");
        drop(a);
        let s = g.state();
        assert_eq!((s.limit, s.debt, s.open, s.backed()), (1, 0, 1, 1));
        assert!(!g.over_limit());
        assert!(g.acquire(NOW).await.is_err(), "at the limit");
        assert_eq!(g.recently_closed(), vec![101]);
        drop(b);
        assert_eq!(g.state().open, 0);
        let _c = g.acquire(NOW).await.unwrap();
    }

    #[tokio::test]
    async fn raising_the_limit_pays_debt_first() {
        let g = gate();
        g.set_limit(2);
        let _a = g.acquire(NOW).await.unwrap();
        let _b = g.acquire(NOW).await.unwrap();
        g.set_limit(0);
        assert_eq!(g.state().debt, 2);
        g.set_limit(1);
        let s = g.state();
        assert_eq!((s.limit, s.debt, s.open), (1, 1, 2));
        assert!(g.acquire(NOW).await.is_err());
        g.set_limit(3);
        let s = g.state();
        assert_eq!((s.limit, s.debt, s.open), (3, 0, 2));
        let _c = g.acquire(NOW).await.unwrap();
        assert!(g.acquire(NOW).await.is_err());
    }

    #[tokio::test]
    async fn a_waiting_attempt_gets_the_next_permit() {
        let g = gate();
        let waiter = tokio::spawn({
            let g = g.clone();
            async move { g.acquire(Duration::from_secs(10)).await.is_ok() }
        });
        tokio::time::timeout(Duration::from_secs(5), g.wanted())
            .await
            .unwrap();
        assert_eq!(g.state().waiting, 1);
        g.set_limit(1);
        assert!(waiter.await.unwrap());
        assert_eq!(g.state().waiting, 0);
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
        g.register(Arc::downgrade(&a));
        g.register(Arc::downgrade(&b));
        assert_eq!(g.state().idle, 4);
        assert_eq!(g.shed_idle(2), 2);
        assert_eq!((a.idle(), b.idle()), (1, 1));
        assert_eq!(g.shed_idle(5), 2);
        assert_eq!(g.state().idle, 0);
    }
}
