//! The observer's background work: the EXPLAIN worker, and a timer that
//! once a second refreshes the hot-path settings from the config, rolls
//! the latency window, checks budgets, and every 10 s sums up suppressed
//! slow-query lines. Both hold only a weak reference, so dropping the
//! last `Arc<Observer>` ends them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Observer;
use crate::logsafe;
use crate::observe::budgets::Budgets;
use crate::observe::digest::{PlanSample, RecentLatency, latency_histogram};
use crate::observe::explain::{self, Conns, ExplainError, ExplainRequest, Explained, PlanSummary};
use crate::observe::slowlog::{self, SUMMARY_INTERVAL};

const TICK: Duration = Duration::from_secs(1);

impl Observer {
    /// Starts the EXPLAIN worker and the once-a-second timer (budgets,
    /// settings refresh, suppressed-line summaries). Call once; abort the
    /// handle to stop them (they also end when the observer is dropped).
    pub fn spawn_background(self: &Arc<Self>) -> JoinHandle<()> {
        if self.background_started.swap(true, Ordering::AcqRel) {
            tracing::warn!("observer background tasks already started");
            return tokio::spawn(async {});
        }
        let receiver = self.explain_queue.take_receiver();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let worker = async {
                if let Some(rx) = receiver {
                    explain_worker(rx, weak.clone()).await;
                }
            };
            tokio::join!(worker, timer(weak.clone()));
        })
    }

    async fn explain_one(&self, conns: &mut Conns, req: ExplainRequest) {
        let config = self.config();
        let timeout = config.observability.explain_timeout;
        let query_cap = config.observability.max_query_text as usize;
        let outcome = async {
            let conn = conns.get(&req.target, &config).await?;
            // statement_timeout bounds the server; this bounds the network.
            let limit = timeout * 2 + Duration::from_secs(1);
            tokio::time::timeout(limit, explain::explain(conn, &req, timeout))
                .await
                .map_err(|_| ExplainError::Timeout { after: limit })?
        }
        .await;
        match outcome.and_then(|e| e.map(summarise).transpose()) {
            Ok(Some((summary, explained))) => {
                self.metrics.explain_samples.inc();
                let shown = summary.to_string();
                tracing::info!(
                    target: "explain",
                    fingerprint = %format_args!("{:016x}", req.fingerprint),
                    query = %logsafe::text(&req.normalized, query_cap),
                    node = %req.target.node,
                    top_node = %logsafe::message(&summary.top_node),
                    total_cost = summary.total_cost,
                    generic = explained.generic,
                    "plan: {}",
                    logsafe::message(&shown)
                );
                let sample = PlanSample {
                    summary,
                    bytes: serde_json::to_string(&explained.plan).map_or(0, |t| t.len()),
                    plan: explained.plan,
                    at: SystemTime::now(),
                    node: req.target.node.to_string(),
                    generic: explained.generic,
                };
                self.digests.set_plan(req.fingerprint, Arc::new(sample));
            }
            Ok(None) => tracing::debug!(
                target: "explain",
                query = %logsafe::text(&req.normalized, query_cap),
                "not a statement EXPLAIN takes"
            ),
            Err(error) => {
                conns.discard(&req.target);
                self.metrics.error(crate::observe::ErrorKind::Explain);
                let error = error.to_string();
                tracing::warn!(
                    target: "explain",
                    fingerprint = %format_args!("{:016x}", req.fingerprint),
                    query = %logsafe::text(&req.normalized, query_cap),
                    node = %req.target.node,
                    error = %logsafe::message(&error),
                    "EXPLAIN failed"
                );
            }
        }
    }

    /// One tick of the timer.
    fn tick(&self, window: &mut RecentLatency, budgets: &mut Budgets) {
        let config = self.config();
        self.settings.refresh(&config);
        self.bound_digests(&config);
        let mut second = latency_histogram();
        self.digests.take_window(&mut second);
        let seconds = config.budgets.window.as_secs().max(1);
        window.push(second, usize::try_from(seconds).unwrap_or(usize::MAX));
        let pool_usage = self
            .sources
            .pools()
            .iter()
            .map(|p| p.usage())
            .reduce(f64::max);
        budgets.evaluate(
            &config.budgets,
            window.quantile(0.95),
            pool_usage,
            &self.metrics,
        );
    }
}

/// Removes literal values from the plan, then summarises it.
fn summarise(mut e: Explained) -> Result<(PlanSummary, Explained), ExplainError> {
    explain::scrub_plan(&mut e.plan);
    Ok((PlanSummary::from_json(&e.plan)?, e))
}

async fn explain_worker(mut rx: mpsc::Receiver<ExplainRequest>, observer: Weak<Observer>) {
    let mut conns = Conns::new();
    while let Some(req) = rx.recv().await {
        let Some(observer) = observer.upgrade() else {
            return;
        };
        observer.explain_one(&mut conns, req).await;
    }
}

async fn timer(observer: Weak<Observer>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut window = RecentLatency::new();
    let mut budgets = Budgets::default();
    let summary_every = SUMMARY_INTERVAL.as_secs().max(1);
    let mut ticks = 0u64;
    loop {
        interval.tick().await;
        let Some(observer) = observer.upgrade() else {
            return;
        };
        observer.tick(&mut window, &mut budgets);
        ticks += 1;
        if ticks.is_multiple_of(summary_every) {
            slowlog::log_suppressed(observer.slowlog.take_suppressed());
        }
    }
}
