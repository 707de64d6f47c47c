//! The proxy's Prometheus metrics (prefix `pgsidecar_`, own registry):
//! hot-path handles resolved once (per node, per role, per label) so that
//! counting a query costs a few atomic adds, and the gauges that are
//! filled from [`Sources`](super::Sources) when `/metrics` is scraped.

mod family;
mod hot;
mod labels;
mod scrape;

#[cfg(test)]
mod tests;

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec};

use crate::cluster::{NodeId, Role};
use crate::config::NodeAddr;
use family::Families;
pub(crate) use family::FamilyInfo;
pub use family::LATENCY_BUCKETS;
use hot::{Hot, Targets};
use labels::LabelCache;
pub(crate) use scrape::Scraped;

/// Every metric family `/metrics` lists, full names. The contract's
/// metrics come first (the sixteen the project started with, then the
/// fleet's three, then the fleet's read-your-writes), then the observer's
/// own; docs/metrics.md describes each one.
pub const METRIC_NAMES: [&str; 29] = [
    "pgsidecar_client_connections",
    "pgsidecar_server_connections",
    "pgsidecar_pool_size",
    "pgsidecar_pool_wait_seconds",
    "pgsidecar_queries_total",
    "pgsidecar_query_duration_seconds",
    "pgsidecar_transactions_total",
    "pgsidecar_routing_decisions_total",
    "pgsidecar_read_your_writes_total",
    "pgsidecar_replica_lag_seconds",
    "pgsidecar_replica_lag_bytes",
    "pgsidecar_node_up",
    "pgsidecar_slow_queries_total",
    "pgsidecar_explain_samples_total",
    "pgsidecar_errors_total",
    "pgsidecar_config_reloads_total",
    "pgsidecar_fleet_members",
    "pgsidecar_pool_budget",
    "pgsidecar_pool_share",
    "pgsidecar_fleet_writes_published_total",
    "pgsidecar_fleet_writes_received_total",
    "pgsidecar_fleet_publish_failures_total",
    "pgsidecar_fleet_listening",
    "pgsidecar_pinned_clients",
    "pgsidecar_pool_usage_ratio",
    "pgsidecar_budget_exceeded",
    "pgsidecar_budget_value",
    "pgsidecar_explain_dropped_total",
    "pgsidecar_slow_query_log_suppressed_total",
];

/// `routing_decisions_total{reason}` values exported at zero from the
/// start: why a unit of work (a transaction, or a statement outside one)
/// went where it went. `read`/`write` and the classifier's other reasons
/// (`ddl`, `locking_clause`, `write_function`, `parse_error`, …) when the
/// statement decided; `transaction` for an explicit transaction; `hint`
/// for a routing hint or `pgsidecar.route`; `read_your_writes` for a read
/// kept on the primary after a recent write; `fleet_write` for one kept
/// there by another fleet member's write (or while this member cannot hear
/// the fleet); `min_lsn` for one whose causal token no replica has
/// replayed; `split_disabled` with
/// `routing.read_write_split = false`; and, for a read that fell back to
/// the primary, why no replica could take it (`none_configured`,
/// `all_unhealthy`, `all_lagging`). Other classifier reasons appear when
/// first counted.
pub const ROUTING_REASONS: [&str; 12] = [
    "read",
    "write",
    "transaction",
    "hint",
    "read_your_writes",
    "fleet_write",
    "min_lsn",
    "split_disabled",
    "none_configured",
    "all_unhealthy",
    "all_lagging",
    "ddl",
];

/// `errors_total{kind}`: every kind counted, exported at zero from the
/// start. The label values are [`ErrorKind::as_str`].
pub const ERROR_KINDS: [&str; ErrorKind::COUNT] = {
    let mut kinds = [""; ErrorKind::COUNT];
    let mut i = 0;
    while i < ErrorKind::COUNT {
        kinds[i] = ErrorKind::ALL[i].as_str();
        i += 1;
    }
    kinds
};

