//! Read-your-writes across clients for writes that reach other tables than
//! the ones named: a foreign key's ON DELETE CASCADE / SET NULL and ON
//! UPDATE CASCADE change the referencing table, a write to a partition (or
//! an inheritance child) changes what its parent reads, and a write
//! through the parent changes what a partition read directly shows. With a
//! replica a second behind, another client reading the table reached must
//! see the write every time. A table a trigger writes is not covered (a
//! known limit, shown by the last test).

use std::time::Duration;

use pgsidecar::demo::LocalCluster;
use pgsidecar::proxy::Proxy;
use tokio::task::block_in_place;
use tokio_postgres::Client;

use crate::harness::{self, APP, PORT_SQL};

/// Limit for conditions that need a few monitor or catalog rounds.
const SOON: Duration = Duration::from_secs(20);
/// Rounds per case. Each case writes and reads tables of its own: a table
/// written stays marked for read-your-writes for a while, and a mark left
/// by one case must not make another's reads fresh.
const ROUNDS: i32 = 40;

const SCHEMA: &str = "
    create table parent (id int primary key);
    create table child_cascade (id int primary key,
        parent_id int references parent on delete cascade on update cascade);
    create table child_null (id int primary key,
        parent_id int references parent on delete set null);
    create table measure (k int, v int) partition by range (k);
    create table measure_low partition of measure for values from (0) to (1000000);
    create table ledger (k int, v int) partition by range (k);
    create table ledger_low partition of ledger for values from (0) to (1000000);
    create table base (k int);
    create table derived () inherits (base);
    create table audited (k int);
    create table audit_log (k int);
    create function audit() returns trigger language plpgsql as
        $$ begin insert into audit_log values (new.k); return new; end $$;
    create trigger audited_log after insert on audited for each row execute function audit();
    insert into parent select g from generate_series(0, 999) g;
    insert into child_cascade select g, g from generate_series(0, 999) g;
    insert into child_null select g, g from generate_series(200, 299) g;
";

/// A private cluster whose replica replays a second late, the schema
/// created directly on the primary (so the proxy has seen no write), a
/// proxy and two of its clients.
struct Fixture {
    proxy: Proxy,
    writer: Client,
    reader: Client,
    replica: u16,
    cluster: LocalCluster,
}

async fn fixture() -> Fixture {
    let cluster = harness::private_cluster().await;
    let db = block_in_place(|| cluster.fresh_database("related")).unwrap();
    let direct = harness::connect(
        &cluster
            .primary()
            .conn_string_as(APP.name, APP.password, &db),
    )
    .await
    .unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    block_in_place(|| {
        cluster.wait_for_replay(cluster.replica(0))?;
        cluster.replica(0).set_apply_delay(Duration::from_secs(1))
    })
    .unwrap();
    // Within the lag limit although a second behind: only read-your-writes
    // can keep a read off the replica.
    let proxy = harness::proxy_for(&cluster, "[routing]\nmax_replica_lag = \"10s\"\n").await;
    let writer = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let reader = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let replica = cluster.replica(0).port();
    harness::until_served_by(&reader, replica, "the replica serving reads", SOON).await;
    Fixture {
        proxy,
        writer,
        reader,
        replica,
        cluster,
    }
}

/// `sql`'s single count and the port of the node that ran it.
async fn count(client: &Client, sql: &str) -> (i64, u16) {
    let rows = client
        .simple_query(&format!("select ({sql}), ({PORT_SQL})"))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    let n = row.get(0).and_then(|c| c.parse().ok()).expect("a count");
    (n, harness::parse_port(row.get(1)))
}

/// What is shown, rounds, the write of round `i`, the read, the count the
/// read must see.
type Case = (
    &'static str,
    std::ops::Range<i32>,
    Box<dyn Fn(i32) -> String>,
    Box<dyn Fn(i32) -> String>,
    i64,
);

/// The writer runs `write(i)`, then the reader at once expects `read(i)`
/// to count `want`; returns the rounds where it did not.
async fn stale_rounds(
    f: &Fixture,
    rounds: std::ops::Range<i32>,
    write: impl Fn(i32) -> String,
    read: impl Fn(i32) -> String,
    want: i64,
) -> Vec<i32> {
    let mut stale = Vec::new();
    for i in rounds {
        f.writer.batch_execute(&write(i)).await.unwrap();
        let (n, _) = count(&f.reader, &read(i)).await;
        if n != want {
            stale.push(i);
        }
    }
    stale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reaching_other_tables_are_read_back_by_another_client() {
    let f = fixture().await;
    // The proxy reads the cascades and the partition tree from the catalog
    // in the background: wait until it has.
    harness::eventually(
        "the proxy to know what a write to parent reaches",
        SOON,
        || {
            let known = f.proxy.shared.write_log.also_written("parent");
            std::future::ready(known.iter().any(|t| &**t == "child_cascade").then_some(()))
        },
    )
    .await;

    let cases: [Case; 6] = [
        (
            "ON DELETE CASCADE",
            0..ROUNDS,
            Box::new(|i| format!("delete from parent where id = {i}")),
            Box::new(|i| format!("select count(*) from child_cascade where parent_id = {i}")),
            0,
        ),
        (
            "ON DELETE SET NULL",
            200..200 + ROUNDS,
            Box::new(|i| format!("delete from parent where id = {i}")),
            Box::new(|i| format!("select count(*) from child_null where parent_id = {i}")),
            0,
        ),
        (
            "ON UPDATE CASCADE",
            100..100 + ROUNDS,
            Box::new(|i| format!("update parent set id = id + 10000 where id = {i}")),
            Box::new(|i| {
                format!(
                    "select count(*) from child_cascade where parent_id = {}",
                    i + 10000
                )
            }),
            1,
        ),
        (
            "a partition, read through its parent",
            0..ROUNDS,
            Box::new(|i| format!("insert into measure_low values ({i}, 1)")),
            Box::new(|i| format!("select count(*) from measure where k = {i}")),
            1,
        ),
        (
            "the parent, read through a partition",
            1000..1000 + ROUNDS,
            Box::new(|i| format!("insert into ledger values ({i}, 1)")),
            Box::new(|i| format!("select count(*) from ledger_low where k = {i}")),
            1,
        ),
        (
            "an inheritance child, read through its parent",
            0..ROUNDS,
            Box::new(|i| format!("insert into derived values ({i})")),
            Box::new(|i| format!("select count(*) from base where k = {i}")),
            1,
        ),
    ];
    let mut failures = Vec::new();
    for (what, rounds, write, read, want) in cases {
        let stale = stale_rounds(&f, rounds, write, read, want).await;
        eprintln!("{what}: {} of {ROUNDS} reads stale", stale.len());
        if !stale.is_empty() {
            failures.push(format!("{what}: stale in rounds {stale:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    drop(f.proxy);
    drop(f.cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_written_by_a_trigger_is_not_covered() {
    let f = fixture().await;
    // Known limit (README): what a trigger writes is not in the catalog.
    // The reader's read of the table the trigger wrote goes to the replica.
    f.writer
        .batch_execute("insert into audited values (1)")
        .await
        .unwrap();
    let (_, port) = count(&f.reader, "select count(*) from audit_log where k = 1").await;
    assert_eq!(port, f.replica, "read right after a trigger's write");
    // The table written by name is covered.
    let (n, _) = count(&f.reader, "select count(*) from audited where k = 1").await;
    assert_eq!(n, 1);
}
