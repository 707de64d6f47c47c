//! Per-client time limits: client_idle_timeout (57P05),
//! idle_transaction_timeout (25P03, the server rolled back and returned
//! clean) and query_timeout (57014 naming the limit, the client carries
//! on). max_message_size is covered in `bad_input`.

use crate::harness::{self, APP};
use crate::wire::{self, Raw};

async fn trust_proxy(extra: &str) -> pgsidecar::proxy::Proxy {
    harness::proxy(&format!("[auth]\nclient_auth = \"trust\"\n{extra}")).await
}

#[tokio::test]
async fn an_idle_client_is_disconnected_with_57p05() {
    let db = harness::fresh_db("limit_idle");
    let proxy = trust_proxy("[proxy]\nclient_idle_timeout = \"1s\"\n").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    let e = raw.fatal().await;
    assert_eq!(e.code, "57P05", "{e:?}");
    assert!(
        e.message.contains("proxy.client_idle_timeout (1s)"),
        "{e:?}"
    );

    // A client busy with a query longer than the limit is not idle.
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    client.simple_query("SELECT pg_sleep(1.5)").await.unwrap();
}

#[tokio::test]
async fn an_idle_transaction_is_rolled_back_and_its_server_returned_clean() {
    let db = harness::fresh_db("limit_idle_tx");
    let proxy =
        trust_proxy("[proxy]\nidle_transaction_timeout = \"300ms\"\n[pool]\nsize = 1\n").await;
    let setup = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    setup.batch_execute("CREATE TABLE t (n int)").await.unwrap();

    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&wire::query("BEGIN; INSERT INTO t VALUES (1)"))
        .await;
    let (status, _) = raw.until_ready().await;
    assert_eq!(status, b'T');
    let e = raw.fatal().await;
    assert_eq!(e.code, "25P03", "{e:?}");
    assert!(
        e.message.contains("proxy.idle_transaction_timeout (300ms)"),
        "{e:?}"
    );

    // The only server connection went back rolled back and idle.
    assert_eq!(
        harness::scalar(&setup, "SELECT count(*) FROM t")
            .await
            .unwrap()
            .as_deref(),
        Some("0")
    );
    let su = harness::superuser().await;
    let states: Vec<String> = harness::backends(&su, &db)
        .await
        .into_iter()
        .map(|(_, state, _)| state)
        .collect();
    assert_eq!(states, ["idle"], "one clean pooled connection");

    // A BEGIN the proxy acknowledged without a server counts too.
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&wire::query("BEGIN")).await;
    assert_eq!(raw.until_ready().await.0, b'T');
    assert_eq!(raw.fatal().await.code, "25P03");
}

/// A client's idle timer is made once and reset for each request (not made
/// per request: an allocation per transaction): after several requests,
/// and when a BEGIN the proxy acknowledged switches to the transaction's
/// limit, the limit in force still fires, with its own error.
#[tokio::test]
async fn the_limit_in_force_fires_after_earlier_requests() {
    let db = harness::fresh_db("limit_idle_reset");
    let proxy = trust_proxy(
        "[proxy]\nclient_idle_timeout = \"1s\"\nidle_transaction_timeout = \"300ms\"\n",
    )
    .await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    for _ in 0..3 {
        raw.send(&wire::query("SELECT 1")).await;
        assert_eq!(raw.until_ready().await.0, b'I');
    }
    let e = raw.fatal().await;
    assert_eq!(e.code, "57P05", "{e:?}");

    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&wire::query("SELECT 1")).await;
    assert_eq!(raw.until_ready().await.0, b'I');
    raw.send(&wire::query("BEGIN")).await;
    assert_eq!(raw.until_ready().await.0, b'T');
    let e = raw.fatal().await;
    assert_eq!(e.code, "25P03", "{e:?}");
    assert!(
        e.message.contains("proxy.idle_transaction_timeout (300ms)"),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_long_query_is_cancelled_by_query_timeout_and_the_client_carries_on() {
    let db = harness::fresh_db("limit_query");
    let proxy = harness::proxy("[proxy]\nquery_timeout = \"500ms\"\n").await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let e = client
        .simple_query("SELECT pg_sleep(30)")
        .await
        .expect_err("cancelled");
    let text = harness::error_text(&e);
    assert_eq!(
        text,
        "57014: canceling statement due to proxy.query_timeout (500ms)"
    );
    assert_eq!(
        harness::scalar(&client, "SELECT 'still here'")
            .await
            .unwrap()
            .as_deref(),
        Some("still here")
    );

    // Inside a transaction: the transaction is aborted, as with
    // statement_timeout, and ROLLBACK brings the client back.
    client.batch_execute("BEGIN").await.unwrap();
    let e = client
        .simple_query("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    assert!(harness::error_text(&e).starts_with("57014"));
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        harness::scalar(&client, "SELECT 1")
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn limits_are_off_by_default() {
    let proxy = harness::proxy("").await;
    let p = &proxy.shared.config.load().proxy;
    assert!(p.client_idle_timeout.is_zero());
    assert!(p.idle_transaction_timeout.is_zero());
    assert!(p.query_timeout.is_zero());
}