/// What an error counted in `errors_total` was, its `kind` label: a type,
/// so that a misspelt kind cannot start a new series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A client statement the server answered with an error.
    Query,
    /// A plan sample that failed.
    Explain,
    /// A client refused at login (28P01, 28000, 3D000).
    Auth,
    /// A login over `proxy.max_client_conn` (53300).
    TooManyClients,
    /// No server connection free in time (53300).
    CheckoutTimeout,
    /// No node could take a request (08006: no primary, no eligible
    /// replica without fallback, the node unreachable).
    NoNode,
    /// A write sent to a replica by hint or setting (25006).
    Routing,
    /// A client broke the protocol (08P01) or did not finish logging in
    /// within `proxy.client_login_timeout`.
    Protocol,
    /// A server connection failed (its login at a client's login, or lost
    /// while a client held it).
    Server,
}

impl ErrorKind {
    pub const COUNT: usize = 9;
    /// Every kind, in the order of [`ERROR_KINDS`].
    pub const ALL: [ErrorKind; ErrorKind::COUNT] = [
        ErrorKind::Query,
        ErrorKind::Explain,
        ErrorKind::Auth,
        ErrorKind::TooManyClients,
        ErrorKind::CheckoutTimeout,
        ErrorKind::NoNode,
        ErrorKind::Routing,
        ErrorKind::Protocol,
        ErrorKind::Server,
    ];

    /// The `kind` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Query => "query",
            ErrorKind::Explain => "explain",
            ErrorKind::Auth => "auth",
            ErrorKind::TooManyClients => "too_many_clients",
            ErrorKind::CheckoutTimeout => "checkout_timeout",
            ErrorKind::NoNode => "no_node",
            ErrorKind::Routing => "routing",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Server => "server",
        }
    }
}

/// Metric handles. Counting methods take `&self` and never allocate once
/// a label has been seen.
pub struct Metrics {
    families: Families,
    /// `queries_total{role,node}` per configured node, `[primary, replica]`.
    queries_vec: IntCounterVec,
    /// Per-thread counts of the hot-path metrics (queries, durations,
    /// pool waits, transactions, routing decisions), flushed into the
    /// registry before it is read.
    hot: Hot,
    read_your_writes: IntCounter,
    pub(crate) slow_queries: IntCounter,
    pub(crate) explain_samples: IntCounter,
    pub(crate) explain_dropped: IntCounter,
    pub(crate) slow_log_suppressed: IntCounter,
    /// `errors_total`, by [`ErrorKind`] (its discriminant).
    errors: [IntCounter; ErrorKind::COUNT],
    reloads: [IntCounter; 2],
    pub(crate) scraped: Scraped,
}

