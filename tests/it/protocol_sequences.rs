//! Message sequences real drivers send, replayed frame by frame through a
//! proxy that routes reads to the shared replica, and the server's own
//! answers kept intact: every request gets its answer (no client left
//! waiting), errors are well-formed and name what the client named, and a
//! connection that dies gives its client exactly one error.

use std::time::Duration;

use tokio::task::block_in_place;

use crate::harness::{self, APP};
use crate::wire::{self, Msg, Raw, message, query};

/// Limit for conditions that need a few monitor rounds.
const SOON: Duration = Duration::from_secs(15);

/// Reads go to the shared replica (no read-your-writes, a lag limit nothing
/// reaches); `client_auth = "trust"` lets the raw client log in.
fn config() -> String {
    format!(
        "{}[routing]\nread_your_writes = \"off\"\nmax_replica_lag = \"30s\"\n\
         [auth]\nclient_auth = \"trust\"\n",
        harness::shared_replica_toml()
    )
}

/// A proxy routing reads to the replica, once the replica serves them, and
/// a fresh database with table `t`.
async fn routed(prefix: &str) -> (pgsidecar::proxy::Proxy, String) {
    let cluster = harness::cluster();
    let db = harness::fresh_db(prefix);
    cluster
        .primary()
        .psql_in(
            &db,
            &[
                "create table t (id int primary key, v text)",
                "grant all on t to app",
            ],
        )
        .unwrap();
    block_in_place(|| cluster.wait_for_replay(cluster.replica(0))).unwrap();
    let proxy = harness::proxy(&config()).await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let replica = cluster.replica(0).port();
    harness::until_served_by(&client, replica, "the replica serving reads", SOON).await;
    (proxy, db)
}

// ---- frames -------------------------------------------------------------------

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Parse of `sql` as `name`, with `types` parameter type OIDs.
fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    message(b'P', &body)
}

/// Bind of `statement` to `portal` with text parameters, text results.
fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    cstr(&mut body, statement);
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'B', &body)
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    cstr(&mut body, name);
    message(b'D', &body)
}

fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

fn flush() -> Vec<u8> {
    message(b'H', &[])
}

// ---- reading ------------------------------------------------------------------

/// Reads `n` messages, failing (after the read timeout) if they don't come.
async fn read_n(raw: &mut Raw, n: usize) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < n {
        match raw.next().await {
            Msg::Frame(tag, body) => out.push((tag, body)),
            Msg::Closed => panic!("closed after {out:?}"),
        }
    }
    out
}

fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|(t, _)| char::from(*t)).collect()
}

/// The first column of each DataRow.
fn values(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, body)| {
            let len = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
            String::from_utf8_lossy(&body[6..6 + len]).into_owned()
        })
        .collect()
}

fn error_codes(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| wire::parse_error(b).code)
        .collect()
}

/// Everything the proxy sends until it closes the connection.
async fn until_closed(raw: &mut Raw) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match raw.next().await {
            Msg::Frame(tag, body) => out.push((tag, body)),
            Msg::Closed => return out,
        }
    }
}

// ---- psycopg, asyncpg, node-postgres sequences ----------------------------------

/// psycopg's async `executemany` in a transaction (`test_executemany_badquery`):
/// an extended-protocol BEGIN, then a named Parse that fails, Bind/Describe/
/// Execute of that statement twice before the Sync, then Sync and Flush,
/// each message in its own write as psycopg sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_named_parse_in_a_transaction_is_answered_up_to_its_sync() {
    let (proxy, db) = routed("seq_executemany").await;
    for bad in [
        "insert into nosuchtable values ($1, $2)",
        "wat ($1, $2)",
        "copy (select $1, $2) to stdout",
    ] {
        let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
        raw.send(
            &[
                parse("", "BEGIN", &[]),
                bind("", "", &[]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
            ]
            .concat(),
        )
        .await;
        let (status, seen) = raw.until_ready().await;
        assert_eq!(
            (status, tags(&seen).as_str()),
            (b'T', "12nC"),
            "{bad}: BEGIN"
        );

        raw.send(&parse("_pg3_0", bad, &[21, 0])).await;
        for params in [["10", "hello"], ["20", "world"]] {
            raw.send(&bind("", "_pg3_0", &params)).await;
            raw.send(&describe(b'P', "")).await;
            raw.send(&execute("", 0)).await;
        }
        raw.send(&sync()).await;
        raw.send(&flush()).await;
        let (status, seen) = raw.until_ready().await;
        assert_eq!(error_codes(&seen).len(), 1, "{bad}: {seen:?}");
        assert_eq!(status, b'E', "{bad}");

        raw.send(&query("rollback")).await;
        let (status, _) = raw.until_ready().await;
        assert_eq!(status, b'I', "{bad}: after ROLLBACK");
        raw.send(&query("select 7")).await;
        let (_, seen) = raw.until_ready().await;
        assert_eq!(values(&seen), ["7"], "{bad}: the session carries on");
    }
}

