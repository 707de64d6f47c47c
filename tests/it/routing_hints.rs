//! Routing hints: a leading `/* pgsidecar:primary|replica */` comment picks
//! the node for one statement (a write hinted to a replica gets 25006 from
//! the proxy), and `SET pgsidecar.route` picks it for the session — kept by
//! the proxy (by the extended protocol a server runs only a stand-in that
//! changes nothing), rejected with 22023 when invalid.

use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::{self, APP, PORT_SQL};
use crate::wire::{self, Raw};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(15);

struct Setup {
    _proxy: pgsidecar::proxy::Proxy,
    client: Client,
    other: Client,
    primary: u16,
    replica: u16,
}

/// A proxy routing reads to the shared replica whatever the client wrote
/// before (read-your-writes off, a lag limit nothing reaches), two clients
/// on a fresh database with table `t` (created on the primary, replayed),
/// and the replica serving both clients' reads.
async fn setup(prefix: &str) -> Setup {
    let cluster = harness::cluster();
    let (db, _) = harness::replicated_db(prefix, "create table t (id int primary key)").await;
    let config = format!(
        "{}[routing]\nread_your_writes = \"off\"\nmax_replica_lag = \"30s\"\n",
        harness::shared_replica_toml()
    );
    let proxy = harness::proxy(&config).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let other = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let replica = cluster.replica(0).port();
    for c in [&client, &other] {
        harness::until_served_by(c, replica, "the replica serving reads", SOON).await;
    }
    Setup {
        _proxy: proxy,
        client,
        other,
        primary: cluster.primary().port(),
        replica,
    }
}

/// The port that served `sql` (which must return a port), by the simple or
/// the extended (unnamed statement) protocol.
async fn port_of(client: &Client, sql: &str, extended: bool) -> u16 {
    let port = if extended {
        let rows = client
            .query_typed(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("`{sql}`: {}", harness::error_text(&e)));
        Some(rows[0].get::<_, String>(0))
    } else {
        harness::scalar(client, sql)
            .await
            .unwrap_or_else(|e| panic!("`{sql}`: {}", harness::error_text(&e)))
    };
    harness::parse_port(port.as_deref())
}

