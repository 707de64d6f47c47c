//! Read-your-writes across sidecars: `pgsidecar run` processes in front of
//! a private primary and a replica kept one second behind
//! (`recovery_min_apply_delay`), the replica within `max_replica_lag` so
//! that only read-your-writes can keep a read off it.
//!
//! - Members of one fleet: a row inserted through member A is seen by a read
//!   through member B by another client at once, while reads of a table
//!   nobody writes keep going to the replica.
//! - Causal tokens, across sidecars that share no fleet (another service):
//!   the writer's `SHOW pgsidecar.last_write_lsn`, carried to a session on
//!   the other sidecar as `SET pgsidecar.min_lsn` or a
//!   `/* pgsidecar:min_lsn=… */` hint, keeps that session's reads off a
//!   replica that has not replayed it.
//!
//! Figures are printed for docs/fleet.md
//! (`cargo test --test it fleet_ryw -- --nocapture`).

use std::time::Duration;

use pgsidecar::demo::LocalCluster;
use tokio::task::block_in_place;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::fleet_support::{APP_PASSWORD, APP_ROLE, Member, ONE_AT_A_TIME, cluster_with_replicas};
use crate::harness::{self, PORT_SQL};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(20);
/// Members' routing: the replica one second behind stays eligible.
const ROUTING: &str = "[pool]\nbudget = 8\n[routing]\nmax_replica_lag = \"5s\"\n";

/// A private primary and replica, database `ryw` owned by the fleet's
/// role with table `w` (written by the tests, empty) and `u` (one row,
/// never written), replayed by the replica, which then falls a second
/// behind.
async fn setup() -> LocalCluster {
    let cluster = cluster_with_replicas(&[], 1).await;
    block_in_place(|| {
        cluster
            .primary()
            .psql(&format!("CREATE DATABASE ryw OWNER {APP_ROLE}"))
    })
    .expect("create database");
    let direct = harness::connect(&format!(
        "host=127.0.0.1 port={} user={APP_ROLE} password={APP_PASSWORD} dbname=ryw",
        cluster.primary().port()
    ))
    .await
    .expect("direct connection to the primary");
    direct
        .batch_execute(
            "create table w (id int primary key); \
             create table u (id int primary key); insert into u values (1)",
        )
        .await
        .expect("tables");
    block_in_place(|| cluster.wait_for_replay(cluster.replica(0))).expect("replay");
    cluster
}

async fn delay_replica(cluster: &LocalCluster) {
    block_in_place(|| cluster.replica(0).set_apply_delay(Duration::from_secs(1)))
        .expect("apply delay");
}

fn row(messages: &[SimpleQueryMessage]) -> &tokio_postgres::SimpleQueryRow {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row")
}

/// Inserts row `id` into `w`, alternating the simple and the extended
/// protocol.
async fn insert(client: &Client, id: i32) {
    let result = if id % 2 == 0 {
        client
            .batch_execute(&format!("insert into w values ({id})"))
            .await
    } else {
        client
            .execute("insert into w values ($1)", &[&id])
            .await
            .map(drop)
    };
    result.unwrap_or_else(|e| panic!("insert {id}: {e}"));
}

/// Reads row `id` of `table` (`prefix` before the statement, e.g. a hint),
/// alternating the simple and the extended protocol; returns how many rows
/// matched and the port of the node that served the read.
async fn read(client: &Client, prefix: &str, table: &str, id: i32) -> (i64, u16) {
    let sql = format!("{prefix}select count(*), ({PORT_SQL}) from {table} where id = ");
    if id % 2 == 0 {
        let rows = client
            .simple_query(&format!("{sql}{id}"))
            .await
            .unwrap_or_else(|e| panic!("read {id} of {table}: {e}"));
        let r = row(&rows);
        let count = r.get(0).and_then(|c| c.parse().ok()).expect("a count");
        (count, harness::parse_port(r.get(1)))
    } else {
        let rows = client
            .query_typed(&format!("{sql}$1"), &[(&id, Type::INT4)])
            .await
            .unwrap_or_else(|e| panic!("read {id} of {table}: {e}"));
        let port: String = rows[0].get(1);
        (rows[0].get(0), harness::parse_port(Some(&port)))
    }
}

/// One value from a simple query (e.g. a SHOW).
async fn show(client: &Client, sql: &str) -> String {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row(&rows).get(0).expect("a value").to_string()
}

