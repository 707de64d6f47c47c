//! How many budget slots a member should hold on a node, decided from one
//! look at the fleet (who holds what, who wants more) and the member's own
//! demand. Pure: the coordinator carries the decision out.
//!
//! - A member that **wants** (connection attempts waited for budget since
//!   the last look, or it holds less than its floor) aims at its fair part
//!   of what the members that do not want leave over: the wanting members,
//!   ordered by their coordinator pid, split it evenly, the first ones
//!   taking one more when it does not divide (so the parts add up to the
//!   budget exactly and every member computes the same split).
//! - A member that does **not** want keeps what it holds while nobody else
//!   wants; when someone does, it gives back what it has not used over the
//!   last second, down to its floor.
//! - Slots at or above the budget (after a reload lowered it) are given
//!   back first.

use std::collections::BTreeSet;

/// Another member (or this one) as one look at the node showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its coordinator session's backend pid.
    pub pid: i32,
    /// Slots it holds.
    pub slots: BTreeSet<u32>,
    /// It holds the "want" lock.
    pub wanting: bool,
}

/// What the member knows when it decides.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub budget: u32,
    pub floor: u32,
    /// This member's coordinator pid.
    pub me: i32,
    /// Every member seen, this one included.
    pub members: &'a [Seen],
    /// Slots this member holds (its own record).
    pub held: &'a BTreeSet<u32>,
    /// Connection attempts waited for budget since the last look.
    pub demand: bool,
    /// Least unused capacity (unopened permits + idle connections) over
    /// the last second.
    pub unused: u32,
}

/// The decision: hold `goal` slots below the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub goal: u32,
    /// Publish the "want" lock.
    pub want: bool,
}

pub fn decide(i: &Inputs) -> Decision {
    let floor = i.floor.min(i.budget);
    let mine = i.held.range(..i.budget).count() as u32;
    let want = i.demand || mine < floor;
    let others_want = i.members.iter().any(|m| m.pid != i.me && m.wanting);
    if !want {
        let goal = if others_want {
            mine.saturating_sub(i.unused).max(floor).min(mine)
        } else {
            mine
        };
        return Decision { goal, want };
    }
    // Wanting members, this one included, in pid order.
    let mut wanting: Vec<i32> = (i.members.iter())
        .filter(|m| m.wanting && m.pid != i.me)
        .map(|m| m.pid)
        .chain(std::iter::once(i.me))
        .collect();
    wanting.sort_unstable();
    let kept_by_others: u32 = (i.members.iter())
        .filter(|m| m.pid != i.me && !m.wanting)
        .map(|m| m.slots.range(..i.budget).count() as u32)
        .sum();
    let pool = i.budget.saturating_sub(kept_by_others);
    let k = wanting.len() as u32;
    let rank = wanting.iter().position(|p| *p == i.me).unwrap_or(0) as u32;
    let fair = pool / k + u32::from(rank < pool % k);
    let goal = if i.demand { fair } else { fair.min(floor) };
    Decision { goal, want }
}

/// Slots to try to take: free now, free for long enough (`aged`), lowest
/// first, at most `n`.
pub fn to_take(aged: &BTreeSet<u32>, held: &BTreeSet<u32>, budget: u32, n: u32) -> Vec<u32> {
    aged.range(..budget)
        .filter(|s| !held.contains(s))
        .take(n as usize)
        .copied()
        .collect()
}

/// Slots to give back, `n` of them: those at or above the budget first,
/// then the highest.
pub fn to_give_back(held: &BTreeSet<u32>, n: u32) -> Vec<u32> {
    held.iter().rev().take(n as usize).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pid: i32, slots: &[u32], wanting: bool) -> Seen {
        Seen {
            pid,
            slots: slots.iter().copied().collect(),
            wanting,
        }
    }

    fn goal(me: i32, members: &[Seen], demand: bool, unused: u32) -> Decision {
        let held = members
            .iter()
            .find(|m| m.pid == me)
            .map(|m| m.slots.clone())
            .unwrap_or_default();
        decide(&Inputs {
            budget: 8,
            floor: 1,
            me,
            members,
            held: &held,
            demand,
            unused,
        })
    }

    #[test]
    fn a_busy_member_gets_the_budget_less_the_idle_floors() {
        let members = [
            seen(10, &[0], false),
            seen(11, &[1], false),
            seen(12, &[2], false),
            seen(13, &[3], true),
        ];
        assert_eq!(goal(13, &members, true, 0).goal, 5);
        // The idle ones, seeing a wanting member, keep their floor only.
        assert_eq!(goal(10, &members, false, 1).goal, 1);
    }

    #[test]
    fn idle_members_give_back_what_they_do_not_use_only_when_asked() {
        let members = [seen(10, &[0, 1, 2, 3], false), seen(11, &[4], false)];
        assert_eq!(goal(10, &members, false, 3).goal, 4, "nobody wants: keep");
        let members = [seen(10, &[0, 1, 2, 3], false), seen(11, &[4], true)];
        assert_eq!(
            goal(10, &members, false, 2).goal,
            2,
            "gives back the unused"
        );
        assert_eq!(goal(10, &members, false, 9).goal, 1, "keeps the floor");
    }

    #[test]
    fn wanting_members_split_evenly_and_the_parts_add_up() {
        let pids = [10, 11, 12, 13, 14];
        let members: Vec<Seen> = pids.iter().map(|p| seen(*p, &[], true)).collect();
        let goals: Vec<u32> = pids
            .iter()
            .map(|p| goal(*p, &members, true, 0).goal)
            .collect();
        assert_eq!(goals, [2, 2, 2, 1, 1]);
        assert_eq!(goals.iter().sum::<u32>(), 8);
    }

    #[test]
    fn a_newcomer_below_its_floor_wants_its_floor_only() {
        let members = [
            seen(10, &[0, 1, 2, 3, 4, 5, 6, 7], true),
            seen(11, &[], false),
        ];
        let d = goal(11, &members, false, 0);
        assert_eq!((d.goal, d.want), (1, true));
        // And the busy member, seeing it want, aims at its part.
        let members = [
            seen(10, &[0, 1, 2, 3, 4, 5, 6, 7], true),
            seen(11, &[], true),
        ];
        assert_eq!(goal(10, &members, true, 0).goal, 4);
    }

    #[test]
    fn slots_above_a_lowered_budget_do_not_count_and_go_first() {
        let held: BTreeSet<u32> = [0, 9, 10].into_iter().collect();
        let d = decide(&Inputs {
            budget: 8,
            floor: 1,
            me: 1,
            members: &[seen(1, &[0, 9, 10], false)],
            held: &held,
            demand: false,
            unused: 0,
        });
        assert_eq!(d.goal, 1);
        assert_eq!(to_give_back(&held, 2), [10, 9]);
    }

    #[test]
    fn takes_the_lowest_aged_free_slots_it_does_not_hold() {
        let aged: BTreeSet<u32> = [1, 2, 5, 9].into_iter().collect();
        let held: BTreeSet<u32> = [2].into_iter().collect();
        assert_eq!(to_take(&aged, &held, 8, 2), [1, 5]);
        assert_eq!(to_take(&aged, &held, 8, 9), [1, 5]);
    }
}