/// The SQLSTATE and message of a failed request.
fn failure(result: Result<impl Sized, tokio_postgres::Error>, what: &str) -> (String, String) {
    let err = result.err().unwrap_or_else(|| panic!("{what} succeeded"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a database error: {err:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_hints_pick_the_node_for_one_statement() {
    let s = setup("hint_comment").await;
    let c = &s.client;
    let to_primary = format!("/* pgsidecar:primary */ {PORT_SQL}");
    let to_replica = format!("/* pgsidecar:replica */ {PORT_SQL}");
    for extended in [false, true] {
        for _ in 0..5 {
            assert_eq!(port_of(c, &to_primary, extended).await, s.primary);
            assert_eq!(port_of(c, &to_replica, extended).await, s.replica);
        }
        // The hint lasts one statement.
        assert_eq!(port_of(c, PORT_SQL, extended).await, s.replica);
    }
    // Named statements, prepared in one round trip and executed in later
    // ones, keep their hints.
    let (primary_hinted, replica_hinted) = (
        c.prepare(&to_primary).await.unwrap(),
        c.prepare(&to_replica).await.unwrap(),
    );
    for _ in 0..5 {
        let port: String = c.query_one(&primary_hinted, &[]).await.unwrap().get(0);
        assert_eq!(harness::parse_port(Some(&port)), s.primary, "{to_primary}");
        let port: String = c.query_one(&replica_hinted, &[]).await.unwrap().get(0);
        assert_eq!(harness::parse_port(Some(&port)), s.replica, "{to_replica}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_hinted_to_a_replica_is_refused_with_25006() {
    let s = setup("hint_write").await;
    let sql = "/* pgsidecar:replica */ insert into t values (1)";
    let (code, message) = failure(s.client.simple_query(sql).await, sql);
    assert_eq!(code, "25006", "{message}");
    assert!(message.contains("replica"), "{message}");
    let (code, _) = failure(s.client.query_typed(sql, &[]).await, "extended");
    assert_eq!(code, "25006");
    // Nothing was written, and the session carries on.
    let rows = harness::scalar(&s.client, "/* pgsidecar:primary */ select count(*) from t")
        .await
        .unwrap();
    assert_eq!(rows.as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_and_the_session_route_apply_to_whole_transactions() {
    let s = setup("hint_tx").await;
    let c = &s.client;
    // A lone BEGIN waits for the transaction's first statement, but its
    // hint still decides.
    c.batch_execute("/* pgsidecar:replica */ begin")
        .await
        .unwrap();
    assert_eq!(port_of(c, PORT_SQL, false).await, s.replica);
    assert_eq!(port_of(c, PORT_SQL, true).await, s.replica);
    c.batch_execute("commit").await.unwrap();
    c.batch_execute("/* pgsidecar:primary */ begin")
        .await
        .unwrap();
    c.batch_execute("set transaction read only").await.unwrap();
    assert_eq!(port_of(c, PORT_SQL, false).await, s.primary);
    c.batch_execute("commit").await.unwrap();

    // With route = 'replica' a transaction that does not say READ WRITE
    // runs on the replica, which refuses writes in it itself.
    c.batch_execute("set pgsidecar.route = 'replica'")
        .await
        .unwrap();
    for begin in ["begin", "begin isolation level repeatable read"] {
        c.batch_execute(begin).await.unwrap();
        assert_eq!(port_of(c, PORT_SQL, false).await, s.replica, "{begin}");
        let (code, message) = failure(
            c.simple_query("insert into t values (1)").await,
            "a write in it",
        );
        assert_eq!(code, "25006", "{message}");
        c.batch_execute("rollback").await.unwrap();
    }
    let (code, message) = failure(c.simple_query("begin read write").await, "READ WRITE");
    assert_eq!(code, "25006", "{message}");
    let rows = harness::scalar(c, "/* pgsidecar:primary */ select count(*) from t")
        .await
        .unwrap();
    assert_eq!(rows.as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pgsidecar_route_sticks_for_the_session_and_is_never_forwarded() {
    let s = setup("hint_route").await;
    let c = &s.client;
    c.batch_execute("set pgsidecar.route = 'primary'")
        .await
        .unwrap();
    for extended in [false, true, false] {
        assert_eq!(port_of(c, PORT_SQL, extended).await, s.primary);
    }
    // Other clients keep their own routing.
    assert_eq!(port_of(&s.other, PORT_SQL, false).await, s.replica);
    // SHOW is answered by the proxy, with the session's setting...
    let shown = harness::scalar(c, "show pgsidecar.route").await.unwrap();
    assert_eq!(shown.as_deref(), Some("primary"));
    // ...and no server ever saw it: to Postgres it does not exist.
    let seen = harness::scalar(c, "select current_setting('pgsidecar.route', true)")
        .await
        .unwrap();
    assert_eq!(seen, None, "a server knows pgsidecar.route");

    c.batch_execute("set pgsidecar.route to replica")
        .await
        .unwrap();
    assert_eq!(port_of(c, PORT_SQL, false).await, s.replica);
    let (code, _) = failure(
        c.simple_query("insert into t values (1)").await,
        "a write with route = replica",
    );
    assert_eq!(code, "25006");

    // Inside a transaction too it is the proxy's.
    c.batch_execute("set pgsidecar.route = 'auto'")
        .await
        .unwrap();
    c.batch_execute("begin; insert into t values (2)")
        .await
        .unwrap();
    c.batch_execute("set pgsidecar.route = 'replica'")
        .await
        .unwrap();
    let seen = harness::scalar(c, "select current_setting('pgsidecar.route', true)")
        .await
        .unwrap();
    assert_eq!(seen, None, "a server knows pgsidecar.route");
    let (code, _) = failure(
        c.simple_query("set pgsidecar.route = 'nowhere'").await,
        "an invalid value in a transaction",
    );
    assert_eq!(code, "22023");
    c.batch_execute("insert into t values (3)").await.unwrap();
    c.batch_execute("commit").await.unwrap();
    let rows = harness::scalar(c, "/* pgsidecar:primary */ select count(*) from t")
        .await
        .unwrap();
    assert_eq!(rows.as_deref(), Some("2"), "the transaction went on");
    assert_eq!(port_of(c, PORT_SQL, false).await, s.replica);

    c.batch_execute("set pgsidecar.route = 'primary'")
        .await
        .unwrap();
    let (code, message) = failure(
        c.simple_query("set pgsidecar.route = 'sideways'").await,
        "an invalid value",
    );
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("sideways"), "{message}");
    assert_eq!(
        port_of(c, PORT_SQL, false).await,
        s.primary,
        "an invalid value changes nothing"
    );

    c.batch_execute("set pgsidecar.route = 'auto'")
        .await
        .unwrap();
    for extended in [false, true] {
        assert_eq!(port_of(c, PORT_SQL, extended).await, s.replica);
    }
    c.batch_execute("insert into t values (4)").await.unwrap();
    c.batch_execute("set pgsidecar.route = 'primary'")
        .await
        .unwrap();
    c.batch_execute("reset pgsidecar.route").await.unwrap();
    assert_eq!(port_of(c, PORT_SQL, false).await, s.replica, "after RESET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pgsidecar_route_by_the_extended_protocol_is_the_proxys_too() {
    // Drivers such as JDBC send every statement with the extended protocol.
    let s = setup("hint_route_extended").await;
    let c = &s.client;
    c.query_typed("set pgsidecar.route = 'primary'", &[])
        .await
        .unwrap();
    for extended in [false, true] {
        assert_eq!(port_of(c, PORT_SQL, extended).await, s.primary);
    }
    let seen = c
        .query_typed("select current_setting('pgsidecar.route', true)", &[])
        .await
        .unwrap();
    // The server only ever holds a stand-in: its empty default.
    assert_eq!(
        seen[0].get::<_, Option<String>>(0).unwrap_or_default(),
        "",
        "a server knows pgsidecar.route"
    );
    c.execute("set pgsidecar.route = 'auto'", &[])
        .await
        .unwrap();
    harness::until_served_by(c, s.replica, "reads on the replica after auto", SOON).await;
    let (code, message) = failure(
        c.query_typed("set pgsidecar.route = 'sideways'", &[]).await,
        "an invalid value",
    );
    assert_eq!(code, "22023");
    assert!(message.contains("pgsidecar.route"), "{message}");
    // A named statement (JDBC's after a few executions) each time it runs.
    let to_primary = c.prepare("set pgsidecar.route = 'primary'").await.unwrap();
    let sideways = c.prepare("set pgsidecar.route = 'sideways'").await.unwrap();
    for _ in 0..2 {
        let (code, _) = failure(c.execute(&sideways, &[]).await, "a named invalid value");
        assert_eq!(code, "22023");
        // A replica the monitor has not just passed over serves the reads.
        harness::until_served_by(c, s.replica, "reads on the replica after a refusal", SOON).await;
        c.execute(&to_primary, &[]).await.unwrap();
        assert_eq!(port_of(c, PORT_SQL, true).await, s.primary);
        c.execute("reset pgsidecar.route", &[]).await.unwrap();
    }
    // Another client on the same servers is not moved.
    c.execute(&to_primary, &[]).await.unwrap();
    harness::until_served_by(&s.other, s.replica, "the other client on the replica", SOON).await;
    // set_config returns its row from the server, and moves the session.
    c.execute("reset pgsidecar.route", &[]).await.unwrap();
    harness::until_served_by(c, s.replica, "reads on the replica after RESET", SOON).await;
    let row = c
        .query_one(
            "select set_config('pgsidecar.route', 'primary', false)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "primary");
    assert_eq!(port_of(c, PORT_SQL, true).await, s.primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_route_is_refused_and_reset_all_or_discard_all_restore_auto() {
    let s = setup("hint_route_reset").await;
    let c = &s.client;
    c.batch_execute("set pgsidecar.route = 'primary'")
        .await
        .unwrap();
    // SET LOCAL: refused by either protocol, inside a transaction or not;
    // the transaction goes on and the session's setting stays.
    c.batch_execute("begin").await.unwrap();
    let (code, message) = failure(
        c.simple_query("set local pgsidecar.route = 'replica'")
            .await,
        "SET LOCAL in a transaction",
    );
    assert_eq!(code, "0A000", "{message}");
    assert!(message.contains("SET LOCAL pgsidecar.route"), "{message}");
    assert_eq!(port_of(c, PORT_SQL, false).await, s.primary);
    c.batch_execute("commit").await.unwrap();
    let (code, message) = failure(
        c.query_typed("set local pgsidecar.route = 'replica'", &[])
            .await,
        "SET LOCAL by the extended protocol",
    );
    assert_eq!(code, "0A000", "{message}");
    assert_eq!(port_of(c, PORT_SQL, true).await, s.primary);

    // RESET ALL and DISCARD ALL reset the proxy's setting with the rest
    // (an application-side pool runs them before handing a connection on).
    c.batch_execute("reset all").await.unwrap();
    harness::until_served_by(c, s.replica, "reads on the replica after RESET ALL", SOON).await;
    c.batch_execute("set pgsidecar.route = 'primary'")
        .await
        .unwrap();
    assert_eq!(port_of(c, PORT_SQL, false).await, s.primary);
    c.batch_execute("discard all").await.unwrap();
    harness::until_served_by(c, s.replica, "reads on the replica after DISCARD ALL", SOON).await;

    // Inside a transaction block, as any SET: kept at COMMIT, undone by
    // ROLLBACK. With and without a statement run before it (the proxy
    // holds a lone BEGIN back until one does).
    for run_first in [false, true] {
        for end in ["rollback", "commit"] {
            c.batch_execute("begin").await.unwrap();
            if run_first {
                c.batch_execute("select 1").await.unwrap();
            }
            c.batch_execute("set pgsidecar.route = 'primary'")
                .await
                .unwrap();
            c.batch_execute(end).await.unwrap();
            if end == "rollback" {
                let what = "reads on the replica after ROLLBACK";
                harness::until_served_by(c, s.replica, what, SOON).await;
                // The same block in one string.
                let first = if run_first { "select 1;" } else { "" };
                let block = format!("begin; {first} set pgsidecar.route = 'primary'; rollback");
                c.batch_execute(&block).await.unwrap();
                let what = "reads on the replica after a ROLLBACK in the same string";
                harness::until_served_by(c, s.replica, what, SOON).await;
            } else {
                assert_eq!(port_of(c, PORT_SQL, false).await, s.primary, "after COMMIT");
                c.batch_execute("reset pgsidecar.route").await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pgsidecar_route_in_a_failed_transaction_is_refused_like_any_command() {
    let s = setup("hint_route_failed").await;
    let c = &s.client;
    c.batch_execute("begin").await.unwrap();
    let _ = failure(c.simple_query("select 1/0").await, "a failing statement");
    // As Postgres answers any command in a failed transaction block:
    // 25P02, and the setting does not change.
    for value in ["primary", "sideways"] {
        let (code, message) = failure(
            c.simple_query(&format!("set pgsidecar.route = '{value}'"))
                .await,
            "SET pgsidecar.route in a failed transaction",
        );
        assert_eq!(code, "25P02", "{value}: {message}");
    }
    c.batch_execute("rollback").await.unwrap();
    harness::until_served_by(
        c,
        s.replica,
        "reads on the replica after the ROLLBACK",
        SOON,
    )
    .await;

    c.batch_execute("reset pgsidecar.route").await.unwrap();
}

/// A client pipelining simple queries (sending the next before the answer
/// to the last): a SET of the proxy's setting queued behind them is
/// answered in line, a refused value with its error, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pgsidecar_route_pipelined_behind_queries_is_answered_in_line() {
    let db = harness::fresh_db("hint_route_pipelined");
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"\n").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, APP.name, &db).await;
    let mut batch = wire::query("begin");
    batch.extend(wire::query("select pg_sleep(0.2)"));
    batch.extend(wire::query("set pgsidecar.route = 'sideways'"));
    batch.extend(wire::query("set pgsidecar.route = 'primary'"));
    batch.extend(wire::query("commit"));
    raw.send(&batch).await;
    let tags =
        |seen: &[(u8, Vec<u8>)]| seen.iter().map(|(t, _)| char::from(*t)).collect::<String>();
    let (status, seen) = raw.until_ready().await;
    assert_eq!((status, tags(&seen).as_str()), (b'T', "C"), "BEGIN");
    let (status, seen) = raw.until_ready().await;
    assert_eq!(status, b'T', "pg_sleep: {seen:?}");
    let (status, seen) = raw.until_ready().await;
    assert_eq!(
        (status, tags(&seen).as_str()),
        (b'E', "E"),
        "the refused value"
    );
    let error = wire::parse_error(&seen[0].1);
    assert_eq!(error.code, "22023", "{error:?}");
    // After the error the transaction is failed, as after any error.
    let (status, seen) = raw.until_ready().await;
    assert_eq!(
        status, b'E',
        "the valid SET in the failed transaction: {seen:?}"
    );
    assert_eq!(wire::parse_error(&seen[0].1).code, "25P02");
    let (status, _) = raw.until_ready().await;
    assert_eq!(status, b'I', "COMMIT of a failed transaction rolls back");
}
