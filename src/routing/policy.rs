//! Where a request runs: the primary or which replica, from its
//! classification, hints and the session's `pgsidecar.route`, replica
//! freshness, and read-your-writes. Also the record of recent writes that
//! read-your-writes consults (per client and per table, for every client of
//! this sidecar).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::related::Related;
use crate::client::clock::Tick;
use crate::cluster::{ClusterView, Lsn, NoReplica, ReplicaLease};
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
    /// When the request was taken: the session's one clock reading for
    /// it, which routing shares with the pool checkout.
    pub now: Tick,
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

/// When something was last written, as far as read-your-writes cares, and
/// whether another member of the fleet wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Mark {
    at: Instant,
    fleet: bool,
}

/// Recent writes per table, shared by all clients of this sidecar, so a
/// read of a table written by anyone waits for a replica that has it. A
/// write also marks the tables the catalog says it reaches (foreign-key
/// cascades, parents of a partition), and a read also looks at the marks
/// of the table's ancestors (see [`Related`]).
///
/// With a fleet, the writes other members announce are recorded here too,
/// at the time they were heard; and a mark on every table at once stands
/// for writes that may have gone unheard ([`mark_all`](Self::mark_all),
/// [`set_deaf`](Self::set_deaf)).
pub struct WriteLog {
    tables: RwLock<Tables>,
    /// `tables` has a mark. Why: every read asks [`latest`](Self::latest),
    /// and while nothing was written (a read-only load, or before the
    /// first write) this one load answers without taking the lock.
    marked: AtomicBool,
    related: ArcSwap<Related>,
    /// Origin of the instant in `all`.
    epoch: Instant,
    /// Every table written at this many nanoseconds after `epoch` (by the
    /// fleet); 0 for never, [`DEAF`] for "now, continuously".
    all: AtomicU64,
}

/// `WriteLog::all` while writes of the fleet cannot be heard.
const DEAF: u64 = u64::MAX;

/// The marks per table. Hashed with foldhash, randomly seeded per map:
/// every write transaction hashes each table it wrote under the write lock
/// (SipHash cost over 200 instructions a name there), and the names are short.
type Tables = HashMap<Arc<str>, Mark, foldhash::fast::RandomState>;

impl Default for WriteLog {
    fn default() -> Self {
        WriteLog {
            tables: RwLock::default(),
            marked: AtomicBool::new(false),
            related: ArcSwap::default(),
            epoch: Instant::now(),
            all: AtomicU64::new(0),
        }
    }
}

impl WriteLog {
    /// Records that a transaction of this sidecar writing `tables`
    /// committed at `at`.
    pub fn record(&self, tables: &[Arc<str>], at: Instant, forget_before: Option<Instant>) {
        self.mark(tables, Mark { at, fleet: false }, forget_before);
    }

    /// Records that another member of the fleet announced writes to
    /// `tables`, heard at `at` (after their commit, so the first primary
    /// sample sent after `at` covers them).
    pub fn record_heard(&self, tables: &[Arc<str>], at: Instant, forget_before: Option<Instant>) {
        self.mark(tables, Mark { at, fleet: true }, forget_before);
    }

    fn mark(&self, tables: &[Arc<str>], mark: Mark, forget_before: Option<Instant>) {
        if tables.is_empty() {
            return;
        }
        let related = self.related.load();
        let mut map = crate::sync::write(&self.tables);
        let mut put = |t: &Arc<str>| {
            // Looked up by name first: a table written before (the steady
            // state) costs one hash and no reference count traffic; only a
            // new one is hashed again to be inserted.
            match map.get_mut(&**t) {
                Some(slot) => {
                    if mark.at >= slot.at {
                        *slot = mark;
                    }
                }
                None => {
                    map.insert(t.clone(), mark);
                }
            }
        };
        for t in tables {
            put(t);
            for reached in related.also_written(t) {
                put(reached);
            }
        }
        if map.len() > 4096
            && let Some(before) = forget_before
        {
            map.retain(|_, m| m.at >= before);
        }
        // Under the lock, after the marks: a reader that sees `false`
        // reads as if a moment before this write was recorded.
        self.marked.store(!map.is_empty(), Ordering::Release);
    }

