//! What the demo builds: the cluster options (one streaming replica and a
//! SCRAM role), the demo database with a small table replayed on the
//! replica, and the proxy's config — written as TOML and loaded like a
//! user's file, so the demo runs the same validation a deployment does.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::demo::{AuthMethod, ClusterError, ClusterOptions, LocalCluster, PgBinaries, RoleSpec};

/// The role clients log in as (through the proxy) and its password.
pub(crate) const USER: &str = "demo";
pub(crate) const PASSWORD: &str = "demo";
/// The database holding the demo table.
pub(crate) const DATABASE: &str = "demo";
/// The demo table.
pub(crate) const TABLE: &str = "products";

/// Rows of the demo table: (id, name, price).
const ROWS: [(i32, &str, &str); 5] = [
    (1, "espresso", "2.50"),
    (2, "cappuccino", "3.20"),
    (3, "flat white", "3.40"),
    (4, "croissant", "2.10"),
    (5, "banana bread", "2.80"),
];

/// A primary with one streaming replica and the demo role.
pub(super) fn cluster_options(binaries: PgBinaries) -> ClusterOptions {
    ClusterOptions {
        binaries: Some(binaries),
        ..ClusterOptions::default()
    }
    .replicas(1)
    .role(RoleSpec::new(USER, PASSWORD, AuthMethod::ScramSha256))
}

/// Starts the cluster and fills the demo database. Blocking (it drives
/// `initdb`, `pg_ctl`, `psql`); a failure part-way drops the cluster,
/// which stops whatever had started.
pub(super) fn start_cluster(options: ClusterOptions) -> Result<LocalCluster, ClusterError> {
    let cluster = LocalCluster::start(options)?;
    let primary = cluster.primary();
    primary.psql(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"))?;
    // As the demo role, so the table is its own.
    primary.psql_in(
        DATABASE,
        &demo_sql().iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    for replica in cluster.replicas() {
        cluster.wait_for_replay(replica)?;
    }
    Ok(cluster)
}

/// Statements creating and filling the demo table.
fn demo_sql() -> Vec<String> {
    let values: Vec<String> = ROWS
        .iter()
        .map(|(id, name, price)| format!("({id}, '{name}', {price})"))
        .collect();
    vec![
        format!("SET ROLE {USER}"),
        format!(
            "CREATE TABLE {TABLE} (id int PRIMARY KEY, name text NOT NULL, price numeric(6,2) NOT NULL)"
        ),
        format!("INSERT INTO {TABLE} VALUES {}", values.join(", ")),
    ]
}

/// Number of rows the demo table starts with.
pub(crate) fn row_count() -> usize {
    ROWS.len()
}

/// The proxy's config: clients on `listen`, HTTP on `http`, the cluster's
/// primary and replica, the demo role with its password, also allowed
/// into the admin console.
pub(super) fn proxy_config(
    listen: SocketAddr,
    http: SocketAddr,
    cluster: &LocalCluster,
) -> Result<Config, ConfigError> {
    let replicas: Vec<toml::Value> = cluster.replicas().iter().map(|n| n.addr().into()).collect();
    let mut doc = toml::Table::new();
    doc.insert(
        "proxy".into(),
        section([("listen", listen.to_string().into())]),
    );
    doc.insert(
        "http".into(),
        section([("listen", http.to_string().into())]),
    );
    doc.insert(
        "cluster".into(),
        section([
            ("primary", cluster.primary().addr().into()),
            ("replicas", toml::Value::Array(replicas)),
            (
                "state_file",
                cluster
                    .root_dir()
                    .join("pgsidecar.state")
                    .display()
                    .to_string()
                    .into(),
            ),
        ]),
    );
    let user = section([("name", USER.into()), ("password", PASSWORD.into())]);
    doc.insert("users".into(), toml::Value::Array(vec![user]));
    doc.insert(
        "admin".into(),
        section([("users", toml::Value::Array(vec![USER.into()]))]),
    );
    let text = toml::to_string(&doc).expect("a TOML table serialises");
    Config::from_toml(&text, Path::new("<demo config>"))
}

fn section<const N: usize>(entries: [(&str, toml::Value); N]) -> toml::Value {
    toml::Value::Table(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// The HTTP address: `requested` if given (0 = any free port), else the
/// contract's 9930 when free, else any free port. Decided here because the
/// proxy needs a concrete address in its config.
pub(super) fn http_addr(requested: Option<u16>, default: u16) -> std::io::Result<SocketAddr> {
    let port = match requested {
        Some(0) => free_port()?,
        Some(port) => port,
        None if TcpListener::bind(("127.0.0.1", default)).is_ok() => default,
        None => free_port()?,
    };
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `psql` line to paste to open `database` (the demo's, or the admin
/// console's `pgsidecar`): plain `psql` when that is on PATH, else the
/// full path of the one found with the server binaries.
pub(super) fn psql_command(binaries: &PgBinaries, port: u16, database: &str) -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("psql").is_file()));
    let psql = if on_path {
        "psql".to_string()
    } else {
        binaries.psql().display().to_string()
    };
    format!("PGPASSWORD={PASSWORD} {psql} -h 127.0.0.1 -p {port} -U {USER} -d {database}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_sql_creates_the_table_as_the_demo_role() {
        let sql = demo_sql();
        assert_eq!(sql[0], "SET ROLE demo");
        assert!(sql[1].starts_with("CREATE TABLE products"));
        assert!(sql[2].contains("(5, 'banana bread', 2.80)"), "{}", sql[2]);
    }

    #[test]
    fn http_addr_takes_the_default_when_free_else_another() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addr = http_addr(None, port).unwrap();
        assert_ne!(addr.port(), port, "falls back when the default is taken");
        assert_ne!(addr.port(), 0);
        assert_eq!(http_addr(Some(7777), port).unwrap().port(), 7777);
        assert_ne!(http_addr(Some(0), port).unwrap().port(), 0);
    }
}
