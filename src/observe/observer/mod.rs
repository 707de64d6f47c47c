//! [`Observer`]: the one object the proxy holds to report what it does.
//! [`Observer::record`] is called for every finished statement and is
//! built to be cheap when the statement is neither slow nor sampled: the
//! calling thread's own metrics shard and digest slot (locks no other
//! thread takes but to read them), no allocation once the fingerprint is
//! known.

mod background;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::cluster::{NodeId, Role};
use crate::config::{Config, ConfigHandle, ExplainMode, NodeAddr};
use crate::observe::digest::{DigestSnapshot, Digests, Sample};
use crate::observe::explain::{ExplainRequest, Queue, Target};
use crate::observe::metrics::Metrics;
use crate::observe::settings::Settings;
use crate::observe::slowlog::SlowLog;
use crate::observe::sources::Sources;

/// Longer statements are not explained (a queued request holds a copy).
const MAX_EXPLAINED_SQL: usize = 256 * 1024;

/// A finished statement, reported after its response completed.
#[derive(Clone, Copy, Debug)]
pub struct QueryEvent<'a> {
    /// Fingerprint of the normalised text (the router's).
    pub fingerprint: u64,
    /// Normalised text: literals replaced by `$n`. The only text logged
    /// or kept.
    pub normalized: &'a Arc<str>,
    /// The statement as the client sent it (literals included), used only
    /// to EXPLAIN it; never logged or stored.
    pub sql: &'a str,
    /// Parameter values in text format, when the caller captured them
    /// (extended protocol), for a plan with the real values.
    pub params: Option<&'a [Option<String>]>,
    pub is_write: bool,
    /// Role of the node that ran it.
    pub role: Role,
    /// The node that ran it (index into the configured nodes).
    pub node: NodeId,
    pub node_addr: &'a NodeAddr,
    /// Measured at the proxy, from the statement's arrival to its
    /// response's end.
    pub duration: Duration,
    pub rows: u64,
    /// SQLSTATE if the server answered with an error.
    pub error: Option<&'a str>,
    pub user: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
}

/// Metrics, digests, slow-query log, EXPLAIN sampler and budgets; shared
/// by every client task (`Arc`).
pub struct Observer {
    config: ConfigHandle,
    sources: Arc<dyn Sources>,
    metrics: Metrics,
    settings: Settings,
    digests: Digests,
    slowlog: SlowLog,
    explain_queue: Queue,
    background_started: AtomicBool,
}

impl Observer {
    /// An observer for `config`'s nodes (their order gives the `node`
    /// index of [`QueryEvent`]), reading live state from `sources`.
    pub fn new(config: ConfigHandle, sources: Arc<dyn Sources>) -> Arc<Observer> {
        let current = config.load_full();
        let nodes: Vec<NodeAddr> = std::iter::once(&current.cluster.primary)
            .chain(&current.cluster.replicas)
            .cloned()
            .collect();
        let observer = Observer {
            metrics: Metrics::new(&nodes),
            settings: Settings::new(&current),
            digests: Digests::new(current.observability.max_fingerprints as usize),
            slowlog: SlowLog::new(),
            explain_queue: Queue::new(),
            background_started: AtomicBool::new(false),
            config,
            sources,
        };
        observer.bound_digests(&current);
        Arc::new(observer)
    }

    /// Applies `max_fingerprints`, `max_query_text` and
    /// `max_query_memory` to the digest table.
    fn bound_digests(&self, config: &Config) {
        let o = &config.observability;
        self.digests.resize(o.max_fingerprints as usize);
        self.digests.set_byte_limits(
            o.max_query_text as usize,
            usize::try_from(o.max_query_memory).unwrap_or(usize::MAX),
        );
    }

    /// Bytes of query text and plans the digests hold (at most
    /// `observability.max_query_memory`).
    pub fn digest_bytes(&self) -> usize {
        self.digests.bytes()
    }

    /// Whether [`QueryEvent::sql`] may be used (EXPLAIN is on); when not,
    /// callers can pass the normalised text instead of copying the original.
    pub fn wants_sql(&self) -> bool {
        self.settings.enabled() && self.settings.explain() != ExplainMode::Off
    }

    /// Hot-path counters (routing decisions, transactions, pool waits…).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Reports a finished statement: metrics, digest, slow-query log and,
    /// if due, a plan request (queued, never awaited). With
    /// `observability.enabled = false`, only the metrics.
    pub fn record(&self, ev: &QueryEvent<'_>) {
        self.metrics.query(ev.role, ev.node, ev.duration);
        if ev.error.is_some() {
            self.metrics.query_error();
        }
        if !self.settings.enabled() {
            return;
        }
        let slow = self.settings.is_slow(ev.duration);
        let explain = match self.settings.explain() {
            ExplainMode::Off => false,
            ExplainMode::Slow => slow,
            ExplainMode::Sample => slow || (!ev.is_write && self.sampled()),
        };
        let claim = explain.then(|| (self.settings.min_interval(), Instant::now()));
        let sample = Sample {
            fingerprint: ev.fingerprint,
            normalized: ev.normalized,
            role: ev.role,
            duration: ev.duration,
            rows: ev.rows,
            error: ev.error.is_some(),
        };
        let claimed = self.digests.record(&sample, claim);
        if slow {
            self.metrics.slow_queries.inc();
            let rate = self.config.load().observability.slow_query_log_rate;
            if self.slowlog.allow(rate, Instant::now()) {
                crate::observe::slowlog::log_slow(ev, self.settings.max_query_text());
            } else {
                self.metrics.slow_log_suppressed.inc();
            }
        }
        if claimed {
            self.request_explain(ev);
        }
    }

    /// Applies the current config's observability keys to the hot path
    /// now (a reload calls this; the background timer also does it once
    /// a second), so the next query already sees a new threshold.
    pub fn config_changed(&self) {
        let config = self.config();
        self.settings.refresh(&config);
        self.bound_digests(&config);
    }

    /// Statistics of one fingerprint, if kept.
    pub fn digest(&self, fingerprint: u64) -> Option<DigestSnapshot> {
        self.digests.get(fingerprint)
    }

    /// Statistics of every fingerprint kept (unordered).
    pub fn digests(&self) -> Vec<DigestSnapshot> {
        self.digests.snapshots()
    }

    /// The `/metrics` text.
    pub fn render_metrics(&self) -> String {
        let config = self.config.load();
        let fleet = config.fleet.is_some();
        self.metrics.render(self.sources.as_ref(), &|node| {
            config.pool_max_on(node, fleet)
        })
    }

    /// A primary is reachable (`/readyz`).
    pub fn ready(&self) -> bool {
        self.sources.primary_ready()
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    fn sampled(&self) -> bool {
        let rate = self.settings.sample_rate();
        rate > 0.0 && rand::random::<f64>() < rate
    }

    fn request_explain(&self, ev: &QueryEvent<'_>) {
        if ev.sql.len() > MAX_EXPLAINED_SQL {
            // The request would copy it; the classifier does not parse
            // statements this long either.
            self.digests.unclaim_explain(ev.fingerprint);
            return;
        }
        let request = ExplainRequest {
            fingerprint: ev.fingerprint,
            normalized: ev.normalized.clone(),
            sql: ev.sql.to_string(),
            params: ev.params.map(<[Option<String>]>::to_vec),
            is_write: ev.is_write,
            target: Target {
                node: ev.node_addr.clone(),
                database: ev.database.to_string(),
                user: ev.user.to_string(),
            },
        };
        if !self.explain_queue.offer(request) {
            self.metrics.explain_dropped.inc();
            self.digests.unclaim_explain(ev.fingerprint);
        }
    }
}
