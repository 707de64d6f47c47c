//! The fleet: sidecars configured with the same `[fleet] name` share one
//! connection budget per node (`[pool] budget`), coordinated through
//! Postgres itself — no other service, nothing written to any table.
//!
//! # Why Postgres, and why advisory locks
//! Every member already talks to every node, and Postgres already knows
//! which sessions are alive: it ends a session, and releases everything it
//! holds, when the client's process dies (the socket closes) or its host
//! vanishes (TCP keepalives, which the member turns on for its session on
//! both ends: a silent host is dropped within 3 + 3 × 1 = 6 s). So each
//! member keeps one *coordinator session* per node, and everything the
//! fleet needs to know is a session-level advisory lock on it, keyed by
//! (hash of the fleet name, n):
//!
//! - n = −1, shared: presence. The members are the sessions holding it;
//!   `application_name` = `pgsidecar/<fleet>/<instance>#<open>` names them
//!   (and publishes their open server connections) in `pg_stat_activity`.
//! - n = 0 … budget − 1, exclusive: the budget's *slots*. A member may
//!   have at most as many server connections open to a node as it holds
//!   slots there ([`crate::server::NodeGate`] enforces this inside the
//!   process). Postgres grants each slot to one session at a time, so the
//!   fleet's total can never pass the budget — not while members join,
//!   leave or crash, and not by a bug in how shares are decided, which can
//!   only make a share smaller or slower to move, never oversubscribe.
//! - n = −2, shared: "wants more", held while connection attempts wait
//!   for budget.
//!
//! Advisory locks, `pg_locks`, `pg_stat_activity` and `set_config` need no
//! grant, and work on hot standbys too (locks there are the standby's
//! own), so replicas get budgets the same way. Locks are per database:
//! every member must use the same `cluster.monitor_database`.
//!
//! # Keeping "never exceeded" at every step
//! A slot is locked before the gate lets a connection use it, and unlocked
//! only after the connection it backed is closed and its backend has left
//! `pg_stat_activity`; a slot freed by someone else is taken only after it
//! has been seen free for [`coordinator::GRACE`] (the backends of a member
//! that died end as their sockets close). When the member loses its
//! session it treats its share as 0 at once (Postgres may free its slots
//! any moment), closing idle connections immediately and busy ones as
//! their transactions end. What remains is a client still running a
//! statement on a backend whose member died: Postgres notices the closed
//! socket only when that statement ends.
//!
//! # Shares follow demand
//! Each `[fleet] interval` a member looks at the fleet on each node (one
//! query), then [`policy`] decides: members with waiting connection
//! attempts split what idle members leave; idle members keep a floor
//! (`[fleet] floor`) and give back what they have not used when someone
//! wants it. A dead member's slots are free as soon as Postgres ends its
//! session (at once for a killed process, ≤ 6 s for a vanished host) and
//! taken by a member that wants them within one interval plus [`GRACE`].
//!
//! # Read-your-writes across the fleet
//! The coordinator session to the primary announces the tables this
//! member's clients wrote with NOTIFY ([`writes`]), and a second
//! connection there, which does nothing else, LISTENs on the fleet's
//! channel (a busy session would hold notifications back), so that a read
//! through any member waits for a replica that has them.
//!
//! # Layout
//! - `identity`: lock key, application name, default instance name.
//! - `session`: the coordinator's connection and its statements.
//! - `policy`: how many slots to hold (pure).
//! - `coordinator`: the per-node loop.
//! - `view`: what `SHOW FLEET` and the metrics show.
//! - `writes`, `announce`: the fleet's writes, sent and heard.

mod announce;
mod coordinator;
mod identity;
mod policy;
mod session;
mod view;
pub mod writes;

use crate::sync::lock;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

pub use identity::Identity;
pub use session::SERVER_KEEPALIVE;
pub use view::{FleetView, MemberRow, NodeFleet};
pub use writes::{WriteCounts, Writes};

use crate::cluster::ClusterView;
use crate::config::{ConfigHandle, FleetConfig, NodeAddr};
use crate::routing::policy::WriteLog;
use crate::server::NodeGate;

pub use coordinator::GRACE;

/// This process's membership: its identity and the per-node coordinators.
pub struct Fleet {
    identity: Identity,
    floor: u32,
    interval: std::time::Duration,
    view: Arc<FleetView>,
    writes: Arc<Writes>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Fleet {
    /// `log`: the write log the other members' writes are recorded in.
    pub fn new(config: &FleetConfig, log: Arc<WriteLog>, handle: ConfigHandle) -> Fleet {
        let identity = Identity::new(config);
        Fleet {
            writes: Arc::new(Writes::new(identity.key, log, handle)),
            identity,
            floor: config.floor,
            interval: config.interval,
            view: Arc::default(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The fleet's writes: this member's announcements and what it heard.
    pub fn writes(&self) -> &Writes {
        &self.writes
    }

    /// (Re)starts one coordinator per node, each with its node's gate, and
    /// the announcer of this member's writes. `cluster` says which node is
    /// the primary (where the fleet's writes are announced).
    pub fn start(
        &self,
        config: ConfigHandle,
        nodes: Vec<(NodeAddr, Arc<NodeGate>)>,
        cluster: Arc<ClusterView>,
    ) {
        self.stop();
        let addrs: Vec<NodeAddr> = nodes.iter().map(|(a, _)| a.clone()).collect();
        self.view.retain(&addrs);
        let mut tasks = lock(&self.tasks);
        tasks.push(tokio::spawn(self.writes.clone().run()));
        for (node, gate) in nodes {
            let coordinator = coordinator::Coordinator {
                node,
                gate,
                identity: self.identity.clone(),
                config: config.clone(),
                view: self.view.clone(),
                floor: self.floor,
                interval: self.interval,
                writes: self.writes.clone(),
                cluster: cluster.clone(),
            };
            tasks.push(tokio::spawn(coordinator.run()));
        }
        tracing::info!(
            fleet = %self.identity.fleet,
            instance = %self.identity.instance,
            nodes = tasks.len(),
            "fleet member starting"
        );
    }

    /// Stops the coordinators: their sessions close, Postgres frees their
    /// slots, and the gates drop to 0.
    pub fn stop(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.writes.detach_all();
    }

    /// Each node as this member sees the fleet there.
    pub fn nodes(&self) -> Vec<NodeFleet> {
        self.view.nodes()
    }

    /// Members present on the node where most are seen (normally every
    /// node sees all of them).
    pub fn members(&self) -> usize {
        self.view
            .nodes()
            .iter()
            .map(NodeFleet::present)
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}
