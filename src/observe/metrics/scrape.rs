//! Gauges describing state other modules own (nodes, pools, clients),
//! rebuilt from [`Sources`] on each scrape so the hot path never updates
//! them and a node or pool that disappeared stops being exported.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::{Encoder, GaugeVec, IntCounter, IntGauge, IntGaugeVec, TextEncoder};

use super::Metrics;
use super::family::{Families, describe_missing};
use crate::config::NodeAddr;
use crate::observe::sources::Sources;

/// The scrape-time gauges, plus the budget gauges the budget timer sets.
pub(crate) struct Scraped {
    client_connections: IntGaugeVec,
    server_connections: IntGaugeVec,
    pool_size: IntGaugeVec,
    pool_usage: GaugeVec,
    lag_seconds: GaugeVec,
    lag_bytes: GaugeVec,
    node_up: IntGaugeVec,
    pinned: IntGauge,
    fleet_members: IntGauge,
    pool_budget: IntGaugeVec,
    pool_share: IntGaugeVec,
    fleet_published: IntCounter,
    fleet_received: IntCounter,
    fleet_failures: IntCounter,
    fleet_listening: IntGauge,
    pub(crate) budget_exceeded: IntGaugeVec,
    pub(crate) budget_value: GaugeVec,
    /// Serialises reset-refill-gather so two scrapes never interleave.
    scrape: Mutex<()>,
}

impl Scraped {
    pub(crate) fn register(f: &mut Families) -> Scraped {
        Scraped {
            client_connections: f.gauge_vec(
                "client_connections",
                "Connected clients, by state (active, idle, waiting).",
                &["state"],
            ),
            server_connections: f.gauge_vec(
                "server_connections",
                "Open server connections, by node and state (active, idle).",
                &["node", "state"],
            ),
            pool_size: f.gauge_vec(
                "pool_size",
                "Configured size of each (database, user) pool on the node.",
                &["node"],
            ),
            pool_usage: f.float_gauge_vec(
                "pool_usage_ratio",
                "Busy connections / size of the node's busiest pool.",
                &["node"],
            ),
            lag_seconds: f.float_gauge_vec(
                "replica_lag_seconds",
                "Replica replay lag in seconds (an upper bound), while known.",
                &["node"],
            ),
            lag_bytes: f.float_gauge_vec(
                "replica_lag_bytes",
                "Primary WAL position minus the replica's replay position, while known.",
                &["node"],
            ),
            node_up: f.gauge_vec(
                "node_up",
                "1 if the node's last health check succeeded, by node and current role.",
                &["node", "role"],
            ),
            pinned: f.gauge(
                "pinned_clients",
                "Clients pinned to one server connection by session state.",
            ),
            fleet_members: f.gauge(
                "fleet_members",
                "With [fleet]: members of the fleet present (this one included).",
            ),
            pool_budget: f.gauge_vec(
                "pool_budget",
                "With [fleet]: server connections the whole fleet may have open to the node.",
                &["node"],
            ),
            pool_share: f.gauge_vec(
                "pool_share",
                "With [fleet]: the node's budget slots this member holds (its connection limit there).",
                &["node"],
            ),
            fleet_published: f.counter(
                "fleet_writes_published_total",
                "With [fleet]: write transactions this member announced to the other members.",
            ),
            fleet_received: f.counter(
                "fleet_writes_received_total",
                "With [fleet]: announcements of writes heard from other members.",
            ),
            fleet_failures: f.counter(
                "fleet_publish_failures_total",
                "With [fleet]: write transactions whose announcement failed (other members' reads may miss them).",
            ),
            fleet_listening: f.gauge(
                "fleet_listening",
                "With [fleet]: 1 while this member hears the fleet's writes; 0 sends its reads to the primary.",
            ),
            budget_exceeded: f.gauge_vec(
                "budget_exceeded",
                "1 while the [budgets] entry is exceeded, else 0.",
                &["budget"],
            ),
            budget_value: f.float_gauge_vec(
                "budget_value",
                "The value a budget is checked against (seconds for p95_query_time, a ratio for pool_usage).",
                &["budget"],
            ),
            scrape: Mutex::new(()),
        }
    }

    fn refresh(&self, sources: &dyn Sources, pool_size: &dyn Fn(&NodeAddr) -> u32) {
        let clients = sources.clients();
        for (state, n) in clients.by_state() {
            self.client_connections
                .with_label_values(&[state])
                .set(clamp(n));
        }
        self.pinned.set(clamp(sources.pinned()));

        for g in [&self.pool_budget, &self.pool_share] {
            g.reset();
        }
        if let Some(fleet) = sources.fleet() {
            self.fleet_members.set(clamp(fleet.members));
            // Counted by the fleet; brought up to its totals here.
            for (c, total) in [
                (&self.fleet_published, fleet.writes_published),
                (&self.fleet_received, fleet.writes_received),
                (&self.fleet_failures, fleet.publish_failures),
            ] {
                c.inc_by(total.saturating_sub(c.get()));
            }
            self.fleet_listening.set(i64::from(fleet.listening));
            for (node, budget, share) in fleet.nodes {
                let label = node.to_string();
                self.pool_budget
                    .with_label_values(&[&label])
                    .set(i64::from(budget));
                self.pool_share
                    .with_label_values(&[&label])
                    .set(i64::from(share));
            }
        }
        for g in [&self.server_connections, &self.pool_size, &self.node_up] {
            g.reset();
        }
        for g in [&self.pool_usage, &self.lag_seconds, &self.lag_bytes] {
            g.reset();
        }
        // node label -> (busy, idle, busiest usage)
        let mut per_node: BTreeMap<String, (u64, u64, f64)> = BTreeMap::new();
        for node in sources.nodes() {
            let label = node.addr.to_string();
            self.node_up
                .with_label_values(&[&label, node.role.as_str()])
                .set(i64::from(node.healthy));
            if let Some(s) = node.lag_seconds {
                self.lag_seconds.with_label_values(&[&label]).set(s);
            }
            if let Some(b) = node.lag_bytes {
                self.lag_bytes.with_label_values(&[&label]).set(b as f64);
            }
            self.pool_size
                .with_label_values(&[&label])
                .set(i64::from(pool_size(&node.addr)));
            per_node.entry(label).or_default();
        }
        for pool in sources.pools() {
            let e = per_node.entry(pool.node.to_string()).or_default();
            e.0 += u64::from(pool.busy());
            e.1 += u64::from(pool.idle);
            e.2 = e.2.max(pool.usage());
        }
        for (node, (busy, idle, usage)) in per_node {
            let conns = &self.server_connections;
            conns.with_label_values(&[&node, "active"]).set(clamp(busy));
            conns.with_label_values(&[&node, "idle"]).set(clamp(idle));
            self.pool_usage.with_label_values(&[&node]).set(usage);
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The Prometheus text exposition: gauges refreshed from `sources`
    /// (`pool_size` giving the configured size of a pool on a node: a
    /// fleet's replicas may have their own), every family listed even
    /// before its first sample.
    pub(crate) fn render(
        &self,
        sources: &dyn Sources,
        pool_size: &dyn Fn(&NodeAddr) -> u32,
    ) -> String {
        let _one_at_a_time = crate::sync::lock(&self.scraped.scrape);
        self.scraped.refresh(sources, pool_size);
        let families = self.registry().gather();
        let mut buf = Vec::new();
        let mut text = match TextEncoder::new().encode(&families, &mut buf) {
            Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
            Err(error) => {
                tracing::warn!(%error, "encoding metrics failed");
                String::new()
            }
        };
        describe_missing(&mut text, self.families());
        text
    }
}
