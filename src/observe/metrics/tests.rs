//! The registry lists every contract metric, hot-path handles count under
//! the right labels, and scrape-time gauges follow the sources.

use std::collections::BTreeSet;

use super::*;
use crate::cluster::{Lsn, NodeStatus};
use crate::observe::sources::{ClientCounts, PoolSnapshot, Sources};

struct Stub;

fn addr(port: u16) -> NodeAddr {
    NodeAddr {
        host: "10.0.0.1".into(),
        port,
    }
}

impl Sources for Stub {
    fn nodes(&self) -> Vec<NodeStatus> {
        let node = |id, port, role, healthy, lag: Option<(f64, u64)>| NodeStatus {
            id,
            addr: addr(port),
            role,
            healthy,
            replay_lsn: lag.map(|_| Lsn(100)),
            lag_bytes: lag.map(|l| l.1),
            lag_seconds: lag.map(|l| l.0),
            timeline_id: None,
            last_error: None,
            outstanding: 0,
        };
        vec![
            node(0, 5432, Role::Primary, true, None),
            node(1, 5433, Role::Replica, false, Some((0.25, 4096))),
        ]
    }
    fn primary_ready(&self) -> bool {
        true
    }
    fn pools(&self) -> Vec<PoolSnapshot> {
        let pool = |db: &str, open, idle| PoolSnapshot {
            node: addr(5432),
            database: db.into(),
            user: "app".into(),
            size: 10,
            open,
            idle,
        };
        vec![pool("a", 5, 1), pool("b", 9, 0)]
    }
    fn clients(&self) -> ClientCounts {
        ClientCounts {
            active: 3,
            idle: 7,
            waiting: 1,
        }
    }
    fn pinned(&self) -> u64 {
        2
    }
}

fn metrics() -> Metrics {
    Metrics::new(&[addr(5432), addr(5433)])
}

fn line_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix}:\n{text}"))
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value on the {prefix} line"))
}

#[test]
fn every_family_is_listed_even_before_its_first_sample() {
    let m = metrics();
    let registered: BTreeSet<&str> = m.families().iter().map(|f| f.name.as_str()).collect();
    let declared: BTreeSet<&str> = METRIC_NAMES.into_iter().collect();
    assert_eq!(registered, declared, "METRIC_NAMES matches the registry");
    let text = m.render(&Stub, &|_| 9);
    for name in METRIC_NAMES {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
}

#[test]
fn hot_path_counts_under_the_right_labels() {
    let m = metrics();
    m.query(Role::Replica, 1, Duration::from_millis(3));
    m.query(Role::Replica, 1, Duration::from_millis(3));
    m.query(Role::Primary, 0, Duration::from_micros(50));
    m.query(Role::Primary, 7, Duration::from_millis(1)); // unknown node
    m.routing("read");
    m.routing("custom_reason");
    m.routing("custom_reason");
    // Back to an earlier reason, and the same text at another address.
    m.routing("read");
    m.routing(String::from("custom_reason").leak());
    m.routing("read");
    m.routing_counter("write").inc();
    m.error(super::ErrorKind::Auth);
    m.query_error();
    m.config_reload(true);
    m.config_reload(false);
    m.config_reload(false);
    m.transaction();
    m.read_your_writes();
    m.pool_wait(Duration::from_millis(20));
    // A request's routing and its wait, counted together.
    m.acquired("custom_reason", Duration::from_millis(2));
    let t = m.render(&Stub, &|_| 9);
    let v = |p: &str| line_value(&t, p);
    assert_eq!(
        v("pgsidecar_queries_total{node=\"10.0.0.1:5433\",role=\"replica\"}"),
        2.0
    );
    assert_eq!(
        v("pgsidecar_queries_total{node=\"10.0.0.1:5432\",role=\"primary\"}"),
        1.0
    );
    assert_eq!(
        v("pgsidecar_queries_total{node=\"unknown\",role=\"primary\"}"),
        1.0
    );
    assert_eq!(
        v("pgsidecar_query_duration_seconds_count{role=\"replica\"}"),
        2.0
    );
    // 50 µs lands in the first bucket (100 µs).
    assert_eq!(
        v("pgsidecar_query_duration_seconds_bucket{role=\"primary\",le=\"0.0001\"}"),
        1.0
    );
    assert_eq!(v("pgsidecar_routing_decisions_total{reason=\"read\"}"), 3.0);
    assert_eq!(
        v("pgsidecar_routing_decisions_total{reason=\"custom_reason\"}"),
        4.0
    );
    assert_eq!(
        v("pgsidecar_routing_decisions_total{reason=\"write\"}"),
        1.0
    );
    assert_eq!(v("pgsidecar_routing_decisions_total{reason=\"hint\"}"), 0.0);
    assert_eq!(v("pgsidecar_errors_total{kind=\"auth\"}"), 1.0);
    assert_eq!(v("pgsidecar_errors_total{kind=\"query\"}"), 1.0);
    assert_eq!(v("pgsidecar_config_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(v("pgsidecar_config_reloads_total{result=\"error\"}"), 2.0);
    assert_eq!(v("pgsidecar_transactions_total"), 1.0);
    assert_eq!(v("pgsidecar_read_your_writes_total"), 1.0);
    assert_eq!(v("pgsidecar_pool_wait_seconds_count"), 2.0);
    assert_eq!(
        v("pgsidecar_pool_wait_seconds_bucket{le=\"0.005\"}"),
        1.0,
        "the 2 ms wait, not the 20 ms one"
    );
}

/// The hot-path metrics count per thread; a scrape adds every thread's
/// counts, whichever threads made them.
#[test]
fn counts_from_many_threads_add_up_at_scrape() {
    let m = metrics();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..250 {
                    m.query(Role::Primary, 0, Duration::from_micros(50));
                    m.transaction();
                    m.routing("read");
                    m.pool_wait(Duration::from_millis(1));
                }
            });
        }
    });
    let t = m.render(&Stub, &|_| 9);
    let v = |p: &str| line_value(&t, p);
    assert_eq!(
        v("pgsidecar_queries_total{node=\"10.0.0.1:5432\",role=\"primary\"}"),
        1000.0
    );
    assert_eq!(v("pgsidecar_transactions_total"), 1000.0);
    assert_eq!(
        v("pgsidecar_routing_decisions_total{reason=\"read\"}"),
        1000.0
    );
    assert_eq!(v("pgsidecar_pool_wait_seconds_count"), 1000.0);
    // Read twice: the second scrape adds nothing more.
    let again = m.render(&Stub, &|_| 9);
    assert_eq!(line_value(&again, "pgsidecar_transactions_total"), 1000.0);
}

