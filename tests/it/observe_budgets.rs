//! `[budgets]`: crossing a budget logs one warning (not one per check),
//! recovering logs one line, and `pgsidecar_budget_exceeded` follows.
//! Runs on tokio's paused clock, so the once-a-second checks take no time.

use std::time::Duration;

use pgsidecar::config::NodeAddr;
use pgsidecar::observe::PoolSnapshot;

use crate::observe_support::{Event, capture, observer};

fn pool(open: u32, idle: u32) -> PoolSnapshot {
    PoolSnapshot {
        node: NodeAddr {
            host: "127.0.0.1".into(),
            port: 5432,
        },
        database: "db".into(),
        user: "app".into(),
        size: 10,
        open,
        idle,
    }
}

fn gauge(metrics: &str, budget: &str) -> String {
    let prefix = format!("pgsidecar_budget_exceeded{{budget=\"{budget}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}in\n{metrics}"))
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn crossing_and_recovery_log_once_each() {
    let (observer, sources) = observer(
        "[observability]\nexplain = \"off\"\nslow_query_threshold = \"10s\"\n\
         [budgets]\np95_query_time = \"50ms\"\npool_usage = 0.8",
    );
    let (log, _guard) = capture(false);
    let _background = observer.spawn_background();
    let second = Duration::from_secs(1);

    // Slow queries for five seconds, a nearly full pool for three.
    *sources.pools.lock().unwrap() = vec![pool(10, 1), pool(2, 2)];
    let slow = Event::read("db", "select $1", "select 1", Duration::from_millis(200));
    for _ in 0..5 {
        for _ in 0..20 {
            slow.record(&observer);
        }
        tokio::time::sleep(second).await;
    }
    let metrics = observer.render_metrics();
    assert_eq!(gauge(&metrics, "p95_query_time"), "1");
    assert_eq!(gauge(&metrics, "pool_usage"), "1");
    assert_eq!(log.matching("budget exceeded: p95_query_time").len(), 1);
    assert_eq!(log.matching("budget exceeded: pool_usage is 90%").len(), 1);

    *sources.pools.lock().unwrap() = vec![pool(3, 1)];
    tokio::time::sleep(3 * second).await;
    assert_eq!(log.matching("budget recovered: pool_usage").len(), 1);
    assert_eq!(gauge(&observer.render_metrics(), "pool_usage"), "0");

    // Fast queries only: the slow seconds leave the 30 s window.
    let fast = Event::read("db", "select $1", "select 1", Duration::from_millis(2));
    for _ in 0..35 {
        fast.record(&observer);
        tokio::time::sleep(second).await;
    }
    assert_eq!(log.matching("budget recovered: p95_query_time").len(), 1);
    assert_eq!(gauge(&observer.render_metrics(), "p95_query_time"), "0");
    // Exactly one line per transition, whatever the number of checks.
    assert_eq!(log.matching("budget ").len(), 4, "{:#?}", log.lines());
    for line in log.matching("budget ") {
        assert!(line.contains("WARN"), "{line}");
    }
}
