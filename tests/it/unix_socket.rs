//! The Unix-domain socket listener (`[proxy] unix_socket_dir`): psql and
//! tokio-postgres with `host=<dir>`, normal authentication, the file's
//! mode, its removal on shutdown, a stale file from a crashed run replaced,
//! a live one not taken over, cancel requests, TLS never offered there, and
//! a proxy without TCP (`listen = ""`).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::harness::{self, APP, TestRole};
use crate::running;

const WAIT: Duration = Duration::from_secs(20);

/// The `[proxy]` snippet for a socket in `dir`, named `.s.PGSQL.<port>`.
fn socket_toml(dir: &Path, port: u16, extra: &str) -> String {
    format!(
        "[proxy]\nunix_socket_dir = {:?}\nunix_socket_port = {port}\n{extra}",
        dir.display().to_string()
    )
}

fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// `psql -h <dir> -p <port>` as `role` with `password`; (success, output).
async fn psql_unix(
    dir: &Path,
    port: u16,
    role: TestRole,
    password: &str,
    db: &str,
    sql: &str,
) -> (bool, String) {
    let out = harness::pg_tool("psql")
        .arg("-X")
        .arg("-At")
        .arg("-h")
        .arg(dir)
        .args(["-p", &port.to_string(), "-U", role.name, "-d", db])
        .args(["-c", "\\conninfo", "-c", sql])
        .env("PGPASSWORD", password)
        .output()
        .await
        .expect("running psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// tokio-postgres on the socket in `dir` (no TLS).
async fn connect_unix(dir: &Path, port: u16, db: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host={} port={port} user={} password={} dbname={db}",
        dir.display(),
        APP.name,
        APP.password.unwrap()
    );
    harness::connect(&conn)
        .await
        .unwrap_or_else(|e| panic!("tokio-postgres on the socket: {}", harness::error_text(&e)))
}

#[tokio::test]
async fn psql_logs_in_through_the_socket_with_a_password() {
    let db = harness::fresh_db("unix_psql");
    let tmp = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the proxy creates it.
    let dir = tmp.path().join("run").join("pgsidecar");
    let proxy = harness::proxy(&socket_toml(&dir, 5432, "[admin]\nusers = [\"app\"]\n")).await;
    assert_eq!(
        proxy.unix_socket.as_deref(),
        Some(&*socket_path(&dir, 5432))
    );
    let meta = std::fs::metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);

    let (ok, out) = psql_unix(&dir, 5432, APP, APP.password.unwrap(), &db, "select 6 * 7").await;
    assert!(ok, "{out}");
    assert!(
        out.contains("via socket in"),
        "psql did not use the socket: {out}"
    );
    assert!(out.lines().any(|l| l == "42"), "{out}");

    // Normal authentication applies: no peer credentials.
    let (ok, out) = psql_unix(&dir, 5432, APP, "not-the-password", &db, "select 1").await;
    assert!(!ok, "a wrong password was accepted: {out}");
    assert!(out.contains("password authentication failed"), "{out}");

    // The console lists a socket client as PgBouncer does: addr "unix".
    let held = connect_unix(&dir, 5432, &db).await;
    let rows = harness::console(&proxy, APP, "SHOW CLIENTS").await.rows();
    assert!(
        rows.iter()
            .any(|r| r["addr"] == "unix" && r["port"] == "5432" && r["database"] == db),
        "{rows:?}"
    );
    drop(held);
}