#[test]
fn scrape_time_gauges_follow_the_sources() {
    let t = metrics().render(&Stub, &|_| 9);
    let v = |p: &str| line_value(&t, p);
    assert_eq!(v("pgsidecar_client_connections{state=\"active\"}"), 3.0);
    assert_eq!(v("pgsidecar_client_connections{state=\"idle\"}"), 7.0);
    assert_eq!(v("pgsidecar_client_connections{state=\"waiting\"}"), 1.0);
    assert_eq!(v("pgsidecar_pinned_clients"), 2.0);
    assert_eq!(
        v("pgsidecar_node_up{node=\"10.0.0.1:5432\",role=\"primary\"}"),
        1.0
    );
    assert_eq!(
        v("pgsidecar_node_up{node=\"10.0.0.1:5433\",role=\"replica\"}"),
        0.0
    );
    assert_eq!(
        v("pgsidecar_replica_lag_seconds{node=\"10.0.0.1:5433\"}"),
        0.25
    );
    assert_eq!(
        v("pgsidecar_replica_lag_bytes{node=\"10.0.0.1:5433\"}"),
        4096.0
    );
    assert!(!t.contains("pgsidecar_replica_lag_seconds{node=\"10.0.0.1:5432\"}"));
    // Two pools on the primary: busy 4 + 9, idle 1 + 0, busiest 9/10.
    let conns = "pgsidecar_server_connections{node=\"10.0.0.1:5432\"";
    assert_eq!(v(&format!("{conns},state=\"active\"}}")), 13.0);
    assert_eq!(v(&format!("{conns},state=\"idle\"}}")), 1.0);
    assert_eq!(v("pgsidecar_pool_usage_ratio{node=\"10.0.0.1:5432\"}"), 0.9);
    assert_eq!(v("pgsidecar_pool_usage_ratio{node=\"10.0.0.1:5433\"}"), 0.0);
    assert_eq!(v("pgsidecar_pool_size{node=\"10.0.0.1:5433\"}"), 9.0);
}

#[test]
fn error_kinds_are_indexed_by_their_discriminant() {
    for (i, kind) in super::ErrorKind::ALL.iter().enumerate() {
        assert_eq!(*kind as usize, i);
        assert_eq!(super::ERROR_KINDS[i], kind.as_str());
    }
    assert_eq!(
        super::ERROR_KINDS,
        [
            "query",
            "explain",
            "auth",
            "too_many_clients",
            "checkout_timeout",
            "no_node",
            "routing",
            "protocol",
            "server",
        ]
    );
}
