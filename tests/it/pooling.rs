//! Pooling as a user sees it: pgbench through a pool of 5 loses no
//! transaction and never opens more than 5 backends; transaction mode
//! shares one server between clients; session mode keeps session state for
//! one client and cleans it for the next; checkout_timeout and
//! max_client_conn answer 53300 with the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::harness::{self, APP};

// ---- pgbench ----------------------------------------------------------------

/// Samples the primary's client backends on `db` until stopped.
struct BackendPoller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<usize>>,
}

impl BackendPoller {
    async fn start(db: &str) -> BackendPoller {
        let su = harness::superuser().await;
        let stop = Arc::new(AtomicBool::new(false));
        let db = db.to_string();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push(harness::backends(&su, &db).await.len());
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            samples
        });
        BackendPoller { stop, task }
    }

    /// Every sample taken.
    async fn finish(self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn pgbench(proxy: &pgsidecar::proxy::Proxy, db: &str, args: &[&str]) -> (bool, String) {
    let out = harness::pg_tool("pgbench")
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args(["-U", APP.name])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", APP.password.unwrap())
        .output()
        .await
        .expect("running pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The number after `label` on its line of pgbench's report.
fn report_number(report: &str, label: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with(label))?;
    let digits: String = line[label.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `pgbench -i`, then a run with `args` while the primary is watched: no
/// transaction fails and the pool of 5 is never exceeded.
async fn pgbench_through_a_pool_of_5(prefix: &str, args: &[&str]) {
    let db = harness::fresh_db(prefix);
    let proxy = harness::proxy("[pool]\nsize = 5\n").await;
    let (ok, init) = pgbench(&proxy, &db, &["-i", "-q"]).await;
    assert!(ok, "pgbench -i through the proxy failed:\n{init}");

    let poller = BackendPoller::start(&db).await;
    let (ok, report) = pgbench(&proxy, &db, args).await;
    let samples = poller.finish().await;

    assert!(ok, "pgbench {args:?} failed:\n{report}");
    let processed = report_number(&report, "number of transactions actually processed:");
    assert!(
        processed.is_some_and(|n| n > 0),
        "no transactions processed:\n{report}"
    );
    // pgbench 15+ reports failures; older ones exit non-zero instead.
    if report.contains("number of failed transactions:") {
        assert_eq!(
            report_number(&report, "number of failed transactions:"),
            Some(0),
            "{report}"
        );
    }
    assert!(!report.contains("aborted"), "{report}");

    let max = samples.iter().copied().max().unwrap_or(0);
    assert!(
        max <= 5,
        "the primary saw {max} backends on {db} with [pool] size = 5 (samples: {samples:?})"
    );
    assert!(
        max > 0,
        "the poller never saw the load ({} samples)",
        samples.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_50_clients_through_a_pool_of_5() {
    pgbench_through_a_pool_of_5("pgbench_tpcb", &["-c", "50", "-j", "2", "-T", "10"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_extended_protocol_through_a_pool_of_5() {
    pgbench_through_a_pool_of_5(
        "pgbench_select",
        &["-S", "-M", "extended", "-c", "20", "-j", "2", "-T", "10"],
    )
    .await;
}

// ---- transaction mode ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_one_server_between_clients() {
    let db = harness::fresh_db("tx_mode_reuse");
    let proxy = harness::proxy("[pool]\nsize = 1\n").await;
    let su = harness::superuser().await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    a.batch_execute("CREATE TABLE t (who text, n int)")
        .await
        .unwrap();

    // Alternating transactions, each statement a round trip of its own.
    for n in 0..5 {
        for (who, client) in [("a", &a), ("b", &b)] {
            client.batch_execute("BEGIN").await.unwrap();
            client
                .batch_execute(&format!("INSERT INTO t VALUES ('{who}', {n})"))
                .await
                .unwrap();
            client.batch_execute("COMMIT").await.unwrap();
        }
    }
    let pid_a = harness::scalar(&a, "SELECT pg_backend_pid()")
        .await
        .unwrap();
    let pid_b = harness::scalar(&b, "SELECT pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(
        pid_a, pid_b,
        "both clients ran on the one server connection"
    );

    // Concurrent transactions queue for the one server and all succeed.
    let work = |client: tokio_postgres::Client, who: &'static str| async move {
        for n in 0..20 {
            client
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO t VALUES ('{who}', {n}); COMMIT"
                ))
                .await
                .unwrap();
            client.batch_execute("BEGIN").await.unwrap();
            client
                .batch_execute(&format!("INSERT INTO t VALUES ('{who}', {n})"))
                .await
                .unwrap();
            client.batch_execute("COMMIT").await.unwrap();
        }
        client
    };
    let (a, b) = tokio::join!(tokio::spawn(work(a, "a")), tokio::spawn(work(b, "b")));
    let (a, _b) = (a.unwrap(), b.unwrap());

    assert_eq!(
        harness::scalar(&a, "SELECT count(*) FROM t").await.unwrap(),
        Some("90".to_string())
    );
    let backends = harness::backends(&su, &db).await;
    assert_eq!(
        backends.len(),
        1,
        "the primary sees one backend: {backends:?}"
    );
}

/// Clients waiting for the one server are served in the order they asked,
/// and the client that gave the server back and asks again queues behind
/// them. (bb8's waiters were served in order too; what the hand-off adds —
/// a newcomer arriving while a woken waiter is on its way can no longer
/// take the server first — depends on timing a test cannot arrange.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_served_in_arrival_order() {
    let db = harness::fresh_db("fifo_handoff");
    let proxy = harness::proxy(
        "[pool]\nsize = 1\ncheckout_timeout = \"60s\"\n[admin]\nusers = [\"app\"]\n",
    )
    .await;
    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    holder
        .batch_execute("CREATE TABLE served (n serial, who text)")
        .await
        .unwrap();
    // A lone BEGIN is answered by the proxy; the first statement takes the server.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let mut waiters = Vec::new();
    for i in 1..=3 {
        let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        waiters.push(tokio::spawn(async move {
            client
                .batch_execute(&format!("INSERT INTO served (who) VALUES ('w{i}')"))
                .await
                .map(|()| client)
        }));
        // The next one asks only once this one is queued.
        harness::eventually(
            &format!("{i} clients waiting"),
            Duration::from_secs(20),
            || async {
                let pools = harness::console(&proxy, APP, "SHOW POOLS").await.rows();
                pools
                    .iter()
                    .any(|p| p["database"] == db && p["cl_waiting"] == i.to_string())
                    .then_some(())
            },
        )
        .await;
    }

    holder.batch_execute("COMMIT").await.unwrap();
    holder
        .batch_execute("INSERT INTO served (who) VALUES ('holder')")
        .await
        .unwrap();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    let order = harness::scalar(
        &holder,
        "SELECT string_agg(who, ',' ORDER BY n) FROM served",
    )
    .await
    .unwrap();
    assert_eq!(
        order.as_deref(),
        Some("w1,w2,w3,holder"),
        "served in arrival order, the client asking again last"
    );
}

/// A server older than `max_lifetime` when its client gives it back is
/// closed, not handed to the client waiting for it: the waiter gets a
/// newly opened server (another backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_past_max_lifetime_is_not_handed_to_the_waiting_client() {
    let db = harness::fresh_db("lifetime_handoff");
    let proxy = harness::proxy(
        "[pool]\nsize = 1\ncheckout_timeout = \"60s\"\nmax_lifetime = \"1s\"\n\
         [admin]\nusers = [\"app\"]\n",
    )
    .await;
    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    // A lone BEGIN is answered by the proxy; the first statement takes the server.
    holder.batch_execute("BEGIN").await.unwrap();
    let first = harness::scalar(&holder, "SELECT pg_backend_pid()")
        .await
        .unwrap();
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let waiter = tokio::spawn(async move {
        harness::scalar(&client, "SELECT pg_backend_pid()")
            .await
            .map(|pid| (client, pid))
    });
    harness::eventually("a client waiting", Duration::from_secs(20), || async {
        let pools = harness::console(&proxy, APP, "SHOW POOLS").await.rows();
        pools
            .iter()
            .any(|p| p["database"] == db && p["cl_waiting"] == "1")
            .then_some(())
    })
    .await;
    // The proxy counts a server's age from the end of its login, Postgres
    // from the backend's fork: on a loaded machine the login alone has
    // taken more than a second, so the margin over `max_lifetime` is wide.
    harness::eventually(
        "the held server past max_lifetime",
        Duration::from_secs(20),
        || async {
            let older = harness::scalar(
                &holder,
                "SELECT clock_timestamp() - backend_start > interval '3 s' \
                 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            )
            .await
            .unwrap();
            (older.as_deref() == Some("t")).then_some(())
        },
    )
    .await;
    holder.batch_execute("COMMIT").await.unwrap();
    let (_client, second) = waiter.await.unwrap().unwrap();
    assert!(first.is_some());
    assert_ne!(
        first, second,
        "the waiter was handed the server past max_lifetime instead of a new one"
    );
}

/// A client whose next read was already waiting in the proxy when it gave
/// its replica server back (pipelined behind a lone read, which is released
/// at its end) queues behind the clients that were waiting for that server,
/// instead of taking it back before the one woken for it runs. The order
/// is the replica's own: each read returns `clock_timestamp()`, and all run
/// one after another on the pool's one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_asking_again_does_not_overtake_the_waiting_ones() {
    let cluster = harness::cluster();
    let (db, direct) = harness::replicated_db("fifo_barging", "CREATE TABLE locked (id int)").await;
    let config = format!(
        "{}[routing]\nmax_replica_lag = \"10s\"\n\
         [pool]\nsize = 1\ncheckout_timeout = \"60s\"\n[admin]\nusers = [\"app\"]\n",
        harness::shared_replica_toml()
    );
    let proxy = harness::proxy(&config).await;
    let asker = Arc::new(harness::connect_proxy(&proxy, APP, &db).await.unwrap());
    let replica_port = cluster.replica(0).port();
    harness::until_served_by(
        &asker,
        replica_port,
        "the replica serving reads",
        Duration::from_secs(15),
    )
    .await;

    // The primary takes an ACCESS EXCLUSIVE lock; once the replica has
    // replayed it, a read of the table there waits for it.
    direct
        .batch_execute("BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let on_replica = harness::connect(&cluster.replica(0).conn_string_as(
        APP.name,
        APP.password,
        &db,
    ))
    .await
    .unwrap();
    // A commit elsewhere flushes the lock's WAL record to the replica.
    let flusher = harness::connect(
        &cluster
            .primary()
            .conn_string_as(APP.name, APP.password, &db),
    )
    .await
    .unwrap();
    harness::eventually(
        "the lock replayed on the replica",
        Duration::from_secs(20),
        || async {
            flusher
                .batch_execute("SELECT txid_current()")
                .await
                .unwrap();
            let n = harness::scalar(
                &on_replica,
                "SELECT count(*) FROM pg_locks WHERE relation = 'locked'::regclass",
            )
            .await
            .unwrap();
            (n.as_deref() != Some("0")).then_some(())
        },
    )
    .await;

    const STAMP: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint";
    let stamp = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> i64 {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
                _ => None,
            })
            .expect("a row")
    };
    // The asker's blocked read and its next one, sent in one write.
    let first = {
        let asker = asker.clone();
        tokio::spawn(async move {
            let (blocked, next) = tokio::join!(
                asker.simple_query("SELECT count(*) FROM locked"),
                asker.simple_query(STAMP),
            );
            blocked.unwrap();
            next.unwrap()
        })
    };
    let waiting_count = |n: usize| {
        let proxy = &proxy;
        let db = &db;
        async move {
            harness::eventually(
                &format!("{n} clients waiting"),
                Duration::from_secs(20),
                || async {
                    let pools = harness::console(proxy, APP, "SHOW POOLS").await.rows();
                    pools
                        .iter()
                        .any(|p| p["database"] == *db && p["cl_waiting"] == n.to_string())
                        .then_some(())
                },
            )
            .await
        }
    };
    let mut waiters = Vec::new();
    for n in 1..=3 {
        let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        waiters.push(tokio::spawn(async move {
            client.simple_query(STAMP).await.unwrap()
        }));
        waiting_count(n).await;
    }
    direct.batch_execute("COMMIT").await.unwrap();

    let mut served = vec![("asker again", stamp(first.await.unwrap()))];
    for (n, w) in waiters.into_iter().enumerate() {
        served.push((["w1", "w2", "w3"][n], stamp(w.await.unwrap())));
    }
    served.sort_by_key(|(_, at)| *at);
    let order: Vec<_> = served.iter().map(|(who, _)| *who).collect();
    assert_eq!(
        order,
        ["w1", "w2", "w3", "asker again"],
        "order of service on the replica: {served:?}"
    );
}

