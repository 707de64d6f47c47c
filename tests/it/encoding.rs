//! Clients whose `client_encoding` is not UTF-8, and bytes that are not
//! valid in the client's encoding, through the proxy with routing on (the
//! shared cluster's databases are UTF8): the text reaches the server as the
//! client sent it, the server converts it or answers 22021, and routing
//! reads it in the client's encoding. Also what a client is told about its
//! session: `client_encoding` by its canonical name, and an empty
//! `application_name` when it set none.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::harness::{self, APP};
use crate::wire::{self, Raw};
use pgsidecar::proxy::Proxy;

/// A proxy in front of the shared primary and replica, routing reads.
async fn routing_proxy(extra_toml: &str) -> Proxy {
    harness::proxy(&format!("{}{extra_toml}", harness::shared_replica_toml())).await
}

/// `psql -X -At -c <sql>` as APP through `proxy`, with `PGCLIENTENCODING`
/// set: `sql` is bytes in that encoding, and so is what psql prints.
async fn psql_in(proxy: &Proxy, encoding: &str, db: &str, sql: &[u8]) -> std::process::Output {
    let mut cmd = harness::pg_tool("psql");
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args(["-U", APP.name, "-d", db, "-c"])
        .arg(OsStr::from_bytes(sql))
        .env("PGPASSWORD", APP.password.unwrap_or_default())
        .env("PGCLIENTENCODING", encoding);
    cmd.output().await.expect("running psql")
}

/// Waits until plain reads through `proxy` are served by the replica (the
/// monitor needs a moment to find it caught up).
async fn replica_serving(proxy: &Proxy, db: &str) {
    let client = harness::connect_proxy(proxy, APP, db).await.unwrap();
    let port = harness::cluster().replica(0).port();
    harness::until_served_by(
        &client,
        port,
        "reads on the replica",
        Duration::from_secs(20),
    )
    .await;
}

fn port_of(out: &std::process::Output) -> u16 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psql failed: {out:?}");
    let first = stdout.lines().next().unwrap_or_default();
    harness::parse_port(first.split('|').next())
}

#[tokio::test]
async fn a_latin1_client_reads_and_writes_non_ascii_text() {
    let db = harness::fresh_db("enc_latin1");
    let proxy = routing_proxy("").await;
    let utf8 = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    // The premise: a UTF8 database, which converts from LATIN1.
    let server = harness::scalar(&utf8, "show server_encoding")
        .await
        .unwrap();
    assert_eq!(server.as_deref(), Some("UTF8"));

    // The report's repro: the client was disconnected (FATAL, "not valid
    // UTF-8") on its first non-ASCII byte.
    let out = psql_in(&proxy, "LATIN1", &db, b"select 'caf\xe9'").await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"caf\xe9\n");

    // Written by the LATIN1 client, read by a UTF-8 one, and back.
    let sql = b"create table t(v text); insert into t values ('gar\xe7on')";
    let out = psql_in(&proxy, "LATIN1", &db, sql).await;
    assert!(out.status.success(), "{out:?}");
    let v = harness::scalar(&utf8, "select v from t").await.unwrap();
    assert_eq!(v.as_deref(), Some("garçon"));
    let out = psql_in(
        &proxy,
        "LATIN1",
        &db,
        b"select v from t where v = 'gar\xe7on'",
    )
    .await;
    assert_eq!(out.stdout, b"gar\xe7on\n", "{out:?}");
}

