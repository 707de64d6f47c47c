//! String literals are found the way the session's server finds them:
//! with `standard_conforming_strings = off` a backslash escapes a quote in
//! '…' (and always in E'…'), so no literal leaks into /queries or the
//! slow-query log, and no statement hides a write from the router, in
//! whatever encoding the client sends.

use std::time::Duration;

use crate::harness::{self, APP};
use crate::observe_support::capture;
use crate::wire::{self, Raw};

/// What the issue sent: with backslash escapes it is one literal.
const LEAKY: &str = r"select pg_sleep(0.25), 'x\' , ''TOPSECRET30'' as pw, ''y'";

fn leaks(proxy: &pgsidecar::proxy::Proxy, secret: &str) -> Vec<String> {
    proxy
        .shared
        .observer
        .digests()
        .into_iter()
        .map(|d| d.query.to_string())
        .filter(|q| q.to_lowercase().contains(secret))
        .collect()
}

/// Waits until a digest's text contains `needle`; returns that text.
async fn digest_with(proxy: &pgsidecar::proxy::Proxy, needle: &str) -> String {
    harness::eventually(
        &format!("a digest with {needle}"),
        Duration::from_secs(10),
        || async {
            proxy
                .shared
                .observer
                .digests()
                .into_iter()
                .map(|d| d.query.to_string())
                .find(|q| q.contains(needle))
        },
    )
    .await
}

#[tokio::test]
async fn no_literal_leaks_when_standard_conforming_strings_is_off() {
    let (log, _guard) = capture(false);
    let db = harness::fresh_db("sec_scs_off");
    let proxy =
        harness::proxy("[observability]\nslow_query_threshold = \"100ms\"\nexplain = \"off\"\n")
            .await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    client
        .simple_query("SET standard_conforming_strings = off")
        .await
        .unwrap();
    client.simple_query(LEAKY).await.unwrap();
    // E'' strings escape with a backslash whatever the setting.
    client
        .simple_query("SET standard_conforming_strings = on")
        .await
        .unwrap();
    client
        .simple_query(r"select pg_sleep(0.25), E'x\' , ''TOPSECRET31'' as pw, ''y'")
        .await
        .unwrap();

    let shape = digest_with(&proxy, "pg_sleep").await;
    assert_eq!(shape, "select pg_sleep($1), $2", "{shape}");
    harness::eventually("both slow-query lines", Duration::from_secs(10), || async {
        (log.matching("slow query").len() >= 2).then_some(())
    })
    .await;
    for secret in ["topsecret30", "topsecret31"] {
        assert_eq!(leaks(&proxy, secret), Vec::<String>::new());
        let logged: Vec<_> = log
            .lines()
            .into_iter()
            .filter(|l| l.to_lowercase().contains(secret))
            .collect();
        assert!(logged.is_empty(), "{logged:#?}");
    }
}

#[tokio::test]
async fn the_setting_from_the_startup_packet_is_followed() {
    let db = harness::fresh_db("sec_scs_startup");
    let proxy = harness::proxy("[observability]\nexplain = \"off\"\n").await;
    let mut config: tokio_postgres::Config = harness::proxy_conn_string(&proxy, APP, &db)
        .parse()
        .unwrap();
    config.options("-c standard_conforming_strings=off");
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .simple_query(r"select 'x\' , ''TOPSECRET33'' as pw, ''y' as startup_shape")
        .await
        .unwrap();
    let shape = digest_with(&proxy, "startup_shape").await;
    assert_eq!(shape, "select $1 as startup_shape");
    assert_eq!(leaks(&proxy, "topsecret33"), Vec::<String>::new());
}

