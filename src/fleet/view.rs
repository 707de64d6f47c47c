//! What this member knows of the fleet on each node, as `SHOW FLEET` and
//! the metrics show it: the members seen at the last look (and those that
//! left lately, with when they were last seen), each one's share and open
//! connections, and this member's own gate.

use crate::sync::lock;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::config::NodeAddr;
use crate::server::GateState;

/// Members that left are listed this long after they were last seen.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// One member on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    pub instance: String,
    /// Its coordinator session's backend pid on the node.
    pub pid: i32,
    pub is_self: bool,
    /// Slots it holds (its share of the node's budget).
    pub share: u32,
    /// Server connections it has open to the node, as it last published.
    pub open: Option<u32>,
    pub wanting: bool,
    /// Present at the last look.
    pub present: bool,
    pub last_seen: SystemTime,
}

/// One node as this member sees it.
#[derive(Clone, Debug)]
pub struct NodeFleet {
    pub node: NodeAddr,
    pub budget: u32,
    /// Whether this member's coordinator session is up.
    pub connected: bool,
    pub gate: GateState,
    pub members: Vec<MemberRow>,
}

impl NodeFleet {
    /// Members present at the last look.
    pub fn present(&self) -> usize {
        self.members.iter().filter(|m| m.present).count()
    }
}

/// The per-node views, written by the coordinators.
#[derive(Default)]
pub struct FleetView {
    nodes: Mutex<BTreeMap<String, NodeFleet>>,
}

impl FleetView {
    /// Records a look: `members` are those present now; members seen
    /// before and missing now are kept as departed.
    pub fn record(&self, node: &NodeAddr, budget: u32, gate: GateState, members: Vec<MemberRow>) {
        let mut nodes = lock(&self.nodes);
        let now = SystemTime::now();
        let entry = nodes.entry(node.to_string()).or_insert_with(|| NodeFleet {
            node: node.clone(),
            budget,
            connected: true,
            gate,
            members: Vec::new(),
        });
        let mut departed: Vec<MemberRow> = entry
            .members
            .drain(..)
            .filter(|old| !members.iter().any(|m| m.pid == old.pid))
            .filter(|old| now.duration_since(old.last_seen).unwrap_or_default() < FORGET_AFTER)
            .map(|mut old| {
                old.present = false;
                old.wanting = false;
                old
            })
            .collect();
        entry.budget = budget;
        entry.connected = true;
        entry.gate = gate;
        entry.members = members;
        entry.members.append(&mut departed);
    }

    /// The coordinator lost its session: members are no longer seen.
    pub fn disconnected(&self, node: &NodeAddr, budget: u32, gate: GateState) {
        let mut nodes = lock(&self.nodes);
        let entry = nodes.entry(node.to_string()).or_insert_with(|| NodeFleet {
            node: node.clone(),
            budget,
            connected: false,
            gate,
            members: Vec::new(),
        });
        entry.connected = false;
        entry.budget = budget;
        entry.gate = gate;
        for m in &mut entry.members {
            m.present = false;
        }
    }

    /// Forgets nodes no longer configured.
    pub fn retain(&self, nodes: &[NodeAddr]) {
        let keep: Vec<String> = nodes.iter().map(ToString::to_string).collect();
        lock(&self.nodes).retain(|k, _| keep.contains(k));
    }

    pub fn nodes(&self) -> Vec<NodeFleet> {
        lock(&self.nodes).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: i32) -> MemberRow {
        MemberRow {
            instance: format!("m{pid}"),
            pid,
            is_self: false,
            share: 1,
            open: Some(0),
            wanting: true,
            present: true,
            last_seen: SystemTime::now(),
        }
    }

    #[test]
    fn departed_members_stay_listed_as_not_present() {
        let v = FleetView::default();
        let node: NodeAddr = "h:1".parse().unwrap();
        v.record(&node, 8, GateState::default(), vec![row(1), row(2)]);
        v.record(&node, 8, GateState::default(), vec![row(1)]);
        let n = &v.nodes()[0];
        assert_eq!(n.present(), 1);
        let gone = n.members.iter().find(|m| m.pid == 2).unwrap();
        assert!(!gone.present && !gone.wanting);
        v.disconnected(&node, 8, GateState::default());
        assert_eq!(v.nodes()[0].present(), 0);
        assert!(!v.nodes()[0].connected);
    }
}
