//! Shared fixtures for the integration tests: one real PostgreSQL cluster
//! (primary + one streaming replica) per test binary, and helpers to reach it.
//!
//! ```ignore
//! let cluster = harness::cluster();           // started on first use
//! let db = harness::fresh_db("routing");      // a database of your own
//! let client = harness::connect(&cluster.primary().conn_string_as(
//!     harness::APP.name, harness::APP.password, &db)).await?;
//! ```
//! Tests share the cluster and run in parallel: don't stop, promote or
//! delay its nodes — start a `LocalCluster` of your own for that.

use std::sync::OnceLock;

use pgsidecar::demo::{AuthMethod, ClusterOptions, LocalCluster, RoleSpec};
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

/// Connects with tokio-postgres (no TLS) and drives the connection in the
/// background.
pub async fn connect(conn_string: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_string, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
