//! Shared fixtures for the integration tests: one real PostgreSQL cluster
//! (primary + one streaming replica) per test binary, helpers to reach it,
//! and an in-process pgsidecar in front of it.
//!
//! ```ignore
//! let cluster = harness::cluster();           // started on first use
//! let db = harness::fresh_db("routing");      // a database of your own
//! let client = harness::connect(&cluster.primary().conn_string_as(
//!     harness::APP.name, harness::APP.password, &db)).await?;
//!
//! // A proxy on a free port in front of the shared primary; the snippet is
//! // merged over the defaults (see `proxy_config`).
//! let proxy = harness::proxy("[pool]\nsize = 1").await;
//! let via_proxy = harness::connect_proxy(&proxy, harness::APP, &db).await?;
//! ```
//! Tests share the cluster and run in parallel: don't stop, promote or
//! delay its nodes — start a `LocalCluster` of your own for that
//! ([`private_cluster`], [`proxy_for`]).
//!
//! Routing tests ask which node served a statement with [`served_by`] and
//! compare the answer with the nodes' ports.

use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgsidecar::config::Config;
use pgsidecar::demo::{AuthMethod, ClusterOptions, LocalCluster, RoleSpec};
use pgsidecar::proxy::Proxy;
use tokio_postgres::{Client, NoTls};

/// A login role of the shared cluster.
#[derive(Debug, Clone, Copy)]
pub struct TestRole {
    pub name: &'static str,
    pub password: Option<&'static str>,
    pub auth: AuthMethod,
}

/// Ordinary application role, SCRAM.
pub const APP: TestRole = TestRole {
    name: "app",
    password: Some("app-secret"),
    auth: AuthMethod::ScramSha256,
};
/// Role whose password is stored as MD5 and checked by `md5`.
pub const MD5_USER: TestRole = TestRole {
    name: "md5user",
    password: Some("md5-secret"),
    auth: AuthMethod::Md5,
};
/// Role checked by cleartext `password`.
pub const PW_USER: TestRole = TestRole {
    name: "pwuser",
    password: Some("pw-secret"),
    auth: AuthMethod::Password,
};
/// The trusted superuser.
pub const POSTGRES: TestRole = TestRole {
    name: "postgres",
    password: None,
    auth: AuthMethod::Trust,
};

/// Every role of the shared cluster.
pub const ROLES: [TestRole; 4] = [APP, MD5_USER, PW_USER, POSTGRES];

/// The shared cluster, started on first use. Blocks while it starts; every
/// test panics with the reason if it could not.
pub fn cluster() -> &'static LocalCluster {
    init_tracing();
    static CLUSTER: OnceLock<Result<LocalCluster, String>> = OnceLock::new();
    let started = CLUSTER.get_or_init(|| {
        let mut options = ClusterOptions::default().replicas(1);
        for role in [APP, MD5_USER, PW_USER] {
            options = options.role(RoleSpec::new(
                role.name,
                role.password.unwrap_or_default(),
                role.auth,
            ));
        }
        LocalCluster::start(options).map_err(|e| e.to_string())
    });
    match started {
        Ok(cluster) => cluster,
        Err(e) => panic!("the shared test cluster did not start: {e}"),
    }
}

/// A new, empty database on the shared cluster (already replayed on the
/// replica), named after `prefix`.
pub fn fresh_db(prefix: &str) -> String {
    cluster()
        .fresh_database(prefix)
        .unwrap_or_else(|e| panic!("creating a test database failed: {e}"))
}

/// A new database on the shared cluster set up by `sql` (run on the
/// primary as `app`, which owns what it creates) and replayed on the
/// replica before it returns; with that direct connection to the primary.
pub async fn replicated_db(prefix: &str, sql: &str) -> (String, Client) {
    let cluster = cluster();
    let db = fresh_db(prefix);
    let direct = connect(
        &cluster
            .primary()
            .conn_string_as(APP.name, APP.password, &db),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to {db} on the primary: {e}"));
    direct
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("setting up {db}: {}", error_text(&e)));
    tokio::task::block_in_place(|| cluster.wait_for_replay(cluster.replica(0)))
        .unwrap_or_else(|e| panic!("waiting for the replica to replay {db}: {e}"));
    (db, direct)
}

