//! Metrics and health endpoints of a running proxy against the real
//! cluster: a known workload moves each counter by exactly its share,
//! every contract metric is exported with the replica's health and lag,
//! and /healthz and /readyz say what an orchestrator needs to know.

use std::time::Duration;

use crate::harness::{self, APP, POSTGRES};
use crate::observe_e2e_support::{
    deltas, primary_addr, proxy_with_replica, replica_addr, replica_known, scrape, settled,
};
use crate::observe_support::get;

/// The contract metrics of docs/metrics.md (without the `pgsidecar_`
/// prefix).
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

/// A table `t` in a fresh database that `app` may write.
async fn db_with_table(prefix: &str) -> String {
    let db = harness::fresh_db(prefix);
    let primary = harness::cluster().primary();
    let owner = harness::connect(&primary.conn_string_as(POSTGRES.name, None, &db))
        .await
        .expect("superuser connection");
    owner
        .batch_execute("create table t (id int); grant all on t to app")
        .await
        .expect("creating t");
    db
}

#[tokio::test]
async fn a_known_workload_moves_each_counter_by_exactly_its_share() {
    let db = db_with_table("obs_e2e_counts").await;
    // Any lag is fine for this test: reads go to the replica whenever the
    // monitor sees it up, whatever other tests do to the primary.
    let proxy = proxy_with_replica(
        "[routing]\nmax_replica_lag = \"1h\"\n[observability]\nexplain = \"off\"\n\
         slow_query_threshold = \"1h\"",
    )
    .await;
    replica_known(&proxy).await;
    let reader = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let writer = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    // Up with a lag figure is not yet eligible: right after start the
    // replica may trail the monitor's first primary sample, a lag with no
    // upper bound. Wait for a read to land there (it moves the counters
    // before `before` is taken).
    let replica_port = harness::cluster().replica(0).port();
    harness::until_served_by(
        &reader,
        replica_port,
        "the replica serving reads",
        Duration::from_secs(15),
    )
    .await;
    let before = settled(&proxy).await;

    // 10 simple-protocol reads.
    for i in 0..10 {
        let got = harness::scalar(&reader, &format!("select {i}"))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(i.to_string().as_str()));
    }
    // 3 extended-protocol executions (Parse/Bind/Describe/Execute/Sync).
    for i in 0..3i32 {
        let rows = reader
            .query_typed(
                "select $1::int4 + 1",
                &[(&i, tokio_postgres::types::Type::INT4)],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, i32>(0), i + 1);
    }
    // 2 write transactions of three statements each.
    for i in 0..2 {
        for sql in ["begin", &format!("insert into t values ({i})"), "commit"] {
            writer.simple_query(sql).await.unwrap();
        }
    }
    // 1 statement the server refuses.
    let err = reader.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(harness::error_text(&err), "22012: division by zero");
    // tokio-postgres returns the error before the ReadyForQuery after it.
    let after = settled(&proxy).await;

    let moved = deltas(&before, &after);
    let (primary, replica) = (primary_addr(), replica_addr());
    let d = |name: &str, labels: &[(&str, &str)]| {
        after.get(name, labels).unwrap_or(0.0) - before.get(name, labels).unwrap_or(0.0)
    };
    let q = "pgsidecar_queries_total";
    assert_eq!(
        d(q, &[("node", &replica), ("role", "replica")]),
        14.0,
        "{moved:#?}"
    );
    // INSERT and COMMIT: the BEGIN the proxy held back until the INSERT
    // is not counted on its own.
    assert_eq!(
        d(q, &[("node", &primary), ("role", "primary")]),
        4.0,
        "{moved:#?}"
    );
    assert_eq!(after.sum(q) - before.sum(q), 18.0, "{moved:#?}");
    let count = "pgsidecar_query_duration_seconds_count";
    assert_eq!(d(count, &[("role", "replica")]), 14.0, "{moved:#?}");
    assert_eq!(d(count, &[("role", "primary")]), 4.0, "{moved:#?}");
    assert_eq!(d("pgsidecar_transactions_total", &[]), 16.0, "{moved:#?}");
    let r = "pgsidecar_routing_decisions_total";
    assert_eq!(d(r, &[("reason", "read")]), 14.0, "{moved:#?}");
    assert_eq!(d(r, &[("reason", "transaction")]), 2.0, "{moved:#?}");
    assert_eq!(after.sum(r) - before.sum(r), 16.0, "{moved:#?}");
    let e = "pgsidecar_errors_total";
    assert_eq!(d(e, &[("kind", "query")]), 1.0, "{moved:#?}");
    assert_eq!(after.sum(e) - before.sum(e), 1.0, "{moved:#?}");
    assert_eq!(d("pgsidecar_read_your_writes_total", &[]), 0.0);
    assert_eq!(d("pgsidecar_slow_queries_total", &[]), 0.0);
}

