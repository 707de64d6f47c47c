//! Read-your-writes through the proxy: with a replica one second behind, a
//! read right after a write (by the writer, or by anyone reading the table
//! written) sees it; `"off"` lets such a read go to the replica, and
//! `"window"` keeps reads on the primary for the whole window.

use std::time::{Duration, Instant};

use tokio::task::block_in_place;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::harness::{self, APP, PORT_SQL};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(15);
/// Write-then-read round trips per scenario.
const ROUNDS: i32 = 300;

/// Where the reads of one scenario were served, and how many missed the row.
#[derive(Debug, Default)]
struct Tally {
    primary: u32,
    replica: u32,
    misses: Vec<i32>,
}

/// Reads row `id` of `table`, alternating the simple and the extended
/// protocol; returns how many rows matched and the port that served it.
async fn read_row(client: &Client, table: &str, id: i32) -> (i64, u16) {
    let sql = format!("select count(*), ({PORT_SQL}) from {table} where id = ");
    if id % 2 == 0 {
        let rows = client
            .simple_query(&format!("{sql}{id}"))
            .await
            .unwrap_or_else(|e| panic!("read {id}: {e}"));
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        let count = row.get(0).and_then(|c| c.parse().ok()).expect("a count");
        (count, harness::parse_port(row.get(1)))
    } else {
        let rows = client
            .query_typed(&format!("{sql}$1"), &[(&id, Type::INT4)])
            .await
            .unwrap_or_else(|e| panic!("read {id}: {e}"));
        let port: String = rows[0].get(1);
        (rows[0].get(0), harness::parse_port(Some(&port)))
    }
}

/// Inserts row `id` into `table`, alternating the simple and the extended
/// protocol.
async fn write_row(client: &Client, table: &str, id: i32) {
    let result = if id % 2 == 0 {
        client
            .batch_execute(&format!("insert into {table} values ({id})"))
            .await
    } else {
        client
            .execute(&format!("insert into {table} values ($1)"), &[&id])
            .await
            .map(drop)
    };
    result.unwrap_or_else(|e| panic!("insert {id} into {table}: {e}"));
}

/// `ROUNDS` times: `writer` inserts a row, then `reader` (possibly the same
/// client) reads it back at once.
async fn write_then_read(writer: &Client, reader: &Client, table: &str, replica: u16) -> Tally {
    let mut tally = Tally::default();
    for id in 0..ROUNDS {
        write_row(writer, table, id).await;
        let (count, port) = read_row(reader, table, id).await;
        if count != 1 {
            tally.misses.push(id);
        }
        if port == replica {
            tally.replica += 1;
        } else {
            tally.primary += 1;
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_right_after_writes_see_them_with_a_replica_a_second_behind() {
    let cluster = harness::private_cluster().await;
    let db = block_in_place(|| cluster.fresh_database("ryw")).expect("database");
    // The replica stays within the lag limit although it is a second
    // behind: only read-your-writes can keep a read off it.
    let proxy = harness::proxy_for(&cluster, "[routing]\nmax_replica_lag = \"5s\"\n").await;
    let replica = cluster.replica(0).port();
    let writer = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let reader = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    writer
        .batch_execute(
            "create table own (id int primary key); create table shared (id int primary key)",
        )
        .await
        .unwrap();
    block_in_place(|| cluster.replica(0).set_apply_delay(Duration::from_secs(1))).unwrap();
    // The replica does serve reads that no write concerns.
    harness::until_served_by(&reader, replica, "the replica serving reads", SOON).await;

    let own = write_then_read(&writer, &writer, "own", replica).await;
    eprintln!("read-your-writes, same client: {own:?}");
    assert_eq!(
        own.misses,
        Vec::<i32>::new(),
        "reads that missed own writes"
    );

    let shared = write_then_read(&writer, &reader, "shared", replica).await;
    eprintln!("read-your-writes, second client: {shared:?}");
    assert_eq!(
        shared.misses,
        Vec::<i32>::new(),
        "reads by another client that missed the table's latest write"
    );

    // A client that has written nothing still reads other tables from the
    // replica meanwhile: the lag limit was not what kept the reads above
    // on the primary.
    harness::until_served_by(&reader, replica, "the replica serving reads", SOON).await;
}

/// A proxy in front of the shared cluster routing reads to its replica,
/// with `routing` keys added, and a client of it on a fresh database with
/// table `t`, created directly on the primary (so the proxy has seen no
/// write). Waits until the replica serves the client's reads.
async fn shared_setup(prefix: &str, routing: &str) -> (pgsidecar::proxy::Proxy, Client, String) {
    let db = harness::fresh_db(prefix);
    let direct = harness::connect(&harness::cluster().primary().conn_string_as(
        APP.name,
        APP.password,
        &db,
    ))
    .await
    .unwrap();
    direct
        .batch_execute("create table t (id int primary key)")
        .await
        .unwrap();
    let config = format!("{}[routing]\n{routing}", harness::shared_replica_toml());
    let proxy = harness::proxy(&config).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let replica = harness::cluster().replica(0).port();
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;
    (proxy, client, db)
}

#[tokio::test]
async fn with_read_your_writes_off_a_read_right_after_a_write_goes_to_the_replica() {
    // A generous lag limit: only read-your-writes could move these reads.
    let (_proxy, client, _db) = shared_setup(
        "ryw_off",
        "read_your_writes = \"off\"\nmax_replica_lag = \"30s\"\n",
    )
    .await;
    let replica = harness::cluster().replica(0).port();
    for id in 0..20 {
        write_row(&client, "t", id).await;
        // Not asserted: whether the replica has the row yet.
        let (_, port) = read_row(&client, "t", id).await;
        assert_eq!(port, replica, "read {id} right after its write");
    }
}

#[tokio::test]
async fn with_read_your_writes_window_reads_stay_on_the_primary_for_the_window() {
    // A window longer than the lag limit: the window, not the lag limit,
    // decides how long a write keeps reads on the primary.
    const WINDOW: Duration = Duration::from_secs(3);
    let (_proxy, client, _db) = shared_setup(
        "ryw_window",
        "read_your_writes = \"window\"\nread_your_writes_window = \"3s\"\n",
    )
    .await;
    let primary = harness::cluster().primary().port();
    let replica = harness::cluster().replica(0).port();
    let before_write = Instant::now();
    write_row(&client, "t", 1).await;
    let (mut inside, mut late_inside) = (0, 0);
    loop {
        let (count, port) = read_row(&client, "t", 1).await;
        let done = before_write.elapsed();
        if done < WINDOW {
            // Decided less than WINDOW after the write was sent.
            assert_eq!(port, primary, "a read {done:?} after the write");
            assert_eq!(count, 1, "a read {done:?} after the write");
            inside += 1;
            if done > WINDOW / 2 {
                late_inside += 1;
            }
        } else if port == replica {
            break;
        }
        assert!(
            done < WINDOW + SOON,
            "reads did not return to the replica after the window"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        late_inside > 0,
        "no read checked in the second half of the window ({inside} in all)"
    );
}
