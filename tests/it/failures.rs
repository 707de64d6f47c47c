//! Failures the proxy survives without a restart: server connections
//! killed while pooled or mid-query, a primary restart, and a node that
//! stops answering (SIGSTOP) while other clients carry on.

use std::time::Duration;

use pgsidecar::proxy::Proxy;
use tokio_postgres::Client;

use crate::cluster_monitor::frozen::Frozen;
use crate::harness::{self, APP};
use crate::private;

const SOON: Duration = Duration::from_secs(20);

/// Terminates every pool connection the primary has open on `db`; returns
/// how many, once they are all gone from pg_stat_activity.
async fn kill_backends(su: &Client, db: &str) -> usize {
    let pids: Vec<i32> = harness::backends(su, db)
        .await
        .into_iter()
        .map(|(pid, ..)| pid)
        .collect();
    for pid in &pids {
        su.execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .unwrap();
    }
    harness::eventually("the killed backends to exit", SOON, || async {
        let left = harness::backends(su, db).await;
        left.iter()
            .all(|(pid, ..)| !pids.contains(pid))
            .then_some(())
    })
    .await;
    pids.len()
}

async fn transaction(client: &Client, n: i32) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO t VALUES ({n}); SELECT count(*) FROM t; COMMIT"
        ))
        .await
}

#[tokio::test]
async fn pooled_connections_killed_while_idle_are_replaced_unnoticed() {
    let db = harness::fresh_db("killed_idle");
    let proxy = harness::proxy("[pool]\nsize = 4").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(harness::connect_proxy(&proxy, APP, &db).await.unwrap());
    }
    clients[0]
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();
    // Four transactions at once open four server connections.
    let all = clients
        .iter()
        .enumerate()
        .map(|(i, c)| transaction(c, i as i32));
    for r in futures_util::future::join_all(all).await {
        r.unwrap();
    }
    let su = harness::superuser().await;
    for round in 0..3 {
        let killed = kill_backends(&su, &db).await;
        assert!(killed >= 1, "round {round}: the pool had connections");
        // Every client's next transaction gets a live server.
        for (i, c) in clients.iter().enumerate() {
            transaction(c, (round * 10 + i) as i32)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {}", harness::error_text(&e)));
        }
    }
}