/// Waits until a read of `u` through `client` is served by the replica.
async fn until_replica_reads(client: &Client, replica: u16, what: &str) {
    harness::eventually(what, SOON, || async {
        let (_, port) = read(client, "", "u", 1).await;
        (port == replica).then_some(())
    })
    .await;
}

/// 300 times: a row inserted through member A, then read at once through
/// member B by another client: never missed. Meanwhile a third client on B
/// reads a table nobody writes: mostly from the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_member_is_seen_by_a_read_through_another() {
    const TRIALS: i32 = 300;
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = setup().await;
    let a = Member::start_in(&cluster, "a", Some("t"), ROUTING).await;
    let b = Member::start_in(&cluster, "b", Some("t"), ROUTING).await;
    let replica = cluster.replica(0).port();
    let writer = a.connect("ryw").await;
    let reader = b.connect("ryw").await;
    let bystander = b.connect("ryw").await;
    delay_replica(&cluster).await;
    until_replica_reads(&bystander, replica, "member B reading u from the replica").await;
    // The members have heard each other once: the first announcement after
    // a member starts can wait tens of milliseconds (seen in CI: the first
    // of 300 reads stale; docs/fleet.md lists it as a limit).
    insert(&writer, -1).await;
    harness::eventually("member B hearing a first announcement", SOON, || async {
        let metrics = b.process.http_get("/metrics").await;
        (counter(&metrics, "pgsidecar_fleet_writes_received_total").unwrap_or(0.0) >= 1.0)
            .then_some(())
    })
    .await;
    // Each member listens on a connection that does nothing else, so that
    // its coordinator rounds never hold a notification back.
    let su = harness::connect(&cluster.primary().conn_string())
        .await
        .unwrap();
    let listeners = su
        .query(
            "SELECT application_name FROM pg_stat_activity \
             WHERE application_name LIKE 'pgsidecar/%#listen' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = listeners.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names.len(),
        2,
        "one listening connection per member: {names:?}"
    );

    let (mut stale, mut on_replica, mut unrelated_on_replica) = (Vec::new(), 0, 0);
    for id in 0..TRIALS {
        insert(&writer, id).await;
        let (count, port) = read(&reader, "", "w", id).await;
        if count != 1 {
            stale.push(id);
        }
        on_replica += u32::from(port == replica);
        let (_, port) = read(&bystander, "", "u", 1).await;
        unrelated_on_replica += u32::from(port == replica);
    }
    let metrics_a = a.process.http_get("/metrics").await;
    let metrics_b = b.process.http_get("/metrics").await;
    // The window: how long after A had its announcement's answer (and so
    // released the client's ReadyForQuery) B had heard it, per write.
    let announced = times(&a.process.log(), "fleet writes announced");
    let heard = times(&b.process.log(), "fleet write heard");
    let mut lags: Vec<i64> = announced.iter().zip(&heard).map(|(a, h)| h - a).collect();
    lags.sort_unstable();
    if !lags.is_empty() {
        let at = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
        println!(
            "fleet_ryw: B heard A's announcement, after A had its answer (µs, {} writes): \
             min {} median {} p99 {} max {}",
            lags.len(),
            lags[0],
            at(0.5),
            at(0.99),
            lags[lags.len() - 1]
        );
    }
    println!(
        "fleet_ryw: {TRIALS} inserts through member A, each read at once through member B \
         by another client (replica 1 s behind): {} stale, {on_replica} served by the replica; \
         reads of an unwritten table through B: {unrelated_on_replica} of {TRIALS} on the replica; \
         A published {:?}, B received {:?}",
        stale.len(),
        counter(&metrics_a, "pgsidecar_fleet_writes_published_total"),
        counter(&metrics_b, "pgsidecar_fleet_writes_received_total"),
    );
    assert_eq!(
        stale,
        Vec::<i32>::new(),
        "reads through B that missed A's write"
    );
    assert!(
        unrelated_on_replica * 10 >= TRIALS as u32 * 9,
        "reads of a table nobody wrote: only {unrelated_on_replica} of {TRIALS} on the replica"
    );
    assert!(
        counter(&metrics_b, "pgsidecar_fleet_writes_received_total").unwrap_or(0.0) >= 1.0,
        "{metrics_b}"
    );
}