    /// Every table counts as written (by the fleet) at `at`: for writes
    /// that may have gone unheard (before this member could hear the
    /// fleet, or announced as "everything"). Ends [`set_deaf`](Self::set_deaf).
    pub fn mark_all(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(DEAF - 1).clamp(1, DEAF - 1);
        let _ = self
            .all
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old == DEAF || old < nanos).then_some(nanos)
            });
    }

    /// While deaf, every table counts as written just now: writes of the
    /// fleet cannot be heard, so no replica is known to have them. Ended by
    /// [`mark_all`](Self::mark_all) once they can be heard again.
    pub fn set_deaf(&self) {
        self.all.store(DEAF, Ordering::Release);
    }

    /// Whether this sidecar can hear the fleet's writes (always, without
    /// a fleet).
    pub fn is_deaf(&self) -> bool {
        self.all.load(Ordering::Acquire) == DEAF
    }

    fn latest(&self, tables: &[Arc<str>], now: Tick) -> Option<Mark> {
        if tables.is_empty() {
            return None;
        }
        let all = match self.all.load(Ordering::Acquire) {
            0 => None,
            DEAF => Some(Mark {
                at: now.instant(),
                fleet: true,
            }),
            nanos => Some(Mark {
                at: self.epoch + Duration::from_nanos(nanos),
                fleet: true,
            }),
        };
        if !self.marked.load(Ordering::Acquire) {
            return all;
        }
        let map = crate::sync::read(&self.tables);
        if map.is_empty() {
            // No write recorded: neither the tables nor their ancestors
            // have a mark (and what writes reach need not be loaded).
            return all;
        }
        let related = self.related.load();
        let own = tables.iter().map(|t| &**t);
        let ancestors = tables
            .iter()
            .flat_map(|t| related.ancestors(t))
            .map(|a| &**a);
        own.chain(ancestors)
            .filter_map(|t| map.get(t).copied())
            .chain(all)
            .max_by_key(|m| m.at)
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

/// A change of one of the proxy's own settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyChange {
    /// `pgsidecar.route` (`None`: auto).
    Route(Option<RouteSetting>),
    /// `pgsidecar.min_lsn` (0/0: none).
    MinLsn(Lsn),
}

/// One client's routing state.
#[derive(Default)]
pub struct ClientRouting {
    /// `pgsidecar.route`, `None` for auto.
    pub setting: Option<RouteSetting>,
    /// `pgsidecar.min_lsn`: reads only on nodes that replayed it (0/0: any).
    min_lsn: Lsn,
    /// Changes made inside the open transaction block: like any SET, they
    /// last only if the block commits.
    pending: Option<Option<RouteSetting>>,
    pending_min_lsn: Option<Lsn>,
    last_write: Option<Instant>,
    /// The fleet's ticket for the announcement of the last write, if it
    /// was announced (for `pgsidecar.last_write_lsn`).
    last_write_ticket: Option<u64>,
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

    /// `pgsidecar.min_lsn` was changed, now or at COMMIT (like [`set`](Self::set)).
    pub fn set_min_lsn(&mut self, lsn: Lsn, in_transaction: bool) {
        if in_transaction {
            self.pending_min_lsn = Some(lsn);
        } else {
            self.min_lsn = lsn;
            self.pending_min_lsn = None;
        }
    }

    /// Applies a change of either setting.
    pub fn apply(&mut self, change: ProxyChange, in_transaction: bool) {
        match change {
            ProxyChange::Route(setting) => self.set(setting, in_transaction),
            ProxyChange::MinLsn(lsn) => self.set_min_lsn(lsn, in_transaction),
        }
    }

    /// DISCARD ALL: both settings back to their defaults.
    pub fn discard(&mut self) {
        self.set(None, false);
        self.set_min_lsn(Lsn::default(), false);
    }

    /// The transaction block ended: keep (COMMIT) or drop its changes.
    pub fn end_transaction(&mut self, committed: bool) {
        if let Some(setting) = self.pending.take()
            && committed
        {
            self.setting = setting;
        }
        if let Some(lsn) = self.pending_min_lsn.take()
            && committed
        {
            self.min_lsn = lsn;
        }
    }

    /// `pgsidecar.route` as `SHOW` reports it (a change pending in the
    /// open block included, as Postgres shows its own settings).
    pub fn route_shown(&self) -> RouteSetting {
        self.pending
            .unwrap_or(self.setting)
            .unwrap_or(RouteSetting::Auto)
    }