/// A database holding `big`: 1.5 million rows, no index, analyzed,
/// readable by `app` — for plans with a sequential scan worth noticing.
/// Created once per test binary (it takes a few seconds); read it only.
pub fn big_table_db() -> String {
    static BIG: OnceLock<String> = OnceLock::new();
    BIG.get_or_init(|| {
        let db = fresh_db("big_table");
        cluster()
            .primary()
            .psql_in(
                &db,
                &[
                    "create table big as select g as id, md5(g::text) as t \
                     from generate_series(1, 1500000) g",
                    "analyze big",
                    "grant select on big to app",
                ],
            )
            .unwrap_or_else(|e| panic!("creating the big table failed: {e}"));
        db
    })
    .clone()
}

/// Connects with tokio-postgres (no TLS) and drives the connection in the
/// background.
pub async fn connect(conn_string: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_string, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

// ---- pgsidecar in front of the shared cluster ----------------------------

/// Roles every test proxy lists in `[[users]]`, with their passwords. The
/// trusted `postgres` is not among them: tests reach it directly.
pub const PROXY_ROLES: [TestRole; 3] = [APP, MD5_USER, PW_USER];

/// The config of a test proxy: listens on a free port (`127.0.0.1:0`, also
/// for `[http]`), `[cluster] primary` is the shared primary (no replicas),
/// and `[[users]]` holds [`PROXY_ROLES`] with their plaintext passwords.
/// `extra_toml` is merged over that, key by key: a table in it extends the
/// default table, any other value (including a `[[users]]` array) replaces
/// it. Panics naming the problem if the result is not a valid config.
pub fn proxy_config(extra_toml: &str) -> Config {
    build_config(primary_only(), extra_toml)
}

/// `[cluster]` with the shared primary and no replicas.
fn primary_only() -> toml::Table {
    table([("primary", toml::Value::from(cluster().primary().addr()))])
}

/// The test proxy defaults with `nodes` as `[cluster]`, `extra_toml` merged
/// over them (see [`proxy_config`]).
fn build_config(nodes: toml::Table, extra_toml: &str) -> Config {
    let text = config_text(nodes, extra_toml);
    Config::from_toml(&text, Path::new("<test proxy config>"))
        .unwrap_or_else(|e| panic!("test proxy config refused: {e}\n{text}"))
}

/// The TOML text behind [`proxy_config`] (passwords in plain text), e.g.
/// to write a config file a proxy can RELOAD.
pub fn proxy_config_text(extra_toml: &str) -> String {
    config_text(primary_only(), extra_toml)
}

fn config_text(mut nodes: toml::Table, extra_toml: &str) -> String {
    // Test proxies keep no state file unless a test gives one: the default
    // path is the machine's, shared by every proxy.
    nodes.insert("state_file".into(), "".into());
    let mut base = toml::Table::new();
    base.insert(
        "proxy".into(),
        toml::Value::Table(table([("listen", "127.0.0.1:0".into())])),
    );
    base.insert(
        "http".into(),
        toml::Value::Table(table([("listen", "127.0.0.1:0".into())])),
    );
    base.insert("cluster".into(), toml::Value::Table(nodes));
    let users = PROXY_ROLES
        .iter()
        .map(|r| {
            toml::Value::Table(table([
                ("name", r.name.into()),
                ("password", r.password.unwrap_or_default().into()),
            ]))
        })
        .collect();
    base.insert("users".into(), toml::Value::Array(users));
    let extra: toml::Table = extra_toml
        .parse()
        .unwrap_or_else(|e| panic!("test proxy snippet is not TOML: {e}\n{extra_toml}"));
    merge(&mut base, extra);
    toml::to_string(&base).expect("a TOML table serialises")
}

/// Starts an in-process proxy with [`proxy_config`]`(extra_toml)`. It stops
/// accepting when dropped; its server connections close when the test's
/// runtime ends.
pub async fn proxy(extra_toml: &str) -> Proxy {
    Proxy::start(proxy_config(extra_toml))
        .await
        .unwrap_or_else(|e| panic!("the test proxy did not start: {e}"))
}

/// Installs a global INFO subscriber that discards what it gets, once.
/// Why: tests capture logs with thread-scoped subscribers, and while only
/// one of those exists tracing-core asks just the *current thread's*
/// subscriber whether a callsite is wanted. A callsite first hit on a
/// thread without one (another test's proxy) is then cached as unwanted,
/// and the capturing test never sees that event. With a global subscriber
/// that wants INFO, no INFO callsite can be cached as unwanted.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let global = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _ = tracing::subscriber::set_global_default(global);
    });
}