#[tokio::test]
async fn every_contract_metric_is_exported_with_the_replica() {
    let db = harness::fresh_db("obs_e2e_names");
    let proxy = proxy_with_replica("").await;
    let s = replica_known(&proxy).await;
    for name in CONTRACT {
        assert!(
            s.text.contains(&format!("# TYPE pgsidecar_{name} ")),
            "pgsidecar_{name} missing:\n{}",
            s.text
        );
    }
    let (primary, replica) = (primary_addr(), replica_addr());
    assert_eq!(
        s.value(
            "pgsidecar_node_up",
            &[("node", &primary), ("role", "primary")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "pgsidecar_node_up",
            &[("node", &replica), ("role", "replica")]
        ),
        1.0
    );
    let lag = s.value("pgsidecar_replica_lag_seconds", &[("node", &replica)]);
    assert!((0.0..60.0).contains(&lag), "lag {lag}");
    assert!(
        s.get("pgsidecar_replica_lag_bytes", &[("node", &replica)])
            .is_some()
    );
    assert!(
        s.get("pgsidecar_replica_lag_seconds", &[("node", &primary)])
            .is_none(),
        "the primary has no lag:\n{}",
        s.text
    );

    // A connected client and its server show in the gauges.
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let s = scrape(&proxy).await;
    assert_eq!(
        s.value("pgsidecar_client_connections", &[("state", "idle")]),
        1.0
    );
    let open: f64 = s
        .series("pgsidecar_server_connections")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(open >= 1.0, "{}", s.text);
    assert_eq!(s.value("pgsidecar_pool_size", &[("node", &replica)]), 9.0);
    drop(client);
}

#[tokio::test]
async fn healthz_and_readyz_follow_the_primary() {
    let proxy = harness::proxy("").await;
    assert_eq!(get(proxy.http_addr, "/healthz").await, (200, "ok\n".into()));
    harness::eventually("/readyz 200", Duration::from_secs(10), || async {
        (get(proxy.http_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    // A proxy whose primary is a closed port: alive, never ready.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let lonely = harness::proxy(&format!(
        "[cluster]\nprimary = \"127.0.0.1:{port}\"\nconnect_timeout = \"200ms\"\n\
         [routing]\nlag_check_interval = \"50ms\""
    ))
    .await;
    assert_eq!(get(lonely.http_addr, "/healthz").await.0, 200);
    // Once the monitor has tried the primary and failed, still not ready.
    let error = harness::eventually(
        "the monitor to fail to reach the closed primary",
        Duration::from_secs(10),
        || async { lonely.shared.cluster().status()[0].last_error.clone() },
    )
    .await;
    let (status, body) = get(lonely.http_addr, "/readyz").await;
    assert_eq!(status, 503, "{body} (monitor: {error})");
    assert!(body.contains("no reachable primary"), "{body}");
    let s = scrape(&lonely).await;
    let node = format!("127.0.0.1:{port}");
    assert_eq!(
        s.value("pgsidecar_node_up", &[("node", &node), ("role", "primary")]),
        0.0
    );
}

/// Connects and expects the proxy to refuse with `code`.
async fn refused(conn_string: &str, code: &str) {
    let err = harness::connect(conn_string).await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some(code),
        "{}",
        harness::error_text(&err)
    );
}

#[tokio::test]
async fn errors_the_proxy_sends_are_counted_by_kind() {
    let db = db_with_table("obs_e2e_errors").await;
    let proxy = harness::proxy(
        "[pool]\nsize = 1\ncheckout_timeout = \"100ms\"\n\
         [routing]\nfallback_to_primary = false\n[observability]\nexplain = \"off\"",
    )
    .await;
    let before = settled(&proxy).await;
    let port = proxy.addr.port();

    // auth: a wrong password, a role pgsidecar does not know.
    refused(
        &format!("host=127.0.0.1 port={port} user=app password=wrong dbname={db}"),
        "28P01",
    )
    .await;
    refused(
        &format!("host=127.0.0.1 port={port} user=nobody password=x dbname={db}"),
        "28P01",
    )
    .await;

    // checkout_timeout: the only server is held by an open transaction.
    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let other = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    holder
        .batch_execute("begin; insert into t values (1)")
        .await
        .unwrap();
    let err = other
        .simple_query("insert into t values (2)")
        .await
        .unwrap_err();
    assert!(
        harness::error_text(&err).starts_with("53300"),
        "{}",
        harness::error_text(&err)
    );
    holder.batch_execute("commit").await.unwrap();

    // no_node: a read needs a replica, none is configured, no fallback.
    let err = other.simple_query("select 1").await.unwrap_err();
    assert!(
        harness::error_text(&err).starts_with("08006"),
        "{}",
        harness::error_text(&err)
    );
    // routing: a write sent to a replica.
    let err = other
        .simple_query("/* pgsidecar:replica */ insert into t values (3)")
        .await
        .unwrap_err();
    assert!(
        harness::error_text(&err).starts_with("25006"),
        "{}",
        harness::error_text(&err)
    );
    // routing: a SERIALIZABLE transaction sent to a replica.
    other
        .batch_execute("/* pgsidecar:replica */ begin isolation level serializable read only")
        .await
        .unwrap();
    let err = other.simple_query("select 1").await.unwrap_err();
    assert!(
        harness::error_text(&err).starts_with("0A000"),
        "{}",
        harness::error_text(&err)
    );
    other.batch_execute("rollback").await.unwrap();
    // query: the server refuses.
    let err = other
        .simple_query("insert into t values (1/0)")
        .await
        .unwrap_err();
    assert!(
        harness::error_text(&err).starts_with("22012"),
        "{}",
        harness::error_text(&err)
    );

    let after = settled(&proxy).await;
    let d = |kind: &str| {
        let labels = [("kind", kind)];
        after.value("pgsidecar_errors_total", &labels)
            - before.value("pgsidecar_errors_total", &labels)
    };
    for (kind, n) in [
        ("auth", 2.0),
        ("checkout_timeout", 1.0),
        ("no_node", 1.0),
        ("routing", 2.0),
        ("query", 1.0),
        ("protocol", 0.0),
        ("too_many_clients", 0.0),
        ("server", 0.0),
        ("explain", 0.0),
    ] {
        assert_eq!(
            d(kind),
            n,
            "errors_total{{kind=\"{kind}\"}}\n{:#?}",
            deltas(&before, &after)
        );
    }
}

#[tokio::test]
async fn a_protocol_violation_counts_as_protocol() {
    let db = harness::fresh_db("obs_e2e_protocol");
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"").await;
    let (mut raw, _, _) = crate::wire::Raw::login_trust(proxy.addr, "app", &db).await;
    // A password message after login: no client may send that.
    raw.send(&crate::wire::message(b'p', b"stray\0")).await;
    assert_eq!(raw.fatal().await.code, "08P01");
    raw.expect_closed().await;
    let s = scrape(&proxy).await;
    assert_eq!(
        s.value("pgsidecar_errors_total", &[("kind", "protocol")]),
        1.0
    );
    assert_eq!(s.sum("pgsidecar_errors_total"), 1.0, "{}", s.text);
}

#[tokio::test]
async fn a_server_refusing_the_proxys_login_counts_as_server() {
    let db = harness::fresh_db("obs_e2e_server_err");
    // Clients are trusted; the proxy's password for app is wrong.
    let proxy = harness::proxy(
        "[auth]\nclient_auth = \"trust\"\n[[users]]\nname = \"app\"\npassword = \"not-it\"",
    )
    .await;
    let err = harness::connect(&format!(
        "host=127.0.0.1 port={} user=app dbname={db}",
        proxy.addr.port()
    ))
    .await
    .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("28P01"),
        "the server's refusal reaches the client: {err}"
    );
    let s = scrape(&proxy).await;
    assert_eq!(
        s.value("pgsidecar_errors_total", &[("kind", "server")]),
        1.0
    );
    assert_eq!(s.value("pgsidecar_errors_total", &[("kind", "auth")]), 0.0);
}