#[tokio::test]
async fn tokio_postgres_connects_with_host_set_to_the_directory() {
    let db = harness::fresh_db("unix_tp");
    let dir = tempfile::tempdir().unwrap();
    let _proxy = harness::proxy(&socket_toml(dir.path(), 6543, "")).await;
    let client = connect_unix(dir.path(), 6543, &db).await;
    let value = harness::scalar(&client, "select 'through the socket'")
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("through the socket"));
    // The extended protocol as well.
    let row = client
        .query_one("select $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test]
async fn the_socket_gets_the_configured_mode() {
    let dir = tempfile::tempdir().unwrap();
    let _default = harness::proxy(&socket_toml(dir.path(), 1111, "")).await;
    let _restricted = harness::proxy(&socket_toml(
        dir.path(),
        2222,
        "unix_socket_mode = \"0770\"\n",
    ))
    .await;
    let mode = |port| {
        let meta = std::fs::symlink_metadata(socket_path(dir.path(), port)).unwrap();
        assert!(meta.file_type().is_socket());
        meta.permissions().mode() & 0o777
    };
    assert_eq!(mode(1111), 0o777);
    assert_eq!(mode(2222), 0o770);
}

#[tokio::test]
async fn cancel_works_over_the_socket() {
    let db = harness::fresh_db("unix_cancel");
    let dir = tempfile::tempdir().unwrap();
    let _proxy = harness::proxy(&socket_toml(dir.path(), 5432, "")).await;
    let su = harness::superuser().await;
    let sleeper = connect_unix(dir.path(), 5432, &db).await;
    let token = sleeper.cancel_token();
    let long = "select pg_sleep(30)";
    let slept = tokio::spawn(async move { sleeper.simple_query(long).await });
    harness::eventually("the query to run on the server", WAIT, || async {
        harness::backends(&su, &db)
            .await
            .iter()
            .any(|(_, state, q)| state == "active" && q == long)
            .then_some(())
    })
    .await;
    // The token holds host=<dir>: the CancelRequest goes to the socket.
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(WAIT, slept)
        .await
        .expect("the cancelled query did not end")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{}",
        harness::error_text(&err)
    );
}

#[tokio::test]
async fn tls_is_not_offered_on_the_socket() {
    let db = harness::fresh_db("unix_tls");
    let pki = crate::tls::new_pki();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}\ntls_mode = \"require\"\n",
        pki.cert.display().to_string(),
        pki.key.display().to_string()
    );
    let _proxy = harness::proxy(&socket_toml(dir.path(), 5432, &extra)).await;

    // An SSLRequest on the socket is answered 'N', as Postgres does there.
    let mut raw = tokio::net::UnixStream::connect(socket_path(dir.path(), 5432))
        .await
        .unwrap();
    let mut request = 8u32.to_be_bytes().to_vec();
    request.extend_from_slice(&crate::wire::SSL_REQUEST.to_be_bytes());
    raw.write_all(&request).await.unwrap();
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");

    // tls_mode = "require" is for TCP: libpq never uses TLS on a socket
    // (even with sslmode=require), and it logs in there.
    let out = harness::pg_tool("psql")
        .args(["-X", "-At", "-c", "select 1", "-d"])
        .arg(format!(
            "host={} port=5432 user={} dbname={db} sslmode=require",
            dir.path().display(),
            APP.name
        ))
        .env("PGPASSWORD", APP.password.unwrap())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over() {
    let db = harness::fresh_db("unix_live");
    let dir = tempfile::tempdir().unwrap();
    let first = harness::proxy(&socket_toml(dir.path(), 5432, "")).await;
    let path = socket_path(dir.path(), 5432);
    let inode = std::fs::symlink_metadata(&path).unwrap().ino();

    let second =
        pgsidecar::proxy::Proxy::start(harness::proxy_config(&socket_toml(dir.path(), 5432, "")))
            .await;
    let error = match second {
        Ok(_) => panic!("a second proxy took over the live socket"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("another process is listening") && error.contains(&*path.to_string_lossy()),
        "{error}"
    );
    // The first one still owns the file and serves it.
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), inode);
    let (ok, out) = psql_unix(
        dir.path(),
        5432,
        APP,
        APP.password.unwrap(),
        &db,
        "select 1",
    )
    .await;
    assert!(ok, "{out}");
    drop(first);
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(dir.path(), 5432);
    std::fs::write(&path, "not a socket").unwrap();
    let error =
        pgsidecar::proxy::Proxy::start(harness::proxy_config(&socket_toml(dir.path(), 5432, "")))
            .await
            .err()
            .expect("the proxy started over a regular file")
            .to_string();
    assert!(error.contains("is not a socket"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");

    // A directory that cannot be created names the key.
    let under_a_file = path.join("sub");
    let error = pgsidecar::proxy::Proxy::start(harness::proxy_config(&socket_toml(
        &under_a_file,
        5432,
        "",
    )))
    .await
    .err()
    .expect("the proxy started without its socket directory")
    .to_string();
    assert!(
        error.contains("proxy.unix_socket_dir: cannot create"),
        "{error}"
    );
}

/// A `pgsidecar run` config with the socket in `dir`.
fn run_config(dir: &Path, file: &Path) {
    let text = running::config_text(None, &socket_toml(dir, 5432, ""));
    std::fs::write(file, text).unwrap();
}

#[tokio::test]
async fn the_socket_is_removed_on_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sock");
    let config = tmp.path().join("pgsidecar.toml");
    run_config(&dir, &config);
    let path = socket_path(&dir, 5432);
    let mut proxy = running::start(&config).await;
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait(WAIT).await.success(), "{:?}", proxy.log());
    assert!(
        !path.exists(),
        "the socket file outlived the proxy: {:?}",
        proxy.log()
    );
}

