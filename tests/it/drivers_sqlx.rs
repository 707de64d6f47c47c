//! sqlx through pgsidecar in transaction mode (`[pool] size = 2`): a
//! PgPool of 10 connections with sqlx's default statement cache (every
//! `query` is a named prepared statement, cached per connection), many
//! tasks mixing plain queries, transactions that commit and roll back, and
//! `query_as`; then sqlx after DDL changed a cached statement's result type:
//! the error reaches it as without the proxy, at most once per pooled server.

use sqlx::Row;
use sqlx::postgres::PgPoolOptions;

use crate::harness::{self, APP};

fn url(proxy: &pgsidecar::proxy::Proxy, db: &str) -> String {
    format!(
        "postgres://{}:{}@127.0.0.1:{}/{db}",
        APP.name,
        APP.password.unwrap(),
        proxy.addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_ten_with_the_statement_cache() {
    let db = harness::fresh_db("drivers_sqlx");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .min_connections(10)
        .connect(&url(&proxy, &db))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE events (task int, n int, body text)")
        .execute(&pool)
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for t in 0..20i32 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..25i32 {
                let sum: i32 = sqlx::query_scalar("SELECT $1::int4 + $2::int4")
                    .bind(t)
                    .bind(n)
                    .fetch_one(&pool)
                    .await?;
                assert_eq!(sum, t + n);

                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO events (task, n, body) VALUES ($1, $2, $3)")
                    .bind(t)
                    .bind(n)
                    .bind(format!("t{t}n{n}"))
                    .execute(&mut *tx)
                    .await?;
                let (count,): (i64,) =
                    sqlx::query_as("SELECT count(*) FROM events WHERE task = $1")
                        .bind(t)
                        .fetch_one(&mut *tx)
                        .await?;
                assert_eq!(count, i64::from(n) + 1);
                tx.commit().await?;

                if n % 5 == 0 {
                    let mut tx = pool.begin().await?;
                    sqlx::query("INSERT INTO events (task, n, body) VALUES ($1, -1, 'gone')")
                        .bind(t)
                        .execute(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                }

                let row = sqlx::query("SELECT body FROM events WHERE task = $1 AND n = $2")
                    .bind(t)
                    .bind(n)
                    .fetch_one(&pool)
                    .await?;
                assert_eq!(row.get::<String, _>("body"), format!("t{t}n{n}"));
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let (ok, gone): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE n >= 0), count(*) FILTER (WHERE n < 0) FROM events",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((ok, gone), (500, 0));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_statements_after_ddl_changed_the_result_type() {
    let db = harness::fresh_db("drivers_sqlx_ddl");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url(&proxy, &db))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (id int, v int)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1, 10)")
        .execute(&pool)
        .await
        .unwrap();
    let select = "SELECT * FROM t WHERE id = $1";
    for _ in 0..8 {
        let row = sqlx::query(select).bind(1).fetch_one(&pool).await.unwrap();
        assert_eq!(row.len(), 2);
    }
    sqlx::query("ALTER TABLE t ADD COLUMN extra text DEFAULT 'x'")
        .execute(&pool)
        .await
        .unwrap();
    // sqlx runs its cached statement with Bind/Execute and no Describe: it
    // decodes rows by the shape it described before, so the proxy must not
    // retry behind its back. The server's 0A000 reaches it, as it would
    // without the proxy, and the proxy replaces that server connection:
    // at most one error per pooled server, then the new shape works.
    let mut errors = 0;
    let mut successes = 0;
    for _ in 0..20 {
        match sqlx::query(select).bind(1).fetch_one(&pool).await {
            Ok(row) => {
                assert_eq!(row.get::<i32, _>("v"), 10);
                successes += 1;
            }
            Err(e) => {
                let code = e.as_database_error().and_then(|d| d.code());
                assert_eq!(code.as_deref(), Some("0A000"), "{e}");
                assert_eq!(successes, 0, "an error after a success: {e}");
                errors += 1;
            }
        }
    }
    assert!(errors <= 2, "{errors} errors with a pool of 2 servers");
    assert_eq!(successes + errors, 20);
}