/// tokio-postgres/libpq connection string for `role` on `db` through `proxy`.
pub fn proxy_conn_string(proxy: &Proxy, role: TestRole, db: &str) -> String {
    let mut s = format!(
        "host=127.0.0.1 port={} user={} dbname={db}",
        proxy.addr.port(),
        role.name
    );
    if let Some(pw) = role.password {
        s.push_str(&format!(" password='{pw}'"));
    }
    s
}

/// Connects as `role` to `db` through `proxy` (tokio-postgres, no TLS).
pub async fn connect_proxy(
    proxy: &Proxy,
    role: TestRole,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect(&proxy_conn_string(proxy, role, db)).await
}

// ---- private clusters and where a statement ran ------------------------------

/// A primary and one streaming replica of this test's own, with the [`APP`]
/// role, for tests that stop, delay or promote nodes. Started off the
/// runtime's threads; dropping it tears it down (drop the proxies in front
/// of it first: declare the cluster before them).
pub async fn private_cluster() -> LocalCluster {
    let options = ClusterOptions::default().replicas(1).role(RoleSpec::new(
        APP.name,
        APP.password.unwrap_or_default(),
        APP.auth,
    ));
    tokio::task::spawn_blocking(move || LocalCluster::start(options))
        .await
        .expect("cluster start task")
        .unwrap_or_else(|e| panic!("private cluster did not start: {e}"))
}

/// [`proxy_config`], but in front of `cluster`: its current primary as
/// `cluster.primary` and its other nodes as `cluster.replicas`, then
/// `extra_toml` merged over that (it may set other `[cluster]` keys too).
pub fn proxy_config_for(cluster: &LocalCluster, extra_toml: &str) -> Config {
    let replicas = cluster.replicas().iter().map(|n| n.addr().into()).collect();
    let nodes = table([
        ("primary", cluster.primary().addr().into()),
        ("replicas", toml::Value::Array(replicas)),
    ]);
    build_config(nodes, extra_toml)
}

/// Starts an in-process proxy with [`proxy_config_for`]`(cluster, extra_toml)`.
pub async fn proxy_for(cluster: &LocalCluster, extra_toml: &str) -> Proxy {
    Proxy::start(proxy_config_for(cluster, extra_toml))
        .await
        .unwrap_or_else(|e| panic!("the test proxy did not start: {e}"))
}

/// `[cluster] replicas` listing the shared cluster's replica, for proxies
/// that route reads (the default test proxy has no replicas).
pub fn shared_replica_toml() -> String {
    format!(
        "[cluster]\nreplicas = [\"{}\"]\n",
        cluster().replica(0).addr()
    )
}

/// A read that answers the port of the server running it (`pg_settings`
/// is a view: replicas serve it). Combine it as a scalar subquery to learn
/// where another statement ran.
pub const PORT_SQL: &str = "select setting from pg_settings where name = 'port'";

/// The port of the node that serves a plain read for `client` now (simple
/// protocol, so through the proxy it is routed like any read).
pub async fn served_by(client: &Client) -> Result<u16, tokio_postgres::Error> {
    let port = scalar(client, PORT_SQL).await?;
    Ok(parse_port(port.as_deref()))
}

/// A port as `PORT_SQL` prints it; panics on anything else.
pub fn parse_port(text: Option<&str>) -> u16 {
    text.and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a port: {text:?}"))
}

/// Polls [`served_by`] until a read is served by `port` (e.g. until the
/// monitor has found a replica eligible); panics after `timeout`.
pub async fn until_served_by(client: &Client, port: u16, what: &str, timeout: Duration) {
    eventually(what, timeout, || async move {
        let got = served_by(client)
            .await
            .unwrap_or_else(|e| panic!("read failed while waiting for {what}: {e}"));
        (got == port).then_some(())
    })
    .await
}