#[tokio::test]
async fn checkout_timeout_answers_53300_and_the_retry_succeeds() {
    let db = harness::fresh_db("checkout_timeout");
    let proxy = harness::proxy("[pool]\nsize = 1\ncheckout_timeout = \"300ms\"\n").await;
    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let waiter = harness::connect_proxy(&proxy, APP, &db).await.unwrap();

    // A lone BEGIN is answered by the proxy; the first statement takes a server.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let err = harness::scalar(&waiter, "SELECT 1").await.unwrap_err();
    let text = harness::error_text(&err);
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{text}");
    assert!(
        text.contains("no server connection") && text.contains("free within 300ms"),
        "{text}"
    );

    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        harness::scalar(&waiter, "SELECT 1")
            .await
            .unwrap()
            .as_deref(),
        Some("1"),
        "the same client succeeds on retry"
    );
}

#[tokio::test]
async fn max_client_conn_refuses_the_third_client_with_53300() {
    let db = harness::fresh_db("max_client_conn");
    let proxy = harness::proxy("[proxy]\nmax_client_conn = 2\n").await;
    let first = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let second = harness::connect_proxy(&proxy, APP, &db).await.unwrap();

    let err = harness::connect_proxy(&proxy, APP, &db).await.unwrap_err();
    let text = harness::error_text(&err);
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{text}");
    assert!(text.contains("too many clients"), "{text}");
    assert!(text.contains("max_client_conn is 2"), "{text}");

    // The two connected clients are fine, and a slot frees up when one leaves.
    assert!(harness::scalar(&second, "SELECT 1").await.is_ok());
    drop(first);
    let third = harness::eventually("a free client slot", Duration::from_secs(10), || async {
        harness::connect_proxy(&proxy, APP, &db).await.ok()
    })
    .await;
    assert!(harness::scalar(&third, "SELECT 1").await.is_ok());
}

