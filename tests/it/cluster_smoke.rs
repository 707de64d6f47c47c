//! The shared test cluster behaves like a real primary + streaming replica:
//! replication works, the replica is read-only, and every role logs in with
//! the method it was given.

use std::time::{Duration, Instant};

use pgsidecar::demo::{AuthMethod, ClusterOptions, LocalCluster};
use tokio_postgres::error::SqlState;

use crate::harness::{self, ROLES, TestRole};

#[test]
fn primary_and_replica_are_up_and_streaming() {
    let cluster = harness::cluster();
    let (primary, replica) = (cluster.primary(), cluster.replica(0));
    assert!(cluster.major_version() >= 12);
    assert!(!primary.is_in_recovery().unwrap());
    assert!(replica.is_in_recovery().unwrap());
    let streaming = primary
        .psql("SELECT application_name, state FROM pg_stat_replication")
        .unwrap();
    assert_eq!(streaming, format!("{}|streaming", replica.name()));
    for node in cluster.nodes() {
        assert!(
            node.pid().unwrap() > 1,
            "{} has a postmaster pid",
            node.name()
        );
        assert!(
            node.log_file().exists(),
            "{} logs to {}",
            node.name(),
            node.log_file().display()
        );
    }
}

#[tokio::test]
async fn a_write_on_the_primary_becomes_visible_on_the_replica() {
    let db = harness::fresh_db("smoke_replication");
    let cluster = harness::cluster();
    let primary = harness::connect(&cluster.primary().conn_string_as("postgres", None, &db))
        .await
        .unwrap();
    primary
        .batch_execute("CREATE TABLE seen (v text); INSERT INTO seen VALUES ('hello')")
        .await
        .unwrap();

    let replica = harness::connect(&cluster.replica(0).conn_string_as("postgres", None, &db))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until replay reaches the CREATE TABLE, the table does not exist.
        if let Ok(rows) = replica.query("SELECT v FROM seen", &[]).await
            && rows.first().map(|r| r.get::<_, String>(0)).as_deref() == Some("hello")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the row never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_replica_rejects_writes_with_25006() {
    let db = harness::fresh_db("smoke_readonly");
    let replica = harness::connect(
        &harness::cluster()
            .replica(0)
            .conn_string_as("postgres", None, &db),
    )
    .await
    .unwrap();
    let err = replica
        .batch_execute("CREATE TABLE nope (x int)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err}"
    );
}

#[tokio::test]
async fn each_role_logs_in_with_its_method() {
    let primary = harness::cluster().primary();
    for role in ROLES {
        let client =
            harness::connect(&primary.conn_string_as(role.name, role.password, "postgres"))
                .await
                .unwrap_or_else(|e| panic!("{} could not log in: {e}", role.name));
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, role.name);
        assert_eq!(
            hba_method(role),
            role.auth.hba_keyword(),
            "pg_hba.conf method of {}",
            role.name
        );
    }
    let stored = primary
        .psql("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'md5user'")
        .unwrap();
    assert_eq!(
        stored, "md5",
        "md5user's password must be stored as MD5 for md5 auth to be used"
    );
}

#[tokio::test]
async fn a_wrong_password_gets_28p01() {
    let primary = harness::cluster().primary();
    for role in ROLES.into_iter().filter(|r| r.auth != AuthMethod::Trust) {
        let err = harness::connect(&primary.conn_string_as(role.name, Some("wrong"), "postgres"))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{}: {err}",
            role.name
        );
    }
}

/// The method of the first `pg_hba.conf` host line naming `role` (or the
/// catch-all), as the server parsed the file.
fn hba_method(role: TestRole) -> String {
    let sql = format!(
        "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' AND address = '127.0.0.1' \
         AND (user_name = '{{{}}}' OR user_name = '{{all}}') AND database = '{{all}}' ORDER BY line_number LIMIT 1",
        role.name
    );
    harness::cluster().primary().psql(&sql).unwrap()
}

/// Operations later tests rely on, on a cluster of its own so the shared
/// one is never disturbed.
#[test]
fn a_private_cluster_lags_restarts_and_fails_over() {
    let cluster = LocalCluster::start(ClusterOptions::default().replicas(1)).unwrap();
    let (primary, replica) = (cluster.primary(), cluster.replica(0));
    cluster.create_database("ops").unwrap();
    primary.psql_in("ops", &["CREATE TABLE t (v int)"]).unwrap();
    cluster.wait_for_replay(replica).unwrap();

    // With an apply delay the replica visibly trails the primary.
    replica.set_apply_delay(Duration::from_secs(2)).unwrap();
    primary
        .psql_in("ops", &["INSERT INTO t VALUES (1)"])
        .unwrap();
    assert_eq!(
        replica.psql_in("ops", &["SELECT count(*) FROM t"]).unwrap(),
        "0"
    );
    cluster.wait_for_replay(replica).unwrap();
    assert_eq!(
        replica.psql_in("ops", &["SELECT count(*) FROM t"]).unwrap(),
        "1"
    );
    replica.set_apply_delay(Duration::ZERO).unwrap();

    // Stop, start and restart keep the node's port and data.
    let old_pid = replica.pid().unwrap();
    replica.stop().unwrap();
    assert!(!replica.is_running());
    replica.start().unwrap();
    replica.restart().unwrap();
    assert_ne!(replica.pid().unwrap(), old_pid);
    assert_eq!(
        replica.psql_in("ops", &["SELECT count(*) FROM t"]).unwrap(),
        "1"
    );

    // Promotion makes the replica the writable primary.
    primary.stop().unwrap();
    cluster.promote(replica).unwrap();
    assert_eq!(cluster.primary().name(), replica.name());
    replica
        .psql_in("ops", &["INSERT INTO t VALUES (2)"])
        .unwrap();
    assert!(cluster.replicas().iter().all(|n| n.name() == "node0"));

    let root = cluster.root_dir().to_path_buf();
    drop(cluster);
    assert!(
        !root.exists(),
        "dropping the cluster removes {}",
        root.display()
    );
}

#[test]
fn a_server_that_cannot_start_says_why() {
    let options = ClusterOptions::default()
        .replicas(0)
        .setting("shared_buffers", "lots");
    let err = LocalCluster::start(options).unwrap_err().to_string();
    assert!(err.contains("node0 did not start"), "{err}");
    assert!(
        err.contains(r#"invalid value for parameter "shared_buffers""#),
        "{err}"
    );
}
