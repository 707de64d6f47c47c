//! What one hold of a server records while the client uses it: effects
//! waiting for their requests, the statement bound last, what the
//! transaction wrote, the replica read budget, the stale-plan retry's
//! record. Made by `hold::acquire`, updated by the flow, emptied and
//! recycled by `hold::release` so that its lists keep their capacity.

use std::sync::Arc;

use super::clock::BatchClock;
use super::effects::Pending;
use super::flow::retry::Retry;
use super::prepared::Statement;
use crate::cluster::{NodeId, Role};
use crate::routing::Classified;

/// The `node` of no hold: [`HoldState::empty`] ran and nothing was
/// recorded since, so the next [`HoldState::reset`] need not empty the
/// lists again (it did on every transaction, after the release had: ~50
/// instructions). A value in a field every hold sets, rather than a flag
/// of its own, which would grow every client's task by 8 bytes.
const EMPTIED: NodeId = NodeId::MAX;

/// Per-hold bookkeeping that the relay's stretches share.
pub struct HoldState {
    /// The client's unnamed statement exists on this server.
    pub(super) unnamed_here: bool,
    /// Effects waiting for their requests to complete.
    pub(super) pending: Pending,
    /// The statement of the last Bind, whose effects its Execute carries.
    pub(super) bound: Option<Arc<Statement>>,
    pub(super) bound_unnamed: Option<Classified>,
    /// This transaction wrote (for read-your-writes), and which tables.
    pub(super) wrote: bool,
    pub(super) tables_written: Vec<Arc<str>>,
    /// The fleet's announcement of the write that just committed: the
    /// client's ReadyForQuery waits for it.
    pub(super) announced: Option<super::fleet_announce::Announced>,
    /// The last COMMIT or ROLLBACK tag seen was COMMIT (a transaction
    /// block that ends otherwise rolled back, taking its SETs with it).
    /// Other tags leave it: in `COMMIT; SET x = 1` the block committed.
    pub(super) last_was_commit: bool,
    /// RESET/DISCARD ran here: the server's settings no longer mirror the
    /// client's (the server resets to its own defaults).
    pub(super) params_diverged: bool,
    /// Replica reads: client bytes still routed to this server; later
    /// requests wait for the next routing decision.
    pub(super) budget: Option<usize>,
    /// The budgeted read ended with Flush: the rest of its batch, up to
    /// the client's Sync, must run here too (the server would otherwise
    /// wait for that Sync forever).
    pub(super) budget_until_sync: bool,
    /// The node this server belongs to, for metrics; [`EMPTIED`] between
    /// holds once [`empty`](HoldState::empty) ran.
    pub(super) node: NodeId,
    pub(super) role: Role,
    /// `query_timeout` cancelled the running query: its 57014 error is
    /// reworded to name the limit, until the next ReadyForQuery.
    pub(super) query_timed_out: Option<std::time::Duration>,
    /// The current batch, kept for a retry after a stale plan.
    pub(super) retry: Retry,
    /// An Execute was sent since the last Sync.
    pub(super) executed: bool,
    /// The server reported a stale plan ("cached plan must not change
    /// result type") that the proxy did not repair, or skipped the Close of
    /// an evicted statement: its statements are no longer what the proxy
    /// thinks, so it is closed instead of going back to the pool.
    pub(super) stale_server: bool,
    /// One clock reading per batch of frames (clock.rs).
    pub(super) clock: BatchClock,
}

impl HoldState {
    pub fn new(node: NodeId, role: Role) -> Self {
        HoldState {
            unnamed_here: false,
            pending: Pending::default(),
            bound: None,
            bound_unnamed: None,
            wrote: false,
            tables_written: Vec::new(),
            announced: None,
            last_was_commit: false,
            params_diverged: false,
            budget: None,
            budget_until_sync: false,
            node,
            role,
            retry: Retry::default(),
            executed: false,
            stale_server: false,
            query_timed_out: None,
            clock: BatchClock::default(),
        }
    }

    /// Drops what this hold recorded, keeping the lists' capacity.
    /// Inlined: each transaction runs it twice (release, then the next
    /// acquisition), and its call cost about as much as its body.
    #[inline]
    pub fn empty(&mut self) {
        self.pending.clear();
        self.tables_written.clear();
        self.bound = None;
        self.bound_unnamed = None;
        self.retry.empty();
        self.node = EMPTIED;
    }

    /// A fresh state for a new hold, in place, in this one's (emptied)
    /// lists: what [`new`](Self::new) makes, field by field. Why not
    /// `*self = HoldState::new(..)`: building the whole state and moving it
    /// in, dropping the old one field by field, cost ~200 instructions per
    /// transaction. Taken apart, so that a new field cannot be forgotten.
    pub fn reset(&mut self, node: NodeId, role: Role) {
        // Emptied already unless the last hold ended without a release
        // (its server lost, the request retried on another).
        if self.node != EMPTIED {
            self.empty();
        }
        let HoldState {
            unnamed_here,
            pending: _,
            bound: _,
            bound_unnamed: _,
            wrote,
            tables_written: _,
            announced,
            last_was_commit,
            params_diverged,
            budget,
            budget_until_sync,
            node: held_node,
            role: held_role,
            query_timed_out,
            retry,
            executed,
            stale_server,
            clock,
        } = self;
        *unnamed_here = false;
        *wrote = false;
        *announced = None;
        *last_was_commit = false;
        *params_diverged = false;
        *budget = None;
        *budget_until_sync = false;
        *held_node = node;
        *held_role = role;
        *query_timed_out = None;
        retry.restart();
        *executed = false;
        *stale_server = false;
        *clock = BatchClock::default();
    }
}
