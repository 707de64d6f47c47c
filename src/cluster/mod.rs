//! The cluster as the router sees it: which node is the primary, which
//! replicas are healthy and how far behind they are, kept fresh by a
//! monitor that checks every node each `routing.lag_check_interval`.
//!
//! The router's questions ([`ClusterView::primary`],
//! [`ClusterView::choose_replica`], [`ClusterView::lsn_after`]) are answered
//! from atomics and arc-swap snapshots: no I/O, no async, no lock the
//! monitor holds across anything slow.
//!
//! # Read-your-writes
//! When a client's write commits at `T` (the proxy sees its ReadyForQuery),
//! its floor is [`ClusterView::lsn_after`]`(T)`. Until that is `Some`, the
//! client reads from the primary; afterwards pass the floor as `min_lsn` to
//! [`ClusterView::choose_replica`]. The floor comes from a check query sent
//! after the commit had completed, so it covers the commit's WAL, and the
//! proxy never asks Postgres anything on the hot path for it. After a
//! primary change ([`ClusterView::changes`]) floors from the old primary
//! still compare correctly (positions continue across a promotion), but a
//! cautious router may reset them.
//!
//! # Layout
//! - `view`: [`ClusterView`], the read side.
//! - `update`: the monitor's writes into the view; primary resolution.
//! - `roles`: which claimant may take writes when several nodes say they
//!   are primary, or one says so on a timeline older than the one seen.
//! - `memory`, `record`: that timeline, kept in `cluster.state_file` so
//!   that a restart does not forget it.
//! - `choose`: replica choice, [`ReplicaLease`], [`NoReplica`].
//! - `timeline`: primary samples, lag in seconds, floors.
//! - `lag`: a replica's freshness in one atomic word.
//! - `node`: per-node atomics, [`Role`], [`NodeStatus`].
//! - `monitor`: the tasks; `probe`: their connection and check query.
//! - `catalog`: reads foreign-key actions and partitions from the primary
//!   for read-your-writes (`routing::related`).
//! - `lsn`: [`Lsn`] and WAL page geometry; `error`: [`CheckError`].

pub mod catalog;
mod choose;
mod error;
mod lag;
mod lsn;
mod memory;
mod monitor;
mod node;
mod probe;
mod record;
mod roles;
mod timeline;
mod update;
mod view;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use update::Probe;

pub use choose::{NoReplica, ReplicaLease};
pub use error::CheckError;
pub use lsn::{Lsn, LsnParseError, WalGeometry};
pub use monitor::{MAX_RECONNECT_BACKOFF, MIN_CHECK_TIMEOUT};
pub use node::{NodeStatus, Role};
pub(crate) use probe::MonitorLogin;
pub use record::{StateFileError, check as check_state_file};
pub use timeline::{TIMELINE_CAPACITY, TIMELINE_WINDOW};
pub use view::ClusterView;

/// Index of a node in the configured list: `0` is `cluster.primary`,
/// `1..` are `cluster.replicas` in order. Stable for the view's lifetime,
/// whatever roles the nodes take.
pub type NodeId = usize;