#[tokio::test]
async fn statements_are_routed_by_what_they_say_in_the_clients_encoding() {
    let db = harness::fresh_db("enc_routing");
    let proxy = routing_proxy("").await;
    replica_serving(&proxy, &db).await;
    let replica = harness::cluster().replica(0).port();
    let primary = harness::cluster().primary().port();
    let port_sql = harness::PORT_SQL;

    // A read with a LATIN1 literal: read exactly, so a replica serves it.
    let sql = format!("select ({port_sql}), 'caf\u{e9}'");
    let latin1: Vec<u8> = sql.chars().map(|c| c as u8).collect();
    let out = psql_in(&proxy, "LATIN1", &db, &latin1).await;
    assert_eq!(port_of(&out), replica, "{out:?}");
    assert!(out.stdout.ends_with(b"|caf\xe9\n"), "{out:?}");

    // SJIS: `ソ` is 0x83 0x5C, a backslash to a byte-wise reader, which
    // would then see one long literal where there is an INSERT (and send
    // it to a read-only replica). Read in SJIS it is three statements, one
    // of them a write: the primary.
    let out = psql_in(&proxy, "UTF8", &db, b"create table t(v text)").await;
    assert!(out.status.success(), "{out:?}");
    let sjis = b"select E'\x83\x5c'; insert into t values ('x'); select 'y'";
    let out = psql_in(&proxy, "SJIS", &db, sjis).await;
    assert!(out.status.success(), "{out:?}");
    let su = harness::connect(
        &harness::cluster()
            .primary()
            .conn_string_as("postgres", None, &db),
    )
    .await
    .unwrap();
    let n = harness::scalar(&su, "select count(*) from t")
        .await
        .unwrap();
    assert_eq!(n.as_deref(), Some("1"));

    // EUC_TW, which the proxy has no decoder for: it cannot read the text
    // exactly, so the statement goes to the primary, never a replica.
    let sql = [format!("select ({port_sql}), '").as_bytes(), b"\xc4\xa1'"].concat();
    let out = psql_in(&proxy, "EUC_TW", &db, &sql).await;
    assert_eq!(port_of(&out), primary, "{out:?}");
    assert!(out.stdout.ends_with(b"|\xc4\xa1\n"), "{out:?}");
}

/// Logs in to a trust proxy as `app` with extra startup parameters.
async fn login(proxy: &Proxy, db: &str, params: &[(&str, &str)]) -> (Raw, Vec<(u8, Vec<u8>)>) {
    let mut raw = Raw::connect(proxy.addr).await;
    let mut all = vec![("user", "app"), ("database", db)];
    all.extend_from_slice(params);
    raw.send(&wire::startup(wire::PROTOCOL_3_0, &all)).await;
    let (status, seen) = raw.until_ready().await;
    assert_eq!(status, b'I', "{seen:?}");
    (raw, seen)
}

fn query_bytes(sql: &[u8]) -> Vec<u8> {
    wire::message(b'Q', &[sql, b"\0"].concat())
}

