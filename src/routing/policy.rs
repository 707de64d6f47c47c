//! Where a request runs: the primary or which replica, from its
//! classification, hints and the session's `pgsidecar.route`, replica
//! freshness, and read-your-writes. Also the record of recent writes that
//! read-your-writes consults (per client and per table, for every client of
//! this sidecar).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::related::Related;
use crate::cluster::{ClusterView, NoReplica, ReplicaLease};
use crate::config::{ReadYourWrites, RoutingConfig};

use super::{Hint, Route, RouteSetting};

/// Where to run.
pub enum Target {
    Primary,
    Replica(ReplicaLease),
}

/// A routing decision and the reason label it is counted under
/// (`routing_decisions_total{reason}`).
pub struct Decision {
    pub target: Target,
    pub reason: &'static str,
    /// The decision kept a read on the primary for read-your-writes.
    pub read_your_writes: bool,
}

impl Decision {
    fn primary(reason: &'static str) -> Self {
        Decision {
            target: Target::Primary,
            reason,
            read_your_writes: false,
        }
    }
}

/// What the policy needs to know about a request.
pub struct Request<'a> {
    pub route: Route,
    /// The classifier's reason label (used when the route decides).
    pub reason: &'static str,
    pub hint: Option<Hint>,
    pub tables_read: &'a [Arc<str>],
    /// The request opens or runs in a transaction declared read only.
    pub read_only_transaction: bool,
    /// It opens a transaction that said neither READ ONLY nor READ WRITE
    /// (and the session default is read-write): where a replica is asked
    /// for, it goes there, and the replica refuses its writes itself.
    pub undeclared_transaction: bool,
    /// It runs (or opens) a SERIALIZABLE transaction, which a hot standby
    /// refuses: the primary, whatever its statements.
    pub serializable: bool,
}

/// A request the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A replica was required (hint or setting) for a write.
    WriteOnReplica,
    /// A replica was required for a SERIALIZABLE transaction.
    SerializableOnReplica,
    /// No replica could serve the read and fallback_to_primary is off.
    NoReplica(NoReplica),
}

/// When something was last written, as far as read-your-writes cares.
#[derive(Clone, Copy, Debug)]
struct Mark(Instant);

/// Recent writes per table, shared by all clients of this sidecar, so a
/// read of a table written by anyone waits for a replica that has it. A
/// write also marks the tables the catalog says it reaches (foreign-key
/// cascades, parents of a partition), and a read also looks at the marks
/// of the table's ancestors (see [`Related`]).
#[derive(Default)]
pub struct WriteLog {
    tables: RwLock<HashMap<Arc<str>, Mark>>,
    related: ArcSwap<Related>,
}

impl WriteLog {
    /// Records that a transaction writing `tables` committed at `at`.
    pub fn record(&self, tables: &[Arc<str>], at: Instant, forget_before: Option<Instant>) {
        if tables.is_empty() {
            return;
        }
        let related = self.related.load();
        let mut map = self.tables.write().unwrap_or_else(|p| p.into_inner());
        for t in tables {
            map.insert(t.clone(), Mark(at));
            for reached in related.also_written(t) {
                map.insert(reached.clone(), Mark(at));
            }
        }
        if map.len() > 4096
            && let Some(before) = forget_before
        {
            map.retain(|_, m| m.0 >= before);
        }
    }

    fn latest(&self, tables: &[Arc<str>]) -> Option<Instant> {
        if tables.is_empty() {
            return None;
        }
        let related = self.related.load();
        let map = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let own = tables.iter().map(|t| &**t);
        let ancestors = tables
            .iter()
            .flat_map(|t| related.ancestors(t))
            .map(|a| &**a);
        own.chain(ancestors)
            .filter_map(|t| map.get(t))
            .map(|m| m.0)
            .max()
    }

    /// Replaces what writes are known to reach (read from the catalog).
    pub fn set_related(&self, related: Related) {
        self.related.store(Arc::new(related));
    }

    /// The tables other than `table` a write to it marks as written.
    pub fn also_written(&self, table: &str) -> Vec<Arc<str>> {
        self.related.load().also_written(table).to_vec()
    }
}

/// One client's routing state.
#[derive(Default)]
pub struct ClientRouting {
    /// `pgsidecar.route`, `None` for auto.
    pub setting: Option<RouteSetting>,
    /// A change made inside the open transaction block: like any SET, it
    /// lasts only if the block commits.
    pending: Option<Option<RouteSetting>>,
    last_write: Option<Instant>,
}