// ---- looking and waiting ---------------------------------------------------

/// A direct superuser connection to the primary's `postgres` database, for
/// looking at the server from the side (`pg_stat_activity`) without being
/// counted in a test database.
pub async fn superuser() -> Client {
    connect(&cluster().primary().conn_string())
        .await
        .expect("superuser connection to the primary")
}

/// Client backends the primary has open on `db`, from `pg_stat_activity`:
/// `(pid, state, query)`, state being `active`, `idle`,
/// `idle in transaction`, …
pub async fn backends(su: &Client, db: &str) -> Vec<(i32, String, String)> {
    // The proxy's own sessions (cluster monitor, catalog reader, EXPLAIN sampler) name
    // themselves and are not pool connections.
    su.query(
        "SELECT pid, coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity \
         WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
         AND application_name NOT IN ('pgsidecar-monitor', 'pgsidecar-explain', 'pgsidecar-catalog')",
        &[&db],
    )
    .await
    .expect("reading pg_stat_activity")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Runs `sql` with the simple protocol and returns the first column of the
/// first row (`None` for SQL NULL). Panics if there is no row.
///
/// Through a transaction-mode proxy prefer this (or `batch_execute`,
/// `query_typed`) to `query*` with a `&str`: tokio-postgres prepares a named
/// statement in one round trip and uses it in the next, which may land on
/// another server connection.
pub async fn scalar(client: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap_or_else(|| panic!("`{sql}` returned no row"));
    Ok(row.get(0).map(str::to_string))
}

/// What a user would read for a tokio-postgres error: the server's (or the
/// proxy's) message for a database error, the error chain otherwise.
pub fn error_text(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// Calls `check` every 20 ms until it returns `Some`, and returns that.
/// Panics naming `what` if that takes longer than `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- client programs ---------------------------------------------------------

/// A PostgreSQL client program (`psql`, `pgbench`) from the cluster's
/// binaries (or PATH), with `PG*` variables cleared and messages in English.
pub fn pg_tool(name: &str) -> tokio::process::Command {
    let bundled = cluster().binaries().tool(name);
    let program = if bundled.exists() {
        bundled
    } else {
        name.into()
    };
    let mut cmd = tokio::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").stdin(std::process::Stdio::null());
    cmd
}

/// Runs `psql -X` as `role` (password in `PGPASSWORD`) against
/// 127.0.0.1:`port` — the proxy's or a node's — on `db`, with `args` after
/// the connection options.
pub async fn psql(port: u16, role: TestRole, db: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = pg_tool("psql");
    cmd.args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", role.name, "-d", db])
        .args(args);
    if let Some(pw) = role.password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd.output().await.expect("running psql")
}

// ---- config building -----------------------------------------------------------

fn table<const N: usize>(entries: [(&str, toml::Value); N]) -> toml::Table {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Merges `extra` into `base`: tables recursively, other values replaced.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

// ---- the admin console ---------------------------------------------------------

/// What `psql` printed for one console command.
#[derive(Debug)]
pub struct ConsoleReply {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ConsoleReply {
    /// The result set as rows of `column → value` (psql's `--csv` output;
    /// NULL reads as an empty string).
    pub fn rows(&self) -> Vec<std::collections::BTreeMap<String, String>> {
        assert!(self.ok, "the console refused: {}", self.stderr);
        let mut records = parse_csv(&self.stdout).into_iter();
        let header = records.next().unwrap_or_default();
        records
            .map(|r| header.iter().cloned().zip(r).collect())
            .collect()
    }
}

/// Runs `sql` on `proxy`'s admin console (database `pgsidecar`) with the
/// real `psql --csv` as `role`.
pub async fn console(proxy: &Proxy, role: TestRole, sql: &str) -> ConsoleReply {
    let out = psql(
        proxy.addr.port(),
        role,
        pgsidecar::admin::DATABASE,
        &["--csv", "-v", "ON_ERROR_STOP=1", "-c", sql],
    )
    .await;
    ConsoleReply {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// RFC 4180 records (quoted fields may hold commas, quotes and newlines).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}
