//! The core proxy path with real clients: psql behaves as it does directly,
//! COPY moves 100,000 rows byte for byte both ways, cancel requests reach
//! exactly the right query, and a client that leaves mid-transaction or
//! mid-query leaves nothing behind on the server.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::harness::{self, APP};
use crate::wire::{self, Msg, Raw};

const WAIT: Duration = Duration::from_secs(10);

// ---- psql ----------------------------------------------------------------

#[tokio::test]
async fn psql_shows_the_same_as_direct() {
    let db = harness::fresh_db("psql_parity");
    let proxy = harness::proxy("").await;
    let direct_port = harness::cluster().primary().port();
    let cases = [
        "select 1",
        ";",
        "DO $$ begin raise notice 'hi'; end $$",
        "select 1 as a; select 'two' as b; select 3, 4",
        "select 'zażółć gęślą jaźń', '日本語', '🐘'",
        "begin; create table t (x int); insert into t values (1), (2); select sum(x) from t; rollback",
        "select 1/0",
        "select * from no_such_table",
    ];
    for sql in cases {
        let through = harness::psql(proxy.addr.port(), APP, &db, &["-At", "-c", sql]).await;
        let direct = harness::psql(direct_port, APP, &db, &["-At", "-c", sql]).await;
        let show = |o: &std::process::Output| {
            format!(
                "exit {:?}\nstdout:\n{}stderr:\n{}",
                o.status.code(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        assert_eq!(show(&through), show(&direct), "psql -c {sql:?}");
    }
    // The cases did reach a server: spot-check what psql printed.
    let notice = harness::psql(
        proxy.addr.port(),
        APP,
        &db,
        &["-At", "-c", "DO $$ begin raise notice 'hi'; end $$"],
    )
    .await;
    assert!(String::from_utf8_lossy(&notice.stderr).contains("NOTICE:  hi"));
    let multi = harness::psql(
        proxy.addr.port(),
        APP,
        &db,
        &["-At", "-c", "select 1; select 2"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&multi.stdout), "1\n2\n");
}

// ---- COPY ----------------------------------------------------------------

/// 100,000 rows of COPY text, non-ASCII and NULLs included, as the server
/// itself would print them.
fn copy_rows() -> Vec<u8> {
    const WORDS: [&str; 5] = [
        "zażółć gęślą jaźń",
        "日本語のテキスト",
        "emoji 🐘🚀✨",
        "plain ascii",
        "Ελληνικά и русский",
    ];
    let mut out = String::with_capacity(4_000_000);
    for id in 1..=100_000u32 {
        if id % 1000 == 0 {
            out.push_str(&format!("{id}\t\\N\n"));
        } else {
            out.push_str(&format!(
                "{id}\t{} #{id}\n",
                WORDS[id as usize % WORDS.len()]
            ));
        }
    }
    out.into_bytes()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the primary holds in `table`, hashed the way `copy_rows` is laid
/// out, read directly (not through the proxy).
async fn server_digest(db: &str, table: &str) -> (i64, String) {
    let direct = harness::connect(
        &harness::cluster()
            .primary()
            .conn_string_as("postgres", None, db),
    )
    .await
    .unwrap();
    let row = direct
        .query_one(
            &format!(
                "SELECT count(*), encode(sha256(convert_to(string_agg(id || E'\\t' || \
                 coalesce(v, '\\N') || E'\\n', '' ORDER BY id), 'UTF8')), 'hex') FROM {table}"
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn psql_copy_in_and_out_is_byte_identical() {
    let db = harness::fresh_db("copy_psql");
    let proxy = harness::proxy("").await;
    let port = proxy.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.tsv"), dir.path().join("out.tsv"));
    let rows = copy_rows();
    std::fs::write(&input, &rows).unwrap();

    let create = harness::psql(
        port,
        APP,
        &db,
        &["-c", "CREATE TABLE t (id int PRIMARY KEY, v text)"],
    )
    .await;
    assert!(create.status.success(), "{create:?}");
    let copy_in = format!("\\copy t FROM '{}'", input.display());
    let done = harness::psql(port, APP, &db, &["-v", "ON_ERROR_STOP=1", "-c", &copy_in]).await;
    assert!(done.status.success(), "{done:?}");
    assert_eq!(String::from_utf8_lossy(&done.stdout), "COPY 100000\n");

    assert_eq!(server_digest(&db, "t").await, (100_000, sha256_hex(&rows)));

    let copy_out = format!(
        "\\copy (SELECT id, v FROM t ORDER BY id) TO '{}'",
        output.display()
    );
    let done = harness::psql(port, APP, &db, &["-v", "ON_ERROR_STOP=1", "-c", &copy_out]).await;
    assert!(done.status.success(), "{done:?}");
    let back = std::fs::read(&output).unwrap();
    assert_eq!(back.len(), rows.len());
    assert_eq!(sha256_hex(&back), sha256_hex(&rows));
}

#[tokio::test]
async fn tokio_postgres_copy_in_and_out_is_byte_identical() {
    let db = harness::fresh_db("copy_tokio");
    let proxy = harness::proxy("").await;
    let mut client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let rows = copy_rows();

    // copy_in/copy_out prepare their statement first; in transaction mode a
    // transaction keeps both steps on one server connection.
    let tx = client.transaction().await.unwrap();
    let sink = tx.copy_in("COPY t (id, v) FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    for chunk in rows.chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.as_mut().finish().await.unwrap(), 100_000);
    tx.commit().await.unwrap();

    assert_eq!(server_digest(&db, "t").await, (100_000, sha256_hex(&rows)));

    let tx = client.transaction().await.unwrap();
    let stream = tx
        .copy_out("COPY (SELECT id, v FROM t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut back = Vec::with_capacity(rows.len());
    while let Some(chunk) = stream.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    tx.commit().await.unwrap();
    assert_eq!(back.len(), rows.len());
    assert_eq!(sha256_hex(&back), sha256_hex(&rows));
}

// ---- cancel ----------------------------------------------------------------

/// Waits until the primary runs `query` as an active statement on `db`.
async fn wait_active(su: &tokio_postgres::Client, db: &str, query: &str) {
    harness::eventually(&format!("`{query}` to run on {db}"), WAIT, || async {
        harness::backends(su, db)
            .await
            .iter()
            .any(|(_, state, q)| state == "active" && q == query)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_right_query() {
    let db = harness::fresh_db("cancel");
    let proxy = harness::proxy("").await;
    let su = harness::superuser().await;
    let sleeper = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let other = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let token = sleeper.cancel_token();

    let long = "select pg_sleep(10)";
    let slept = tokio::spawn(async move { sleeper.simple_query(long).await });
    wait_active(&su, &db, long).await;
    let short = "select pg_sleep(0.5), 42";
    let answered = tokio::spawn(async move { other.simple_query(short).await });
    // Wait for the second query too, unless it is already done.
    harness::eventually("the second query to start", WAIT, || async {
        let running = harness::backends(&su, &db)
            .await
            .iter()
            .any(|(_, state, q)| state == "active" && q == short);
        (running || answered.is_finished()).then_some(())
    })
    .await;

    token.cancel_query(NoTls).await.unwrap();
    // Cancelled, not finished: a lost cancel would let pg_sleep(10) return
    // its row (no timing assertion: the error itself shows it worked).
    let err = slept.await.unwrap().unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{}",
        harness::error_text(&err)
    );

    let messages = answered
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the other query was hurt: {}", harness::error_text(&e)));
    assert_eq!(second_column(&messages).as_deref(), Some("42"));
}

/// A TCP forwarder to the shared primary that waits `delay` before it
/// connects each new connection (a server far away, or behind TLS: a
/// cancel, which needs a connection of its own, arrives late).
async fn slow_to_connect(delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let primary = harness::cluster().primary().addr();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let primary = primary.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&primary).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// A cancel still on its way to a server when that server's query ends
/// by itself must not hit the next client's query on that server: the
/// proxy gives the server to no one else until the cancel has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_does_not_hit_the_next_clients_query() {
    let db = harness::fresh_db("cancel_late");
    let slow = slow_to_connect(Duration::from_secs(1)).await;
    let proxy = harness::proxy(&format!(
        "[cluster]\nprimary = \"{slow}\"\n[pool]\nsize = 1\ncheckout_timeout = \"20s\"\n\
         [observability]\nexplain = \"off\"\n"
    ))
    .await;
    let su = harness::superuser().await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    a.simple_query("select 1").await.unwrap();
    b.simple_query("select 1").await.unwrap();
    let token = a.cancel_token();

    // A's query ends 0.3 s after it starts; its cancel reaches the server
    // 1 s after it is sent. B's query waits for the only server.
    let short = "select pg_sleep(0.3)";
    let a_ran = tokio::spawn(async move { a.simple_query(short).await });
    wait_active(&su, &db, short).await;
    let cancelled = tokio::spawn(async move { token.cancel_query(NoTls).await });
    let b_ran = tokio::spawn(async move { b.simple_query("select pg_sleep(2), 42").await });

    // A's query may or may not have been cancelled; either is right.
    if let Err(e) = a_ran.await.unwrap() {
        assert_eq!(
            e.code(),
            Some(&SqlState::QUERY_CANCELED),
            "{}",
            harness::error_text(&e)
        );
    }
    let messages = b_ran
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("A's cancel hit B's query: {}", harness::error_text(&e)));
    assert_eq!(second_column(&messages).as_deref(), Some("42"));
    cancelled.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_cancel_request_with_a_wrong_key_cancels_nothing() {
    let db = harness::fresh_db("cancel_wrong_key");
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"\n").await;
    let su = harness::superuser().await;
    let (mut raw, pid, secret) = Raw::login_trust(proxy.addr, "app", &db).await;

    let sql = "select pg_sleep(2.5), 7";
    raw.send(&wire::query(sql)).await;
    wait_active(&su, &db, sql).await;
    for (p, s) in [(pid, secret ^ 1), (pid ^ 1, secret), (pid, !secret)] {
        let mut cancel = Raw::connect(proxy.addr).await;
        cancel.send(&wire::cancel_request(p, s)).await;
        // The proxy closes a cancel connection once it has dealt with it.
        cancel.expect_closed().await;
    }
    let (status, seen) = raw.until_ready().await;
    assert_eq!(status, b'I');
    if let Some((_, body)) = seen.iter().find(|(tag, _)| *tag == b'E') {
        panic!(
            "a wrong key canceled the query: {:?}",
            wire::parse_error(body)
        );
    }
    assert!(
        seen.iter()
            .any(|(tag, body)| *tag == b'D' && body.ends_with(b"7")),
        "{seen:?}"
    );

    // The right key does cancel (so the requests above were well-formed).
    let sql = "select pg_sleep(30)";
    raw.send(&wire::query(sql)).await;
    wait_active(&su, &db, sql).await;
    let mut cancel = Raw::connect(proxy.addr).await;
    cancel.send(&wire::cancel_request(pid, secret)).await;
    let e = raw.error().await;
    assert_eq!(e.code, "57014", "{e:?}");
    let (status, _) = raw.until_ready().await;
    assert_eq!(status, b'I');
}

/// libpq's PQcancel (psycopg's cancel, `stream()` closed early) returns when
/// the cancel connection closes, which Postgres does once it has signalled
/// the backend: a cancel that finds no query running is then spent. Through
/// the proxy the same must hold, or a late signal hits whatever the server
/// runs next: here another client's query (a pool of one server, so the
/// next client gets the same one). Rounds, because the late signal is a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_cancel_does_not_cancel_the_next_clients_query() {
    let db = harness::fresh_db("cancel_spent");
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"\n[pool]\nsize = 1\n").await;
    for round in 0..20 {
        let (mut a, pid, secret) = Raw::login_trust(proxy.addr, "app", &db).await;
        // A holds the server in a transaction, no query running.
        for sql in ["begin", "select 1"] {
            a.send(&wire::query(sql)).await;
            let (_, seen) = a.until_ready().await;
            assert!(seen.iter().all(|(tag, _)| *tag != b'E'), "{sql}: {seen:?}");
        }
        let mut cancel = Raw::connect(proxy.addr).await;
        cancel.send(&wire::cancel_request(pid, secret)).await;
        cancel.expect_closed().await;
        a.send(&wire::query("commit")).await;
        let (status, seen) = a.until_ready().await;
        assert_eq!(status, b'I', "round {round}: {seen:?}");
        a.send(&wire::message(b'X', b"")).await;

        let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        if let Err(e) = b.simple_query("select pg_sleep(0.2), 7").await {
            panic!(
                "round {round}: the other client's cancel, already answered, reached this query: {}",
                harness::error_text(&e)
            );
        }
    }
}

// ---- clients that leave -----------------------------------------------------

/// Waits until no backend on `db` is idle in a transaction.
async fn wait_no_open_transaction(su: &tokio_postgres::Client, db: &str) {
    harness::eventually("no backend idle in transaction", WAIT, || async {
        let open: Vec<_> = harness::backends(su, db)
            .await
            .into_iter()
            .filter(|(_, state, _)| state.starts_with("idle in transaction"))
            .collect();
        open.is_empty().then_some(())
    })
    .await;
}

/// After a client left `pid`'s server mid-transaction, the next client of
/// the size-1 pool gets that same server, outside any transaction, and the
/// row is not there.
async fn next_client_is_clean(proxy: &pgsidecar::proxy::Proxy, db: &str, pid: &str) {
    let next = harness::connect_proxy(proxy, APP, db).await.unwrap();
    let seen = harness::scalar(
        &next,
        "SELECT pg_backend_pid() || ' ' || (txid_current_if_assigned() IS NULL) || ' ' || \
         (SELECT count(*) FROM t)",
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        seen,
        format!("{pid} true 0"),
        "(backend pid, no transaction id assigned, rows)"
    );
}

#[tokio::test]
async fn a_client_that_drops_mid_transaction_leaves_no_trace() {
    let db = harness::fresh_db("drop_mid_tx");
    let proxy = harness::proxy("[pool]\nsize = 1\n").await;
    let su = harness::superuser().await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let pid = harness::scalar(&client, "SELECT pg_backend_pid()")
        .await
        .unwrap()
        .unwrap();
    drop(client);

    wait_no_open_transaction(&su, &db).await;
    next_client_is_clean(&proxy, &db, &pid).await;
}

#[tokio::test]
async fn a_client_whose_connection_breaks_mid_transaction_leaves_no_trace() {
    let db = harness::fresh_db("break_mid_tx");
    let proxy = harness::proxy("[pool]\nsize = 1\n[auth]\nclient_auth = \"trust\"\n").await;
    let su = harness::superuser().await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&wire::query("CREATE TABLE t (x int)")).await;
    assert_eq!(raw.until_ready().await.0, b'I');
    raw.send(&wire::query(
        "BEGIN; INSERT INTO t VALUES (1); SELECT pg_backend_pid()",
    ))
    .await;
    let (status, seen) = raw.until_ready().await;
    assert_eq!(status, b'T', "inside the transaction: {seen:?}");
    let row = seen.iter().rev().find(|(t, _)| *t == b'D').unwrap();
    let pid = String::from_utf8_lossy(&row.1[6..]).into_owned();
    // No Terminate: the socket just goes away.
    drop(raw);

    wait_no_open_transaction(&su, &db).await;
    next_client_is_clean(&proxy, &db, &pid).await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_query_has_its_query_stopped() {
    let db = harness::fresh_db("drop_mid_query");
    let proxy = harness::proxy("[pool]\nsize = 1\n[auth]\nclient_auth = \"trust\"\n").await;
    let su = harness::superuser().await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    let sql = "select pg_sleep(60)";
    raw.send(&wire::query(sql)).await;
    wait_active(&su, &db, sql).await;
    drop(raw);

    harness::eventually("the abandoned query to stop", WAIT, || async {
        let still = harness::backends(&su, &db)
            .await
            .iter()
            .any(|(_, _, q)| q == sql);
        (!still).then_some(())
    })
    .await;
    // The pool's only slot is usable again.
    let next = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    assert_eq!(
        harness::scalar(&next, "SELECT 'free'")
            .await
            .unwrap()
            .as_deref(),
        Some("free")
    );
}

#[tokio::test]
async fn a_client_that_terminates_gets_no_answer_but_a_close() {
    let db = harness::fresh_db("terminate");
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"\n").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&wire::message(b'X', b"")).await;
    match raw.next().await {
        Msg::Closed => {}
        other => panic!("expected the proxy to close after Terminate, got {other:?}"),
    }
}

// ---- prepared statements across servers -----------------------------------------

#[tokio::test]
async fn tokio_postgres_prepared_statements_work_in_transaction_mode() {
    let db = harness::fresh_db("prepared_tx_mode");
    let proxy = harness::proxy("[pool]\nsize = 2\n").await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let statement = a.prepare("SELECT $1::int + 1").await.unwrap();
    // b now holds the server a prepared on, so a runs on the other one.
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let row = a.query_one(&statement, &[&41i32]).await;
    b.batch_execute("COMMIT").await.unwrap();
    let row = row.unwrap_or_else(|e| panic!("{}", harness::error_text(&e)));
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// The second column of a simple query's first row.
fn second_column(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(1).map(str::to_string),
        _ => None,
    })
}
