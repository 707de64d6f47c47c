//! Observability: what the proxy shows about itself — Prometheus metrics,
//! the slow-query log, sampled EXPLAIN plans, per-fingerprint query
//! digests, latency/pool budgets, and the HTTP endpoints that serve them.
//!
//! # Wiring
//! ```ignore
//! struct ProxySources { shared: Weak<Shared>, cluster: Arc<ClusterView> }
//! impl Sources for ProxySources {
//!     fn nodes(&self) -> Vec<NodeStatus> { self.cluster.status() }
//!     fn primary_ready(&self) -> bool { self.cluster.primary_ready() }
//!     fn pools(&self) -> Vec<PoolSnapshot> {
//!         let Some(shared) = self.shared.upgrade() else { return vec![] };
//!         shared.pools.all().iter().map(|p| PoolSnapshot::of(p)).collect()
//!     }
//!     fn clients(&self) -> ClientCounts { /* from the session counters */ }
//!     fn pinned(&self) -> u64 { /* pinned sessions */ }
//! }
//! // Shared holds the observer; the sources hold Shared weakly:
//! let shared = Arc::new_cyclic(|weak| Shared {
//!     observer: Observer::new(config.clone(), Arc::new(ProxySources { .. })),
//!     ..
//! });
//! let http = shared.observer.serve_http().await?;      // binds [http].listen
//! let background = shared.observer.spawn_background(); // EXPLAIN worker, budgets
//! // after each statement's response completed:
//! shared.observer.record(&QueryEvent { .. });
//! shared.observer.metrics().routing("replica");        // and the other counters
//! // shutdown:
//! http.stop().await;
//! background.abort();
//! ```
//! State that other modules own (node health and lag, pools, clients) is
//! read through [`Sources`] when `/metrics` is scraped (and once a second
//! for the pool budget), so the hot path never touches those gauges.
//!
//! # Layout
//! - `observer`: [`Observer`], [`QueryEvent`], recording.
//! - `settings`: hot-path copies of the reloadable observability keys.
//! - `sources`: [`Sources`] and the snapshots it returns.
//! - `metrics/`: the registry, hot-path handles, scrape-time gauges.
//! - `digest/`: per-fingerprint statistics and the recent latency window.
//! - `queries`: the `/queries` report.
//! - `slowlog`: the rate-limited slow-query log.
//! - `explain/`: the EXPLAIN sampler, its connections and plan summaries.
//! - `budgets`: budget evaluation with one warning per crossing.
//! - `http`: the HTTP server.
//! - `thread_slot`: the per-thread slot the metrics and digests count in.

mod budgets;
mod digest;
mod explain;
mod http;
mod metrics;
mod observer;
mod queries;
mod settings;
mod slowlog;
mod sources;
mod thread_slot;

pub use budgets::{BUDGET_P95_QUERY_TIME, BUDGET_POOL_USAGE};
pub use digest::{DigestSnapshot, PlanSample};
pub use explain::{ExplainError, PlanError, PlanSummary, SeqScan};
pub use http::HttpHandle;
pub use metrics::{
    ERROR_KINDS, ErrorKind, LATENCY_BUCKETS, METRIC_NAMES, Metrics, ROUTING_REASONS,
};
pub use observer::{Observer, QueryEvent};
pub use queries::QueryOrder;
pub use sources::{ClientCounts, FleetSnapshot, PoolSnapshot, Sources};

use std::net::SocketAddr;

/// Largest `observability.max_query_text`: the classifier keeps no more
/// normalised text than this per statement shape.
pub const MAX_QUERY_TEXT_CAP: usize = crate::routing::MAX_NORMALIZED_TEXT;

/// Why an observability part could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot serve HTTP on {addr}: {source}")]
    HttpBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
