//! Which replica may serve reads, through the proxy: an idle replica serves
//! nearly all reads, one over `max_replica_lag` or stopped serves none (and
//! reads carry on at the primary) until it is back, a promoted replica takes
//! the writes, and without fallback a read with nowhere to go is refused.

use std::time::{Duration, Instant};

use tokio::task::{JoinHandle, block_in_place};
use tokio_postgres::types::Type;

use crate::harness::{self, APP, PORT_SQL};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(15);

/// Aborts a background task (e.g. a write load) when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_a_table_nobody_writes_are_served_by_the_replica() {
    let cluster = harness::cluster();
    let (db, _) = harness::replicated_db(
        "routing_quiet",
        "create table quiet (id int); insert into quiet select generate_series(1, 10)",
    )
    .await;
    // The shared replica's lag under other tests' load is not the subject.
    let config = format!(
        "{}[routing]\nmax_replica_lag = \"10s\"\n",
        harness::shared_replica_toml()
    );
    let proxy = harness::proxy(&config).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let replica = cluster.replica(0).port();
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;

    let sql = format!("select count(*), ({PORT_SQL}) from quiet");
    let (mut on_replica, mut total) = (0, 0);
    for i in 0..200 {
        let (count, port): (i64, String) = if i % 2 == 0 {
            let rows = client.simple_query(&sql).await.unwrap();
            let row = rows
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                    _ => None,
                })
                .expect("a row");
            (
                row.get(0).and_then(|c| c.parse().ok()).expect("a count"),
                row.get(1).expect("a port").to_string(),
            )
        } else {
            let row = &client.query_typed(&sql, &[]).await.unwrap()[0];
            (row.get(0), row.get(1))
        };
        assert_eq!(count, 10, "read {i}");
        total += 1;
        if harness::parse_port(Some(&port)) == replica {
            on_replica += 1;
        }
    }
    eprintln!("reads of an unwritten table served by the replica: {on_replica}/{total}");
    assert!(
        on_replica * 10 >= total * 9,
        "only {on_replica} of {total} reads were served by the replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_over_max_replica_lag_gets_no_reads_until_it_catches_up() {
    let cluster = harness::private_cluster().await;
    let db = block_in_place(|| cluster.fresh_database("lag")).unwrap();
    let proxy = harness::proxy_for(&cluster, "[routing]\nmax_replica_lag = \"500ms\"\n").await;
    let (primary, replica) = (cluster.primary().port(), cluster.replica(0).port());
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;

    // A steady write load straight on the primary (not through the proxy,
    // so read-your-writes plays no part), replayed 2 s late.
    let direct = harness::connect(
        &cluster
            .primary()
            .conn_string_as(APP.name, APP.password, &db),
    )
    .await
    .unwrap();
    direct
        .batch_execute("create table ticks (at timestamptz)")
        .await
        .unwrap();
    block_in_place(|| cluster.replica(0).set_apply_delay(Duration::from_secs(2))).unwrap();
    let _load = AbortOnDrop(tokio::spawn(async move {
        loop {
            direct
                .batch_execute("insert into ticks values (now())")
                .await
                .unwrap_or_else(|e| panic!("write load failed: {e}"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    let view = proxy.shared.cluster().clone();
    harness::eventually("the monitor to measure over 1 s of lag", SOON, || {
        let view = view.clone();
        async move { (view.status()[1].lag_seconds? > 1.0).then_some(()) }
    })
    .await;
    for i in 0..100 {
        let port = harness::served_by(&client).await.unwrap();
        assert_eq!(port, primary, "read {i} while the replica is 2 s behind");
    }

    block_in_place(|| cluster.replica(0).set_apply_delay(Duration::ZERO)).unwrap();
    let caught_up = Instant::now();
    harness::until_served_by(
        &client,
        replica,
        "the caught-up replica serving reads again",
        Duration::from_secs(2),
    )
    .await;
    eprintln!(
        "replica served reads again {:?} after its delay was removed",
        caught_up.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_skipped_and_used_again_after_a_restart() {
    let cluster = harness::private_cluster().await;
    let proxy = harness::proxy_for(&cluster, "").await;
    let (primary, replica) = (cluster.primary().port(), cluster.replica(0).port());
    let client = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    // Reads go to the replica, so its pool holds connections that the stop
    // will break.
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;
    for _ in 0..5 {
        harness::served_by(&client).await.unwrap();
    }

    block_in_place(|| cluster.replica(0).stop()).unwrap();
    let view = proxy.shared.cluster().clone();
    harness::eventually("the monitor to notice the stop", SOON, || {
        let view = view.clone();
        async move { (!view.is_healthy(1)).then_some(()) }
    })
    .await;
    for i in 0..50 {
        let port = harness::served_by(&client)
            .await
            .unwrap_or_else(|e| panic!("read {i} with the replica down: {e}"));
        assert_eq!(port, primary, "read {i} with the replica down");
    }

    block_in_place(|| cluster.replica(0).start()).unwrap();
    harness::until_served_by(
        &client,
        replica,
        "the restarted replica serving reads",
        SOON,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_receives_the_writes_without_a_proxy_restart() {
    let cluster = harness::private_cluster().await;
    let db = block_in_place(|| cluster.fresh_database("promote")).unwrap();
    // A write sent before the monitor has seen the promotion waits for the
    // dead primary for up to checkout_timeout (5 s by default): keep that
    // short so such a write cannot use up the 2 s by itself.
    let proxy = harness::proxy_for(&cluster, "[pool]\ncheckout_timeout = \"500ms\"\n").await;
    let (old_primary, promoted) = (cluster.primary().port(), cluster.replica(0).port());
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let insert = |id: i32| format!("insert into t values ({id}) returning ({PORT_SQL})");
    client
        .batch_execute("create table t (id int primary key)")
        .await
        .unwrap();
    let port = harness::scalar(&client, &insert(0)).await.unwrap();
    assert_eq!(harness::parse_port(port.as_deref()), old_primary);
    block_in_place(|| cluster.wait_for_replay(cluster.replica(0))).unwrap();

    block_in_place(|| {
        cluster.primary().stop()?;
        cluster.promote(cluster.replica(0))
    })
    .unwrap();
    let promoted_at = Instant::now();
    // Writes sent before the monitor has seen the promotion may fail.
    let deadline = promoted_at + Duration::from_secs(2);
    let mut errors = Vec::new();
    for id in 1.. {
        match harness::scalar(&client, &insert(id)).await {
            Ok(port) if harness::parse_port(port.as_deref()) == promoted => break,
            Ok(port) => panic!("write {id} went to {port:?} after the promotion"),
            Err(e) => errors.push(harness::error_text(&e)),
        }
        assert!(
            Instant::now() < deadline,
            "no write reached the promoted node within 2 s; errors: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "first write on the promoted node {:?} after the promotion; errors before: {errors:?}",
        promoted_at.elapsed()
    );
    for id in 1000..1010 {
        let port = harness::scalar(&client, &insert(id)).await.unwrap();
        assert_eq!(harness::parse_port(port.as_deref()), promoted);
    }
    let rows = harness::scalar(&client, "select count(*) from t where id = 0")
        .await
        .unwrap();
    assert_eq!(rows.as_deref(), Some("1"), "the write before the promotion");
}

#[tokio::test]
async fn without_fallback_a_read_with_no_eligible_replica_gets_08006() {
    // A replica address where nothing listens: never healthy.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let db = harness::fresh_db("routing_nofallback");
    let config =
        format!("[cluster]\nreplicas = [\"{closed}\"]\n[routing]\nfallback_to_primary = false\n");
    let proxy = harness::proxy(&config).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();

    let simple = client.simple_query("select 1").await.unwrap_err();
    let extended = client
        .query_typed("select $1::int", &[(&1i32, Type::INT4)])
        .await
        .unwrap_err();
    for err in [simple, extended] {
        let db_error = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(db_error.code().code(), "08006", "{db_error:?}");
        let message = db_error.message();
        assert!(
            message.contains("every replica is failing its health checks")
                && message.contains("fallback_to_primary"),
            "the message should say why no replica can serve it: {message}"
        );
    }
    // Writes still go to the primary, and the session carries on.
    client
        .batch_execute("create table t (id int); insert into t values (1)")
        .await
        .unwrap();
    let hinted = harness::scalar(&client, "/* pgsidecar:primary */ select count(*) from t")
        .await
        .unwrap();
    assert_eq!(hinted.as_deref(), Some("1"));
}
