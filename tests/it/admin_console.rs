//! The admin console (database `pgsidecar`) through the real psql: the
//! SHOW commands describe a live proxy, non-admins are refused with 28000,
//! PAUSE holds new transactions until RESUME, and RELOAD applies a changed
//! file or refuses an invalid one, keeping the running config.

use std::time::Duration;

use pgsidecar::config::Config;
use pgsidecar::proxy::Proxy;

use crate::harness::{self, APP, MD5_USER, console};
use crate::observe_e2e_support::{primary_addr, replica_addr, scrape};

/// `[admin] users` of these tests: `app` may open the console.
const ADMIN: &str = "[admin]\nusers = [\"app\"]\n";

fn find<'a>(
    rows: &'a [std::collections::BTreeMap<String, String>],
    column: &str,
    value: &str,
) -> &'a std::collections::BTreeMap<String, String> {
    rows.iter()
        .find(|r| r.get(column).map(String::as_str) == Some(value))
        .unwrap_or_else(|| panic!("no row with {column} = {value} in {rows:#?}"))
}

#[tokio::test]
async fn show_commands_describe_the_running_proxy() {
    let db = harness::fresh_db("console_show");
    let proxy = harness::proxy(&format!(
        "{ADMIN}[cluster]\nreplicas = [\"{}\"]\n[observability]\nexplain = \"off\"",
        replica_addr()
    ))
    .await;
    let client = harness::connect(&format!(
        "{} application_name=console-test",
        harness::proxy_conn_string(&proxy, APP, &db)
    ))
    .await
    .unwrap();
    // Four transactions on the primary (writes keep them there).
    for _ in 0..4 {
        harness::scalar(&client, "select txid_current()")
            .await
            .unwrap();
    }

    let (primary, replica) = (primary_addr(), replica_addr());
    let nodes = harness::eventually(
        "SHOW NODES to see both nodes healthy",
        Duration::from_secs(15),
        || async {
            let rows = console(&proxy, APP, "SHOW NODES").await.rows();
            rows.iter().all(|r| r["healthy"] == "true").then_some(rows)
        },
    )
    .await;
    assert_eq!(nodes.len(), 2, "{nodes:#?}");
    assert_eq!(find(&nodes, "node", &primary)["role"], "primary");
    let r = find(&nodes, "node", &replica);
    assert_eq!(r["role"], "replica");
    assert!(r["lag_seconds"].parse::<f64>().is_ok(), "{r:?}");

    let pools = console(&proxy, APP, "SHOW POOLS").await.rows();
    let pool = find(&pools, "node", &primary);
    assert_eq!(pool["database"], db);
    assert_eq!(pool["user"], "app");
    assert_eq!(pool["role"], "primary");
    assert_eq!(pool["pool_mode"], "transaction");
    assert_eq!(pool["pool_size"], "9");
    assert_eq!(pool["sv_idle"], "1", "{pool:?}");

    let clients = console(&proxy, APP, "show clients;").await.rows();
    assert_eq!(
        clients.len(),
        1,
        "the console's own psql is not a client: {clients:#?}"
    );
    let c = &clients[0];
    assert_eq!(c["application_name"], "console-test");
    assert_eq!(
        (c["user"].as_str(), c["database"].as_str()),
        ("app", db.as_str())
    );
    assert_eq!(c["state"], "idle");
    assert_eq!(c["addr"], "127.0.0.1");

    let servers = console(&proxy, APP, "SHOW SERVERS").await.rows();
    let s = find(&servers, "port", primary.rsplit(':').next().unwrap());
    assert_eq!(
        (s["user"].as_str(), s["database"].as_str()),
        ("app", db.as_str())
    );
    assert_eq!(s["state"], "idle");
    assert!(s["remote_pid"].parse::<i32>().unwrap() > 0, "{s:?}");

    let stats = console(&proxy, APP, "SHOW STATS").await.rows();
    assert_eq!(stats.len(), 1, "{stats:#?}");
    assert_eq!(stats[0]["total_query_count"], "4", "{stats:#?}");
    assert_eq!(stats[0]["total_xact_count"], "4", "{stats:#?}");
    assert_eq!(stats[0]["primary_query_count"], "4", "{stats:#?}");
    assert_eq!(stats[0]["total_errors"], "0", "{stats:#?}");

    let config = console(&proxy, APP, "SHOW CONFIG").await;
    assert!(!config.stdout.contains("app-secret"), "{}", config.stdout);
    let rows = config.rows();
    let pw = find(&rows, "key", "users[0].password");
    assert_eq!(pw["value"], "********");
    assert_eq!(find(&rows, "key", "admin.users")["value"], "[\"app\"]");
    assert_eq!(
        find(&rows, "key", "observability.slow_query_threshold")["value"],
        "200ms"
    );

    let help = console(&proxy, APP, "SHOW HELP").await.rows();
    for command in ["SHOW POOLS", "SHOW QUERIES", "RELOAD", "PAUSE", "RESUME"] {
        find(&help, "command", command);
    }
    let unknown = console(&proxy, APP, "SHOW EVERYTHING").await;
    assert!(!unknown.ok);
    assert!(
        unknown.stderr.contains("unknown pgsidecar console command"),
        "{}",
        unknown.stderr
    );
}

