//! Security properties users rely on: nothing reaches Postgres before a
//! client has authenticated, listeners are on loopback by default, and
//! secrets never show in Debug output. (Masking in `check` and configs
//! holding only SCRAM verifiers are covered in `cli` and `auth`.)

use std::path::Path;
use std::time::Duration;

use pgsidecar::config::Config;

use crate::harness::{self, APP};
use crate::wire::{self, Msg, PROTOCOL_3_0, Raw};

/// Sessions ever opened on `db` (pg_stat_database.sessions, PG 14+).
async fn sessions(su: &tokio_postgres::Client, db: &str) -> i64 {
    su.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    su.query_one(
        "SELECT coalesce(sessions, 0) FROM pg_stat_database WHERE datname = $1",
        &[&db],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_client_that_never_authenticates_opens_no_server_connection() {
    let db = harness::fresh_db("sec_noauth");
    let proxy = harness::proxy("[proxy]\nclient_login_timeout = \"1s\"\n").await;
    let su = harness::superuser().await;
    let before = sessions(&su, &db).await;

    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&wire::startup(
        PROTOCOL_3_0,
        &[("user", APP.name), ("database", &db)],
    ))
    .await;
    // Asked for SCRAM, it says nothing more; the proxy gives up on it.
    match raw.next().await {
        Msg::Frame(b'R', body) => assert_eq!(body[..4], 10i32.to_be_bytes()),
        other => panic!("expected a SASL request, got {other:?}"),
    }
    let e = raw.fatal().await;
    assert_eq!(e.code, "57P03", "{e:?}");
    assert!(harness::backends(&su, &db).await.is_empty());
    assert_eq!(
        sessions(&su, &db).await,
        before,
        "no backend was ever started"
    );

    // The control: a client that does authenticate opens one (through a
    // proxy with the default login time, as SCRAM in a debug build on a
    // busy machine can take a while).
    let patient = harness::proxy("").await;
    let client = harness::connect_proxy(&patient, APP, &db).await.unwrap();
    harness::scalar(&client, "SELECT 1").await.unwrap();
    harness::eventually(
        "the session to be counted",
        Duration::from_secs(10),
        || async { (sessions(&su, &db).await > before).then_some(()) },
    )
    .await;
}

#[test]
fn listeners_default_to_loopback_and_the_console_to_nobody() {
    let config = Config::from_toml(
        "[cluster]\nprimary = \"db:5432\"\n[[users]]\nname = \"app\"\npassword = \"pw-secret-1\"\n",
        Path::new("t.toml"),
    )
    .unwrap();
    assert!(config.proxy.listen.is_some_and(|a| a.ip().is_loopback()));
    assert!(config.http.listen.ip().is_loopback());
    assert!(config.admin.users.is_empty(), "nobody may open the console");
    let shown = format!("{config:?}");
    assert!(!shown.contains("pw-secret-1"), "{shown}");
    let printed = toml::to_string(&config).unwrap();
    assert!(!printed.contains("pw-secret-1"), "{printed}");
}