#[tokio::test]
async fn a_stale_socket_from_a_crashed_run_is_replaced() {
    let db = harness::fresh_db("unix_stale");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sock");
    let config = tmp.path().join("pgsidecar.toml");
    run_config(&dir, &config);
    let path = socket_path(&dir, 5432);

    let mut crashed = running::start(&config).await;
    crashed.signal(libc::SIGKILL);
    crashed.wait(WAIT).await;
    let stale = std::fs::symlink_metadata(&path).expect("SIGKILL leaves the socket file behind");
    assert!(stale.file_type().is_socket());
    // Nobody accepts on it.
    let refused = tokio::net::UnixStream::connect(&path).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    let restarted = running::start(&config).await;
    restarted
        .wait_for_log(&["replaced a stale Unix socket"])
        .await;
    let (ok, out) = psql_unix(&dir, 5432, APP, APP.password.unwrap(), &db, "select 1").await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_proxy_without_tcp_serves_the_socket_only() {
    let db = harness::fresh_db("unix_only");
    let dir = tempfile::tempdir().unwrap();
    let proxy = harness::proxy(&format!(
        "[proxy]\nlisten = \"\"\nunix_socket_dir = {:?}\nunix_socket_port = 7654\n",
        dir.path().display().to_string()
    ))
    .await;
    assert_eq!(proxy.addr.port(), 0, "a TCP port was bound");
    let (ok, out) = psql_unix(
        dir.path(),
        7654,
        APP,
        APP.password.unwrap(),
        &db,
        "select 1",
    )
    .await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_draining_proxy_gives_its_socket_up_to_the_next_one() {
    let db = harness::fresh_db("unix_roll");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sock");
    let config = tmp.path().join("pgsidecar.toml");
    run_config(&dir, &config);
    let path = socket_path(&dir, 5432);
    let mut old = running::start(&config).await;
    // A transaction in flight keeps the old process draining.
    let client = connect_unix(&dir, 5432, &db).await;
    client.batch_execute("begin; select 1").await.unwrap();

    old.signal(libc::SIGTERM);
    harness::eventually("the draining proxy to remove its socket", WAIT, || async {
        (!path.exists()).then_some(())
    })
    .await;
    assert!(!old.exited(), "the old proxy did not drain");
    let new = running::start(&config).await;
    let (ok, out) = psql_unix(&dir, 5432, APP, APP.password.unwrap(), &db, "select 1").await;
    assert!(ok, "{out}");
    // The old one finishes its transaction and exits; the new socket stays.
    client.batch_execute("commit").await.unwrap();
    assert!(old.wait(WAIT).await.success(), "{:?}", old.log());
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    drop(new);
}
