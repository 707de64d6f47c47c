//! The monitor's write side of [`ClusterView`]: recording each check's
//! outcome, settling who is primary, restarting the timeline on a primary
//! change and recomputing replica lag marks. Every update runs under the
//! view's monitor lock (only monitor tasks take it, a few times per check
//! interval, for microseconds), so updates from different nodes' tasks
//! never interleave half-way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeId;
use super::lag::LagMark;
use super::lsn::Lsn;
use super::memory::{Memory, Mode, Publish};
use super::node::{NodeState, Role};
use super::record::{PrimaryRecord, StateFileError};
use super::roles::{self, CONFIGURED_PRIMARY, NodeFacts, Verdict};
use super::timeline::Timeline;
use super::view::ClusterView;

/// What one successful check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub in_recovery: bool,
    /// Replay position on a replica; insert position (in record-end form,
    /// see [`WalGeometry`](super::lsn::WalGeometry)) on a primary.
    pub lsn: Option<Lsn>,
    /// Timeline ID of the WAL a primary writes.
    pub timeline: Option<u32>,
    /// The cluster's system identifier, if the node let the monitor read it.
    pub system: Option<u64>,
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
    /// `claim` comes from the state file and no check has answered yet.
    restored: bool,
    check: Check,
    /// Answered at least one check.
    answered: bool,
    system: Option<u64>,
    refused: bool,
    shown_error: Option<Arc<String>>,
}

/// Monitor-only state, behind [`ClusterView`]'s monitor lock.
#[derive(Debug)]
pub(crate) struct MonitorState {
    facts: Vec<Facts>,
    memory: Memory,
}

impl MonitorState {
    /// Before any check: the node the state file names claims the role on
    /// its recorded timeline; without a state file, the configured primary
    /// claims it (timeline unknown); with a state file but no record,
    /// nobody does until every node has answered.
    pub(crate) fn new(nodes: &[NodeState], memory: Memory) -> Self {
        let restored = (memory.record.as_ref())
            .and_then(|r| Some((nodes.iter().position(|n| n.addr == r.primary)?, r.timeline)));
        let facts = (0..nodes.len())
            .map(|id| {
                let claim = match restored {
                    Some((node, timeline)) if node == id => Some(timeline),
                    Some(_) => None,
                    None => (memory.mode == Mode::Off && id == CONFIGURED_PRIMARY).then_some(0),
                };
                Facts {
                    claim,
                    restored: restored.is_some_and(|(node, _)| node == id),
                    check: Check::Never,
                    answered: false,
                    system: None,
                    refused: false,
                    shown_error: None,
                }
            })
            .collect();
        MonitorState { facts, memory }
    }

    fn verdict(&self, nodes: &[NodeState]) -> Verdict {
        let facts: Vec<NodeFacts<'_>> = (self.facts.iter().zip(nodes))
            .map(|(f, n)| NodeFacts {
                addr: &n.addr,
                claim: f.claim,
                restored: f.restored,
                answered: f.answered,
                system: f.system,
            })
            .collect();
        roles::decide(&facts, self.memory.record.as_ref(), &self.memory.mode)
    }

    /// The primary before any check, and why there is none.
    pub(crate) fn initial(&self, nodes: &[NodeState]) -> (Option<NodeId>, Option<String>) {
        let verdict = self.verdict(nodes);
        (verdict.winner.map(|w| w.id), verdict.why_none)
    }
}

impl ClusterView {
    /// Records a successful check of `id` whose query was sent at `sent`
    /// and answered at `answered`.
    pub(crate) fn record_success(&self, id: NodeId, sent: Instant, answered: Instant, p: Probe) {
        let Some(node) = self.nodes.get(id) else {
            return;
        };
        let mut st = crate::sync::lock(&self.monitor);
        let facts = &mut st.facts[id];
        facts.check = Check::Ok;
        facts.answered = true;
        facts.restored = false;
        facts.system = p.system.or(facts.system);
        facts.claim = (!p.in_recovery).then(|| p.timeline.unwrap_or(0));
        node.set_timeline_id(p.timeline.filter(|_| !p.in_recovery));
        node.set_replay_lsn(p.lsn.filter(|_| p.in_recovery));
        node.set_last_ok(answered, self.epoch);
        self.settle(&mut st);
        let mut timeline = crate::sync::write(&self.timeline);
        if let Some(lsn) = p.lsn.filter(|_| !p.in_recovery)
            && timeline.owner() == Some(id)
            && self.primary() == Some(id)
        {
            timeline.push(sent, lsn);
            self.head.store(timeline.head().map(Arc::new));
            self.sampled.notify_waiters();
        }
        self.refresh_marks(&timeline);
    }