#[tokio::test]
async fn a_statement_sent_before_the_setting_is_known_shows_no_text() {
    let db = harness::fresh_db("sec_scs_pipelined");
    let proxy =
        harness::proxy("[auth]\nclient_auth = \"trust\"\n[observability]\nexplain = \"off\"\n")
            .await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, APP.name, &db).await;
    // Both at once: the second is read before the first is answered.
    let mut both = wire::query("SET standard_conforming_strings = off");
    both.extend(wire::query(
        r"select 'x\' , ''TOPSECRET32'' as pw, ''y' as pipelined",
    ));
    raw.send(&both).await;
    raw.until_ready().await;
    let (_, seen) = raw.until_ready().await;
    assert!(seen.iter().any(|(t, _)| *t == b'D'), "{seen:?}");
    let _ = digest_with(&proxy, "standard_conforming_strings").await;
    harness::eventually("the select's digest", Duration::from_secs(10), || async {
        (proxy.shared.observer.digests().len() >= 2).then_some(())
    })
    .await;
    assert_eq!(leaks(&proxy, "topsecret32"), Vec::<String>::new());
    // Read right (the answer to the SET came first) or not shown.
    let texts: Vec<String> = proxy
        .shared
        .observer
        .digests()
        .into_iter()
        .map(|d| d.query.to_string())
        .collect();
    eprintln!("digests: {texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t == "select $1 as pipelined" || t == pgsidecar::routing::UNSURE_TEXT),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backslash_cannot_hide_a_write_from_the_router() {
    let cluster = harness::cluster();
    let (db, direct) = harness::replicated_db(
        "sec_scs_route",
        "create table victim (id int); insert into victim values (1)",
    )
    .await;
    let config = format!(
        "{}[routing]\nmax_replica_lag = \"10s\"\n",
        harness::shared_replica_toml()
    );
    let proxy = harness::proxy(&config).await;
    // Set at startup: a SET would keep this client's reads on the primary
    // for a while (read-your-writes).
    let mut config: tokio_postgres::Config = harness::proxy_conn_string(&proxy, APP, &db)
        .parse()
        .unwrap();
    config.options("-c standard_conforming_strings=off");
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    harness::until_served_by(
        &client,
        cluster.replica(0).port(),
        "the replica serving reads",
        Duration::from_secs(15),
    )
    .await;
    // Read with standard strings this is two literals; the server, with
    // backslash escapes, runs a DELETE after one literal.
    client
        .simple_query(r"SELECT '\' , ' ; DELETE FROM victim; --'")
        .await
        .unwrap_or_else(|e| panic!("{}", harness::error_text(&e)));
    let left: i64 = direct
        .query_one("select count(*) from victim", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the DELETE ran on the primary");
}

/// Both readings at once: a LATIN1 client whose session reads strings
/// with backslash escapes. Its bytes are decoded as LATIN1 (é is one byte,
/// not invalid UTF-8) and then lexed in backslash mode, so the write after
/// the one literal is found and no literal value is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin1_client_with_backslash_strings_is_read_both_ways() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let cluster = harness::cluster();
    let (db, direct) = harness::replicated_db(
        "sec_scs_latin1",
        "create table victim (id int); insert into victim values (1)",
    )
    .await;
    let config = format!(
        "{}[routing]\nmax_replica_lag = \"10s\"\n[observability]\nexplain = \"off\"\n",
        harness::shared_replica_toml()
    );
    let proxy = harness::proxy(&config).await;
    let utf8 = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    harness::until_served_by(
        &utf8,
        cluster.replica(0).port(),
        "the replica serving reads",
        Duration::from_secs(15),
    )
    .await;
    let psql = |sql: &'static [u8]| {
        let mut cmd = harness::pg_tool("psql");
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
            .args(["-U", APP.name, "-d", &db, "-c"])
            .arg(OsStr::from_bytes(sql))
            .env("PGPASSWORD", APP.password.unwrap_or_default())
            .env("PGCLIENTENCODING", "LATIN1")
            .env("PGOPTIONS", "-c standard_conforming_strings=off");
        cmd.output()
    };
    // LATIN1 `café\` then, read with standard strings, a second literal;
    // the server reads one literal and runs the DELETE after it.
    let out = psql(b"SELECT 'caf\xe9\\' , ' ; DELETE FROM victim; --'")
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let left: i64 = direct
        .query_one("select count(*) from victim", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the DELETE ran on the primary");
    // One literal in the normalised text, its value nowhere.
    let out = psql(b"select 'caf\xe9\\' , ''TOPSECRET34'' as pw, ''y' as latin1_shape")
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shape = digest_with(&proxy, "latin1_shape").await;
    assert_eq!(shape, "select $1 as latin1_shape");
    assert_eq!(leaks(&proxy, "topsecret34"), Vec::<String>::new());
}
