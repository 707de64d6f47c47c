//! The demo's live summary: per node its role, health and lag (from the
//! cluster monitor's [`ClusterView`]), the proxy's server connections to it
//! (from the pools) and the transactions it ran on the demo database.
//!
//! Transactions are read from each node's `pg_stat_database` over a
//! superuser connection of the summary's own, so they show where queries
//! really ran whatever the proxy decided. Postgres publishes these counters
//! with a delay of up to a few seconds.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::setup::DATABASE;
use crate::cluster::{ClusterView, NodeStatus, Role};
use crate::demo::LocalCluster;
use crate::proxy::Shared;

/// One node's line of the summary.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NodeLine {
    pub(super) status: NodeStatus,
    /// Transactions on the demo database since the demo started; `None`
    /// when its statistics could not be read.
    pub(super) transactions: Option<i64>,
    /// Server connections the proxy holds to the node: (open, idle).
    pub(super) server_conns: (u32, u32),
    /// Statements the proxy sent there (`pgsidecar_queries_total`).
    pub(super) queries: u64,
}

/// Reads transaction counters from every node, relative to when it was
/// created.
pub(super) struct TransactionCounter {
    /// One per node, in the view's node order (primary first).
    clients: Vec<Option<Client>>,
    baseline: Vec<Option<i64>>,
}

impl TransactionCounter {
    /// Connects to every node of `cluster` as the trusted superuser and
    /// takes the starting counts.
    pub(super) async fn connect(cluster: &LocalCluster) -> Self {
        let mut clients = Vec::new();
        for node in cluster.nodes() {
            let client = match tokio_postgres::connect(&node.conn_string(), NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    Some(client)
                }
                Err(e) => {
                    tracing::warn!(node = node.name(), error = %e, "cannot read statistics");
                    None
                }
            };
            clients.push(client);
        }
        let mut counter = TransactionCounter {
            baseline: Vec::new(),
            clients,
        };
        counter.baseline = counter.raw().await;
        counter
    }

    /// Transactions per node since [`connect`](Self::connect).
    pub(super) async fn since_start(&self) -> Vec<Option<i64>> {
        let now = self.raw().await;
        now.iter()
            .zip(&self.baseline)
            .map(|(now, base)| Some(now.as_ref()? - base.unwrap_or(0)))
            .collect()
    }

    async fn raw(&self) -> Vec<Option<i64>> {
        let sql = format!(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{DATABASE}'"
        );
        let mut counts = Vec::new();
        for client in &self.clients {
            let count = match client {
                Some(c) => tokio::time::timeout(Duration::from_secs(1), c.simple_query(&sql))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|rows| first_value(&rows)),
                None => None,
            };
            counts.push(count);
        }
        counts
    }
}

fn first_value(messages: &[SimpleQueryMessage]) -> Option<i64> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
        _ => None,
    })
}

/// The current state of every node, from the view, the pools and `counts`
/// (in node order, as [`TransactionCounter::since_start`] returns them).
pub(super) fn gather(view: &ClusterView, shared: &Shared, counts: &[Option<i64>]) -> Vec<NodeLine> {
    let mut conns: HashMap<String, (u32, u32)> = HashMap::new();
    for pool in shared.pools.all() {
        let (open, idle) = pool.state();
        let entry = conns.entry(pool.key.node.to_string()).or_default();
        entry.0 += open;
        entry.1 += idle;
    }
    let queries = queries_by_node(shared);
    view.status()
        .into_iter()
        .map(|status| NodeLine {
            queries: queries.get(&status.addr.to_string()).copied().unwrap_or(0),
            transactions: counts.get(status.id).copied().flatten(),
            server_conns: conns
                .get(&status.addr.to_string())
                .copied()
                .unwrap_or_default(),
            status,
        })
        .collect()
}

/// `pgsidecar_queries_total` summed per node address.
fn queries_by_node(shared: &Shared) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for family in shared.observer.metrics().registry().gather() {
        if family.name() != "pgsidecar_queries_total" {
            continue;
        }
        for m in family.get_metric() {
            if let Some(node) = m.get_label().iter().find(|l| l.name() == "node") {
                *out.entry(node.value().to_string()).or_default() += m.get_counter().value() as u64;
            }
        }
    }
    out
}

/// The summary text: a header with the uptime and connected clients, then
/// one line per node.
pub(super) fn render(uptime: Duration, clients: usize, nodes: &[NodeLine]) -> String {
    let secs = uptime.as_secs();
    let mut out = format!(
        "-- {}:{:02} -- clients connected: {clients}\n",
        secs / 60,
        secs % 60
    );
    for n in nodes {
        let s = &n.status;
        let health = if s.healthy { "up" } else { "DOWN" };
        let xacts = n
            .transactions
            .map_or_else(|| "?".to_string(), |t| t.to_string());
        let (open, idle) = n.server_conns;
        let _ = write!(
            out,
            "   {:<8} {:<22} {health:<5} queries via proxy {:>6}   transactions {xacts:>5}   server conns {open} ({idle} idle)",
            s.role.as_str(),
            s.addr.to_string(),
            n.queries,
        );
        if s.role == Role::Replica {
            match (s.lag_seconds, s.lag_bytes) {
                (Some(secs), Some(bytes)) => {
                    let _ = write!(out, "   lag {secs:.2} s, {bytes} B");
                }
                (Some(secs), None) => {
                    let _ = write!(out, "   lag {secs:.2} s");
                }
                _ => out.push_str("   lag unknown yet"),
            }
        }
        if let Some(error) = s.last_error.as_deref().filter(|_| !s.healthy) {
            let _ = write!(out, "   ({error})");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: usize, role: Role, healthy: bool, lag: Option<f64>) -> NodeLine {
        NodeLine {
            status: NodeStatus {
                id,
                addr: format!("127.0.0.1:{}", 5000 + id).parse().unwrap(),
                role,
                healthy,
                replay_lsn: None,
                lag_bytes: lag.map(|_| 128),
                lag_seconds: lag,
                timeline_id: None,
                last_error: (!healthy).then(|| "connection refused".to_string()),
                outstanding: 0,
            },
            transactions: if healthy { Some(12) } else { None },
            server_conns: (2, 1),
            queries: 7,
        }
    }

    #[test]
    fn renders_roles_health_lag_and_connections() {
        let text = render(
            Duration::from_secs(75),
            3,
            &[
                line(0, Role::Primary, true, None),
                line(1, Role::Replica, true, Some(0.25)),
                line(2, Role::Replica, false, None),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-- 1:15 -- clients connected: 3");
        assert!(lines[1].contains("primary  127.0.0.1:5000"), "{text}");
        assert!(
            lines[1].contains("up    queries via proxy      7"),
            "{text}"
        );
        assert!(lines[1].contains("transactions    12"), "{text}");
        assert!(lines[1].contains("server conns 2 (1 idle)"), "{text}");
        assert!(!lines[1].contains("lag"), "{text}");
        assert!(lines[2].ends_with("lag 0.25 s, 128 B"), "{text}");
        assert!(lines[3].contains("DOWN"), "{text}");
        assert!(lines[3].contains("transactions     ?"), "{text}");
        assert!(
            lines[3].ends_with("lag unknown yet   (connection refused)"),
            "{text}"
        );
    }
}