/// 100 times: a row inserted through a sidecar of one service, its commit
/// LSN asked with `SHOW pgsidecar.last_write_lsn` and carried to a session
/// on a sidecar of another service (no fleet shared), as
/// `SET pgsidecar.min_lsn` or a hint: that session's read never misses the
/// row. Half the writes go through a fleet member (the LSN comes from the
/// fleet's announcement), half through a sidecar without a fleet (from the
/// monitor's samples).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_lsn_carried_to_another_sidecar_keeps_reads_off_a_stale_replica() {
    const TRIALS: i32 = 100;
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = setup().await;
    let in_fleet = Member::start_in(&cluster, "writer-fleet", Some("svc"), ROUTING).await;
    let alone = Member::start_in(&cluster, "writer-alone", None, ROUTING).await;
    let other = Member::start_in(&cluster, "other-service", None, ROUTING).await;
    let replica = cluster.replica(0).port();
    let writers = [in_fleet.connect("ryw").await, alone.connect("ryw").await];
    let session = other.connect("ryw").await;
    let hinted = other.connect("ryw").await;
    assert_eq!(
        show(&writers[1], "SHOW pgsidecar.last_write_lsn").await,
        "0/0"
    );
    assert_eq!(show(&session, "SHOW pgsidecar.route").await, "auto");
    delay_replica(&cluster).await;
    until_replica_reads(
        &session,
        replica,
        "the other service reading from the replica",
    )
    .await;

    let (mut stale, mut on_replica, mut first) = (Vec::new(), 0, None);
    for id in 0..TRIALS {
        let writer = &writers[id as usize % 2];
        insert(writer, id).await;
        let lsn = show(writer, "SHOW pgsidecar.last_write_lsn").await;
        first.get_or_insert(lsn.clone());
        if id % 10 == 0 {
            // By the extended protocol (an unnamed statement) too.
            let rows = writer
                .query_typed("SHOW pgsidecar.last_write_lsn", &[])
                .await
                .expect("SHOW by the extended protocol");
            assert_eq!(rows[0].get::<_, String>(0), lsn);
        }
        let (count, port) = if (id / 2) % 2 == 0 {
            session
                .batch_execute(&format!("SET pgsidecar.min_lsn = '{lsn}'"))
                .await
                .expect("SET pgsidecar.min_lsn");
            read(&session, "", "w", id).await
        } else {
            let hint = format!("/* pgsidecar:min_lsn={lsn} */ ");
            read(&hinted, &hint, "w", id).await
        };
        if count != 1 {
            let su_p = harness::connect(&cluster.primary().conn_string())
                .await
                .unwrap();
            let su_r = harness::connect(&cluster.replica(0).conn_string())
                .await
                .unwrap();
            let p = show(&su_p, "select pg_current_wal_insert_lsn()::text").await;
            let r = show(&su_r, "select pg_last_wal_replay_lsn()::text").await;
            let rows = show(&su_r, "select count(*)::text from pg_database").await;
            eprintln!("STALE id={id} token={lsn} primary_now={p} replica_replay={r} {rows}");
            stale.push((id, lsn));
        }
        on_replica += u32::from(port == replica);
    }
    println!(
        "fleet_ryw: {TRIALS} commit LSNs carried to a sidecar of another service \
         (replica 1 s behind): {} stale, {on_replica} served by the replica",
        stale.len()
    );
    assert_eq!(
        stale,
        Vec::new(),
        "reads that missed the write of their token"
    );
    let first = first.expect("a token");

    // A token the replica has replayed lets reads go there again.
    session
        .batch_execute(&format!("SET pgsidecar.min_lsn = '{first}'"))
        .await
        .unwrap();
    assert_eq!(show(&session, "SHOW pgsidecar.min_lsn").await, first);
    until_replica_reads(&session, replica, "a replayed token allowing the replica").await;
    // And a malformed one is refused by name, the session carrying on.
    let err = session
        .batch_execute("SET pgsidecar.min_lsn = 'yesterday'")
        .await
        .expect_err("a malformed LSN");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE)
    );
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("pgsidecar.min_lsn"), "{err:?}");
    session
        .batch_execute("RESET pgsidecar.min_lsn")
        .await
        .unwrap_or_else(|e| panic!("RESET: {e:?}"));
    assert_eq!(show(&session, "SHOW pgsidecar.min_lsn").await, "0/0");
}

/// The `at_us` of each log line with `message`, in order.
fn times(log: &[String], message: &str) -> Vec<i64> {
    log.iter()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            let at = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("at_us="))?;
            at.parse().ok()
        })
        .collect()
}

/// The value of an unlabelled counter in a metrics text.
fn counter(metrics: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}