#[tokio::test]
async fn non_admins_are_refused_with_28000() {
    let proxy = harness::proxy(ADMIN).await;
    let refused = console(&proxy, MD5_USER, "SHOW POOLS").await;
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("role \"md5user\" may not open the pgsidecar console"),
        "{}",
        refused.stderr
    );
    let err = harness::connect_proxy(&proxy, MD5_USER, pgsidecar::admin::DATABASE)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("28000"),
        "{err}"
    );
    // Without [admin] users nobody may.
    let closed = harness::proxy("").await;
    let refused = console(&closed, APP, "SHOW POOLS").await;
    assert!(
        refused
            .stderr
            .contains("may not open the pgsidecar console")
    );
}

#[tokio::test]
async fn pause_holds_new_transactions_until_resume() {
    let db = harness::fresh_db("console_pause");
    let proxy = harness::proxy(ADMIN).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    harness::scalar(&client, "select 1").await.unwrap();

    let paused = console(&proxy, APP, "PAUSE").await;
    assert!(paused.ok, "{}", paused.stderr);
    let held = tokio::spawn(async move { harness::scalar(&client, "select 42").await });
    // The client is seen waiting, and its query has not completed.
    harness::eventually("the client to wait", Duration::from_secs(5), || async {
        let rows = console(&proxy, APP, "SHOW CLIENTS").await.rows();
        (rows.len() == 1 && rows[0]["state"] == "waiting").then_some(())
    })
    .await;
    assert!(!held.is_finished(), "a transaction ran while paused");

    let resumed = console(&proxy, APP, "RESUME").await;
    assert!(resumed.ok, "{}", resumed.stderr);
    let answer = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held query completes after RESUME")
        .unwrap()
        .unwrap();
    assert_eq!(answer.as_deref(), Some("42"));
}

/// A proxy started from a config file (so RELOAD re-reads it).
async fn proxy_from_file(dir: &tempfile::TempDir, extra_toml: &str) -> (Proxy, std::path::PathBuf) {
    let path = dir.path().join("pgsidecar.toml");
    std::fs::write(&path, harness::proxy_config_text(extra_toml)).unwrap();
    let proxy = Proxy::start(Config::load(&path).unwrap()).await.unwrap();
    proxy.shared.config_path.set(path.clone()).unwrap();
    (proxy, path)
}

fn threshold(rows: &[std::collections::BTreeMap<String, String>]) -> String {
    find(rows, "key", "observability.slow_query_threshold")["value"].clone()
}

