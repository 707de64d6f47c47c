//! Transactions are routed as a whole: a read-write one runs on the primary
//! from its first statement to COMMIT, a read-only one (BEGIN READ ONLY,
//! START TRANSACTION READ ONLY, BEGIN then SET TRANSACTION READ ONLY, or
//! `default_transaction_read_only`) on the replica, and an extended-protocol
//! batch up to its Sync goes to one node, the primary if anything in it
//! writes (a read up to Flush finishes its batch where it began).

use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::{self, APP, PORT_SQL};
use crate::wire::{self, Raw};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(15);

/// Reads go to the shared replica whatever the client wrote before
/// (read-your-writes off, a lag limit nothing reaches), so only the
/// transaction decides where statements run. `client_auth = "trust"` lets
/// the raw protocol client log in.
fn config() -> String {
    format!(
        "{}[routing]\nread_your_writes = \"off\"\nmax_replica_lag = \"30s\"\n\
         [auth]\nclient_auth = \"trust\"\n",
        harness::shared_replica_toml()
    )
}

/// A fresh database with table `t`, created on the primary and replayed.
async fn database(prefix: &str) -> String {
    let (db, _) = harness::replicated_db(prefix, "create table t (id int primary key)").await;
    db
}

/// Runs `sql` (simple protocol) and returns the first column of its first
/// row, or panics naming `what`.
async fn one(client: &Client, sql: &str, what: &str) -> Option<String> {
    harness::scalar(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{what}: `{sql}`: {}", harness::error_text(&e)))
}

async fn port(client: &Client, what: &str) -> u16 {
    harness::parse_port(one(client, PORT_SQL, what).await.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_transaction_runs_on_the_primary_from_begin_to_commit() {
    let db = database("tx_rw").await;
    let proxy = harness::proxy(&config()).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let (primary, replica) = (
        harness::cluster().primary().port(),
        harness::cluster().replica(0).port(),
    );
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;

    for begin in ["begin", "start transaction isolation level repeatable read"] {
        client.batch_execute(begin).await.unwrap();
        // The first statement is a read: the transaction may still write.
        assert_eq!(port(&client, begin).await, primary, "{begin}: first read");
        let backend = one(&client, "select pg_backend_pid()", begin).await;
        client
            .batch_execute("insert into t values (1)")
            .await
            .unwrap();
        assert_eq!(
            port(&client, begin).await,
            primary,
            "{begin}: read after the write"
        );
        let count = one(&client, "select count(*) from t", begin).await;
        assert_eq!(count.as_deref(), Some("1"), "{begin}: sees its own write");
        let same = one(&client, "select pg_backend_pid()", begin).await;
        assert_eq!(
            same, backend,
            "{begin}: one server for the whole transaction"
        );
        client.batch_execute("rollback").await.unwrap();
    }
    // Read-write by declaration although the session default is read only.
    client
        .batch_execute("set default_transaction_read_only = on")
        .await
        .unwrap();
    for opening in ["begin read write", "begin; set transaction read write"] {
        for sql in opening.split("; ") {
            client.batch_execute(sql).await.unwrap();
        }
        assert_eq!(port(&client, opening).await, primary, "{opening}");
        client
            .batch_execute("insert into t values (1)")
            .await
            .unwrap();
        client.batch_execute("rollback").await.unwrap();
    }
    client
        .batch_execute("reset default_transaction_read_only")
        .await
        .unwrap();
    client
        .batch_execute("begin; insert into t values (2); commit")
        .await
        .unwrap();
    let count = one(
        &client,
        "/* pgsidecar:primary */ select count(*) from t",
        "after",
    )
    .await;
    assert_eq!(
        count.as_deref(),
        Some("1"),
        "the committed row, not the rolled back ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_are_served_by_the_replica() {
    let db = database("tx_ro").await;
    let proxy = harness::proxy(&config()).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let replica = harness::cluster().replica(0).port();
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;

    let openings: [&[&str]; 4] = [
        &["begin read only"],
        &["start transaction read only"],
        &["begin", "set transaction read only"],
        &["set default_transaction_read_only = on", "begin"],
    ];
    for opening in openings {
        let what = opening.join("; ");
        for sql in opening {
            // One statement per round trip: a lone BEGIN is answered by the
            // proxy and the next statement decides where it runs.
            client.batch_execute(sql).await.unwrap();
        }
        assert_eq!(port(&client, &what).await, replica, "{what}: first read");
        let backend = one(&client, "select pg_backend_pid()", &what).await;
        let read_only = one(&client, "show transaction_read_only", &what).await;
        assert_eq!(read_only.as_deref(), Some("on"), "{what}");
        assert_eq!(port(&client, &what).await, replica, "{what}: second read");
        let same = one(&client, "select pg_backend_pid()", &what).await;
        assert_eq!(
            same, backend,
            "{what}: one server for the whole transaction"
        );
        client.batch_execute("commit").await.unwrap();
        if opening[0].starts_with("set default") {
            client
                .batch_execute("reset default_transaction_read_only")
                .await
                .unwrap();
        }
    }
    // Without READ ONLY the same reads run on the primary again.
    client.batch_execute("begin").await.unwrap();
    let primary = harness::cluster().primary().port();
    assert_eq!(port(&client, "begin after reset").await, primary);
    client.batch_execute("commit").await.unwrap();
}

/// Parse (unnamed), Bind, Execute of `sql` (no parameters, text results).
fn parse_bind_execute(sql: &str) -> Vec<u8> {
    let mut parse = vec![0]; // unnamed statement
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]); // no parameter types
    // Unnamed portal and statement; no parameter formats, parameters or
    // result formats.
    let bind = [0, 0, 0, 0, 0, 0, 0, 0];
    let execute = [0, 0, 0, 0, 0]; // unnamed portal, no row limit
    [
        wire::message(b'P', &parse),
        wire::message(b'B', &bind),
        wire::message(b'E', &execute),
    ]
    .concat()
}

/// Sends `statements` as one extended-protocol batch ending in a single
/// Sync; returns the first column of each DataRow, in order.
async fn batch(raw: &mut Raw, statements: &[&str]) -> Vec<String> {
    let mut bytes: Vec<u8> = statements
        .iter()
        .flat_map(|sql| parse_bind_execute(sql))
        .collect();
    bytes.extend(wire::message(b'S', &[]));
    raw.send(&bytes).await;
    let (status, seen) = raw.until_ready().await;
    assert_eq!(status, b'I');
    first_columns(&seen)
}

/// The first column of each DataRow among `messages`; panics on an error.
fn first_columns(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
    let mut values = Vec::new();
    for (tag, body) in messages {
        match tag {
            b'E' => panic!("batch failed: {:?}", wire::parse_error(body)),
            b'D' => {
                // Int16 column count, Int32 length, value.
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
                values.push(String::from_utf8(body[6..6 + len].to_vec()).unwrap());
            }
            _ => {}
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_batch_up_to_its_sync_is_routed_as_one_unit() {
    let db = database("tx_batch").await;
    let proxy = harness::proxy(&config()).await;
    let (primary, replica) = (
        harness::cluster().primary().port(),
        harness::cluster().replica(0).port(),
    );
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, APP.name, &db).await;
    let ports = |values: Vec<String>| -> Vec<u16> {
        values
            .iter()
            .map(|v| harness::parse_port(Some(v)))
            .collect()
    };

    // Two reads: both on the replica.
    let reads = batch(&mut raw, &[PORT_SQL, PORT_SQL]).await;
    assert_eq!(ports(reads), [replica, replica], "a batch of reads");

    // A read, then a write: the read too runs on the primary.
    let insert = format!("insert into t values (1) returning ({PORT_SQL})");
    let mixed = batch(&mut raw, &[PORT_SQL, &insert]).await;
    assert_eq!(ports(mixed), [primary, primary], "a batch with a write");
    let rows = harness::scalar(&client, "/* pgsidecar:primary */ select count(*) from t")
        .await
        .unwrap();
    assert_eq!(rows.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_ending_in_flush_finishes_its_batch_where_it_ran() {
    let db = database("tx_flush").await;
    let proxy = harness::proxy(&config()).await;
    let (primary, replica) = (
        harness::cluster().primary().port(),
        harness::cluster().replica(0).port(),
    );
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, APP.name, &db).await;

    // A read up to Flush: the client waits for its rows before going on.
    let mut bytes = parse_bind_execute(PORT_SQL);
    bytes.extend(wire::message(b'H', &[]));
    raw.send(&bytes).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|(tag, _)| *tag == b'C') {
        match raw.next().await {
            wire::Msg::Frame(tag, body) => seen.push((tag, body)),
            wire::Msg::Closed => panic!("closed after {seen:?}"),
        }
    }
    let ports: Vec<u16> = (first_columns(&seen).iter())
        .map(|p| harness::parse_port(Some(p)))
        .collect();
    assert_eq!(ports, [replica], "the read up to Flush");

    // More of the same batch, its Sync, and then a write in one packet:
    // the batch ends where it began, the write goes to the primary.
    let mut bytes = parse_bind_execute(PORT_SQL);
    bytes.extend(wire::message(b'S', &[]));
    let insert = format!("insert into t values (1) returning ({PORT_SQL})");
    bytes.extend(parse_bind_execute(&insert));
    bytes.extend(wire::message(b'S', &[]));
    raw.send(&bytes).await;
    let (status, rest_of_batch) = raw.until_ready().await;
    assert_eq!(status, b'I');
    let ports: Vec<u16> = (first_columns(&rest_of_batch).iter())
        .map(|p| harness::parse_port(Some(p)))
        .collect();
    assert_eq!(ports, [replica], "the rest of the batch");
    let (status, write) = raw.until_ready().await;
    assert_eq!(status, b'I');
    let ports: Vec<u16> = (first_columns(&write).iter())
        .map(|p| harness::parse_port(Some(p)))
        .collect();
    assert_eq!(ports, [primary], "the write after the batch");
}
