//! Session state that cannot move between servers pins the client to its
//! server in transaction mode, and the pin is released by the statement
//! that drops that state. With `[pool] size = 1` a pin is visible to users:
//! another client gets no server (53300 after checkout_timeout) until it is
//! released. Covered: LISTEN/NOTIFY (the pinned client receives
//! notifications) released by UNLISTEN *, temporary tables across
//! transactions released by DISCARD ALL, WITH HOLD cursors across
//! transactions released by DISCARD ALL, SQL-level PREPARE/EXECUTE released
//! by DEALLOCATE, session advisory locks released by
//! pg_advisory_unlock_all().

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

use crate::harness::{self, APP};

const POOL_OF_ONE: &str = "[pool]\nsize = 1\ncheckout_timeout = \"300ms\"\n";

struct Setup {
    proxy: pgsidecar::proxy::Proxy,
    db: String,
    pinned: Client,
    other: Client,
}

async fn setup(prefix: &str) -> Setup {
    let db = harness::fresh_db(prefix);
    let proxy = harness::proxy(POOL_OF_ONE).await;
    let pinned = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let other = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    Setup {
        proxy,
        db,
        pinned,
        other,
    }
}

/// Whether `client` can get the pool's one server for a statement.
async fn gets_a_server(client: &Client) -> bool {
    match harness::scalar(client, "SELECT 1").await {
        Ok(v) => {
            assert_eq!(v.as_deref(), Some("1"));
            true
        }
        Err(e) => {
            assert_eq!(
                e.code(),
                Some(&SqlState::TOO_MANY_CONNECTIONS),
                "{}",
                harness::error_text(&e)
            );
            false
        }
    }
}

async fn one(client: &Client, sql: &str) -> String {
    harness::scalar(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", harness::error_text(&e)))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_the_client_it_gets_notifications_and_unlisten_releases() {
    let s = setup("pin_listen").await;
    // A listener of its own, whose notifications are collected.
    let config: tokio_postgres::Config = harness::proxy_conn_string(&s.proxy, APP, &s.db)
        .parse()
        .unwrap();
    let (listener, mut connection) = config.connect(NoTls).await.unwrap();
    let (tx, mut notes) = mpsc::unbounded_channel::<Notification>();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    drop(s.pinned);

    listener.batch_execute("LISTEN jobs").await.unwrap();
    assert!(
        !gets_a_server(&s.other).await,
        "the listener keeps its server"
    );
    listener
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();

    let su = harness::connect(
        &harness::cluster()
            .primary()
            .conn_string_as("postgres", None, &s.db),
    )
    .await
    .unwrap();
    for n in 0..3 {
        su.batch_execute(&format!("NOTIFY jobs, 'job {n}'"))
            .await
            .unwrap();
        let note = tokio::time::timeout(Duration::from_secs(5), notes.recv())
            .await
            .expect("the notification arrives while the listener is idle")
            .unwrap();
        assert_eq!(
            (note.channel(), note.payload()),
            ("jobs", &*format!("job {n}"))
        );
    }

    listener.batch_execute("UNLISTEN *").await.unwrap();
    assert!(gets_a_server(&s.other).await, "released by UNLISTEN *");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_table_lives_across_transactions_until_discard_all() {
    let s = setup("pin_temp").await;
    s.pinned
        .batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    for n in 1..=3 {
        s.pinned
            .batch_execute(&format!("BEGIN; INSERT INTO scratch VALUES ({n}); COMMIT"))
            .await
            .unwrap();
        assert_eq!(one(&s.pinned, "SELECT sum(x) FROM scratch").await, {
            let sum: i32 = (1..=n).sum();
            sum.to_string()
        });
    }
    assert!(!gets_a_server(&s.other).await, "pinned by the temp table");

    s.pinned.batch_execute("DISCARD ALL").await.unwrap();
    assert!(gets_a_server(&s.other).await, "released by DISCARD ALL");
    let err = harness::scalar(&s.pinned, "SELECT * FROM scratch")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_with_hold_cursor_is_fetched_across_transactions_until_discard_all() {
    let s = setup("pin_hold").await;
    s.pinned
        .batch_execute(
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 9) AS n; COMMIT",
        )
        .await
        .unwrap();
    for batch in 0..3 {
        let rows = s.pinned.simple_query("FETCH 1 FROM c").await.unwrap();
        let values: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(values, [(batch + 1).to_string()]);
        assert!(!gets_a_server(&s.other).await, "pinned by the cursor");
    }
    s.pinned.batch_execute("DISCARD ALL").await.unwrap();
    assert!(gets_a_server(&s.other).await, "released by DISCARD ALL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_and_execute_across_transactions_until_deallocate() {
    let s = setup("pin_prepare").await;
    s.pinned
        .batch_execute("PREPARE twice(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    for n in 0..3 {
        s.pinned.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            one(&s.pinned, &format!("EXECUTE twice({n})")).await,
            (2 * n).to_string()
        );
        s.pinned.batch_execute("COMMIT").await.unwrap();
    }
    assert!(!gets_a_server(&s.other).await, "pinned by PREPARE");
    s.pinned.batch_execute("DEALLOCATE twice").await.unwrap();
    assert!(gets_a_server(&s.other).await, "released by DEALLOCATE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_lock_pins_until_pg_advisory_unlock_all() {
    let s = setup("pin_advisory").await;
    s.pinned
        .batch_execute("SELECT pg_advisory_lock(7)")
        .await
        .unwrap();
    s.pinned
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();
    assert!(!gets_a_server(&s.other).await, "pinned by the lock");
    s.pinned
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    assert!(
        gets_a_server(&s.other).await,
        "released by pg_advisory_unlock_all()"
    );
    assert_eq!(
        one(&s.other, "SELECT pg_try_advisory_lock(7)::text").await,
        "true"
    );
    s.other
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
}
