//! Deciding which node is the primary when the nodes disagree: every node
//! that says it is not in recovery claims the role, and exactly one claim
//! wins, so writes never go to two primaries.

use std::cmp::Reverse;
use std::path::Path;

use super::NodeId;
use super::memory::Mode;
use super::record::PrimaryRecord;
use crate::config::NodeAddr;

/// The configured primary's id: it wins ties between claimants the state
/// file says nothing about.
pub(crate) const CONFIGURED_PRIMARY: NodeId = 0;

/// A node that reported `pg_is_in_recovery() = false` (or, before any
/// check, the configured primary or the one the state file names), with
/// the timeline ID of the WAL it writes; 0 when not known yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    pub id: NodeId,
    pub timeline: u32,
}

/// What the decision needs to know about one node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeFacts<'a> {
    pub addr: &'a NodeAddr,
    /// Claims the primary role on this timeline (0 = unknown).
    pub claim: Option<u32>,
    /// The claim is the state file's, not yet confirmed by a check.
    pub restored: bool,
    /// Has answered a check since the monitor started.
    pub answered: bool,
    /// Its cluster's system identifier, once a check has read it.
    pub system: Option<u64>,
}

/// Who may take writes, and why the other claimants may not.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub winner: Option<Claim>,
    /// Per node: why its claim is refused (`None`: not refused or no claim).
    pub refusals: Vec<Option<String>>,
    /// Without a winner: why no claimant qualifies (`None`: none claims).
    pub why_none: Option<String>,
}

/// Decides the primary from the nodes' claims and what the state file
/// (`memory`, kept as `mode` says) remembers:
/// - a claim on a timeline older than the recorded one, or from another
///   cluster, is refused: it is a primary from before a failover;
/// - without a record of this cluster (and unless the state file is
///   turned off), no claim qualifies until every configured node has
///   answered, since one not heard from may be a newer primary;
/// - among the rest, [`resolve`] picks one.
pub(crate) fn decide(
    nodes: &[NodeFacts<'_>],
    memory: Option<&PrimaryRecord>,
    mode: &Mode,
) -> Verdict {
    let state_file = mode.path();
    let answered_all = nodes.iter().all(|n| n.answered);
    // A record of another cluster (every node answered with a different
    // system identifier) says nothing about this one.
    let record = memory.filter(|r| {
        r.system.is_none_or(|s| {
            !(answered_all && nodes.iter().all(|n| n.system.is_some_and(|ns| ns != s)))
        })
    });
    let recorded = record.and_then(|r| nodes.iter().position(|n| *n.addr == r.primary));
    let standing = |n: &NodeFacts<'_>, timeline: u32| -> Result<(), String> {
        if n.restored {
            return Ok(());
        }
        match (record, mode) {
            (Some(r), _) => {
                if let (Some(rs), Some(ns)) = (r.system, n.system)
                    && rs != ns
                {
                    return Err(foreign(n.addr, ns, r, state_file));
                }
                if timeline < r.timeline {
                    return Err(stale(n.addr, timeline, r, state_file));
                }
                Ok(())
            }
            (None, Mode::Off) => Ok(()),
            (None, _) if !answered_all => Err(unheard(nodes, state_file)),
            (None, _) => Ok(()),
        }
    };
    let mut refusals: Vec<Option<String>> = vec![None; nodes.len()];
    let mut eligible = Vec::new();
    for (id, n) in nodes.iter().enumerate() {
        let Some(timeline) = n.claim else { continue };
        match standing(n, timeline) {
            Ok(()) => eligible.push(Claim { id, timeline }),
            Err(why) => refusals[id] = Some(why),
        }
    }
    let winner = resolve(&eligible, CONFIGURED_PRIMARY, recorded);
    if let Some(w) = winner {
        for loser in eligible.iter().filter(|c| c.id != w.id) {
            refusals[loser.id] = Some(refusal(*loser, w, &nodes[w.id].addr.to_string()));
        }
    }
    let why_none = match winner {
        Some(_) => None,
        None => {
            let reasons: Vec<&str> = refusals.iter().flatten().map(String::as_str).collect();
            (!reasons.is_empty()).then(|| reasons.join("; "))
        }
    };
    Verdict {
        winner,
        refusals,
        why_none,
    }
}