/// The values of the DataRows before the next ReadyForQuery (one column).
async fn rows(raw: &mut Raw) -> Result<Vec<Vec<u8>>, wire::ErrorFields> {
    let (_, seen) = raw.until_ready().await;
    let mut out = Vec::new();
    for (tag, body) in seen {
        match tag {
            b'E' => return Err(wire::parse_error(&body)),
            b'D' => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                out.push(body[6..6 + len as usize].to_vec());
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A LATIN1 client that has prepared and run `s\xe9`, `select 'caf\xe9'`
/// (its text is returned too).
async fn latin1_with_statement(proxy: &Proxy, db: &str) -> (Raw, &'static [u8]) {
    let (mut latin1, _) = login(proxy, db, &[("client_encoding", "LATIN1")]).await;
    let sql = b"select 'caf\xe9'::text";
    latin1
        .send(&[parse(b"s\xe9", sql), bind_execute_sync(b"s\xe9")].concat())
        .await;
    assert_eq!(rows(&mut latin1).await.unwrap(), [b"caf\xe9".to_vec()]);
    (latin1, sql)
}

fn parse(name: &[u8], sql: &[u8]) -> Vec<u8> {
    wire::message(b'P', &[name, b"\0", sql, b"\0\0\0"].concat())
}

fn bind_execute_sync(name: &[u8]) -> Vec<u8> {
    let bind = wire::message(b'B', &[b"\0", name, b"\0\0\0\0\0\0\0"].concat());
    let execute = wire::message(b'E', b"\0\0\0\0\0");
    [bind, execute, wire::message(b'S', b"")].concat()
}

#[tokio::test]
async fn bytes_invalid_in_the_clients_encoding_get_22021_and_the_session_goes_on() {
    let db = harness::fresh_db("enc_invalid");
    let proxy = routing_proxy("[auth]\nclient_auth = \"trust\"\n").await;
    let (mut utf8, _) = login(&proxy, &db, &[("client_encoding", "UTF8")]).await;

    // Simple protocol: the server's error on that statement, not a FATAL
    // from the proxy.
    utf8.send(&query_bytes(b"select 'caf\xe9'")).await;
    let e = rows(&mut utf8).await.unwrap_err();
    assert_eq!(e.code, "22021", "{e:?}");
    utf8.send(&query_bytes(b"select 'still here'")).await;
    assert_eq!(rows(&mut utf8).await.unwrap(), [b"still here".to_vec()]);
    // Nothing the proxy would answer itself (a lone BEGIN, its own
    // setting) is answered when the server would refuse the bytes.
    for sql in [
        &b"begin /* \xff */"[..],
        b"set pgsidecar.route = 'replica\xff'",
    ] {
        utf8.send(&query_bytes(sql)).await;
        let (status, seen) = utf8.until_ready().await;
        assert_eq!(status, b'I', "{seen:?}");
        let e = seen
            .iter()
            .find(|(tag, _)| *tag == b'E')
            .map(|(_, b)| wire::parse_error(b));
        assert_eq!(e.map(|e| e.code).as_deref(), Some("22021"), "{sql:?}");
    }

    // Extended protocol, a named statement: the same bytes are valid from
    // a LATIN1 client, and its statement must not answer for the UTF-8
    // client's (which the server refuses).
    let (mut latin1, sql) = latin1_with_statement(&proxy, &db).await;

    utf8.send(&[parse(b"s1", sql), bind_execute_sync(b"s1")].concat())
        .await;
    let e = rows(&mut utf8).await.unwrap_err();
    assert_eq!(e.code, "22021", "{e:?}");
    utf8.send(&query_bytes(b"select 'and on'")).await;
    assert_eq!(rows(&mut utf8).await.unwrap(), [b"and on".to_vec()]);

    // The LATIN1 client's statement still works, by its non-ASCII name.
    latin1.send(&bind_execute_sync(b"s\xe9")).await;
    assert_eq!(rows(&mut latin1).await.unwrap(), [b"caf\xe9".to_vec()]);
}

#[tokio::test]
async fn non_ascii_settings_survive_a_server_that_last_served_another_encoding() {
    let db = harness::fresh_db("enc_sync");
    // One server connection per node: every client takes turns on it.
    let proxy = routing_proxy("[pool]\nsize = 1\n").await;
    let utf8 = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    utf8.batch_execute("set my.v = 'café'").await.unwrap();
    let read = "select current_setting('my.v')";
    let got = harness::scalar(&utf8, read).await.unwrap();
    assert_eq!(got.as_deref(), Some("café"));
    for _ in 0..3 {
        // A LATIN1 client on the same servers (a read and a write, so both
        // nodes) leaves them reading LATIN1 ...
        for sql in [&b"select 1"[..], b"create temp table x(); select 1"] {
            let out = psql_in(&proxy, "LATIN1", &db, sql).await;
            assert!(out.status.success(), "{out:?}");
        }
        // ... and the UTF-8 client's setting, applied there again, must
        // still be its own, on whichever node serves it.
        let got = harness::scalar(&utf8, read).await.unwrap();
        assert_eq!(got.as_deref(), Some("café"));
        let got = harness::scalar(&utf8, &format!("/* pgsidecar:primary */ {read}"))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("café"));
    }
}

/// The value of a ParameterStatus among login messages.
fn status(seen: &[(u8, Vec<u8>)], name: &str) -> Option<String> {
    seen.iter().find_map(|(tag, body)| {
        let mut parts = body.split(|b| *b == 0);
        let key = parts.next()?;
        (*tag == b'S' && key == name.as_bytes())
            .then(|| String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned())
    })
}

#[tokio::test]
async fn client_encoding_is_reported_by_the_servers_name_for_it() {
    let db = harness::fresh_db("enc_names");
    let proxy = routing_proxy("[auth]\nclient_auth = \"trust\"\n").await;
    for (given, canonical) in [
        ("utf8", "UTF8"),
        ("eucjp", "EUC_JP"),
        ("latin9", "LATIN9"),
        ("ISO-8859-15", "LATIN9"),
        ("UNICODE", "UNICODE"),
    ] {
        let (mut raw, seen) = login(&proxy, &db, &[("client_encoding", given)]).await;
        assert_eq!(
            status(&seen, "client_encoding").as_deref(),
            Some(canonical),
            "{given}"
        );
        raw.send(&wire::query("show client_encoding")).await;
        let shown = rows(&mut raw).await.unwrap();
        assert_eq!(shown, [canonical.as_bytes().to_vec()], "{given}");
    }
}

#[tokio::test]
async fn a_client_without_application_name_sees_an_empty_one() {
    let db = harness::fresh_db("enc_appname");
    let proxy = routing_proxy("[auth]\nclient_auth = \"trust\"\n[pool]\nsize = 1\n").await;
    let (mut raw, seen) = login(&proxy, &db, &[]).await;
    assert_eq!(status(&seen, "application_name").as_deref(), Some(""));
    for sql in [
        "show application_name",
        "/* pgsidecar:primary */ show application_name",
        "reset all; select current_setting('application_name')",
    ] {
        raw.send(&wire::query(sql)).await;
        assert_eq!(rows(&mut raw).await.unwrap(), [Vec::<u8>::new()], "{sql}");
    }
    // Even right after a client that had a name used the same server.
    let (mut named, _) = login(&proxy, &db, &[("application_name", "named")]).await;
    named.send(&wire::query("show application_name")).await;
    assert_eq!(rows(&mut named).await.unwrap(), [b"named".to_vec()]);
    raw.send(&wire::query("show application_name")).await;
    assert_eq!(rows(&mut raw).await.unwrap(), [Vec::<u8>::new()]);
}

/// The proxy's own errors reach a client in its encoding, as Postgres's
/// do: a refused `SET pgsidecar.route` quotes the value the client sent,
/// which a LATIN1 client must read back as it wrote it.
#[tokio::test]
async fn the_proxys_own_errors_are_in_the_clients_encoding() {
    let db = harness::fresh_db("enc_own_errors");
    let proxy = routing_proxy("[auth]\nclient_auth = \"trust\"\n").await;
    for (encoding, sql, quoted) in [
        (
            "LATIN1",
            &b"set pgsidecar.route = 'r\xe9plica'"[..],
            &b"'r\xe9plica'"[..],
        ),
        (
            "UTF8",
            b"set pgsidecar.route = 'r\xc3\xa9plica'",
            b"'r\xc3\xa9plica'",
        ),
    ] {
        let (mut raw, _) = login(&proxy, &db, &[("client_encoding", encoding)]).await;
        raw.send(&query_bytes(sql)).await;
        let (status, seen) = raw.until_ready().await;
        assert_eq!(status, b'I', "{seen:?}");
        let (_, body) = seen
            .iter()
            .find(|(tag, _)| *tag == b'E')
            .unwrap_or_else(|| panic!("{encoding}: no error in {seen:?}"));
        assert_eq!(wire::parse_error(body).code, "22023");
        assert!(
            body.windows(quoted.len()).any(|w| w == quoted),
            "{encoding}: the value as the client wrote it: {:?}",
            String::from_utf8_lossy(body)
        );
    }
}

/// A LATIN1 client's `DEALLOCATE "sé"` drops the statement it prepared
/// under that name (named in LATIN1 bytes in its Parse), as it would on a
/// direct connection, and the name can be prepared again.
#[tokio::test]
async fn a_latin1_client_deallocates_its_non_ascii_statement() {
    let db = harness::fresh_db("enc_deallocate");
    let proxy = routing_proxy("[auth]\nclient_auth = \"trust\"\n").await;
    let (mut latin1, _) = latin1_with_statement(&proxy, &db).await;
    latin1.send(&query_bytes(b"deallocate \"s\xe9\"")).await;
    rows(&mut latin1)
        .await
        .unwrap_or_else(|e| panic!("DEALLOCATE refused: {e:?}"));
    // Gone: a Bind to it fails as on a direct connection ...
    latin1.send(&bind_execute_sync(b"s\xe9")).await;
    assert_eq!(rows(&mut latin1).await.unwrap_err().code, "26000");
    // ... and the name is free again.
    latin1
        .send(
            &[
                parse(b"s\xe9", b"select 'again'::text"),
                bind_execute_sync(b"s\xe9"),
            ]
            .concat(),
        )
        .await;
    assert_eq!(rows(&mut latin1).await.unwrap(), [b"again".to_vec()]);
}