impl Metrics {
    /// Registers every family; `nodes` are the configured nodes in
    /// [`NodeId`] order (primary first), used as the `node` label.
    pub fn new(nodes: &[NodeAddr]) -> Metrics {
        let mut f = Families::new();
        let queries_vec = f.counter_vec(
            "queries_total",
            "Statements completed, by the role and address of the node that ran them.",
            &["role", "node"],
        );
        let queries: Vec<[IntCounter; 2]> = nodes
            .iter()
            .map(|n| {
                let node = n.to_string();
                [Role::Primary, Role::Replica]
                    .map(|r| queries_vec.with_label_values(&[r.as_str(), &node]))
            })
            .collect();
        let durations = f.histogram_vec(
            "query_duration_seconds",
            "Statement duration measured at the proxy, by node role.",
            &["role"],
        );
        let query_duration =
            [Role::Primary, Role::Replica].map(|r| durations.with_label_values(&[r.as_str()]));
        let pool_wait = f.histogram(
            "pool_wait_seconds",
            "Time clients waited to check a server connection out of a pool.",
        );
        let transactions = f.counter("transactions_total", "Transactions completed.");
        let routing = f.counter_vec(
            "routing_decisions_total",
            "Routing decisions, by the reason the node was chosen.",
            &["reason"],
        );
        let read_your_writes = f.counter(
            "read_your_writes_total",
            "Reads kept from a stale replica because the client (or table) had a recent write.",
        );
        let slow_queries = f.counter(
            "slow_queries_total",
            "Statements slower than observability.slow_query_threshold.",
        );
        let explain_samples = f.counter("explain_samples_total", "Query plans sampled by EXPLAIN.");
        let errors = f.counter_vec("errors_total", "Errors, by kind.", &["kind"]);
        let reloads = f.counter_vec(
            "config_reloads_total",
            "Config reloads, by result (ok, error).",
            &["result"],
        );
        let scraped = Scraped::register(&mut f);
        let explain_dropped = f.counter(
            "explain_dropped_total",
            "Plan samples dropped because the EXPLAIN queue was full.",
        );
        let slow_log_suppressed = f.counter(
            "slow_query_log_suppressed_total",
            "Slow-query log lines suppressed by observability.slow_query_log_rate.",
        );
        let errors = ErrorKind::ALL.map(|kind| errors.with_label_values(&[kind.as_str()]));
        let hot = Hot::new(
            &Targets {
                queries: &queries,
                query_duration: &query_duration,
                pool_wait: &pool_wait,
                transactions: &transactions,
            },
            LabelCache::new(routing, &ROUTING_REASONS),
        );
        Metrics {
            queries_vec,
            hot,
            read_your_writes,
            slow_queries,
            explain_samples,
            explain_dropped,
            slow_log_suppressed,
            errors,
            reloads: ["ok", "error"].map(|r| reloads.with_label_values(&[r])),
            scraped,
            families: f,
        }
    }

    /// A completed statement: `queries_total` and `query_duration_seconds`.
    /// ([`Observer::record`](super::Observer::record) calls this.)
    pub fn query(&self, role: Role, node: NodeId, duration: Duration) {
        if !self.hot.query(role_index(role), node, duration) {
            // Only if the node list changed without a restart.
            self.queries_vec
                .with_label_values(&[role.as_str(), "unknown"])
                .inc();
        }
    }

    /// A statement the server answered with an error (`errors_total{kind="query"}`).
    pub(crate) fn query_error(&self) {
        self.error(ErrorKind::Query);
    }

    /// Time a client waited for a server connection.
    pub fn pool_wait(&self, waited: Duration) {
        self.hot.pool_wait(waited);
    }

    /// A routing decision (as [`routing`](Self::routing)) whose request
    /// then waited `waited` for its server (as [`pool_wait`](Self::pool_wait)):
    /// one lock of the thread's counters instead of two per request.
    /// Inlined (as [`transaction`](Self::transaction)): once per request,
    /// and the call cost a fifth of it.
    #[inline]
    pub fn acquired(&self, reason: &'static str, waited: Duration) {
        self.hot.acquired(reason, waited);
    }

    /// A transaction (or autocommit statement outside one) completed.
    #[inline]
    pub fn transaction(&self) {
        self.hot.transaction();
    }

    /// A routing decision, by reason (see [`ROUTING_REASONS`]).
    pub fn routing(&self, reason: &'static str) {
        self.hot.routing(reason);
    }

    /// The counter behind [`routing`](Self::routing)`(reason)`, to keep.
    pub fn routing_counter(&self, reason: &'static str) -> IntCounter {
        self.hot.routing_labels().get(reason)
    }

    /// A read that read-your-writes kept off a stale replica.
    pub fn read_your_writes(&self) {
        self.read_your_writes.inc();
    }

    /// An error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// A config reload, successful or refused.
    pub fn config_reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// The registry, e.g. to add process metrics.
    /// The registry, up to date: every thread's buffered counts are added
    /// in first.
    pub fn registry(&self) -> &prometheus::Registry {
        self.hot.flush();
        &self.families.registry
    }

    pub(crate) fn families(&self) -> &[FamilyInfo] {
        &self.families.infos
    }
}

fn role_index(role: Role) -> usize {
    match role {
        Role::Primary => 0,
        Role::Replica => 1,
    }
}