// ---- session mode ----------------------------------------------------------------

#[tokio::test]
async fn session_mode_keeps_session_state_and_cleans_it_for_the_next_client() {
    let db = harness::fresh_db("session_mode");
    let proxy = harness::proxy("[proxy]\npool_mode = \"session\"\n[pool]\nsize = 1\n").await;

    let first = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    first
        .batch_execute("SET application_name = 'first_client'; SET search_path = custom, public")
        .await
        .unwrap();
    // Later statements and transactions of the same client still see it.
    first.batch_execute("BEGIN; COMMIT").await.unwrap();
    first
        .batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    let state = "SELECT current_setting('application_name') || '|' || \
                 current_setting('search_path') || '|' || \
                 (SELECT count(*) FROM pg_tables WHERE tablename = 'scratch') || '|' || \
                 pg_backend_pid()";
    let seen = harness::scalar(&first, state).await.unwrap().unwrap();
    let parts: Vec<&str> = seen.split('|').collect();
    assert_eq!(
        &parts[..3],
        ["first_client", "custom, public", "1"],
        "{seen}"
    );
    let first_pid = parts[3].to_string();
    // Named prepared statements work across transactions in session mode.
    let statement = first.prepare("SELECT $1::int * 2").await.unwrap();
    first.batch_execute("BEGIN; COMMIT").await.unwrap();
    let row = first.query_one(&statement, &[&21i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    drop(first);

    // The next client waits for the one server connection, which comes
    // back after DISCARD ALL.
    let next = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let seen = harness::scalar(&next, state).await.unwrap().unwrap();
    let parts: Vec<&str> = seen.split('|').collect();
    assert_eq!(parts[3], first_pid, "the same server connection, reused");
    assert_ne!(parts[0], "first_client", "{seen}");
    assert_eq!(parts[1], "\"$user\", public", "{seen}");
    assert_eq!(parts[2], "0", "the temp table is gone: {seen}");
    let err = next.prepare("SELECT 1").await.map(|_| ());
    assert!(err.is_ok(), "statement names are free again");
}
