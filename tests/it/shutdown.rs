//! Graceful shutdown of `pgsidecar run`: SIGTERM stops accepting, lets a
//! transaction in flight commit, cancels one that outlives
//! `shutdown_timeout`, and exits; a second process on the same port
//! (SO_REUSEPORT) takes new clients while the first drains.

use std::time::Duration;

use crate::harness::{self, APP};
use crate::running;

const EXIT_LIMIT: Duration = Duration::from_secs(30);

async fn connect(port: u16, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    harness::connect(&format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={db}",
        APP.name,
        APP.password.unwrap()
    ))
    .await
}

async fn count(db: &str) -> i64 {
    let su = harness::connect(
        &harness::cluster()
            .primary()
            .conn_string_as("postgres", None, db),
    )
    .await
    .unwrap();
    su.query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn sigterm_lets_a_transaction_commit_then_exits() {
    let db = harness::fresh_db("shutdown_commit");
    let conf = running::ConfigFile::new(None, "[proxy]\nshutdown_timeout = \"20s\"\n");
    let mut proxy = running::start(&conf.path).await;
    let client = connect(proxy.port, &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    proxy.signal(libc::SIGTERM);
    proxy.wait_for_log(&["shutting down"]).await;
    // No new clients...
    harness::eventually("the listener to close", Duration::from_secs(10), || async {
        connect(proxy.port, &db).await.is_err().then_some(())
    })
    .await;
    assert!(!proxy.exited(), "it waits for the open transaction");
    // ...but the transaction in flight finishes.
    client
        .batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    let e = client
        .simple_query("SELECT 1")
        .await
        .expect_err("then it is disconnected");
    let text = harness::error_text(&e);
    assert!(text.starts_with("57P01") || client.is_closed(), "{text}");
    let status = proxy.wait(EXIT_LIMIT).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(count(&db).await, 2);
}

#[tokio::test]
async fn a_query_outliving_shutdown_timeout_is_cancelled_and_the_process_exits() {
    let db = harness::fresh_db("shutdown_cancel");
    let conf = running::ConfigFile::new(None, "[proxy]\nshutdown_timeout = \"1s\"\n");
    let mut proxy = running::start(&conf.path).await;
    // One client idles inside a transaction, one runs a long query.
    let idle = connect(proxy.port, &db).await.unwrap();
    idle.batch_execute("CREATE TABLE t (n int)").await.unwrap();
    idle.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let client = connect(proxy.port, &db).await.unwrap();
    let sleeping = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    let su = harness::superuser().await;
    harness::eventually("the long query to run", Duration::from_secs(20), || async {
        harness::backends(&su, &db)
            .await
            .iter()
            .any(|(_, state, q)| state == "active" && q.contains("pg_sleep(60)"))
            .then_some(())
    })
    .await;
    proxy.signal(libc::SIGINT);
    let status = proxy.wait(EXIT_LIMIT).await;
    assert!(status.success(), "{status:?}");
    let e = sleeping
        .await
        .unwrap()
        .expect_err("the long query was cancelled");
    let text = harness::error_text(&e);
    assert!(
        text.starts_with("57014") || text.starts_with("57P01") || text.contains("closed"),
        "{text}"
    );
    proxy.wait_for_log(&["shutdown_timeout reached"]).await;
    // The idle transaction was closed and rolled back, not committed.
    let e = idle.batch_execute("COMMIT").await.expect_err("closed");
    let text = harness::error_text(&e);
    assert!(text.starts_with("57P01") || idle.is_closed(), "{text}");
    assert_eq!(count(&db).await, 0);
    // The server is not left running the query.
    harness::eventually(
        "the query to stop on the server",
        Duration::from_secs(10),
        || async {
            harness::backends(&su, &db)
                .await
                .iter()
                .all(|(_, state, _)| state != "active")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn rolling_restart_a_second_process_serves_while_the_first_drains() {
    let db = harness::fresh_db("rolling");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = running::ConfigFile::new(Some(port), "[proxy]\nshutdown_timeout = \"30s\"\n");
    let mut old = running::start(&conf.path).await;
    let draining = connect(port, &db).await.unwrap();
    draining
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();
    draining
        .batch_execute("BEGIN; INSERT INTO t VALUES (0)")
        .await
        .unwrap();

    // The new process binds the same port while the old one still listens.
    let mut new = running::start(&conf.path).await;
    assert_eq!(new.port, port);
    old.signal(libc::SIGTERM);
    old.wait_for_log(&["shutting down"]).await;

    // New clients are served (by the new process) while the old drains.
    for n in 1..=5 {
        let client = harness::eventually(
            "a new client to be served",
            Duration::from_secs(10),
            || async { connect(port, &db).await.ok() },
        )
        .await;
        client
            .batch_execute(&format!("INSERT INTO t VALUES ({n})"))
            .await
            .unwrap();
    }
    assert!(!old.exited(), "the old process waits for its transaction");
    draining.batch_execute("COMMIT").await.unwrap();
    assert!(old.wait(EXIT_LIMIT).await.success());
    // After the old process is gone, the new one still serves.
    let client = connect(port, &db).await.unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (6)")
        .await
        .unwrap();
    assert_eq!(count(&db).await, 7);
    new.signal(libc::SIGTERM);
    assert!(new.wait(EXIT_LIMIT).await.success());
}