    /// `pgsidecar.min_lsn` as `SHOW` reports it.
    pub fn min_lsn_shown(&self) -> Lsn {
        self.pending_min_lsn.unwrap_or(self.min_lsn)
    }

    /// The client's write transaction committed now.
    pub fn wrote(&mut self, at: Instant) {
        self.last_write = Some(at);
        self.last_write_ticket = None;
    }

    /// The fleet is announcing the client's last write under `ticket`.
    pub fn announced(&mut self, ticket: u64) {
        self.last_write_ticket = Some(ticket);
    }

    /// When the client's last write committed, and the fleet's ticket for
    /// it if it was announced; `None` before its first write.
    pub fn last_write(&self) -> Option<(Instant, Option<u64>)> {
        self.last_write.map(|t| (t, self.last_write_ticket))
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
    // A token says nothing about primary or replica.
    let route_hint = req.hint.filter(|h| !matches!(h, Hint::MinLsn(_)));
    let wants_replica = match (route_hint, client.setting) {
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
    let mut fleet = false;
    // The request's clock reading, for the read-your-writes window and
    // the replicas' health.
    let now = req.now;
    if !wants_replica {
        let own = client.last_write.map(|at| Mark { at, fleet: false });
        let marks = [own, log.latest(req.tables_read, now)];
        // A replica within max_replica_lag has replayed everything older
        // than that (plus a margin for the sampling interval). Worked out
        // only when there is a write to weigh (most reads have none), as
        // is the reading as an `Instant` (the writes' times are kept as
        // such).
        if marks.iter().any(Option::is_some) {
            let now = now.instant();
            let horizon = horizon(config);
            let recent = |m: &Mark| now.saturating_duration_since(m.at) < horizon;
            let latest = marks
                .into_iter()
                .flatten()
                .filter(recent)
                .max_by_key(|m| m.at);
            if let Some(Mark { at: t, fleet: f }) = latest {
                fleet = f;
                match config.read_your_writes {
                    ReadYourWrites::Off => {}
                    ReadYourWrites::Window => {
                        if now.saturating_duration_since(t) < config.read_your_writes_window {
                            return Ok(ryw(fleet));
                        }
                    }
                    ReadYourWrites::Lsn => match cluster.lsn_after(t) {
                        Some(lsn) => floor = Some(lsn),
                        None => return Ok(ryw(fleet)),
                    },
                }
            }
        }
    }
    // A causal token (hint, else the session's): whatever else applies.
    let token = match req.hint {
        Some(Hint::MinLsn(lsn)) => lsn,
        _ => client.min_lsn,
    };
    let by_token = token > Lsn::default() && floor.is_none_or(|f| token > f);
    if by_token {
        floor = Some(token);
    }
    // The request's reading as the view keeps its times (one integer
    // subtraction), worked out only here: a request that reaches no
    // replica needs none.
    let now_nanos = cluster.nanos_at(now);
    match cluster.choose_replica_on(now_nanos, floor, config.max_replica_lag) {
        Ok(lease) => Ok(Decision {
            target: Target::Replica(lease),
            reason,
            read_your_writes: false,
        }),
        Err(NoReplica::BehindReadYourWritesFloor) if by_token => Ok(Decision::primary("min_lsn")),
        Err(NoReplica::BehindReadYourWritesFloor) => Ok(ryw(fleet)),
        Err(why) if config.fallback_to_primary => Ok(Decision::primary(why.as_str())),
        Err(why) => Err(Refusal::NoReplica(why)),
    }
}

/// A read kept on the primary for read-your-writes, counted under
/// `fleet_write` when the write was another member's (or may have been:
/// while the fleet cannot be heard).
fn ryw(fleet: bool) -> Decision {
    Decision {
        target: Target::Primary,
        reason: if fleet {
            "fleet_write"
        } else {
            "read_your_writes"
        },
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
    use crate::cluster::Probe;
    use crate::config::Config;

    /// A primary sampled at `primary_lsn` and a replica that replayed
    /// `replay`, both just now (the replica's lag is known and small).
    fn cluster(primary_lsn: u64, replay: u64) -> Arc<ClusterView> {
        let text = "[cluster]\nprimary = \"p:5432\"\nreplicas = [\"r:5432\"]\nstate_file = \"\"\n";
        let config = Config::from_toml(text, std::path::Path::new("t.toml")).unwrap();
        let view = ClusterView::new(&config);
        let probe = |in_recovery, lsn| Probe {
            in_recovery,
            lsn: Some(Lsn(lsn)),
            timeline: (!in_recovery).then_some(1),
            system: Some(7),
        };
        let now = Instant::now();
        view.record_success(0, now, now, probe(false, replay));
        view.record_success(1, now, now, probe(true, replay));
        let later = Instant::now();
        view.record_success(0, later, later, probe(false, primary_lsn));
        view
    }

    fn read<'a>(tables: &'a [Arc<str>], hint: Option<Hint>) -> Request<'a> {
        Request {
            route: Route::Read,
            reason: "read",
            hint,
            tables_read: tables,
            read_only_transaction: false,
            undeclared_transaction: false,
            serializable: false,
            now: Tick::now(),
        }
    }

    fn reason(
        req: &Request<'_>,
        client: &ClientRouting,
        log: &WriteLog,
        view: &ClusterView,
    ) -> &'static str {
        let config = RoutingConfig::default();
        decide(req, client, log, view, &config).unwrap().reason
    }

