//! tokio-postgres through pgsidecar in transaction mode, with more clients
//! than servers (`[pool] size = 2`): statements prepared once and executed
//! many times across transactions and clients, `query` with parameters
//! (which prepares a statement in one round trip and runs it in the next),
//! transactions that commit and roll back, and a failed statement inside a
//! transaction.

use tokio_postgres::error::SqlState;

use crate::harness::{self, APP};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_queries_and_transactions_from_six_clients() {
    let db = harness::fresh_db("drivers_tokio_pg");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let setup = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    setup
        .batch_execute("CREATE TABLE items (client int, n int, label text)")
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for c in 0..6i32 {
        let mut client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        tasks.push(tokio::spawn(async move {
            // Prepared once, used in every iteration below.
            let insert = client
                .prepare("INSERT INTO items (client, n, label) VALUES ($1, $2, $3)")
                .await?;
            let count = client
                .prepare("SELECT count(*) FROM items WHERE client = $1")
                .await?;
            let double = client.prepare("SELECT $1::int * 2").await?;
            for n in 0..40i32 {
                let row = client.query_one(&double, &[&n]).await?;
                assert_eq!(row.get::<_, i32>(0), 2 * n);

                let tx = client.transaction().await?;
                tx.execute(&insert, &[&c, &n, &format!("c{c}n{n}")]).await?;
                let seen: i64 = tx.query_one(&count, &[&c]).await?.get(0);
                assert_eq!(seen, i64::from(n) + 1, "client {c} sees its own rows");
                tx.commit().await?;

                if n % 4 == 0 {
                    // Rolled back: never counted.
                    let tx = client.transaction().await?;
                    tx.execute(&insert, &[&c, &-1i32, &"rolled back"]).await?;
                    tx.rollback().await?;
                }

                // `query` with a &str: prepared and run in two requests.
                let rows = client
                    .query(
                        "SELECT label FROM items WHERE client = $1 AND n = $2",
                        &[&c, &n],
                    )
                    .await?;
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].get::<_, String>(0), format!("c{c}n{n}"));
            }
            Ok::<_, tokio_postgres::Error>(client)
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(client) => clients.push(client),
            Err(e) => panic!("{}", harness::error_text(&e)),
        }
    }
    assert_eq!(
        harness::scalar(&setup, "SELECT count(*) FROM items WHERE n >= 0")
            .await
            .unwrap()
            .as_deref(),
        Some("240")
    );
    assert_eq!(
        harness::scalar(&setup, "SELECT count(*) FROM items WHERE n < 0")
            .await
            .unwrap()
            .as_deref(),
        Some("0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_inside_a_transaction_aborts_it_and_prepared_statements_survive() {
    let db = harness::fresh_db("drivers_tokio_pg_err");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let mut client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE u (id int PRIMARY KEY)")
        .await
        .unwrap();
    let insert = client.prepare("INSERT INTO u VALUES ($1)").await.unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute(&insert, &[&1i32]).await.unwrap();
    let err = tx.execute(&insert, &[&1i32]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err}");
    let err = tx.execute(&insert, &[&2i32]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{err}"
    );
    tx.rollback().await.unwrap();

    client.execute(&insert, &[&3i32]).await.unwrap();
    let ids: Vec<i32> = client
        .query("SELECT id FROM u ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [3]);
}

/// Runs `work` (which returns the backend pid it ran on, and a value)
/// until it has run on both servers of a pool of 2: every other time while
/// `holder` keeps a server in a transaction, so that `work` runs on the
/// other one. Returns the values.
async fn on_both_servers<T, F, Fut>(holder: &tokio_postgres::Client, mut work: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (String, T)>,
{
    let mut pids = std::collections::HashSet::new();
    let mut values = Vec::new();
    for attempt in 0..20 {
        let (pid, value) = if attempt % 2 == 0 {
            holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
            let done = work().await;
            holder.batch_execute("COMMIT").await.unwrap();
            done
        } else {
            work().await
        };
        pids.insert(pid);
        values.push(value);
        if pids.len() == 2 {
            return values;
        }
    }
    panic!("20 runs saw only the server(s) {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ddl_preparing_the_statement_again_sees_the_new_columns() {
    let db = harness::fresh_db("drivers_tokio_pg_ddl");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int, v int); INSERT INTO t VALUES (1, 10)")
        .await
        .unwrap();
    let sql = "SELECT *, pg_backend_pid()::text AS pid FROM t WHERE id = $1";
    let old = client.prepare(sql).await.unwrap();
    on_both_servers(&holder, || async {
        let row = client.query_one(&old, &[&1i32]).await.unwrap();
        (row.get::<_, String>("pid"), ())
    })
    .await;

    // A migration, run elsewhere.
    let su = harness::connect(
        &harness::cluster()
            .primary()
            .conn_string_as("postgres", None, &db),
    )
    .await
    .unwrap();
    su.batch_execute("ALTER TABLE t ADD COLUMN extra text DEFAULT 'x'")
        .await
        .unwrap();

    // Preparing the same text again (Parse, Describe, Sync) meets the old
    // plan on both servers: the proxy prepares it again and retries, and
    // the client is told the new columns.
    let columns = on_both_servers(&holder, || async {
        let statement = client
            .prepare(sql)
            .await
            .unwrap_or_else(|e| panic!("{}", harness::error_text(&e)));
        let names: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let row = client.query_one(&statement, &[&1i32]).await.unwrap();
        (
            row.get::<_, String>("pid"),
            (names, row.get::<_, String>("extra")),
        )
    })
    .await;
    for (names, extra) in columns {
        assert_eq!(names, ["id", "v", "extra", "pid"]);
        assert_eq!(extra, "x");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocks_sets_follow_the_client_if_it_commits_however_the_end_is_sent() {
    let db = harness::fresh_db("drivers_tokio_pg_commit_set");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    // The block's SET is kept by its COMMIT, which comes in one string with
    // another SET (whose tag is the last one the server sends).
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET application_name = 'kept_by_commit'")
        .await
        .unwrap();
    client
        .batch_execute("COMMIT; SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    // And a block rolled back takes its SET with it.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET search_path = rolled_back")
        .await
        .unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    // COMMIT AND CHAIN commits; the chained block rolling back keeps it.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET DateStyle = 'German'")
        .await
        .unwrap();
    client.batch_execute("COMMIT AND CHAIN").await.unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    // ROLLBACK TO a savepoint undoes the SETs made after it, each
    // statement sent on its own.
    for statement in [
        "BEGIN",
        "SET statement_timeout = '41s'",
        "SAVEPOINT s",
        "SET search_path = undone_by_rollback_to",
        "ROLLBACK TO SAVEPOINT s",
        "COMMIT",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
    // Also when the whole block comes in one string.
    client
        .batch_execute("BEGIN; SET search_path = rolled_back_too; ROLLBACK")
        .await
        .unwrap();
    let seen = on_both_servers(&holder, || async {
        let row = client
            .query_one(
                "SELECT pg_backend_pid()::text, current_setting('application_name'), \
                 current_setting('TimeZone'), current_setting('search_path'), \
                 current_setting('DateStyle'), current_setting('statement_timeout')",
                &[],
            )
            .await
            .unwrap();
        (
            row.get::<_, String>(0),
            (
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                row.get::<_, String>(4),
                row.get::<_, String>(5),
            ),
        )
    })
    .await;
    for (app, zone, path, style, timeout) in seen {
        assert_eq!(timeout, "41s");
        assert_eq!(app, "kept_by_commit");
        assert_eq!(zone, "Asia/Tokyo");
        assert_eq!(path, "\"$user\", public");
        assert_eq!(style, "German, DMY");
    }
}
