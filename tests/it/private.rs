//! A private `LocalCluster` for tests that stop, restart, freeze or
//! reconfigure their nodes (the shared one must never be disturbed), and a
//! proxy config pointing at it.

use std::path::Path;

use pgsidecar::config::Config;
use pgsidecar::demo::{AuthMethod, ClusterOptions, LocalCluster, RoleSpec};

use crate::harness::{self, APP};

/// Starts a cluster with `replicas` replicas, the [`APP`] role and extra
/// `settings`, off the async runtime (it blocks while the servers start).
pub async fn cluster(replicas: usize, settings: &[(&str, &str)]) -> LocalCluster {
    let mut options = ClusterOptions::default()
        .replicas(replicas)
        .role(RoleSpec::new(
            APP.name,
            APP.password.expect("app has a password"),
            AuthMethod::ScramSha256,
        ));
    for (name, value) in settings {
        options = options.setting(name, value);
    }
    tokio::task::spawn_blocking(move || LocalCluster::start(options))
        .await
        .expect("cluster start task")
        .unwrap_or_else(|e| panic!("the private cluster did not start: {e}"))
}

/// A test proxy config ([`harness::proxy_config`]) for `cluster`'s primary
/// (and replicas, if `with_replicas`), with `extra` merged over it.
pub fn proxy_config(cluster: &LocalCluster, with_replicas: bool, extra: &str) -> Config {
    let replicas: Vec<String> = if with_replicas {
        cluster
            .replicas()
            .iter()
            .map(|n| format!("\"{}\"", n.addr()))
            .collect()
    } else {
        Vec::new()
    };
    let users = format!(
        "[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        APP.name,
        APP.password.unwrap_or_default()
    );
    let cluster_table = format!(
        "[cluster]\nprimary = \"{}\"\nreplicas = [{}]\n",
        cluster.primary().addr(),
        replicas.join(", ")
    );
    // `extra` may add keys to [cluster] too: merge the two snippets.
    let mut snippet: toml::Table = format!("{users}{cluster_table}").parse().unwrap();
    merge(&mut snippet, extra.parse().expect("extra is TOML"));
    harness::proxy_config(&toml::to_string(&snippet).expect("a table serialises"))
}

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

/// Makes `path` owned by the `postgres` user when the tests run as root
/// (the servers run as `postgres` then, and Postgres insists that its key
/// file belongs to it).
pub fn give_to_postgres(path: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer to
    // static storage (or null), read at once before any other call.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(!pw.is_null(), "no postgres user to run the servers as");
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
}