    #[test]
    fn a_token_keeps_reads_off_replicas_that_have_not_replayed_it() {
        let view = cluster(200, 100);
        let (log, tables) = (WriteLog::default(), [Arc::from("t")]);
        let mut client = ClientRouting::default();
        assert_eq!(reason(&read(&tables, None), &client, &log, &view), "read");
        client.set_min_lsn(Lsn(150), false);
        assert_eq!(
            reason(&read(&tables, None), &client, &log, &view),
            "min_lsn"
        );
        client.set_min_lsn(Lsn(100), false);
        assert_eq!(reason(&read(&tables, None), &client, &log, &view), "read");
        // The hint, whatever the session says; with a replica preference too.
        let hinted = read(&tables, Some(Hint::MinLsn(Lsn(101))));
        assert_eq!(reason(&hinted, &client, &log, &view), "min_lsn");
        client.set(Some(RouteSetting::Replica), false);
        assert_eq!(reason(&hinted, &client, &log, &view), "min_lsn");
        client.set(Some(RouteSetting::Primary), false);
        let old = read(&tables, Some(Hint::MinLsn(Lsn(99))));
        assert_eq!(reason(&old, &client, &log, &view), "hint");
        // Inside a transaction block it waits for COMMIT; DISCARD ALL drops it.
        client.set(None, false);
        client.set_min_lsn(Lsn(150), true);
        assert_eq!(client.min_lsn_shown(), Lsn(150));
        assert_eq!(reason(&read(&tables, None), &client, &log, &view), "read");
        client.end_transaction(false);
        assert_eq!(client.min_lsn_shown(), Lsn(100));
        client.discard();
        assert_eq!(client.min_lsn_shown(), Lsn(0));
    }

    #[test]
    fn the_fleets_writes_and_deafness_keep_reads_of_tables_on_the_primary() {
        let view = cluster(200, 100);
        let client = ClientRouting::default();
        let log = WriteLog::default();
        let (t, u) = ([Arc::from("t")], [Arc::from("u")]);
        // Heard after the newest primary sample: no sample covers it yet.
        log.record_heard(&t, Instant::now(), None);
        assert_eq!(reason(&read(&t, None), &client, &log, &view), "fleet_write");
        assert_eq!(reason(&read(&u, None), &client, &log, &view), "read");
        log.set_deaf();
        assert!(log.is_deaf());
        assert_eq!(reason(&read(&u, None), &client, &log, &view), "fleet_write");
        // Hearing again: every table written at that moment, until a sample
        // after it has been replayed.
        let back = Instant::now();
        log.mark_all(back);
        assert!(!log.is_deaf());
        assert_eq!(reason(&read(&u, None), &client, &log, &view), "fleet_write");
        // Sampled after that, and replayed: the replica again.
        let replayed = cluster(300, 300);
        assert_eq!(reason(&read(&u, None), &client, &log, &replayed), "read");
        // A client's own write is read-your-writes, not the fleet's.
        let mine = WriteLog::default();
        mine.record(&u, Instant::now(), None);
        assert_eq!(
            reason(&read(&u, None), &client, &mine, &view),
            "read_your_writes"
        );
    }

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
