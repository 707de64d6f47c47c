//! The HTTP endpoints of a standalone observer on a free port: /metrics
//! is valid Prometheus text naming every contract metric, /healthz is up,
//! /readyz follows the primary, /queries answers JSON, and mistakes get
//! 404/400/405 with a reason.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pgsidecar::cluster::ClusterView;
use pgsidecar::observe::METRIC_NAMES;

use crate::harness;
use crate::observe_support::{Event, get, http, observer};

/// The contract metrics (docs/metrics.md), by name: the first sixteen of
/// `METRIC_NAMES`.
const CONTRACT: [&str; 16] = [
    "client_connections",
    "server_connections",
    "pool_size",
    "pool_wait_seconds",
    "queries_total",
    "query_duration_seconds",
    "transactions_total",
    "routing_decisions_total",
    "read_your_writes_total",
    "replica_lag_seconds",
    "replica_lag_bytes",
    "node_up",
    "slow_queries_total",
    "explain_samples_total",
    "errors_total",
    "config_reloads_total",
];

/// Checks every line is a comment, blank, or `name{labels} value`.
fn check_exposition(text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let kind = words.next().unwrap_or("");
            let name = words.next().unwrap_or("");
            assert!(kind == "HELP" || kind == "TYPE", "bad comment: {line}");
            assert!(name.starts_with("pgsidecar_"), "unprefixed: {line}");
            if kind == "TYPE" {
                let t = words.next().unwrap_or("");
                assert!(["counter", "gauge", "histogram"].contains(&t), "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value: {line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("pgsidecar_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line}"
            );
        }
    }
}

#[tokio::test]
async fn endpoints_on_a_free_port() {
    let (observer, sources) = observer("");
    let server = observer.serve_http().await.expect("HTTP starts");
    let addr = server.addr;
    assert_ne!(addr.port(), 0, "the bound port is returned");

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "no primary yet: {body}");
    assert!(body.contains("primary"), "{body}");
    sources.ready.store(true, Ordering::SeqCst);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    check_exposition(&metrics);
    for name in CONTRACT {
        let full = format!("pgsidecar_{name}");
        assert!(METRIC_NAMES.contains(&full.as_str()), "{full}");
        assert!(
            metrics.contains(&format!("# TYPE {full} ")),
            "{full}:\n{metrics}"
        );
    }
    for name in METRIC_NAMES {
        assert!(metrics.contains(&format!("# TYPE {name} ")), "{name}");
    }

    let (status, body) = get(addr, "/nothing-here").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(addr, "/queries?order=slowest").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("order must be total, mean, p95 or calls"),
        "{body}"
    );
    let (status, body) = get(addr, "/queries?limit=0").await;
    assert_eq!(status, 400);
    assert!(body.contains("limit"), "{body}");
    let (status, _) = http(addr, "POST", "/metrics").await.unwrap();
    assert_eq!(status, 405);

    server.stop().await;
    assert!(
        http(addr, "GET", "/healthz").await.is_err(),
        "stopped servers refuse connections"
    );
}

#[tokio::test]
async fn readyz_follows_a_real_cluster_view() {
    let (observer, sources) = observer("");
    let server = observer.serve_http().await.unwrap();
    assert_eq!(get(server.addr, "/readyz").await.0, 503);

    let config = pgsidecar::config::handle(harness::proxy_config(""));
    let view = ClusterView::new(&config.load());
    let monitor = view.spawn_monitor(config);
    *sources.view.lock().unwrap() = Some(view);
    harness::eventually("/readyz to say ready", Duration::from_secs(10), || async {
        (get(server.addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (_, metrics) = get(server.addr, "/metrics").await;
    let primary = harness::cluster().primary().addr();
    assert!(
        metrics.contains(&format!(
            "pgsidecar_node_up{{node=\"{primary}\",role=\"primary\"}} 1"
        )),
        "{metrics}"
    );
    monitor.abort();
}

#[tokio::test]
async fn queries_reports_recorded_fingerprints_in_order() {
    let (observer, _) = observer("[observability]\nexplain = \"off\"");
    let server = observer.serve_http().await.unwrap();
    let ms = Duration::from_millis;
    let many = Event::read("db", "select $1", "select 1", ms(1));
    let slow = Event::read("db", "select pg_sleep($1)", "select pg_sleep(1)", ms(150));
    for _ in 0..10 {
        many.record(&observer);
    }
    slow.record(&observer);

    let (status, body) = get(server.addr, "/queries?order=calls").await;
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let queries = report["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 2);
    assert_eq!(queries[0]["query"], "select $1");
    assert_eq!(queries[0]["calls"], 10);
    assert_eq!(queries[0]["routes"]["primary"], 10);

    let (_, body) = get(server.addr, "/queries?order=mean&limit=1").await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let top = &report["queries"][0];
    assert_eq!(report["queries"].as_array().unwrap().len(), 1);
    assert_eq!(top["query"], "select pg_sleep($1)");
    let p95 = top["p95_ms"].as_f64().unwrap();
    assert!((148.0..=152.0).contains(&p95), "{top}");
    assert!(
        !body.contains("pg_sleep(1)"),
        "no literal text is kept: {body}"
    );
}
