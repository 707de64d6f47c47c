//! The slow-query log and the plan that follows it: one line per slow
//! query with the normalised text only (never a literal), the plan
//! summary within seconds, JSON lines that parse, and the rate limit with
//! its summary line.

use std::time::Duration;

use crate::harness;
use crate::observe_support::{Event, capture, observer, plan_of};

/// A parameter value that must never reach the log.
const SECRET_VALUE: &str = "0.0123";

#[tokio::test]
async fn a_slow_query_is_logged_once_without_literals_then_explained() {
    let db = harness::fresh_db("observe_slow");
    let (observer, _) = observer("[observability]\nslow_query_threshold = \"100ms\"");
    let (log, _guard) = capture(false);
    let _background = observer.spawn_background();

    let mut ev = Event::read(
        &db,
        "select pg_sleep($1)",
        "select pg_sleep($1)",
        Duration::from_millis(300),
    );
    ev.params = Some(vec![Some(SECRET_VALUE.into())]);
    ev.record(&observer);
    // A fast one is not logged.
    let mut fast = ev.clone();
    fast.duration = Duration::from_millis(5);
    fast.record(&observer);

    let slow_lines = log.matching("slow_query");
    assert_eq!(slow_lines.len(), 1, "{:#?}", log.lines());
    let line = &slow_lines[0];
    for needle in [
        "select pg_sleep($1)",
        "duration_ms=300",
        "role=\"primary\"",
        "user=\"app\"",
        &format!("database=\"{db}\""),
        "application_name=\"observe-test\"",
        &format!("fingerprint={:016x}", ev.fingerprint()),
    ] {
        assert!(line.contains(needle), "{needle} missing from {line}");
    }
    assert!(!line.contains(SECRET_VALUE), "a literal leaked: {line}");

    let plan = plan_of(&observer, &ev).await;
    assert_eq!(plan.summary.top_node, "Result");
    assert!(!plan.generic, "the captured value was used");
    let explain_lines = harness::eventually("the plan log line", Duration::from_secs(30), || {
        let lines = log.matching("plan: Result");
        async move { (!lines.is_empty()).then_some(lines) }
    })
    .await;
    assert_eq!(explain_lines.len(), 1, "{explain_lines:#?}");
    assert!(explain_lines[0].contains("explain"), "{}", explain_lines[0]);
    for line in log.lines() {
        assert!(!line.contains(SECRET_VALUE), "a literal leaked: {line}");
    }
    let metrics = observer.render_metrics();
    assert!(
        metrics.contains("pgsidecar_slow_queries_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgsidecar_explain_samples_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn json_log_lines_parse_with_every_field() {
    let (observer, _) = observer(
        "[observability]\nslow_query_threshold = \"10ms\"\nexplain = \"off\"\nlog_format = \"json\"",
    );
    let (log, _guard) = capture(true);
    let ev = Event::read(
        "some_db",
        "select * from t where a = $1",
        "select * from t where a = 'x'",
        Duration::from_millis(20),
    );
    ev.record(&observer);
    let lines = log.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(v["target"], "slow_query");
    assert_eq!(v["level"], "WARN");
    let f = &v["fields"];
    assert_eq!(f["query"], "select * from t where a = $1");
    assert_eq!(f["fingerprint"], format!("{:016x}", ev.fingerprint()));
    assert_eq!(f["duration_ms"], 20.0);
    assert_eq!(f["node"], harness::cluster().primary().addr());
    assert_eq!(f["role"], "primary");
    assert_eq!(f["user"], "app");
    assert_eq!(f["database"], "some_db");
    assert_eq!(f["application_name"], "observe-test");
    assert!(!lines[0].contains("'x'"), "{}", lines[0]);
}

#[tokio::test(start_paused = true)]
async fn slow_lines_are_rate_limited_and_summarised() {
    let (observer, _) = observer(
        "[observability]\nslow_query_threshold = \"10ms\"\nexplain = \"off\"\nslow_query_log_rate = 3",
    );
    let (log, _guard) = capture(false);
    let _background = observer.spawn_background();
    let ev = Event::read("db", "select $1", "select 1", Duration::from_millis(50));
    for _ in 0..50 {
        ev.record(&observer);
    }
    assert_eq!(log.matching("slow query").len(), 3);
    // The summary comes with the 10th tick of the (paused) clock.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let summary = log.matching("suppressed 47 slow-query lines in the last 10s");
    assert_eq!(summary.len(), 1, "{:#?}", log.lines());
    let metrics = observer.render_metrics();
    assert!(
        metrics.contains("pgsidecar_slow_queries_total 50\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgsidecar_slow_query_log_suppressed_total 47\n"),
        "{metrics}"
    );
}
