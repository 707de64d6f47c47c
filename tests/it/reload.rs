//! Hot reload: SIGHUP under pgbench load (ten reloads, no failed
//! transaction), an invalid file refused with a log line while the running
//! config stays, and the console's RELOAD applying users, replicas and pool
//! size to a proxy whose clients stay connected.

use std::path::Path;
use std::time::Duration;

use pgsidecar::config::Config;
use pgsidecar::proxy::Proxy;

use crate::harness::{self, APP, PW_USER};
use crate::running;

async fn pgbench(port: u16, db: &str, args: &[&str]) -> std::process::Output {
    harness::pg_tool("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP.name])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", APP.password.unwrap())
        .output()
        .await
        .expect("running pgbench")
}

fn failed_transactions(report: &str) -> Option<u64> {
    let line = report
        .lines()
        .find(|l| l.starts_with("number of failed transactions:"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

fn processed(report: &str) -> Option<u64> {
    let line = report
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed:"))?;
    line.split_whitespace()
        .nth(5)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn sighup_reloads_under_pgbench_without_failing_a_transaction() {
    let db = harness::fresh_db("reload_bench");
    let primary = harness::cluster().primary().port();
    let init = pgbench(primary, &db, &["-i", "-q", "-s", "1"]).await;
    assert!(init.status.success(), "{init:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let files = [
        "[pool]\nsize = 4\ncheckout_timeout = \"20s\"\n[routing]\nmax_replica_lag = \"1s\"\n",
        "[pool]\nsize = 6\ncheckout_timeout = \"20s\"\n[routing]\nmax_replica_lag = \"2s\"\n",
    ];
    std::fs::write(&path, running::config_text(None, files[0])).unwrap();
    let proxy = running::start(&path).await;

    let bench = tokio::spawn({
        let db = db.clone();
        let port = proxy.port;
        async move { pgbench(port, &db, &["-n", "-c", "4", "-j", "2", "-T", "12"]).await }
    });
    for i in 1..=10 {
        std::fs::write(&path, running::config_text(None, files[i % 2])).unwrap();
        proxy.signal(libc::SIGHUP);
        harness::eventually(
            "the reload to be applied",
            Duration::from_secs(20),
            || async {
                let done = proxy
                    .log()
                    .iter()
                    .filter(|l| l.contains("config reloaded"))
                    .count();
                (done >= i).then_some(())
            },
        )
        .await;
    }
    let metrics = proxy.http_get("/metrics").await;
    assert!(
        metrics.contains("pgsidecar_config_reloads_total{result=\"ok\"} 10"),
        "{metrics}"
    );

    let out = bench.await.unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(failed_transactions(&report), Some(0), "{report}");
    assert!(processed(&report).unwrap_or(0) > 0, "{report}");

    // A broken file: refused, logged with the reason, nothing changes.
    std::fs::write(
        &path,
        running::config_text(None, "[pool]\nsize = \"many\"\n"),
    )
    .unwrap();
    proxy.signal(libc::SIGHUP);
    let line = proxy
        .wait_for_log(&["config reload refused", "pool size must be an integer"])
        .await;
    assert!(line.contains("the running config stays"), "{line}");
    let metrics = proxy.http_get("/metrics").await;
    assert!(
        metrics.contains("pgsidecar_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    let out = harness::psql(
        proxy.port,
        APP,
        &db,
        &["-Atc", "SELECT count(*) FROM pgbench_branches"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n", "{out:?}");
}

fn write_config(path: &Path, extra: &str) -> Config {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nusers = [\"app\"]\n{extra}"
    );
    std::fs::write(path, &text).unwrap();
    Config::from_toml(&text, path).unwrap()
}

#[tokio::test]
async fn console_reload_applies_users_replicas_and_pool_size_keeping_clients() {
    let db = harness::fresh_db("reload_console");
    let cluster = harness::cluster();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let users = |list: &[harness::TestRole]| {
        list.iter()
            .map(|r| {
                format!(
                    "[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
                    r.name,
                    r.password.unwrap()
                )
            })
            .collect::<String>()
    };
    let primary = cluster.primary().addr();
    let replica = cluster.replica(0).addr();
    let config = write_config(
        &path,
        &format!(
            "[cluster]\nprimary = \"{primary}\"\nstate_file = \"\"\n[pool]\nsize = 2\n{}",
            users(&[APP])
        ),
    );
    let proxy = Proxy::start(config).await.unwrap();
    let _ = proxy.shared.config_path.set(path.clone());
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    assert_eq!(
        harness::scalar(&client, "SELECT 1")
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );
    assert!(harness::connect_proxy(&proxy, PW_USER, &db).await.is_err());

    write_config(
        &path,
        &format!(
            "[cluster]\nprimary = \"{primary}\"\nreplicas = [\"{replica}\"]\nstate_file = \"\"\n\
             [pool]\nsize = 7\n[routing]\nmax_replica_lag = \"30s\"\n{}",
            users(&[APP, PW_USER])
        ),
    );
    let out = harness::psql(proxy.addr.port(), APP, "pgsidecar", &["-Atc", "RELOAD"]).await;
    assert!(out.status.success(), "{out:?}");
    let config = proxy.shared.config.load();
    assert_eq!(config.pool.effective_size(), 7);
    assert_eq!(config.routing.max_replica_lag, Duration::from_secs(30));
    // The client connected before the reload carries on.
    assert_eq!(
        harness::scalar(&client, "SELECT 2")
            .await
            .unwrap()
            .as_deref(),
        Some("2")
    );
    // The new user may log in; reads can now go to the new replica.
    let pw = harness::connect_proxy(&proxy, PW_USER, &db).await.unwrap();
    assert_eq!(
        harness::scalar(&pw, "SELECT current_user")
            .await
            .unwrap()
            .as_deref(),
        Some("pwuser")
    );
    harness::eventually(
        "a read on the added replica",
        Duration::from_secs(20),
        || async {
            let r = harness::scalar(
                &client,
                "/* pgsidecar:replica */ SELECT pg_is_in_recovery()",
            )
            .await
            .ok()?;
            (r.as_deref() == Some("t")).then_some(())
        },
    )
    .await;

    // An invalid file: RELOAD fails naming the problem, nothing changes.
    std::fs::write(&path, "[pool]\nsize = 0\n").unwrap();
    let out = harness::psql(proxy.addr.port(), APP, "pgsidecar", &["-Atc", "RELOAD"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("reload refused") && stderr.contains("pool size"),
        "{stderr}"
    );
    assert_eq!(proxy.shared.config.load().pool.effective_size(), 7);
    assert_eq!(
        harness::scalar(&client, "SELECT 3")
            .await
            .unwrap()
            .as_deref(),
        Some("3")
    );
}
