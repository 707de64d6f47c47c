//! Deciding which node is the primary when the nodes disagree: every node
//! that says it is not in recovery claims the role, and exactly one claim
//! wins, so writes never go to two primaries.

use std::cmp::Reverse;

use super::NodeId;

/// A node that reported `pg_is_in_recovery() = false` (or, before any
/// check, the configured primary), with the timeline ID of the WAL it
/// writes; 0 when not known yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    pub id: NodeId,
    pub timeline: u32,
}

/// The winning claim: the highest timeline (a promotion always starts a new
/// one, so the most recently promoted node wins and a stale old primary that
/// comes back on its old timeline loses); on a tie the configured primary;
/// then the lowest node id, so the answer never depends on check order.
pub(crate) fn resolve(claims: &[Claim], configured: NodeId) -> Option<Claim> {
    claims
        .iter()
        .copied()
        .max_by_key(|c| (c.timeline, c.id == configured, Reverse(c.id)))
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
        assert_eq!(resolve(&[], 0), None);
        assert_eq!(resolve(&[claim(2, 1)], 0), Some(claim(2, 1)));
    }

    #[test]
    fn the_highest_timeline_wins_over_the_configured_primary() {
        // Node 1 was promoted (timeline 2); the old primary came back on 1.
        let got = resolve(&[claim(0, 1), claim(1, 2)], 0);
        assert_eq!(got, Some(claim(1, 2)));
        // An unchecked configured primary (timeline unknown) loses too.
        assert_eq!(resolve(&[claim(0, 0), claim(1, 1)], 0), Some(claim(1, 1)));
    }

    #[test]
    fn ties_go_to_the_configured_primary_then_the_lowest_id() {
        assert_eq!(resolve(&[claim(1, 3), claim(0, 3)], 0), Some(claim(0, 3)));
        assert_eq!(resolve(&[claim(2, 3), claim(1, 3)], 0), Some(claim(1, 3)));
        assert_eq!(resolve(&[claim(1, 3), claim(2, 3)], 2), Some(claim(2, 3)));
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