#[tokio::test]
async fn reload_applies_a_changed_file_and_refuses_an_invalid_one() {
    let db = harness::fresh_db("console_reload");
    let dir = tempfile::tempdir().unwrap();
    let (proxy, path) = proxy_from_file(
        &dir,
        &format!("{ADMIN}[observability]\nexplain = \"off\"\nslow_query_threshold = \"1h\""),
    )
    .await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    harness::scalar(&client, "select pg_sleep(0.15)")
        .await
        .unwrap();
    assert_eq!(
        scrape(&proxy)
            .await
            .value("pgsidecar_slow_queries_total", &[]),
        0.0
    );

    std::fs::write(
        &path,
        harness::proxy_config_text(&format!(
            "{ADMIN}[observability]\nexplain = \"off\"\nslow_query_threshold = \"100ms\""
        )),
    )
    .unwrap();
    let reload = console(&proxy, APP, "RELOAD").await;
    assert!(reload.ok, "{}", reload.stderr);
    assert_eq!(
        threshold(&console(&proxy, APP, "SHOW CONFIG").await.rows()),
        "100ms"
    );
    // The new threshold applies to the very next query.
    harness::scalar(&client, "select pg_sleep(0.15)")
        .await
        .unwrap();
    let s = scrape(&proxy).await;
    assert_eq!(s.value("pgsidecar_slow_queries_total", &[]), 1.0);
    assert_eq!(
        s.value("pgsidecar_config_reloads_total", &[("result", "ok")]),
        1.0
    );

    std::fs::write(
        &path,
        harness::proxy_config_text(&format!(
            "{ADMIN}[observability]\nslow_query_threshold = \"soon\""
        )),
    )
    .unwrap();
    let refused = console(&proxy, APP, "RELOAD").await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("reload refused"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("slow_query_threshold"),
        "the message names the key: {}",
        refused.stderr
    );
    assert_eq!(
        threshold(&console(&proxy, APP, "SHOW CONFIG").await.rows()),
        "100ms"
    );
    let s = scrape(&proxy).await;
    assert_eq!(
        s.value("pgsidecar_config_reloads_total", &[("result", "error")]),
        1.0
    );
    // Clients carry on.
    assert_eq!(
        harness::scalar(&client, "select 7")
            .await
            .unwrap()
            .as_deref(),
        Some("7")
    );
}

#[tokio::test]
async fn show_stats_counts_every_query_even_forgotten_fingerprints() {
    let db = harness::fresh_db("console_stats");
    // One fingerprint kept at most: the digests forget, the totals do not.
    let proxy = harness::proxy(&format!(
        "{ADMIN}[observability]\nexplain = \"off\"\nmax_fingerprints = 1"
    ))
    .await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    for sql in ["select 1", "select 1, 2", "select 1, 2, 3"] {
        client.simple_query(sql).await.unwrap();
    }
    client.simple_query("select 1/0").await.unwrap_err();

    let queries = console(&proxy, APP, "SHOW QUERIES").await.rows();
    assert_eq!(queries.len(), 1, "{queries:#?}");
    let stats = console(&proxy, APP, "SHOW STATS").await.rows();
    let s = &stats[0];
    assert_eq!(s["total_query_count"], "4", "{s:?}");
    assert_eq!(s["total_xact_count"], "4", "{s:?}");
    assert_eq!(s["total_errors"], "1", "{s:?}");
    assert_eq!(s["primary_query_count"], "4", "{s:?}");
    assert_eq!(s["replica_query_count"], "0", "{s:?}");
    let total: u64 = s["total_query_time"].parse().unwrap();
    let avg: u64 = s["avg_query_time"].parse().unwrap();
    assert!(total > 0 && avg == total / 4, "{s:?}");
}

#[tokio::test]
async fn reload_works_in_pgsidecar_run() {
    let db = harness::fresh_db("console_run_reload");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let config = |threshold: &str| {
        harness::proxy_config_text(&format!(
            "{ADMIN}[observability]\nlog_format = \"json\"\nslow_query_threshold = \"{threshold}\""
        ))
    };
    std::fs::write(&path, config("1s")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("PGSIDECAR_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let port = crate::observe_e2e_support::listening_port(&mut child).await;

    std::fs::write(&path, config("250ms")).unwrap();
    let out = harness::psql(port, APP, "pgsidecar", &["-c", "RELOAD"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = harness::psql(port, APP, "pgsidecar", &["--csv", "-c", "SHOW CONFIG"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l == "observability.slow_query_threshold,250ms"),
        "{text}"
    );
    let out = harness::psql(port, APP, &db, &["-c", "select 1"]).await;
    assert!(out.status.success(), "{out:?}");
    child.kill().await.unwrap();
}