/// asyncpg's `prepare()` then a cursor in a transaction (`test_cursor_02`):
/// Parse/Describe/Flush with no Sync, BEGIN as a simple query, Bind of a
/// named portal + Sync, then Execute with a row limit + Sync, twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_read_then_a_cursor_in_a_transaction_is_answered() {
    let (proxy, db) = routed("seq_asyncpg_cursor").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    let sql = "select generate_series(1, 5)::text";
    raw.send(
        &[
            parse("__asyncpg_stmt_1__", sql, &[]),
            describe(b'S', "__asyncpg_stmt_1__"),
            flush(),
        ]
        .concat(),
    )
    .await;
    let seen = read_n(&mut raw, 3).await;
    assert_eq!(tags(&seen), "1tT");

    raw.send(&query("BEGIN")).await;
    let (status, _) = raw.until_ready().await;
    assert_eq!(status, b'T');
    raw.send(
        &[
            bind("__asyncpg_portal_1__", "__asyncpg_stmt_1__", &[]),
            sync(),
        ]
        .concat(),
    )
    .await;
    let (status, seen) = raw.until_ready().await;
    assert_eq!((status, tags(&seen).as_str()), (b'T', "2"));
    for want in [["1", "2"], ["3", "4"]] {
        raw.send(&[execute("__asyncpg_portal_1__", 2), sync()].concat())
            .await;
        let (status, seen) = raw.until_ready().await;
        assert_eq!(status, b'T');
        assert_eq!(values(&seen), want);
        assert_eq!(tags(&seen), "DDs", "rows, then PortalSuspended");
    }
    raw.send(&query("COMMIT")).await;
    let (status, _) = raw.until_ready().await;
    assert_eq!(status, b'I');
}

/// psycopg's pipeline with an error (`test_pipeline_aborted`): a read and a
/// failing read + Flush, another statement + Flush (skipped by the server),
/// Sync, then a statement by the extended protocol and one as a simple
/// query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_delimited_pipeline_with_an_error_is_answered_after_its_sync() {
    let (proxy, db) = routed("seq_pipeline").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    let unnamed = |sql: &str| {
        [
            parse("", sql, &[]),
            bind("", "", &[]),
            describe(b'P', ""),
            execute("", 0),
        ]
        .concat()
    };
    raw.send(
        &[
            unnamed("select 1"),
            unnamed("select * from doesnotexist"),
            flush(),
        ]
        .concat(),
    )
    .await;
    let seen = read_n(&mut raw, 6).await;
    assert_eq!(tags(&seen), "12TDCE");
    assert_eq!(error_codes(&seen), ["42P01"]);
    raw.send(&[unnamed("select 'aborted'"), flush()].concat())
        .await;
    raw.send(&sync()).await;
    let (status, seen) = raw.until_ready().await;
    assert_eq!(
        (status, tags(&seen).as_str()),
        (b'I', ""),
        "skipped, then Sync"
    );

    raw.send(&[unnamed("select 2"), sync(), flush()].concat())
        .await;
    let (_, seen) = raw.until_ready().await;
    assert_eq!(values(&seen), ["2"]);
    raw.send(&query("select 3")).await;
    let (_, seen) = raw.until_ready().await;
    assert_eq!(values(&seen), ["3"]);
}

/// Serializable transactions cannot run on a hot standby: whichever way
/// the client asks for one (BEGIN with both modes, SET TRANSACTION after a
/// BEGIN, or the session default), it runs on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_read_only_transactions_run_on_the_primary() {
    let (proxy, db) = routed("seq_serializable").await;
    let client = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let primary = harness::cluster().primary().port();
    let openings: [&[&str]; 6] = [
        &["begin isolation level serializable read only"],
        &["start transaction read only, isolation level serializable"],
        &[
            "begin read only",
            "set transaction isolation level serializable",
        ],
        &[
            "begin",
            "set transaction isolation level serializable read only",
        ],
        &[
            "begin",
            "set transaction read only",
            "set transaction isolation level serializable",
        ],
        &[
            "set default_transaction_isolation = serializable",
            "begin read only",
        ],
    ];
    for opening in openings {
        let what = opening.join("; ");
        for sql in opening {
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{what}: {sql}: {}", harness::error_text(&e)));
        }
        let port = harness::scalar(&client, harness::PORT_SQL)
            .await
            .unwrap_or_else(|e| panic!("{what}: {}", harness::error_text(&e)));
        assert_eq!(harness::parse_port(port.as_deref()), primary, "{what}");
        let iso = harness::scalar(&client, "show transaction_isolation")
            .await
            .unwrap();
        assert_eq!(iso.as_deref(), Some("serializable"), "{what}");
        client.batch_execute("commit").await.unwrap();
    }
    // The session default still applies outside transaction blocks.
    let port = harness::scalar(&client, harness::PORT_SQL).await.unwrap();
    assert_eq!(harness::parse_port(port.as_deref()), primary);

    // Asked for on a replica, it is refused with a reason.
    client
        .batch_execute("/* pgsidecar:replica */ begin isolation level serializable read only")
        .await
        .unwrap();
    let e = harness::scalar(&client, "select 1").await.unwrap_err();
    let text = harness::error_text(&e);
    assert!(
        text.starts_with("0A000: a SERIALIZABLE transaction"),
        "{text}"
    );
    let port = harness::scalar(&client, harness::PORT_SQL).await.unwrap();
    assert_eq!(
        harness::parse_port(port.as_deref()),
        primary,
        "and the session goes on"
    );
}

