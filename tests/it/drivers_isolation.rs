//! Session isolation over a pool smaller than the clients (`[pool] size =
//! 2`, transaction mode): eight clients, each with its own search_path,
//! TimeZone and application_name (set with SET, at startup through
//! `options`/`application_name`, or at startup and then overridden with
//! SET) run 1,000 interleaved transactions, simple and prepared (one
//! statement text shared by all of them), and every transaction sees only
//! its own client's settings. A session advisory lock held by one client
//! across many transactions is never obtainable by another until it is
//! unlocked.

use tokio_postgres::{Client, Config, NoTls};

use crate::harness::{self, APP};

const ZONES: [&str; 8] = [
    "UTC",
    "Europe/Paris",
    "Asia/Tokyo",
    "America/New_York",
    "Australia/Sydney",
    "Africa/Cairo",
    "America/Sao_Paulo",
    "Asia/Kolkata",
];

async fn connect(
    proxy: &pgsidecar::proxy::Proxy,
    db: &str,
    configure: impl FnOnce(&mut Config),
) -> Client {
    let mut config: Config = harness::proxy_conn_string(proxy, APP, db).parse().unwrap();
    configure(&mut config);
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// What a transaction sees: schema, TimeZone, application_name and the
/// value of the unqualified table `who`.
fn seen(row: &tokio_postgres::Row) -> (String, String, String, i32) {
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

const SEE: &str = "SELECT current_schema()::text, current_setting('TimeZone'), \
                   current_setting('application_name'), (SELECT v FROM who)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_settings_never_leak_over_a_pool_of_two() {
    let db = harness::fresh_db("drivers_isolation");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let su = harness::connect(
        &harness::cluster()
            .primary()
            .conn_string_as("postgres", None, &db),
    )
    .await
    .unwrap();
    for i in 0..8 {
        su.batch_execute(&format!(
            "CREATE SCHEMA s{i} AUTHORIZATION app; CREATE TABLE s{i}.who (v int); \
             INSERT INTO s{i}.who VALUES ({i}); GRANT SELECT ON s{i}.who TO app"
        ))
        .await
        .unwrap();
    }

    let mut tasks = Vec::new();
    for (i, zone) in ZONES.into_iter().enumerate() {
        let app = format!("client{i}");
        let client = match i % 3 {
            // SET after connecting.
            0 => {
                let c = connect(&proxy, &db, |_| {}).await;
                c.batch_execute(&format!(
                    "SET search_path = s{i}, public; SET TimeZone = '{zone}'; \
                     SET application_name = '{app}'"
                ))
                .await
                .unwrap();
                c
            }
            // At startup.
            1 => {
                let app = app.clone();
                connect(&proxy, &db, move |c| {
                    c.options(format!("-c search_path=s{i},public -c TimeZone={zone}"))
                        .application_name(app);
                })
                .await
            }
            // At startup, then changed with SET (set_config for one).
            _ => {
                let c = connect(&proxy, &db, |c| {
                    c.options("-c search_path=s0 -c TimeZone=UTC")
                        .application_name("wrong");
                })
                .await;
                c.batch_execute(&format!(
                    "SET search_path = s{i}; SELECT set_config('TimeZone', '{zone}', false); \
                     SET application_name = '{app}'"
                ))
                .await
                .unwrap();
                c
            }
        };
        let expected = (format!("s{i}"), zone.to_string(), app, i as i32);
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let statement = client.prepare(SEE).await?;
            for n in 0..125 {
                let got = match n % 3 {
                    0 => {
                        let tx = client.transaction().await?;
                        let row = tx.query_one(&statement, &[]).await?;
                        tx.commit().await?;
                        seen(&row)
                    }
                    1 => seen(&client.query_one(&statement, &[]).await?),
                    _ => {
                        let msgs = client
                            .simple_query(&format!("BEGIN; {SEE}; COMMIT"))
                            .await?;
                        let row = msgs
                            .iter()
                            .find_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                                _ => None,
                            })
                            .expect("a row");
                        (
                            row.get(0).unwrap().to_string(),
                            row.get(1).unwrap().to_string(),
                            row.get(2).unwrap().to_string(),
                            row.get(3).unwrap().parse().unwrap(),
                        )
                    }
                };
                assert_eq!(got, expected, "transaction {n} of client {i}");
                if n % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for task in tasks {
        if let Err(e) = task.await.unwrap() {
            panic!("{}", harness::error_text(&e));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_advisory_lock_is_held_across_transactions_until_unlocked() {
    let db = harness::fresh_db("drivers_advisory");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let holder = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let other = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let try_lock = "SELECT pg_try_advisory_lock(4242)::text";

    holder
        .batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    for n in 0..50 {
        holder
            .batch_execute(&format!("BEGIN; SELECT {n}; COMMIT"))
            .await
            .unwrap();
        let got = harness::scalar(&other, try_lock).await.unwrap();
        assert_eq!(got.as_deref(), Some("false"), "attempt {n}");
    }
    holder
        .batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
    let got = harness::scalar(&other, try_lock).await.unwrap();
    assert_eq!(got.as_deref(), Some("true"), "free after the unlock");
    // Now the other one holds it, across its transactions.
    other
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();
    let got = harness::scalar(&holder, try_lock).await.unwrap();
    assert_eq!(got.as_deref(), Some("false"));
    other
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    let got = harness::scalar(&holder, try_lock).await.unwrap();
    assert_eq!(got.as_deref(), Some("true"));
}