impl ClientRouting {
    /// `pgsidecar.route` was changed (`None`: auto), now or, inside a
    /// transaction block, at its COMMIT.
    pub fn set(&mut self, setting: Option<RouteSetting>, in_transaction: bool) {
        if in_transaction {
            self.pending = Some(setting);
        } else {
            self.setting = setting;
            self.pending = None;
        }
    }

    /// The transaction block ended: keep (COMMIT) or drop its change.
    pub fn end_transaction(&mut self, committed: bool) {
        if let Some(setting) = self.pending.take()
            && committed
        {
            self.setting = setting;
        }
    }

    /// The client's write transaction committed now.
    pub fn wrote(&mut self, at: Instant) {
        self.last_write = Some(at);
    }
}

/// Decides where a request that starts a unit of work (a transaction, or a
/// statement outside one) runs.
pub fn decide(
    req: &Request<'_>,
    client: &ClientRouting,
    log: &WriteLog,
    cluster: &ClusterView,
    config: &RoutingConfig,
) -> Result<Decision, Refusal> {
    let wants_replica = match (req.hint, client.setting) {
        (Some(Hint::Primary), _) => return Ok(Decision::primary("hint")),
        (Some(Hint::Replica), _) | (None, Some(RouteSetting::Replica)) => true,
        (None, Some(RouteSetting::Primary)) => return Ok(Decision::primary("hint")),
        _ => false,
    };
    if req.serializable {
        if wants_replica {
            return Err(Refusal::SerializableOnReplica);
        }
        return Ok(Decision::primary("transaction"));
    }
    let is_read = req.route == Route::Read
        || req.read_only_transaction
        || (wants_replica && req.undeclared_transaction);
    if !is_read {
        if wants_replica {
            return Err(Refusal::WriteOnReplica);
        }
        return Ok(Decision::primary(req.reason));
    }
    if !config.read_write_split && !wants_replica {
        return Ok(Decision::primary("split_disabled"));
    }
    let reason = if wants_replica { "hint" } else { req.reason };
    // Read-your-writes: an explicit replica request skips it.
    let mut floor = None;
    if !wants_replica {
        let now = Instant::now();
        // A replica within max_replica_lag has replayed everything older
        // than that (plus a margin for the sampling interval).
        let horizon = horizon(config);
        let recent = |t: Instant| now.saturating_duration_since(t) < horizon;
        let latest = [client.last_write, log.latest(req.tables_read)]
            .into_iter()
            .flatten()
            .filter(|t| recent(*t))
            .max();
        if let Some(t) = latest {
            match config.read_your_writes {
                ReadYourWrites::Off => {}
                ReadYourWrites::Window => {
                    if now.saturating_duration_since(t) < config.read_your_writes_window {
                        return Ok(ryw());
                    }
                }
                ReadYourWrites::Lsn => match cluster.lsn_after(t) {
                    Some(lsn) => floor = Some(lsn),
                    None => return Ok(ryw()),
                },
            }
        }
    }
    match cluster.choose_replica(floor, config.max_replica_lag) {
        Ok(lease) => Ok(Decision {
            target: Target::Replica(lease),
            reason,
            read_your_writes: false,
        }),
        Err(NoReplica::BehindReadYourWritesFloor) => Ok(ryw()),
        Err(why) if config.fallback_to_primary => Ok(Decision::primary(why.as_str())),
        Err(why) => Err(Refusal::NoReplica(why)),
    }
}

fn ryw() -> Decision {
    Decision {
        target: Target::Primary,
        reason: "read_your_writes",
        read_your_writes: true,
    }
}

/// The oldest write time read-your-writes still needs to remember: for
/// "lsn", what an eligible replica may still lack; for "window", also the
/// whole window (which may be longer than that).
pub fn horizon(config: &RoutingConfig) -> Duration {
    let lag = config.max_replica_lag + 2 * config.lag_check_interval;
    match config.read_your_writes {
        ReadYourWrites::Window => lag.max(config.read_your_writes_window),
        ReadYourWrites::Lsn | ReadYourWrites::Off => lag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_longer_than_the_lag_limit_is_remembered_whole() {
        let mut config = RoutingConfig {
            read_your_writes: ReadYourWrites::Window,
            read_your_writes_window: Duration::from_secs(30),
            ..RoutingConfig::default()
        };
        assert_eq!(horizon(&config), Duration::from_secs(30));
        config.read_your_writes = ReadYourWrites::Lsn;
        assert_eq!(horizon(&config), Duration::from_millis(1200));
    }
}