/// node-postgres's `connect(); end()` in one tick sends Terminate before
/// its StartupMessage: Postgres closes without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_before_the_startup_message_closes_silently() {
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"\n").await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&message(b'X', &[])).await;
    let got = until_closed(&mut raw).await;
    assert!(got.is_empty(), "nothing but a close: {got:?}");
}

/// `select pg_terminate_backend(pg_backend_pid())`: the server's 57P01 is
/// the one error the client gets before the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_terminating_itself_gives_one_fatal_error() {
    let (proxy, db) = routed("seq_self_terminate").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&query("select pg_terminate_backend(pg_backend_pid())"))
        .await;
    let got = until_closed(&mut raw).await;
    assert_eq!(error_codes(&got), ["57P01"], "{got:?}");
}

/// A backend killed while its client sits idle in a transaction: the
/// client gets the server's FATAL, once (psycopg otherwise reports
/// "received 2 results" for its next COMMIT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_idle_in_transaction_gives_one_fatal_error() {
    let (proxy, db) = routed("seq_killed_idle_tx").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&query("begin")).await;
    raw.until_ready().await;
    raw.send(&query(
        "insert into t values (1, 'x') returning pg_backend_pid()",
    ))
    .await;
    let (status, seen) = raw.until_ready().await;
    assert_eq!(status, b'T');
    let pid: i32 = values(&seen)[0].parse().unwrap();
    let su = harness::superuser().await;
    su.execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let got = until_closed(&mut raw).await;
    assert_eq!(error_codes(&got), ["57P01"], "{got:?}");
}

// ---- the proxy's own answers ------------------------------------------------------

/// A message type byte that is not printable (0x00) is named in the error
/// as `\x00`, not written raw into the ErrorResponse (where a NUL ends the
/// field early and corrupts the frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprintable_message_type_is_named_safely() {
    let db = harness::fresh_db("seq_nul_tag");
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"\n").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&message(0, b"abc")).await;
    let got = until_closed(&mut raw).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let (tag, body) = &got[0];
    assert_eq!(*tag, b'E');
    // A well-formed ErrorResponse: NUL-terminated fields, then one NUL.
    let fields: Vec<&[u8]> = body
        .strip_suffix(&[0, 0])
        .expect("the last field and the list end with a NUL")
        .split(|b| *b == 0)
        .collect();
    assert!(
        fields
            .iter()
            .all(|f| f.len() > 1 && f[0].is_ascii_uppercase()),
        "every field has a type and a value: {fields:?}"
    );
    let e = wire::parse_error(body);
    assert_eq!(e.code, "08P01");
    assert!(e.message.contains("'\\x00'"), "{}", e.message);
}

/// A StartupMessage or SSLRequest sent after login is refused at once
/// (08P01), not read as a message whose length is its first bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_packet_after_login_is_refused_at_once() {
    let db = harness::fresh_db("seq_startup_again");
    let proxy = harness::proxy("[auth]\nclient_auth = \"trust\"\n").await;
    for packet in [
        vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
        wire::startup(wire::PROTOCOL_3_0, &[("user", "app"), ("database", &db)]),
    ] {
        let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
        raw.send(&packet).await;
        let e = raw.fatal().await;
        assert_eq!(e.code, "08P01", "{e:?}");
    }
}

/// Errors about a prepared statement name the client's statement, not the
/// proxy's shared one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_clients_statement() {
    let (proxy, db) = routed("seq_statement_name").await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;
    raw.send(&[parse("my_stmt", "select $1::int", &[]), sync()].concat())
        .await;
    raw.until_ready().await;
    raw.send(&[bind("", "my_stmt", &[]), execute("", 0), sync()].concat())
        .await;
    let (_, seen) = raw.until_ready().await;
    let (_, body) = seen.iter().find(|(t, _)| *t == b'E').expect("an error");
    let e = wire::parse_error(body);
    assert_eq!(e.code, "08P01");
    assert!(
        e.message.contains("prepared statement \"my_stmt\""),
        "{}",
        e.message
    );
    assert!(!e.message.contains("pgsidecar_"), "{}", e.message);
}