/// The winning claim: the highest timeline (a promotion always starts a new
/// one, so the most recently promoted node wins and a stale old primary that
/// comes back on its old timeline loses); on a tie the node the state file
/// names, then the configured primary, then the lowest node id, so the
/// answer never depends on check order.
pub(crate) fn resolve(
    claims: &[Claim],
    configured: NodeId,
    recorded: Option<NodeId>,
) -> Option<Claim> {
    claims.iter().copied().max_by_key(|c| {
        (
            c.timeline,
            Some(c.id) == recorded,
            c.id == configured,
            Reverse(c.id),
        )
    })
}

fn recorded_in(state_file: Option<&Path>) -> String {
    match state_file {
        Some(path) => format!(" (recorded in {})", path.display()),
        None => String::new(),
    }
}

fn stale(addr: &NodeAddr, timeline: u32, r: &PrimaryRecord, file: Option<&Path>) -> String {
    let remedy = match file {
        Some(path) => format!(
            "; if that older history is meant to be kept, delete {} and restart pgsidecar",
            path.display()
        ),
        None => String::new(),
    };
    format!(
        "{addr} claims the primary role on WAL timeline {}, older than timeline {} that {} \
         was seen on{}: a primary from before a failover gets no writes{remedy}",
        tli(timeline),
        r.timeline,
        r.primary,
        recorded_in(file)
    )
}

fn foreign(addr: &NodeAddr, system: u64, r: &PrimaryRecord, file: Option<&Path>) -> String {
    format!(
        "{addr} claims the primary role but belongs to another cluster (system identifier \
         {system}) than the primary {} seen before{}; it gets no writes",
        r.primary,
        recorded_in(file)
    )
}

fn unheard(nodes: &[NodeFacts<'_>], state_file: Option<&Path>) -> String {
    let silent: Vec<String> = (nodes.iter())
        .filter(|n| !n.answered)
        .map(|n| n.addr.to_string())
        .collect();
    let memory = match state_file {
        Some(path) => format!(
            "{} holds no record of this cluster's primary",
            path.display()
        ),
        None => {
            "pgsidecar keeps no record of the primary (cluster.state_file is not usable)".into()
        }
    };
    format!(
        "{memory}, so writes wait until every configured node has answered (one not heard \
         from could be a newer primary); not answered yet: {}",
        silent.join(", ")
    )
}

/// Why a losing claimant gets no traffic, in words for `last_error`.
pub(crate) fn refusal(loser: Claim, winner: Claim, winner_addr: &str) -> String {
    format!(
        "also claims to be the primary (WAL timeline {}), but {winner_addr} (timeline {}) \
         is the primary; refused so that writes never go to two primaries",
        tli(loser.timeline),
        tli(winner.timeline)
    )
}

fn tli(t: u32) -> String {
    if t == 0 {
        "unknown".into()
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: NodeId, timeline: u32) -> Claim {
        Claim { id, timeline }
    }

    #[test]
    fn a_single_claim_wins_and_none_means_no_primary() {
        assert_eq!(resolve(&[], 0, None), None);
        assert_eq!(resolve(&[claim(2, 1)], 0, None), Some(claim(2, 1)));
    }

    #[test]
    fn the_highest_timeline_wins_over_the_configured_primary() {
        // Node 1 was promoted (timeline 2); the old primary came back on 1.
        let got = resolve(&[claim(0, 1), claim(1, 2)], 0, None);
        assert_eq!(got, Some(claim(1, 2)));
        // An unchecked configured primary (timeline unknown) loses too.
        assert_eq!(
            resolve(&[claim(0, 0), claim(1, 1)], 0, None),
            Some(claim(1, 1))
        );
    }

    #[test]
    fn ties_go_to_the_recorded_node_the_configured_primary_then_the_lowest_id() {
        let tie = [claim(0, 3), claim(1, 3), claim(2, 3)];
        assert_eq!(resolve(&tie, 0, None), Some(claim(0, 3)));
        assert_eq!(resolve(&tie[1..], 0, None), Some(claim(1, 3)));
        assert_eq!(resolve(&tie[1..], 2, None), Some(claim(2, 3)));
        assert_eq!(resolve(&tie, 0, Some(2)), Some(claim(2, 3)));
    }

    #[test]
    fn the_refusal_names_both_timelines_and_the_winner() {
        let msg = refusal(claim(0, 1), claim(1, 2), "db2:5432");
        assert!(msg.contains("timeline 1"), "{msg}");
        assert!(msg.contains("db2:5432 (timeline 2)"), "{msg}");
        assert!(msg.contains("two primaries"), "{msg}");
        assert!(refusal(claim(0, 0), claim(1, 2), "x").contains("timeline unknown"));
    }
}
