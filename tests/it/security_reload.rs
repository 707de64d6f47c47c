//! A reload cannot make SHOW CONFIG lie: keys read only at start (the
//! listen addresses, worker threads, log format, read-only functions) keep
//! the value in force, the reload warns that they need a restart, and
//! SHOW CONFIG shows the addresses the proxy really listens on.

use std::collections::BTreeMap;

use crate::harness::{self, APP, console};

fn value(rows: &[BTreeMap<String, String>], key: &str) -> String {
    rows.iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {rows:#?}"))["value"]
        .clone()
}

#[tokio::test]
async fn a_reload_that_changes_start_only_keys_keeps_and_shows_what_is_in_force() {
    let db = harness::fresh_db("sec_reload_listen");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsidecar.toml");
    let admin = "[admin]\nusers = [\"app\"]\n";
    std::fs::write(&path, harness::proxy_config_text(admin)).unwrap();
    let proxy = pgsidecar::proxy::Proxy::start(pgsidecar::config::Config::load(&path).unwrap())
        .await
        .unwrap();
    let _ = proxy.shared.config_path.set(path.clone());

    let rows = console(&proxy, APP, "SHOW CONFIG").await.rows();
    assert_eq!(value(&rows, "proxy.listen"), proxy.addr.to_string());
    assert_eq!(value(&rows, "http.listen"), proxy.http_addr.to_string());

    // The file now asks for other addresses and thread count.
    let changed = harness::proxy_config_text(&format!(
        "{admin}[proxy]\nlisten = \"127.0.0.1:1\"\nworker_threads = 3\n\
         [http]\nlisten = \"127.0.0.1:2\"\n[pool]\nsize = 7\n"
    ));
    std::fs::write(&path, changed).unwrap();
    let reload = console(&proxy, APP, "RELOAD").await;
    assert!(reload.ok, "{}", reload.stderr);
    for key in ["proxy.listen", "http.listen", "proxy.worker_threads"] {
        assert!(
            reload.stderr.contains("WARNING") && reload.stderr.contains(key),
            "no warning about {key}: {}",
            reload.stderr
        );
    }
    let rows = console(&proxy, APP, "SHOW CONFIG").await.rows();
    assert_eq!(value(&rows, "proxy.listen"), proxy.addr.to_string());
    assert_eq!(value(&rows, "http.listen"), proxy.http_addr.to_string());
    assert_eq!(value(&rows, "proxy.worker_threads"), "1");
    // The rest of the file was applied.
    assert_eq!(value(&rows, "pool.size"), "7");
    // And clients still get in where the proxy listens.
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    assert_eq!(
        harness::scalar(&client, "select 1")
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );
}
