//! `pgbench -M prepared` through pgsidecar in transaction mode with fewer
//! servers than clients (`[pool] size = 2`): the select-only script and the
//! TPC-B-like script, every statement a named prepared statement that each
//! pgbench connection prepares once; no transaction fails.

use crate::harness::{self, APP};

async fn pgbench(proxy: &pgsidecar::proxy::Proxy, db: &str, args: &[&str]) -> String {
    let out = harness::pg_tool("pgbench")
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args(["-U", APP.name])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", APP.password.unwrap())
        .output()
        .await
        .expect("running pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// The number after `label` on its line of pgbench's report.
fn report_number(report: &str, label: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with(label))?;
    let digits: String = line[label.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn prepared_run(prefix: &str, args: &[&str]) -> String {
    let db = harness::fresh_db(prefix);
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    pgbench(&proxy, &db, &["-i", "-q"]).await;
    let report = pgbench(&proxy, &db, args).await;
    assert!(
        report.contains("query mode: prepared"),
        "not prepared mode:\n{report}"
    );
    assert!(
        report_number(&report, "number of transactions actually processed:").is_some_and(|n| n > 0),
        "{report}"
    );
    if report.contains("number of failed transactions:") {
        assert_eq!(
            report_number(&report, "number of failed transactions:"),
            Some(0),
            "{report}"
        );
    }
    assert!(!report.contains("aborted"), "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_select_only_20_clients() {
    prepared_run(
        "drivers_pgbench_s",
        &["-M", "prepared", "-S", "-c", "20", "-j", "2", "-T", "5"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_tpcb_20_clients() {
    let report = prepared_run(
        "drivers_pgbench_b",
        &["-M", "prepared", "-c", "20", "-j", "2", "-t", "50"],
    )
    .await;
    assert_eq!(
        report_number(&report, "number of transactions actually processed:"),
        Some(1000),
        "{report}"
    );
}
