//! What the observer reads from the rest of the proxy when it is asked
//! (a `/metrics` scrape, `/readyz`, a budget check): node status, pools,
//! clients. Reading on demand keeps these gauges off the hot path.

use crate::cluster::NodeStatus;
use crate::config::NodeAddr;
use crate::server::ServerPool;

/// The proxy's live state, as the observer needs it. Implemented by the
/// proxy over its `ClusterView`, `Pools` and client counters; tests use a
/// stub. Called from the HTTP server and a once-a-second timer, never
/// from the query path, so implementations may allocate and take locks
/// (but should not block on I/O).
pub trait Sources: Send + Sync + 'static {
    /// Every configured node (`ClusterView::status()`).
    fn nodes(&self) -> Vec<NodeStatus>;
    /// A primary is reachable (`ClusterView::primary_ready()`): `/readyz`.
    fn primary_ready(&self) -> bool;
    /// Every server pool ([`PoolSnapshot::of`] over `Pools::all()`).
    fn pools(&self) -> Vec<PoolSnapshot>;
    /// Connected clients by state.
    fn clients(&self) -> ClientCounts;
    /// Clients pinned to their server connection (session state that
    /// cannot move between servers).
    fn pinned(&self) -> u64;
    /// With `[fleet]`: the fleet on each node as this member sees it.
    fn fleet(&self) -> Option<FleetSnapshot> {
        None
    }
}

/// The fleet as the metrics show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSnapshot {
    /// Members present (on the node where most are seen).
    pub members: u64,
    /// (node, budget, this member's share) per node.
    pub nodes: Vec<(NodeAddr, u32, u32)>,
    /// Write transactions this member announced to the fleet.
    pub writes_published: u64,
    /// Announcements of writes heard from other members.
    pub writes_received: u64,
    /// Write transactions whose announcement failed.
    pub publish_failures: u64,
    /// Whether this member hears the fleet's writes now.
    pub listening: bool,
}

/// One pool's occupancy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub node: NodeAddr,
    pub database: String,
    pub user: String,
    /// Configured maximum number of connections.
    pub size: u32,
    /// Connections open now (busy + idle).
    pub open: u32,
    /// Open connections nobody has checked out.
    pub idle: u32,
}

impl PoolSnapshot {
    /// A snapshot of `pool`.
    pub fn of(pool: &ServerPool) -> PoolSnapshot {
        let (open, idle) = pool.state();
        PoolSnapshot {
            node: pool.key.node.clone(),
            database: pool.key.database.clone(),
            user: pool.key.user.clone(),
            size: pool.size,
            open,
            idle,
        }
    }

    /// Connections checked out by clients.
    pub fn busy(&self) -> u32 {
        self.open.saturating_sub(self.idle)
    }

    /// `busy / size`; 0 for a pool of size 0.
    pub fn usage(&self) -> f64 {
        if self.size == 0 {
            0.0
        } else {
            f64::from(self.busy()) / f64::from(self.size)
        }
    }
}

/// Connected clients, exported as `client_connections{state}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounts {
    /// Holding a server connection (in a transaction, or pinned).
    pub active: u64,
    /// Connected, between transactions.
    pub idle: u64,
    /// Waiting for a server connection to become free.
    pub waiting: u64,
}

impl ClientCounts {
    /// `(state label, count)` for each state.
    pub fn by_state(&self) -> [(&'static str, u64); 3] {
        [
            ("active", self.active),
            ("idle", self.idle),
            ("waiting", self.waiting),
        ]
    }
}
