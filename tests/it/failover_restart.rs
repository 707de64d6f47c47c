//! After a failover, a pgsidecar started afresh never writes to the old
//! primary, even while the new one is unreachable: the replica is promoted,
//! the old primary starts again as a primary on its old WAL timeline, the
//! new primary stops, and a proxy started with the config it had before
//! (the old primary still named `cluster.primary`) must refuse writes —
//! with the timeline it remembers in `cluster.state_file`, or, with no
//! record there, until every configured node has answered — and send them
//! to the new primary once it is back.

use std::time::Duration;

use pgsidecar::config::Config;
use pgsidecar::proxy::Proxy;
use tokio::task::block_in_place;
use tokio_postgres::Client;

use crate::harness::{self, APP, PORT_SQL};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(20);

/// Inserts row `id` through `proxy` on a new connection; the port of the
/// node that stored it, or the error a user would read (with its SQLSTATE).
async fn insert(proxy: &Proxy, db: &str, id: i32) -> Result<u16, String> {
    let client = harness::connect_proxy(proxy, APP, db)
        .await
        .map_err(|e| harness::error_text(&e))?;
    let sql = format!("insert into t values ({id}) returning ({PORT_SQL})");
    match harness::scalar(&client, &sql).await {
        Ok(port) => Ok(harness::parse_port(port.as_deref())),
        Err(e) => Err(harness::error_text(&e)),
    }
}

/// Waits until a write through `proxy` lands on the node listening on `port`.
async fn until_writes_reach(proxy: &Proxy, db: &str, port: u16, first_id: i32) {
    let mut id = first_id;
    harness::eventually(&format!("writes reaching port {port}"), SOON, || {
        id += 1;
        let id = id;
        async move { (insert(proxy, db, id).await == Ok(port)).then_some(()) }
    })
    .await
}

/// Rows with ids in `range` that `client` sees in `t`.
async fn rows_in(client: &Client, range: std::ops::Range<i32>) -> i64 {
    let sql = format!(
        "select count(*) from t where id >= {} and id < {}",
        range.start, range.end
    );
    let n = harness::scalar(client, &sql).await.unwrap();
    n.and_then(|n| n.parse().ok()).expect("a count")
}

/// Three writes through a proxy started with `config` while the new
/// primary is down: each must be refused with a SQLSTATE, none stored.
async fn writes_are_refused(config: Config, db: &str, first_id: i32, old: &Client) {
    let proxy = Proxy::start(config).await.expect("proxy start");
    for id in first_id..first_id + 3 {
        let got = insert(&proxy, db, id).await;
        let error = got.expect_err("a write acknowledged while the new primary was down");
        eprintln!("write {id} refused: {error}");
        assert!(
            error.starts_with("08006:") || error.starts_with("08001:"),
            "the refusal should carry a connection-failure SQLSTATE: {error}"
        );
    }
    assert_eq!(
        rows_in(old, first_id..first_id + 3).await,
        0,
        "rows written to the old primary's abandoned timeline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_a_restarted_proxy_never_writes_to_the_old_primary() {
    let cluster = harness::private_cluster().await;
    let db = block_in_place(|| cluster.fresh_database("stale_primary")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster.state");
    let extra = |state: &std::path::Path| {
        format!(
            "[cluster]\nstate_file = \"{}\"\n[pool]\ncheckout_timeout = \"1s\"\n",
            state.display()
        )
    };
    // The config names the old primary as `cluster.primary` throughout.
    let config = harness::proxy_config_for(&cluster, &extra(&state));
    let (old_port, new_port) = (cluster.nodes()[0].port(), cluster.nodes()[1].port());

    let first = Proxy::start(config.clone()).await.expect("proxy start");
    let client = harness::connect_proxy(&first, APP, &db).await.unwrap();
    client
        .batch_execute("create table t (id int primary key)")
        .await
        .unwrap();
    assert_eq!(insert(&first, &db, 1).await, Ok(old_port));
    block_in_place(|| cluster.wait_for_replay(cluster.replica(0))).unwrap();

    // Failover: the replica is promoted, the old primary comes back as a
    // primary on its old timeline and the running proxy refuses it.
    block_in_place(|| {
        cluster.nodes()[0].stop()?;
        cluster.promote(&cluster.nodes()[1])
    })
    .unwrap();
    until_writes_reach(&first, &db, new_port, 10).await;
    block_in_place(|| cluster.nodes()[0].start()).unwrap();
    harness::eventually("the running proxy refusing the old primary", SOON, || {
        let status = first.shared.cluster().status();
        let refused = status[0].role == pgsidecar::cluster::Role::Primary
            && (status[0].last_error.as_deref())
                .is_some_and(|e| e.contains("timeline 1") && e.contains("no writes"));
        std::future::ready(refused.then_some(()))
    })
    .await;
    assert_eq!(insert(&first, &db, 50).await, Ok(new_port));
    drop(client);
    drop(first);

    // The new primary becomes unreachable; pgsidecar starts again.
    block_in_place(|| cluster.nodes()[1].stop()).unwrap();
    let old = harness::connect(&cluster.nodes()[0].conn_string_as(APP.name, APP.password, &db))
        .await
        .unwrap();
    assert_eq!(rows_in(&old, 1..2).await, 1, "the old primary is up");
    // With the timeline it remembers.
    writes_are_refused(config.clone(), &db, 100, &old).await;
    // With no record yet (a new state file): until every node answered.
    let mut fresh = config.clone();
    fresh.cluster.state_file = Some(dir.path().join("new.state"));
    writes_are_refused(fresh.clone(), &db, 200, &old).await;

    // The new primary is back: writes go there.
    block_in_place(|| cluster.nodes()[1].start()).unwrap();
    let restarted = Proxy::start(config).await.expect("proxy start");
    until_writes_reach(&restarted, &db, new_port, 300).await;
    let fresh = Proxy::start(fresh).await.expect("proxy start");
    until_writes_reach(&fresh, &db, new_port, 400).await;
    assert_eq!(rows_in(&old, 100..500).await, 0, "rows on the old primary");
}