#[tokio::test]
async fn routing_reasons_say_why_and_start_at_zero() {
    let db = db_with_table("obs_e2e_reasons").await;
    let proxy = harness::proxy("[observability]\nexplain = \"off\"").await;
    let before = scrape(&proxy).await;
    let reasons = [
        "read",
        "write",
        "transaction",
        "hint",
        "read_your_writes",
        "split_disabled",
        "none_configured",
        "all_unhealthy",
        "all_lagging",
    ];
    for reason in reasons {
        assert_eq!(
            before.get("pgsidecar_routing_decisions_total", &[("reason", reason)]),
            Some(0.0),
            "{reason} is exported before it is first counted"
        );
    }
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    for sql in [
        "select 1",                         // a read, no replica: none_configured
        "/* pgsidecar:primary */ select 1", // hint
        "insert into t values (1)",         // write
        "create table u (id int)",          // ddl
    ] {
        client.simple_query(sql).await.unwrap();
    }
    let after = scrape(&proxy).await;
    let moved = deltas(&before, &after);
    let d = |reason: &str| {
        moved
            .get(&format!(
                "pgsidecar_routing_decisions_total{{reason=\"{reason}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(d("none_configured"), 1.0, "{moved:#?}");
    assert_eq!(d("hint"), 1.0, "{moved:#?}");
    assert_eq!(d("write"), 1.0, "{moved:#?}");
    assert_eq!(d("ddl"), 1.0, "{moved:#?}");

    let unsplit = harness::proxy("[routing]\nread_write_split = false").await;
    let client = harness::connect_proxy(&unsplit, APP, &db).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let s = scrape(&unsplit).await;
    assert_eq!(
        s.value(
            "pgsidecar_routing_decisions_total",
            &[("reason", "split_disabled")]
        ),
        1.0
    );
}
