//! Requests already waiting for a server of a node that goes away move on
//! as soon as the monitor has noticed, instead of retrying a refused
//! connection for the whole `checkout_timeout`: reads waiting for a stopped
//! replica run on the primary, writes waiting for a stopped primary run on
//! the replica promoted in its place.
//!
//! Each pool holds one connection, taken by a client in a transaction, so
//! the other clients are queued in the pool when the node stops.
//! `checkout_timeout` is 30 s and every waiter must finish well within the
//! test's own limit, so a waiter that sat out the timeout fails the test.

use std::time::Duration;

use pgsidecar::client::registry::ClientActivity;
use pgsidecar::proxy::Proxy;
use tokio::task::{JoinSet, block_in_place};

use crate::harness::{self, APP, PORT_SQL};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(15);
/// Clients queued behind the holder.
const WAITERS: usize = 4;
/// How long the waiters together may take once the node is gone: half the
/// checkout timeout the proxy is given.
const MOVE_ON_WITHIN: Duration = Duration::from_secs(15);
const POOL: &str = "[pool]\nsize = 1\ncheckout_timeout = \"30s\"\n";

/// Waits until `n` clients of `proxy` are waiting for a server connection.
async fn until_waiting(proxy: &Proxy, n: usize) {
    harness::eventually(&format!("{n} clients waiting for a server"), SOON, || {
        let waiting = (proxy.shared.clients.all().iter())
            .filter(|c| c.activity() == ClientActivity::Waiting)
            .count();
        std::future::ready((waiting >= n).then_some(()))
    })
    .await
}

/// Awaits every task within [`MOVE_ON_WITHIN`]; returns their results.
async fn all_within<T: 'static>(mut tasks: JoinSet<T>) -> Vec<T> {
    let mut out = Vec::new();
    let collect = async {
        while let Some(done) = tasks.join_next().await {
            out.push(done.expect("waiter task"));
        }
    };
    if tokio::time::timeout(MOVE_ON_WITHIN, collect).await.is_err() {
        panic!(
            "waiters still queued {MOVE_ON_WITHIN:?} after the node went away \
             (checkout_timeout is 30 s): they did not move on when the monitor noticed"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_waiting_for_a_stopped_replica_run_on_the_primary() {
    let cluster = harness::private_cluster().await;
    let db = block_in_place(|| cluster.fresh_database("waiters_read")).unwrap();
    let config = format!("{POOL}[routing]\nmax_replica_lag = \"10s\"\n");
    let proxy = harness::proxy_for(&cluster, &config).await;
    let (primary, replica) = (cluster.primary().port(), cluster.replica(0).port());

    // The holder takes the replica pool's only connection and keeps it.
    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    harness::until_served_by(&holder, replica, "the replica serving reads", SOON).await;
    holder.batch_execute("begin read only").await.unwrap();
    assert_eq!(harness::served_by(&holder).await.unwrap(), replica);

    let mut readers = JoinSet::new();
    for _ in 0..WAITERS {
        let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        readers.spawn(async move {
            let port = harness::served_by(&client).await;
            port.map_err(|e| harness::error_text(&e))
        });
    }
    until_waiting(&proxy, WAITERS).await;
    block_in_place(|| cluster.replica(0).stop()).unwrap();

    for got in all_within(readers).await {
        assert_eq!(got, Ok(primary), "a read queued for the stopped replica");
    }
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_during_a_promotion_run_on_the_promoted_primary() {
    let cluster = harness::private_cluster().await;
    let db = block_in_place(|| cluster.fresh_database("waiters_write")).unwrap();
    let proxy = harness::proxy_for(&cluster, POOL).await;
    let promoted = cluster.replica(0).port();

    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    holder
        .batch_execute("create table t (id int primary key)")
        .await
        .unwrap();
    block_in_place(|| cluster.wait_for_replay(cluster.replica(0))).unwrap();
    // The holder takes the primary pool's only connection and keeps it.
    holder
        .batch_execute("begin; insert into t values (0)")
        .await
        .unwrap();

    let mut writers = JoinSet::new();
    for id in 1..=WAITERS as i32 {
        let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        writers.spawn(async move {
            let sql = format!("insert into t values ({id}) returning ({PORT_SQL})");
            match harness::scalar(&client, &sql).await {
                Ok(port) => Ok(harness::parse_port(port.as_deref())),
                Err(e) => Err(harness::error_text(&e)),
            }
        });
    }
    until_waiting(&proxy, WAITERS).await;
    block_in_place(|| {
        cluster.primary().stop()?;
        cluster.promote(cluster.replica(0))
    })
    .unwrap();

    for got in all_within(writers).await {
        assert_eq!(got, Ok(promoted), "a write queued for the stopped primary");
    }
    let direct = harness::connect(
        &cluster
            .replica(0)
            .conn_string_as(APP.name, APP.password, &db),
    )
    .await
    .unwrap();
    let rows = harness::scalar(&direct, "select count(*) from t")
        .await
        .unwrap();
    assert_eq!(rows.as_deref(), Some(&*WAITERS.to_string()));
    drop(holder);
}
