//! The monitor's write side of [`ClusterView`]: recording each check's
//! outcome, settling who is primary, restarting the timeline on a primary
//! change and recomputing replica lag marks. Every update runs under the
//! view's monitor lock (only monitor tasks take it, a few times per check
//! interval, for microseconds), so updates from different nodes' tasks
//! never interleave half-way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeId;
use super::lag::LagMark;
use super::lsn::Lsn;
use super::node::Role;
use super::roles::{self, Claim};
use super::timeline::Timeline;
use super::view::ClusterView;

/// The configured primary's id: it wins ties between claimants.
const CONFIGURED_PRIMARY: NodeId = 0;

/// What one successful check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub in_recovery: bool,
    /// Replay position on a replica; insert position (in record-end form,
    /// see [`WalGeometry`](super::lsn::WalGeometry)) on a primary.
    pub lsn: Option<Lsn>,
    /// Timeline ID of the WAL a primary writes.
    pub timeline: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Check {
    Never,
    Ok,
    Failed(String),
}

/// What the monitor remembers per node beyond the published atomics.
#[derive(Debug)]
struct Facts {
    /// Claims the primary role with this WAL timeline (0 = unknown). Kept
    /// while the node is unreachable: a dead primary is still the primary
    /// until another node wins the role.
    claim: Option<u32>,
    check: Check,
    refused: bool,
    shown_error: Option<Arc<String>>,
}

/// Monitor-only state, behind [`ClusterView`]'s monitor lock.
#[derive(Debug)]
pub(crate) struct MonitorState {
    facts: Vec<Facts>,
}

impl MonitorState {
    pub(crate) fn new(nodes: usize) -> Self {
        let facts = (0..nodes)
            .map(|id| Facts {
                claim: (id == CONFIGURED_PRIMARY).then_some(0),
                check: Check::Never,
                refused: false,
                shown_error: None,
            })
            .collect();
        MonitorState { facts }
    }
}

impl ClusterView {
    /// Records a successful check of `id` whose query was sent at `sent`
    /// and answered at `answered`.
    pub(crate) fn record_success(&self, id: NodeId, sent: Instant, answered: Instant, p: Probe) {
        let Some(node) = self.nodes.get(id) else {
            return;
        };
        let mut st = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        let facts = &mut st.facts[id];
        facts.check = Check::Ok;
        facts.claim = (!p.in_recovery).then(|| p.timeline.unwrap_or(0));
        node.set_timeline_id(p.timeline.filter(|_| !p.in_recovery));
        node.set_replay_lsn(p.lsn.filter(|_| p.in_recovery));
        node.set_last_ok(answered, self.epoch);
        self.settle(&mut st);
        let mut timeline = self.timeline.write().unwrap_or_else(|e| e.into_inner());
        if let Some(lsn) = p.lsn.filter(|_| !p.in_recovery)
            && timeline.owner() == Some(id)
            && self.primary() == Some(id)
        {
            timeline.push(sent, lsn);
            self.head.store(timeline.head().map(Arc::new));
        }
        self.refresh_marks(&timeline);
    }

    /// Records a failed check (connect, timeout, query or answer) of `id`:
    /// unhealthy at once, with `error` shown as its `last_error`.
    pub(crate) fn record_failure(&self, id: NodeId, error: String) {
        if id >= self.nodes.len() {
            return;
        }
        let mut st = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        st.facts[id].check = Check::Failed(error);
        self.settle(&mut st);
    }

    /// How old a node's last success may be for it to count as healthy.
    pub(crate) fn set_stale_after(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.stale_after_nanos
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves the primary from the claims and publishes roles, health and
    /// errors; on a primary change starts a fresh timeline. Bumps the
    /// change generation when roles, refusals or the primary changed.
    fn settle(&self, st: &mut MonitorState) {
        let claims: Vec<Claim> = (st.facts.iter().enumerate())
            .filter_map(|(id, f)| f.claim.map(|timeline| Claim { id, timeline }))
            .collect();
        let winner = roles::resolve(&claims, CONFIGURED_PRIMARY);
        let mut changed = false;
        for (id, facts) in st.facts.iter_mut().enumerate() {
            let node = &self.nodes[id];
            let role = if facts.claim.is_some() {
                Role::Primary
            } else {
                Role::Replica
            };
            if node.role() != role {
                node.set_role(role);
                changed = true;
            }
            let refusal = match (facts.claim, winner) {
                (Some(timeline), Some(w)) if w.id != id => Some(roles::refusal(
                    Claim { id, timeline },
                    w,
                    &self.nodes[w.id].addr.to_string(),
                )),
                _ => None,
            };
            changed |= refusal.is_some() != facts.refused;
            facts.refused = refusal.is_some();
            let healthy = facts.check == Check::Ok && refusal.is_none();
            let error = match (&facts.check, refusal) {
                (Check::Failed(e), Some(r)) => Some(format!("{r}; last check: {e}")),
                (Check::Failed(e), None) => Some(e.clone()),
                (_, r) => r,
            };
            if facts.shown_error.as_deref() != error.as_ref() || node.healthy() != healthy {
                log_health(
                    node.addr.to_string(),
                    node.healthy(),
                    healthy,
                    error.as_deref(),
                );
                facts.shown_error = error.map(Arc::new);
                node.set_health(healthy, facts.shown_error.clone());
            }
        }
        let primary = winner.map(|w| w.id);
        if primary != self.primary() {
            tracing::warn!(
                old = ?self.primary().map(|id| self.nodes[id].addr.to_string()),
                new = ?primary.map(|id| self.nodes[id].addr.to_string()),
                "primary changed; starting a new WAL timeline"
            );
            let mut timeline = self.timeline.write().unwrap_or_else(|e| e.into_inner());
            *timeline = Timeline::new(primary);
            self.head.store(None);
            self.set_primary(primary);
            self.refresh_marks(&timeline);
            changed = true;
        }
        if changed {
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    /// Recomputes every replica's lag mark against `timeline`. Called with
    /// the monitor lock held, so a mark always reflects the newest replay
    /// position and the newest primary sample together.
    fn refresh_marks(&self, timeline: &Timeline) {
        for node in &self.nodes {
            let mark = match (node.role(), node.replay_lsn()) {
                (Role::Replica, Some(replay)) => timeline.mark(replay),
                _ => LagMark::Unknown,
            };
            node.lag.store(mark, self.epoch);
        }
    }
}

fn log_health(addr: String, was: bool, now: bool, error: Option<&str>) {
    match (was, now) {
        (_, false) => tracing::warn!(
            node = %addr,
            error = %crate::logsafe::message(error.unwrap_or("")),
            "node unhealthy"
        ),
        (false, true) => tracing::info!(node = %addr, "node healthy"),
        (true, true) => {}
    }
}
