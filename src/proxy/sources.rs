//! The proxy's live state as the observer reads it at scrape time: nodes,
//! pools and clients. Holds the shared state weakly, since the shared state
//! owns the observer.

use std::sync::Weak;

use super::Shared;
use crate::client::registry::ClientActivity;
use crate::cluster::NodeStatus;
use crate::observe::{ClientCounts, FleetSnapshot, PoolSnapshot, Sources};

pub struct ProxySources {
    pub shared: Weak<Shared>,
}

impl Sources for ProxySources {
    fn nodes(&self) -> Vec<NodeStatus> {
        self.shared
            .upgrade()
            .map(|s| s.cluster().status())
            .unwrap_or_default()
    }

    fn primary_ready(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|s| s.cluster().primary_ready())
    }

    fn pools(&self) -> Vec<PoolSnapshot> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        shared
            .pools
            .all()
            .iter()
            .map(|p| PoolSnapshot::of(p))
            .collect()
    }

    fn clients(&self) -> ClientCounts {
        let mut counts = ClientCounts::default();
        if let Some(shared) = self.shared.upgrade() {
            for c in shared.clients.all() {
                match c.activity() {
                    ClientActivity::Active => counts.active += 1,
                    ClientActivity::Idle => counts.idle += 1,
                    ClientActivity::Waiting => counts.waiting += 1,
                }
            }
        }
        counts
    }

    fn pinned(&self) -> u64 {
        self.shared.upgrade().map_or(0, |s| {
            s.clients.all().iter().filter(|c| c.is_pinned()).count() as u64
        })
    }

    fn fleet(&self) -> Option<FleetSnapshot> {
        let shared = self.shared.upgrade()?;
        let fleet = shared.fleet.as_ref()?;
        let writes = fleet.writes().counts();
        Some(FleetSnapshot {
            members: fleet.members() as u64,
            nodes: fleet
                .nodes()
                .into_iter()
                .map(|n| (n.node, n.budget, n.gate.limit))
                .collect(),
            writes_published: writes.published,
            writes_received: writes.received,
            publish_failures: writes.failures,
            listening: writes.listening,
        })
    }
}
