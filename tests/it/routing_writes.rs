//! Statements that look like reads but write (or that the classifier cannot
//! read) run on the primary: a replica would refuse them (25006), so each
//! one succeeding through a proxy that routes reads to a replica shows it
//! was classified as a write. Simple and extended protocol.

use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::{self, APP};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(15);

/// Statements a replica refuses, each with `{id}` for a fresh key; all
/// but the multi-statement string are valid for the extended protocol.
const WRITES: [(&str, &str); 7] = [
    (
        "writing CTE",
        "with w as (insert into t values ({id}, 'cte') returning id) select id from w",
    ),
    ("FOR UPDATE", "select id from t where id = 0 for update"),
    ("nextval", "select nextval('s')"),
    ("txid_current", "select txid_current()"),
    (
        "DO block",
        "do $$ begin insert into t values ({id}, 'do'); end $$",
    ),
    (
        "statement sqlparser cannot parse",
        "insert into t select g, 'rows from' from rows from (generate_series({id}, {id})) as g",
    ),
    (
        "multi-statement string ending in a write",
        "select 1; insert into t values ({id}, 'multi')",
    ),
];

/// A proxy whose reads go to the shared replica whatever the client wrote
/// before (read-your-writes off, a lag limit nothing reaches), so only the
/// classification keeps a statement on the primary; a client of it on a
/// fresh database with table `t` (row 0) and sequence `s`, replayed.
async fn setup(prefix: &str) -> (pgsidecar::proxy::Proxy, Client) {
    let cluster = harness::cluster();
    let (db, _) = harness::replicated_db(
        prefix,
        "create table t (id int primary key, how text); insert into t values (0, 'setup'); \
             create sequence s",
    )
    .await;
    let config = format!(
        "{}[routing]\nread_your_writes = \"off\"\nmax_replica_lag = \"30s\"\n",
        harness::shared_replica_toml()
    );
    let proxy = harness::proxy(&config).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let replica = cluster.replica(0).port();
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;
    (proxy, client)
}

/// Rows of `t` with key `id`, read on the primary.
async fn rows_with(client: &Client, id: i32) -> String {
    let sql = format!("/* pgsidecar:primary */ select count(*) from t where id = {id}");
    harness::scalar(client, &sql)
        .await
        .unwrap()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_disguised_as_reads_run_on_the_primary_with_the_simple_protocol() {
    let (_proxy, client) = setup("routing_writes_simple").await;
    for (n, (what, sql)) in WRITES.iter().enumerate() {
        let id = n as i32 + 1;
        let sql = sql.replace("{id}", &id.to_string());
        if let Err(e) = client.simple_query(&sql).await {
            panic!("{what}: `{sql}` failed: {}", harness::error_text(&e));
        }
        if sql.contains("insert") {
            assert_eq!(rows_with(&client, id).await, "1", "{what} wrote its row");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_disguised_as_reads_run_on_the_primary_with_the_extended_protocol() {
    let (_proxy, client) = setup("routing_writes_extended").await;
    // Unnamed statements (Parse/Bind/Describe/Execute/Sync in one go), then
    // named ones prepared in one round trip and executed in the next.
    for named in [false, true] {
        for (n, (what, sql)) in WRITES.iter().enumerate() {
            if what.starts_with("multi-statement") {
                continue; // the extended protocol takes one statement
            }
            let id = n as i32 + 1 + if named { 100 } else { 0 };
            let sql = sql.replace("{id}", &id.to_string());
            let result = if named {
                client.query(&sql, &[]).await
            } else {
                client.query_typed(&sql, &[]).await
            };
            if let Err(e) = result {
                let how = if named { "named" } else { "unnamed" };
                panic!(
                    "{what} ({how}): `{sql}` failed: {}",
                    harness::error_text(&e)
                );
            }
            if sql.contains("insert") {
                assert_eq!(rows_with(&client, id).await, "1", "{what} wrote its row");
            }
        }
    }
}
