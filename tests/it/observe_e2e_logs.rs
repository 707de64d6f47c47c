//! What an operator reads about slow queries from a running proxy: one
//! slow-query line without literals and a plan summary within seconds
//! (text log of an in-process proxy), the same line as parseable JSON
//! from `pgsidecar run` with `log_format = "json"`, and a sequential scan
//! of a large unindexed table named in `/queries` and `SHOW QUERIES`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::{self, APP, console};
use crate::observe_e2e_support::scrape;
use crate::observe_support::{capture, get};

/// A literal that must never reach a log line.
const SECRET: &str = "sekrit-literal";

#[tokio::test]
async fn a_slow_query_is_logged_once_without_literals_then_its_plan() {
    let db = harness::fresh_db("obs_e2e_slow");
    let (log, _guard) = capture(false);
    let proxy = harness::proxy("[observability]\nslow_query_threshold = \"200ms\"").await;
    let client = harness::connect(&format!(
        "{} application_name=slow-e2e",
        harness::proxy_conn_string(&proxy, APP, &db)
    ))
    .await
    .unwrap();
    client
        .simple_query(&format!("select pg_sleep(0.3), '{SECRET}'"))
        .await
        .unwrap();
    // A fast query is not logged.
    client.simple_query("select 1").await.unwrap();

    // Generous: the sampler logs into the node on its own connection, slow
    // on a loaded machine; the point is that the plan comes at all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let plan = loop {
        if let Some(line) = log.matching("plan: ").into_iter().next() {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no plan line within 30 s of the slow query; the log:\n{:#?}",
            log.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let slow = log.matching("slow query");
    assert_eq!(slow.len(), 1, "{:#?}", log.lines());
    let line = &slow[0];
    for needle in [
        "slow_query",
        "query=select pg_sleep($1), $2",
        "user=\"app\"",
        &format!("database=\"{db}\""),
        "application_name=\"slow-e2e\"",
        &format!("node={}", harness::cluster().primary().addr()),
        "role=\"primary\"",
        "duration_ms=",
        "fingerprint=",
    ] {
        assert!(line.contains(needle), "{needle} missing from {line}");
    }
    let ms: f64 = line
        .split("duration_ms=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(ms >= 300.0, "{line}");
    assert!(plan.contains("explain"), "{plan}");
    assert!(plan.contains("plan: Result"), "{plan}");
    assert!(plan.contains("select pg_sleep($1), $2"), "{plan}");
    for line in log.lines() {
        assert!(!line.contains(SECRET), "a literal leaked: {line}");
        assert!(!line.contains("pg_sleep(0.3"), "a literal leaked: {line}");
    }
    let s = scrape(&proxy).await;
    assert_eq!(s.value("pgsidecar_slow_queries_total", &[]), 1.0);
    assert_eq!(s.value("pgsidecar_explain_samples_total", &[]), 1.0);
}

#[tokio::test]
async fn json_log_lines_of_pgsidecar_run_parse_with_the_slow_query_fields() {
    let db = harness::fresh_db("obs_e2e_json");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(
        &path,
        harness::proxy_config_text(
            "[observability]\nlog_format = \"json\"\nslow_query_threshold = \"100ms\"\n\
             explain = \"off\"",
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("PGSIDECAR_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_json = async move || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a log line within 30 s")
            .unwrap()
            .expect("pgsidecar run is still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    // Every line is JSON; the listening line says where (port 0 was asked for).
    let port = loop {
        let v = next_json().await;
        if v["fields"]["message"] == "pgsidecar listening" {
            let addr = v["fields"]["addr"].as_str().unwrap().to_string();
            break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        }
    };
    let out = harness::psql(
        port,
        APP,
        &db,
        &["-At", "-c", &format!("select pg_sleep(0.15), '{SECRET}'")],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let slow = loop {
        let v = next_json().await;
        if v["target"] == "slow_query" {
            break v;
        }
    };
    assert_eq!(slow["level"], "WARN");
    let f = &slow["fields"];
    assert_eq!(f["message"], "slow query");
    assert_eq!(f["query"], "select pg_sleep($1), $2");
    assert_eq!(f["fingerprint"].as_str().unwrap().len(), 16, "{slow}");
    assert!(f["duration_ms"].as_f64().unwrap() >= 150.0, "{slow}");
    assert_eq!(f["node"], harness::cluster().primary().addr());
    assert_eq!(f["role"], "primary");
    assert_eq!(f["user"], "app");
    assert_eq!(f["database"], db.as_str());
    assert_eq!(f["application_name"], "psql");
    assert_eq!(f["rows"], 1);
    assert!(!slow.to_string().contains(SECRET), "{slow}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_seq_scan_of_a_big_table_shows_in_queries_and_the_console() {
    let db = harness::big_table_db();
    let proxy = harness::proxy(
        "[admin]\nusers = [\"app\"]\n[observability]\nslow_query_threshold = \"10ms\"",
    )
    .await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let messages = client
        .simple_query("select * from big where t = 'no such value'")
        .await
        .unwrap();
    assert!(
        !messages
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
        "no row matches"
    );

    let report = harness::eventually("a plan in /queries", Duration::from_secs(30), || async {
        let (status, body) = get(proxy.http_addr, "/queries?order=total&limit=5").await;
        assert_eq!(status, 200, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (!report["queries"][0]["plan"].is_null()).then_some(report)
    })
    .await;
    let q = &report["queries"][0];
    assert_eq!(q["query"], "select * from big where t = $1");
    assert_eq!(q["calls"], 1);
    assert_eq!(q["routes"]["primary"], 1);
    let plan = &q["plan"];
    assert_eq!(plan["seq_scans"][0]["relation"], "big", "{plan}");
    let summary = plan["summary"].as_str().unwrap();
    assert!(summary.contains("big"), "{summary}");
    assert!(plan["json"].to_string().contains("\"Seq Scan\""), "{plan}");
    assert!(!report.to_string().contains("no such value"), "{report}");

    let rows = console(&proxy, APP, "SHOW QUERIES").await.rows();
    let row = rows
        .iter()
        .find(|r| r["query"] == "select * from big where t = $1")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(row["calls"], "1");
    assert!(row["plan"].contains("Seq Scan on big"), "{row:?}");
    assert_eq!(row["fingerprint"], q["fingerprint"].as_str().unwrap());
}

#[tokio::test]
async fn with_observability_disabled_only_the_metrics_remain() {
    let db = harness::fresh_db("obs_e2e_disabled");
    let (log, _guard) = capture(false);
    let proxy =
        harness::proxy("[observability]\nenabled = false\nslow_query_threshold = \"100ms\"").await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    harness::scalar(&client, "select pg_sleep(0.2)")
        .await
        .unwrap();

    let s = scrape(&proxy).await;
    assert_eq!(s.sum("pgsidecar_queries_total"), 1.0, "still counted");
    assert_eq!(s.sum("pgsidecar_query_duration_seconds_count"), 1.0);
    assert_eq!(s.value("pgsidecar_slow_queries_total", &[]), 0.0);
    assert_eq!(s.value("pgsidecar_explain_samples_total", &[]), 0.0);
    let (_, body) = get(proxy.http_addr, "/queries").await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["queries"], serde_json::json!([]), "{report}");
    assert!(log.matching("slow query").is_empty(), "{:#?}", log.lines());
    assert!(log.matching("plan: ").is_empty(), "{:#?}", log.lines());
}