    /// Records a failed check (connect, timeout, query or answer) of `id`:
    /// unhealthy at once, with `error` shown as its `last_error`.
    pub(crate) fn record_failure(&self, id: NodeId, error: String) {
        if id >= self.nodes.len() {
            return;
        }
        let mut st = crate::sync::lock(&self.monitor);
        st.facts[id].check = Check::Failed(error);
        self.settle(&mut st);
    }

    /// A record the state file must hold before its primary gets writes,
    /// with the file's path; `None` if there is none or another monitor
    /// task is writing it.
    pub(crate) fn take_pending_record(&self) -> Option<(PathBuf, PrimaryRecord)> {
        let mut st = crate::sync::lock(&self.monitor);
        st.memory.take_pending()
    }

    /// The outcome of writing `record` (from
    /// [`take_pending_record`](Self::take_pending_record)): once written,
    /// its primary may take writes; a failure is retried at the next check.
    pub(crate) fn record_written(&self, record: PrimaryRecord, result: Result<(), StateFileError>) {
        let mut st = crate::sync::lock(&self.monitor);
        st.memory.written(record, result);
        self.settle(&mut st);
    }

    /// How old a node's last success may be for it to count as healthy.
    pub(crate) fn set_stale_after(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.stale_after_nanos
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves the primary from the claims and publishes roles, health and
    /// errors; on a primary change starts a fresh timeline. A new primary
    /// is published only once the state file records it. Bumps the change
    /// generation when roles, refusals or the primary changed.
    fn settle(&self, st: &mut MonitorState) {
        let verdict = st.verdict(&self.nodes);
        let mut primary = verdict.winner.map(|w| w.id);
        let mut why_none = verdict.why_none.clone();
        if let Some(w) = verdict.winner.filter(|w| w.timeline > 0) {
            let record = PrimaryRecord {
                system: st.facts[w.id].system,
                timeline: w.timeline,
                primary: self.nodes[w.id].addr.clone(),
            };
            if let Publish::Wait(why) = st.memory.publish(record) {
                primary = None;
                why_none = Some(why);
            }
        }
        let mut changed = false;
        let mut health_changed = false;
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
            let refusal = verdict.refusals[id].clone();
            changed |= refusal.is_some() != facts.refused;
            facts.refused = refusal.is_some();
            let healthy = facts.check == Check::Ok && refusal.is_none();
            let error = match (&facts.check, refusal) {
                (Check::Failed(e), Some(r)) => Some(format!("{r}; last check: {e}")),
                (Check::Failed(e), None) => Some(e.clone()),
                (_, r) => r,
            };
            health_changed |= node.healthy() != healthy;
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
        if self.no_primary.load().as_deref() != why_none.as_ref() {
            self.no_primary.store(why_none.map(Arc::new));
        }
        if primary != self.primary() {
            tracing::warn!(
                old = ?self.primary().map(|id| self.nodes[id].addr.to_string()),
                new = ?primary.map(|id| self.nodes[id].addr.to_string()),
                "primary changed; starting a new WAL timeline"
            );
            let mut timeline = crate::sync::write(&self.timeline);
            *timeline = Timeline::new(primary);
            self.head.store(None);
            self.set_primary(primary);
            self.refresh_marks(&timeline);
            changed = true;
        }
        if changed {
            self.changes.send_modify(|generation| *generation += 1);
        }
        if changed || health_changed {
            self.moves.send_modify(|generation| *generation += 1);
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