#[tokio::test]
async fn a_backend_killed_mid_query_fails_only_its_client() {
    let db = harness::fresh_db("killed_busy");
    let proxy = harness::proxy("[pool]\nsize = 4").await;
    let victim = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let others = [
        harness::connect_proxy(&proxy, APP, &db).await.unwrap(),
        harness::connect_proxy(&proxy, APP, &db).await.unwrap(),
    ];
    others[0]
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();
    let su = harness::superuser().await;

    let sleeping = tokio::spawn(async move {
        let r = victim.simple_query("SELECT pg_sleep(60)").await;
        (victim, r)
    });
    let pid = harness::eventually("the victim's query to run", SOON, || async {
        harness::backends(&su, &db)
            .await
            .into_iter()
            .find(|(_, state, q)| state == "active" && q.contains("pg_sleep(60)"))
            .map(|(pid, ..)| pid)
    })
    .await;
    // The others work while the victim's query runs...
    for (i, c) in others.iter().enumerate() {
        transaction(c, i as i32).await.unwrap();
    }
    su.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let (victim, result) = sleeping.await.unwrap();
    let e = result.expect_err("the killed query fails");
    let text = harness::error_text(&e);
    assert!(text.starts_with("57P01"), "{text}");
    assert!(victim.is_closed() || victim.simple_query("SELECT 1").await.is_err());
    // ...and after it.
    for (i, c) in others.iter().enumerate() {
        transaction(c, 10 + i as i32).await.unwrap();
    }
    // The victim's user reconnects and carries on.
    let again = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    transaction(&again, 99).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restart_fails_in_flight_work_then_new_work_succeeds() {
    let cluster = private::cluster(0, &[]).await;
    let config = private::proxy_config(
        &cluster,
        false,
        "[pool]\nsize = 2\ncheckout_timeout = \"1s\"\n[cluster]\nconnect_timeout = \"1s\"\n",
    );
    let proxy = Proxy::start(config).await.unwrap();
    let setup = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    setup.batch_execute("CREATE TABLE t (n int)").await.unwrap();
    let idle = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    transaction(&idle, 1).await.unwrap();

    let busy = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    let sleeping = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(60)").await });
    let direct = harness::connect(&cluster.primary().conn_string())
        .await
        .unwrap();
    harness::eventually("the long query to run", SOON, || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    drop(direct);

    // Fast shutdown: the running query is terminated with 57P01.
    let node = cluster.primary();
    tokio::task::block_in_place(|| node.stop()).unwrap();
    let e = sleeping.await.unwrap().expect_err("in-flight query fails");
    let text = harness::error_text(&e);
    assert!(text.starts_with("57P01"), "{text}");

    // While it is down, a transaction gets a clear error, not a hang.
    let e = transaction(&idle, 2)
        .await
        .expect_err("the primary is down");
    let text = harness::error_text(&e);
    assert!(
        text.starts_with("08006") || text.starts_with("53300"),
        "a connection error naming the cause: {text}"
    );

    tokio::task::block_in_place(|| node.start()).unwrap();
    // The same client connection, no proxy restart: works again.
    harness::eventually(
        "transactions to succeed after the restart",
        SOON,
        || async { transaction(&idle, 3).await.ok() },
    )
    .await;
    let fresh = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    transaction(&fresh, 4).await.unwrap();
}

/// The primary frozen mid-query: the query's client gets query_timeout, a
/// client waiting for the primary's only connection gets checkout_timeout,
/// and clients reading from the replica never notice. SIGCONT brings it
/// back.
#[tokio::test]
async fn a_frozen_node_times_out_its_clients_without_stalling_others() {
    let cluster = private::cluster(1, &[]).await;
    let config = private::proxy_config(
        &cluster,
        true,
        // A slow monitor keeps the view as it was before the freeze, so
        // clients really wait for the frozen node and the replica's lag is
        // never the reason to skip it.
        "[pool]\nsize = 1\ncheckout_timeout = \"1s\"\n\
         [proxy]\nquery_timeout = \"2s\"\n\
         [routing]\nlag_check_interval = \"1h\"\nmax_replica_lag = \"1h\"\n",
    );
    let proxy = Proxy::start(config).await.unwrap();
    let busy = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    let waiter = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    let reader = harness::connect_proxy(&proxy, APP, "postgres")
        .await
        .unwrap();
    let replica_read = "/* pgsidecar:replica */ SELECT pg_is_in_recovery()";
    harness::eventually("reads to reach the replica", SOON, || async {
        let r = harness::scalar(&reader, replica_read).await.ok()?;
        (r.as_deref() == Some("t")).then_some(())
    })
    .await;

    let primary = cluster.primary();
    let direct = harness::connect(&primary.conn_string()).await.unwrap();
    let stuck = tokio::spawn(async move {
        let r = busy
            .simple_query("/* pgsidecar:primary */ SELECT pg_sleep(30)")
            .await;
        (busy, r)
    });
    harness::eventually("the primary query to run", SOON, || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(30)'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    drop(direct);
    let frozen = Frozen::new(primary);

    // The primary's only connection is taken: the waiter times out.
    let waiting = tokio::spawn(async move {
        let r = waiter
            .simple_query("/* pgsidecar:primary */ SELECT 1")
            .await;
        (waiter, r)
    });
    // Meanwhile the replica serves its readers.
    for _ in 0..10 {
        let r = harness::scalar(&reader, replica_read).await.unwrap();
        assert_eq!(r.as_deref(), Some("t"));
    }
    assert!(!stuck.is_finished(), "the replica's readers finished first");

    let (waiter, r) = waiting.await.unwrap();
    let e = r.expect_err("no primary connection was free");
    let text = harness::error_text(&e);
    assert!(
        text.starts_with("53300") && text.contains("within 1s"),
        "checkout_timeout names itself: {text}"
    );

    let (_busy, r) = stuck.await.unwrap();
    let e = r.expect_err("the frozen query times out");
    let text = harness::error_text(&e);
    assert!(
        text.starts_with("57014") && text.contains("query_timeout"),
        "query_timeout names itself: {text}"
    );
    harness::scalar(&reader, replica_read).await.unwrap();

    drop(frozen);
    harness::eventually("the primary to answer after SIGCONT", SOON, || async {
        let r = harness::scalar(
            &waiter,
            "/* pgsidecar:primary */ SELECT pg_is_in_recovery()",
        )
        .await
        .ok()?;
        (r.as_deref() == Some("f")).then_some(())
    })
    .await;
}

/// Bytes waiting unread in the TCP sockets of process `pid`, from
/// /proc/net/tcp (rx_queue) and the process's socket inodes.
fn unread_bytes(pid: i32) -> u64 {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let rx = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
            inodes.contains(&f.get(9)?.to_string()).then_some(rx)
        })
        .sum()
}

/// The race check_idle cannot see: a backend terminated after it was
/// checked out answers the request with a FATAL. Nothing ran, so the proxy
/// sends the request to a fresh connection and the client never knows.
#[tokio::test]
async fn a_request_reaching_a_dying_backend_is_retried_on_a_fresh_one() {
    let db = harness::fresh_db("killed_race");
    let proxy = harness::proxy("[pool]\nsize = 1").await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();
    let su = harness::superuser().await;
    let pid = harness::backends(&su, &db).await[0].0;

    // Stopped, the backend cannot act on its termination until SIGCONT.
    // SAFETY: signalling a server process of this test's own cluster.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let terminated: bool = su
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    let insert = tokio::spawn(async move {
        let r = client.batch_execute("INSERT INTO t VALUES (1)").await;
        (client, r)
    });
    // The proxy found nothing wrong with the idle connection and sent the
    // INSERT: it waits, unread, in the stopped backend's socket.
    harness::eventually("the request to reach the stopped backend", SOON, || async {
        (unread_bytes(pid) > 0).then_some(())
    })
    .await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };

    let (client, r) = insert.await.unwrap();
    r.unwrap_or_else(|e| panic!("the request was not retried: {}", harness::error_text(&e)));
    assert_eq!(
        harness::scalar(&client, "SELECT count(*) FROM t")
            .await
            .unwrap()
            .as_deref(),
        Some("1"),
        "the INSERT ran exactly once"
    );
}
